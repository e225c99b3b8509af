"""The GRPO step benchmark runs end to end on the small variant of the main job's config and prints the split of a
step between `prepare` (rollouts, rewards, recomputed log-probs) and the updates. No timing is asserted."""

import pytest

from jaxagents.bench import grpo_step as bench


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_benchmark_times_prepare_and_updates_of_an_rl_step(capsys):
  text = bench.main(["--config", "configs/grpo_shapes.py:test", "--steps", "2", "--warmup", "1",
                     "--devices", "2"])
  assert text == capsys.readouterr().out.strip()
  assert text.startswith("GRPO step: 4 prompts x 4 samples, 2 updates, mesh data=2 fsdp=1 tensor=1")
  rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in text.splitlines() if line.startswith("| ")}
  assert set(rows) == {"part", "prepare", "updates", "step"}
  seconds = {name: float(cells[0]) for name, cells in rows.items() if name != "part"}
  assert all(value > 0 for value in seconds.values())
  assert seconds["prepare"] + seconds["updates"] <= seconds["step"] * 1.5  # medians of parts of the same steps
  assert float(rows["step"][1]) == 1.0
