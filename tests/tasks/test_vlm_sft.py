"""The SFT job (`configs/sft_counting.py`) runs on the one loop: its loss falls, it evaluates before and after, and it
checks its config fields by name."""

import json

import jax
import pytest

from jaxagents import train as train_lib
from tests.tasks import configs


def test_sft_job_lowers_its_loss_and_reports_held_out_rewards(tmp_path):
  config = configs.load("sft_counting", "test")
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
  before = json.loads((tmp_path / "before.json").read_text())
  assert set(before) == {"eval/reward", "eval/sampled_reward"}
  assert set(before) <= set(result) and (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("field, value", [("sft.steps", 0), ("sft.batch_size", -1), ("eval.examples", 0)])
def test_sft_job_names_a_bad_config_field(tmp_path, field, value):
  config = configs.load("sft_counting", "test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    train_lib.train(config, str(tmp_path))
