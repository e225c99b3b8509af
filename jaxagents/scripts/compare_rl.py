"""GRPO (sparse outcome reward) vs PACR vs PDCR on the shipped counting task, over several seeds; prints a table.

    python -m jaxagents.scripts.compare_rl --workdir runs/compare --seeds 0 1 2

Every method runs the job of `--config` (default configs/pdcr_shapes.py: the multi-step "rows" answer format, so
that there are steps to credit) with only the advantage estimator changed (`METHODS`):
  grpo  outcome-only group-normalized advantage (GRPO, arXiv 2402.03300), the sparse baseline;
  pacr  outcome + confidence-gain process advantage in one pool (PACR, arXiv 2510.22255; Eq. 5 of PDCR);
  pdcr  outcome + perception/reasoning-decomposed process advantage (PDCR, arXiv 2605.13467, Eq. 12-14).
For a given seed the SFT warm start is the same computation for every method, so it runs once per seed and each
method resumes from a copy of its final checkpoint: the methods start RL from bitwise the same policy.

Reports, per method, the held-out rewards after SFT and after RL (greedy accuracy and the mean reward of sampled
answers at the training temperature) as mean +- sample std over seeds, the per-seed change, and the wall time of
the RL phase; writes `comparison.json` and `comparison.png` (held-out sampled reward vs step, mean over seeds).
It measures these runs only: with a few seeds on a toy task, differences within the seed spread mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import time
from collections.abc import Sequence

import numpy as np
from etils import epath

from jaxagents import metrics as metrics_lib
from jaxagents import train as train_lib

# method -> overrides of config.rl (the only difference between methods).
METHODS: dict[str, dict] = {
  "grpo": {"advantage": "grpo"},
  "pacr": {"advantage": "pacr"},
  "pdcr": {"advantage": "pdcr"},
}
_REWARDS = ("eval/sampled_reward", "eval/reward")


def load_config(path: str):
  """`get_config(arg)` of a config file named as on the command line (`configs/x.py` or `configs/x.py:arg`)."""
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("compare_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _config(path: str, seed: int, rl_overrides: dict, rl_steps: int | None):
  config = load_config(path)
  config.seed = seed
  config.rl.update(rl_overrides)
  if rl_steps is not None:
    config.rl.steps = rl_steps
  return config


def run_seed(config_path: str, methods: Sequence[str], seed: int, workdir: epath.Path,
             rl_steps: int | None = None) -> dict[str, dict]:
  """Runs the shared SFT warm start of `seed` once, then every method's RL from a copy of it."""
  sft_dir = workdir / f"seed{seed}" / "sft"
  sft_only = _config(config_path, seed, METHODS[methods[0]], rl_steps)
  sft_only.rl.steps = 0
  train_lib.train(sft_only, str(sft_dir))
  results = {}
  for method in methods:
    config = _config(config_path, seed, METHODS[method], rl_steps)
    run_dir = workdir / f"seed{seed}" / method
    if not run_dir.exists():  # an existing one (interrupted or complete) resumes from its own checkpoints
      shutil.copytree(sft_dir, run_dir, ignore=shutil.ignore_patterns("final_metrics.json", "reward.png"))
    start = time.perf_counter()
    final = train_lib.train(config, str(run_dir))
    after_sft = json.loads((run_dir / "after_sft.json").read_text())
    results[method] = {
      "after_sft": {key: after_sft[key] for key in _REWARDS},
      "final": {key: final[key] for key in _REWARDS},
      "rl_seconds": time.perf_counter() - start,
      "curve": [(r["step"], r["eval/sampled_reward"]) for r in metrics_lib.read_metrics(run_dir / "metrics.jsonl")
                if "eval/sampled_reward" in r],
    }
  return results


def _mean_std(values: Sequence[float]) -> str:
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.3f} ± {std:.3f}"


def table(results: dict[int, dict[str, dict]], methods: Sequence[str]) -> str:
  """Markdown table: per method, rewards after SFT and after RL (mean ± std over seeds) and per-seed changes."""
  seeds = sorted(results)
  lines = [
    "| method | seeds | sampled after SFT | sampled after RL | Δ sampled per seed | greedy after SFT | greedy after RL "
    "| Δ greedy per seed | RL time (s) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for method in methods:
    runs = [results[seed][method] for seed in seeds]
    cells = []
    for key in _REWARDS:
      before = [run["after_sft"][key] for run in runs]
      after = [run["final"][key] for run in runs]
      deltas = ", ".join(f"{a - b:+.3f}" for a, b in zip(after, before, strict=True))
      cells += [_mean_std(before), _mean_std(after), deltas]
    seconds = np.mean([run["rl_seconds"] for run in runs])
    lines.append(f"| {method} | {len(seeds)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  return "\n".join(lines)


def plot(results: dict[int, dict[str, dict]], methods: Sequence[str], path: epath.Path) -> None:
  """Held-out sampled reward against the global step, mean over seeds, one line per method."""
  records = []
  for method in methods:
    by_step: dict[int, list[float]] = {}
    for seed in results:
      for step, value in results[seed][method]["curve"]:
        by_step.setdefault(step, []).append(value)
    for step, values in by_step.items():
      records.append({"step": step, method: float(np.mean(values))})
  records.sort(key=lambda r: r["step"])
  metrics_lib.plot_curves(records, list(methods), path, title="held-out sampled reward (mean over seeds)")


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=str(epath.Path(__file__).parents[2] / "configs" / "pdcr_shapes.py"))
  parser.add_argument("--workdir", default="runs/compare")
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--rl-steps", type=int, default=None, help="override config.rl.steps")
  args = parser.parse_args(argv)
  workdir = epath.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  results = {seed: run_seed(args.config, args.methods, seed, workdir, args.rl_steps) for seed in args.seeds}
  text = table(results, args.methods)
  (workdir / "comparison.json").write_text(json.dumps({str(s): r for s, r in results.items()}, indent=1))
  plot(results, args.methods, workdir / "comparison.png")
  print(text)
  return text


if __name__ == "__main__":
  main()
