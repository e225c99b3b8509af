"""What a workdir records: resumes under another config are refused by name, a lost summary is rebuilt."""

import json

import ml_collections
import pytest

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import workdir as workdir_lib


def _config(**overrides):
  config = ml_collections.ConfigDict({"seed": 0, "total_steps": 10, "log_every": 5, "plot_keys": ("loss",),
                                      "model": {"width": 8, "depth": 2}, "checkpoint": {"keep": 2, "save_every": 5}})
  config.update_from_flattened_dict(overrides)
  return config


def test_config_differences_outside_the_resumable_fields_are_refused_by_name(tmp_path):
  workdir_lib.write_config(tmp_path, _config())
  stored = (tmp_path / "config.json").read_text()
  with pytest.raises(checkpoint_lib.CheckpointMismatchError) as raised:
    workdir_lib.check_config(tmp_path, _config(**{"model.width": 16, "total_steps": 20}), step=5,
                             may_change=("log_every", "checkpoint"))
  message = str(raised.value)
  assert str(tmp_path) in message and "latest step 5" in message
  assert "model.width: 8 there, 16 now" in message and "total_steps: 10 there, 20 now" in message
  assert (tmp_path / "config.json").read_text() == stored


def test_resumable_fields_and_their_subfields_may_change_and_are_reported(tmp_path):
  workdir_lib.write_config(tmp_path, _config())
  changed = workdir_lib.check_config(tmp_path, _config(**{"log_every": 1, "checkpoint.keep": 3}), step=5,
                                     may_change=("log_every", "checkpoint"))
  assert changed == {"checkpoint.keep": (2, 3), "log_every": (5, 1)}
  assert workdir_lib.check_config(tmp_path, _config(), step=5) == {}  # tuples stored as lists compare equal


def test_a_field_only_one_config_has_is_a_difference(tmp_path):
  workdir_lib.write_config(tmp_path, _config())
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"algorithm: '<absent>' there, 'pdcr' now"):
    workdir_lib.check_config(tmp_path, ml_collections.ConfigDict({**_config().to_dict(), "algorithm": "pdcr"}),
                             step=1)


def test_a_workdir_without_config_json_is_not_refused(tmp_path):
  assert workdir_lib.check_config(tmp_path, _config(), step=3) == {}


def test_lost_summary_is_rebuilt_from_the_last_logged_value_of_each_metric(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False)
  writer.write(0, {"eval/loss": 9.0, "eval/only_before": 1.0})  # the before-training evaluation
  writer.write(1, {"loss": 3.0, "grad_norm": 2.0})
  writer.write(2, {"loss": 2.0, "grad_norm": 1.0})
  writer.write(2, {"eval/loss": 2.5})
  writer.write(2, {"loss": 1.5, "grad_norm": 1.0})  # step 2 again, after a resume: the later record wins
  writer.close()
  final = workdir_lib.summary(tmp_path, extra={"eval/loss_after_sft": 4.0})
  assert final == {"loss": 1.5, "grad_norm": 1.0, "eval/loss": 2.5, "eval/loss_after_sft": 4.0}
  assert json.loads((tmp_path / "final_metrics.json").read_text()) == final
  (tmp_path / "final_metrics.json").write_text(json.dumps({"loss": 0.5}))
  assert workdir_lib.summary(tmp_path) == {"loss": 0.5}  # a written summary is returned as it is
