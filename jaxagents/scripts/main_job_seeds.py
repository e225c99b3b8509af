"""The README's main job over several seeds: held-out greedy accuracy after the warm start and after GRPO.

    python -m jaxagents.scripts.main_job_seeds --seeds 0 1 2 --workdir runs/main_seeds

Each seed runs the README's main command as a user would, in a process of its own and one seed after another:

    python -m jaxagents.train --config configs/grpo_shapes.py --config.seed=S --workdir WORKDIR/seedS

so the wall time reported is the command's own (start-up, compilation and the evaluations included). A seed whose
workdir already holds a finished run is read back, not rerun (the loop returns at once). From each run's
`after_sft.json`, `final_metrics.json` and `metrics.jsonl` it prints a table (per seed and mean ± sample std over
seeds: held-out greedy accuracy after the warm start and after RL, RL's gain, the mean reward of sampled answers,
wall time), and writes `main_job_seeds.json` and `main_job_seeds.png` (held-out greedy accuracy and the training
reward of the sampled groups against the step, one line per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from jaxagents import metrics as metrics_lib
from jaxagents.scripts import compare_rl

DEFAULT_CONFIG = str(epath.Path(__file__).parents[2] / "configs" / "grpo_shapes.py")
GREEDY, SAMPLED = "eval/reward", "eval/sampled_reward"


def run_seed(config: str, seed: int, workdir: epath.Path) -> dict:
  """Runs (or, if finished, reads back) the job of `config` with `seed` in `workdir / seed{seed}`: its summary."""
  run_dir = workdir / f"seed{seed}"
  wall = None
  if not (run_dir / "final_metrics.json").exists():
    command = [sys.executable, "-m", "jaxagents.train", f"--config={config}", f"--config.seed={seed}",
               f"--workdir={run_dir}"]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ.copy())
    wall = time.perf_counter() - start
  return summarize(run_dir, wall)


def summarize(run_dir: epath.Path, wall_seconds: float | None) -> dict:
  """The held-out rewards after the warm start and at the end, the eval curve and the training reward of a run."""
  after_sft = json.loads((run_dir / "after_sft.json").read_text())
  final = json.loads((run_dir / "final_metrics.json").read_text())
  records = metrics_lib.read_metrics(run_dir / "metrics.jsonl")
  return {
    "after_sft": {key: after_sft[key] for key in (GREEDY, SAMPLED)},
    "final": {key: final[key] for key in (GREEDY, SAMPLED)},
    "wall_seconds": wall_seconds,
    "eval_curve": [(r["step"], r[GREEDY]) for r in records if GREEDY in r],
    "train_reward": [(r["step"], r["reward/mean"]) for r in records if "reward/mean" in r],
  }


def _mean_std(values: Sequence[float]) -> str:
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.3f} ± {std:.3f}"


def table(results: Mapping[int, dict]) -> str:
  """Markdown table: a row per seed, then mean ± sample std over the seeds."""
  header = ("| seed | greedy after warm start | greedy after RL | RL gain (greedy) | sampled after warm start "
            "| sampled after RL | wall time (s) |")
  lines = [header, "|---|---|---|---|---|---|---|"]
  columns = {name: [] for name in ("g0", "g1", "gain", "s0", "s1")}
  walls = []
  for seed in sorted(results):
    run = results[seed]
    row = dict(g0=run["after_sft"][GREEDY], g1=run["final"][GREEDY], s0=run["after_sft"][SAMPLED],
               s1=run["final"][SAMPLED])
    row["gain"] = row["g1"] - row["g0"]
    for name, value in row.items():
      columns[name].append(value)
    wall = run["wall_seconds"]
    walls += [] if wall is None else [wall]
    lines.append(f"| {seed} | {row['g0']:.3f} | {row['g1']:.3f} | {row['gain']:+.3f} | {row['s0']:.3f} "
                 f"| {row['s1']:.3f} | {'-' if wall is None else f'{wall:.0f}'} |")
  mean = {name: _mean_std(values) for name, values in columns.items()}
  wall = f"{np.mean(walls):.0f}" if walls else "-"
  lines.append(f"| mean ± std | {mean['g0']} | {mean['g1']} | {mean['gain']} | {mean['s0']} | {mean['s1']} "
               f"| {wall} |")
  return "\n".join(lines)


def plot(results: Mapping[int, dict], path: epath.Path, *, sft_steps: int | None = None) -> None:
  """Two panels against the global step, one line per seed: held-out greedy accuracy and the sampled groups' mean
  training reward (RL steps only); a dotted line marks the end of the warm start."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for seed in sorted(results):
    for ax, key in zip(axes, ("eval_curve", "train_reward"), strict=True):
      points = results[seed][key]
      ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if key == "eval_curve" else None,
              label=f"seed {seed}")
  titles = ("held-out greedy accuracy (256 prompts)", "training reward (mean of the sampled groups)")
  for ax, title in zip(axes, titles, strict=True):
    if sft_steps is not None:
      ax.axvline(sft_steps, color="grey", linestyle=":", label="end of warm start")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file, as for `jaxagents.train`")
  parser.add_argument("--workdir", default="runs/main_seeds")
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  args = parser.parse_args(argv)
  workdir = epath.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  results = {seed: run_seed(args.config, seed, workdir) for seed in args.seeds}
  text = table(results)
  (workdir / "main_job_seeds.json").write_text(json.dumps({str(s): r for s, r in results.items()}, indent=1))
  plot(results, workdir / "main_job_seeds.png", sft_steps=compare_rl.load_config(args.config).sft.steps)
  print(text)
  return text


if __name__ == "__main__":
  main()
