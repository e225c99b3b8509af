"""ReSim SFT only vs. GRPO vs. Dyna-GRPO on Sokoban (Dyna-Mind, arXiv 2510.09577): held-out greedy success per seed.

    python -m jaxagents.scripts.compare_agentic --seeds 0 1 --workdir runs/compare_agentic
    python -m jaxagents.scripts.compare_agentic --seeds 0 --workdir /tmp/cmp -- --config.rl.steps=10   # overrides

Per seed, the ReSim warm start runs once, as the job with no RL steps (the "sft" row):

    python -m jaxagents.train --config configs/agentic_sokoban.py --config.seed=S --config.rl.steps=0 \
      --workdir W/sft_seedS

and each algorithm resumes a copy of that workdir at the end of SFT (the loop accepts any `rl.*` change before the
first RL step), in a process of its own, one after another:

    python -m jaxagents.train --config configs/agentic_sokoban.py:<grpo|dyna> --config.seed=S --workdir W/<alg>_seedS

so every method of a seed starts from the same parameters. A finished run's workdir is read back, not rerun.
Prints one row per (method, seed) and the mean over seeds of the held-out success
rate and mean return, and writes `compare_agentic.json`; it states no claim beyond these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from etils import epath

CONFIG = str(epath.Path(__file__).parents[2] / "configs" / "agentic_sokoban.py")
VARIANTS = {"grpo": "grpo", "dyna": ""}  # algorithm -> config variant (Dyna-GRPO is the default)


def run(algorithm: str, seed: int, workdir: epath.Path, overrides: list[str]) -> dict:
  """Runs (or reads back) one job ("sft": the warm start alone); returns its summary plus its wall time (None when
  read back)."""
  run_dir = workdir / f"{algorithm}_seed{seed}"
  summary_file = run_dir / "final_metrics.json"
  wall = None
  if not summary_file.exists():
    if algorithm == "sft":
      config, overrides = CONFIG, [*overrides, "--config.rl.steps=0"]
    else:
      config = CONFIG + (f":{VARIANTS[algorithm]}" if VARIANTS[algorithm] else "")
      if not run_dir.exists():  # start from the seed's warm start
        shutil.copytree(str(workdir / f"sft_seed{seed}"), str(run_dir))
        (run_dir / "final_metrics.json").unlink()
    args = [sys.executable, "-m", "jaxagents.train", "--config", config, f"--config.seed={seed}",
            "--workdir", str(run_dir), *overrides]
    start = time.time()
    subprocess.run(args, check=True, env={**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")})
    wall = time.time() - start
  return {**json.loads(summary_file.read_text()), "wall_s": wall}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--algorithms", nargs="+", default=["grpo", "dyna"], choices=sorted(VARIANTS))
  parser.add_argument("overrides", nargs="*", help="config flags passed to every run, after `--`")
  args = parser.parse_args(argv)
  workdir = epath.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed in args.seeds:
    for algorithm in ("sft", *args.algorithms):
      summary = run(algorithm, seed, workdir, args.overrides)
      rows.append({"method": algorithm, "seed": seed, "success": summary["eval/success"],
                   "return": summary["eval/return"], "wall_s": summary["wall_s"]})
  print(f"{'method':<16} {'seed':>4} {'success':>8} {'return':>8} {'wall s':>7}")
  for row in rows:
    wall = "" if row["wall_s"] is None else f"{row['wall_s']:.0f}"
    print(f"{row['method']:<16} {row['seed']:>4} {row['success']:>8.3f} {row['return']:>8.2f} {wall:>7}")
  for method in dict.fromkeys(row["method"] for row in rows):
    values = [row for row in rows if row["method"] == method]
    print(f"{method:<16} {'mean':>4} {np.mean([r['success'] for r in values]):>8.3f} "
          f"{np.mean([r['return'] for r in values]):>8.2f}")
  (workdir / "compare_agentic.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
