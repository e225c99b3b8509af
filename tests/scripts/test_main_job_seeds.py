"""The main job's seed script: its table (per seed, then mean ± sample std) and its reading of finished runs."""

import json

from etils import epath

from jaxagents import metrics as metrics_lib
from jaxagents.scripts import main_job_seeds


def _finished_run(run_dir: epath.Path, greedy: tuple[float, float], sampled: tuple[float, float]) -> None:
  """A workdir as a finished main job leaves it (the files the script reads)."""
  run_dir.mkdir(parents=True)
  (run_dir / "after_sft.json").write_text(json.dumps({"eval/reward": greedy[0], "eval/sampled_reward": sampled[0]}))
  (run_dir / "final_metrics.json").write_text(json.dumps({"eval/reward": greedy[1], "eval/sampled_reward": sampled[1],
                                                          "kl": 0.5}))
  writer = metrics_lib.MetricWriter(run_dir, tensorboard=False)
  writer.write(0, {"eval/reward": 0.0, "eval/sampled_reward": 0.0})
  writer.write(4, {"eval/reward": greedy[0], "eval/sampled_reward": sampled[0]})
  writer.write(6, {"reward/mean": 0.5})
  writer.write(8, {"reward/mean": 0.75})
  writer.write(8, {"eval/reward": greedy[1], "eval/sampled_reward": sampled[1]})
  writer.close()


def test_finished_runs_are_read_back_and_tabulated_per_seed_with_mean_and_sample_std(tmp_path):
  workdir = epath.Path(tmp_path)
  _finished_run(workdir / "seed0", greedy=(0.5, 0.9), sampled=(0.25, 0.75))
  _finished_run(workdir / "seed1", greedy=(0.7, 0.9), sampled=(0.45, 0.95))
  results = {seed: main_job_seeds.run_seed("unused.py", seed, workdir) for seed in (0, 1)}  # nothing is rerun
  assert results[0]["eval_curve"] == [(0, 0.0), (4, 0.5), (8, 0.9)]
  assert results[1]["train_reward"] == [(6, 0.5), (8, 0.75)] and results[1]["wall_seconds"] is None
  rows = main_job_seeds.table(results).splitlines()
  assert len(rows) == 5  # header, rule, two seeds, the mean
  cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]
  assert cells[0] == ["0", "0.500", "0.900", "+0.400", "0.250", "0.750", "-"]
  assert cells[1] == ["1", "0.700", "0.900", "+0.200", "0.450", "0.950", "-"]
  # mean(0.5, 0.7) = 0.6, sample std |0.7 - 0.5| / sqrt(2) = 0.141; gains 0.4 and 0.2
  assert cells[2] == ["mean ± std", "0.600 ± 0.141", "0.900 ± 0.000", "0.300 ± 0.141", "0.350 ± 0.141",
                      "0.850 ± 0.141", "-"]
  main_job_seeds.plot(results, workdir / "seeds.png", sft_steps=4)
  assert (workdir / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
