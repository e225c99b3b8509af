"""The README's main job learns: held-out accuracy rises from chance to near-perfect in a shortened run."""

import jax

from jaxagents import metrics as metrics_lib
from jaxagents.train import train
from tests.test_train import _config


def test_quickstart_job_learns_to_sort(tmp_path):
  config = _config(**{"total_steps": 300, "eval_every": 300, "log_every": 50, "checkpoint.save_every": 300})
  final = train(config, str(tmp_path), devices=jax.devices()[:1])
  evals = [r for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl") if "eval/sequence_accuracy" in r]
  before, after = evals[0], evals[-1]
  assert (before["step"], after["step"]) == (0, 300)
  assert before["eval/sequence_accuracy"] < 0.05  # a random model sorts nothing
  assert after["eval/sequence_accuracy"] > 0.5, final
  assert after["eval/loss"] < 0.25 * before["eval/loss"]
  assert (tmp_path / "loss.png").stat().st_size > 0
