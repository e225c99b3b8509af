"""The RL jobs' workdir: a run of another config is refused before anything is written, a lost summary is rebuilt.

The workdirs are made by hand (a zero state of the job's shape, checkpointed as `run` does, with its config and
metrics), so that no test compiles the job; `tests/rl/test_trainer.py` runs and resumes real jobs."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import train as train_lib
from jaxagents import workdir as workdir_lib
from jaxagents.rl import trainer
from tests.rl import jobs


def _tiny(name, **overrides):
  config = jobs.load_config(name)
  config.data.eval_examples = 2
  config.data.eval_samples = 0
  config.sft.steps = 2
  config.sft.batch_size = 2
  config.rl.steps = 1
  config.rl.prompts_per_step = 1
  config.rl.group_size = 2
  config.log_every = 1
  config.eval_every = 100
  config.checkpoint.save_every = 1
  config.update_from_flattened_dict(overrides)
  return config


def _grpo_workdir(workdir, step, config=None):
  """A GRPO workdir whose latest checkpoint is `step`, as `run` leaves it, with the metrics it would have logged."""
  config = config or _tiny("grpo_shapes")
  job = trainer.job_class(config.algorithm)(config)
  abstract = jax.eval_shape(job.init_state, jax.random.key(config.seed))
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", save_every=1, async_save=False)
  checkpointer.save(step, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract), force=True)
  checkpointer.close()
  workdir_lib.write_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
  writer.write(0, {"eval/reward": 0.125})  # before training
  writer.write(1, {"sft/loss": 2.0, "grad_norm": 3.0})
  writer.write(2, {"sft/loss": 1.5, "grad_norm": 2.0})
  writer.write(2, {"eval/reward": 0.25})  # after the warm start
  (workdir / "after_sft.json").write_text(json.dumps({"eval/reward": 0.25}))
  if step >= 3:
    writer.write(3, {"reward/mean": 0.5, "grad_norm": 0.75})
    writer.write(3, {"eval/reward": 0.375})
  writer.close()
  return job


def _snapshot(workdir):
  files = {name: (workdir / name).read_text() for name in ("config.json", "metrics.jsonl") if (workdir / name).exists()}
  return files, sorted(os.listdir(workdir / "checkpoints"))


def test_job_of_another_algorithm_is_refused_before_anything_is_written(tmp_path):
  _grpo_workdir(tmp_path, 3)
  (tmp_path / "final_metrics.json").write_text(json.dumps({"eval/reward": 0.375}))
  before = _snapshot(tmp_path)
  # Fewer steps than the GRPO run once answered "complete, nothing to do" with GRPO's metrics; more steps trained on.
  for overrides in ({"sft.steps": 1}, {"rl.steps": 3}):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as raised:
      train_lib.train(_tiny("pdcr_shapes", **overrides), str(tmp_path))
    assert str(tmp_path) in str(raised.value) and "algorithm: 'grpo' there, 'pdcr' now" in str(raised.value)
    assert "Remove" not in str(raised.value)  # the checkpoint is good: no advice to delete it
    assert _snapshot(tmp_path) == before
  assert train_lib.train(_tiny("grpo_shapes"), str(tmp_path)) == {"eval/reward": 0.375}  # its own config is fine


def test_finished_job_without_its_summary_rebuilds_it_with_the_warm_start_rewards(tmp_path):
  # Killed between the last checkpoint and writing final_metrics.json: every rerun failed with FileNotFoundError.
  _grpo_workdir(tmp_path, 3)
  expected = {"sft/loss": 1.5, "grad_norm": 0.75, "reward/mean": 0.5, "eval/reward": 0.375,
              "eval/reward_after_sft": 0.25}
  assert train_lib.train(_tiny("grpo_shapes"), str(tmp_path)) == expected
  assert json.loads((tmp_path / "final_metrics.json").read_text()) == expected


def test_rl_options_may_change_until_the_first_rl_step_and_rl_steps_after_it(tmp_path):
  # `jaxagents.rl.compare` starts each method's RL from a copy of one warm-start workdir.
  warm, rl = tmp_path / "warm", tmp_path / "rl"
  job = _grpo_workdir(warm, 2)
  _grpo_workdir(rl, 3)
  other_rl = trainer.ShapesGRPO(_tiny("grpo_shapes", **{"rl.learning_rate": 1e-3, "rl.steps": 4}))
  abstract = jax.eval_shape(job.init_state, jax.random.key(0))
  warm_checkpoints = checkpoint_lib.Checkpointer(warm / "checkpoints", save_every=1)
  assert other_rl.check_workdir(str(warm), warm_checkpoints, 2, abstract) == {
    "rl.learning_rate": (1e-4, 1e-3), "rl.steps": (1, 4)}
  warm_checkpoints.close()
  checkpoints = checkpoint_lib.Checkpointer(rl / "checkpoints", save_every=1)
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="rl.learning_rate: 0.0001 there, 0.001 now"):
    other_rl.check_workdir(str(rl), checkpoints, 3, abstract)
  longer = trainer.ShapesGRPO(_tiny("grpo_shapes", **{"rl.steps": 4}))
  assert longer.check_workdir(str(rl), checkpoints, 3, abstract) == {"rl.steps": (1, 4)}
  shorter = trainer.ShapesGRPO(_tiny("grpo_shapes", **{"rl.steps": 0}))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="past this config's last step 2"):
    shorter.check_workdir(str(rl), checkpoints, 3, abstract)
  checkpoints.close()
