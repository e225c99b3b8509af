"""The RL jobs' workdirs on the one loop (`jaxagents.train`): a job of another task or advantage is refused before
anything is written, a finished job that lost its summary rebuilds it with the warm start's held-out rewards, and
`rl.*` options may change until the first RL step and only `rl.steps` after it (the GRPO task's `resumable`).

The workdirs are made by hand (a zero state of the loop's train-state shape, checkpointed as the loop does, with
its config and metrics), so no test here compiles a model; tests/tasks/test_rl_jobs.py runs and resumes real jobs."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import pytest

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import sharding
from jaxagents import train as train_lib
from jaxagents import workdir as workdir_lib
from jaxagents.tasks import get_task
from tests.tasks import configs

# configs/grpo_shapes.py:test: 4 SFT steps, then 4 GRPO steps.
_SFT_END, _LAST = 4, 8


def _config(name="grpo_shapes", **overrides):
  config = configs.load(name, "test")
  config.update_from_flattened_dict(overrides)
  return config


def _abstract_state(config):
  """The loop's train state of the job `config` describes, as abstract arrays: the step counters, the task's named
  parameter trees and one optimizer state per optimizer (`jaxagents.train.train`, step 2)."""
  task = get_task(config.task, config)
  init = functools.partial(train_lib.initial_state, task, task.optimizers())
  return sharding.unbox(jax.eval_shape(init, jax.random.key(config.seed)))


def _grpo_workdir(workdir, step, **overrides):
  """A grpo_shapes:test workdir (with `overrides`) whose latest checkpoint is `step`, as the loop leaves it, with the
  metrics and the warm start's evaluation it would have logged."""
  config = _config(**overrides)
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", save_every=1, async_save=False)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), _abstract_state(config))
  checkpointer.save(step, zeros, force=True)
  checkpointer.close()
  workdir_lib.write_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
  writer.write(0, {"eval/reward": 0.125, "eval/sampled_reward": 0.0625})  # before training
  writer.write(2, {"sft/loss": 2.0, "grad_norm": 3.0})
  writer.write(4, {"sft/loss": 1.5, "grad_norm": 2.0})
  writer.write(4, {"eval/reward": 0.25, "eval/sampled_reward": 0.1875})  # after the warm start
  (workdir / "after_sft.json").write_text(json.dumps({"eval/reward": 0.25, "eval/sampled_reward": 0.1875}))
  if step >= 6:
    writer.write(6, {"reward/mean": 0.5, "grad_norm": 0.75, "kl": 0.01})
    writer.write(6, {"eval/reward": 0.375, "eval/sampled_reward": 0.3125})
  if step >= 8:
    writer.write(8, {"reward/mean": 0.625, "grad_norm": 0.5, "kl": 0.02})
    writer.write(8, {"eval/reward": 0.5, "eval/sampled_reward": 0.4375})
  writer.close()


def _snapshot(workdir):
  """Every file of the workdir outside its checkpoints (name -> text), and the checkpoint steps."""
  files = {name: (workdir / name).read_text() for name in sorted(os.listdir(workdir)) if (workdir / name).is_file()}
  return files, sorted(os.listdir(workdir / "checkpoints"))


def _train(config, workdir):
  return train_lib.train(config, str(workdir), devices=jax.devices()[:1])


def test_a_job_of_another_advantage_is_refused_before_anything_is_written(tmp_path, capfd):
  _grpo_workdir(tmp_path, _LAST)
  (tmp_path / "final_metrics.json").write_text(json.dumps({"eval/reward": 0.5}))
  before = _snapshot(tmp_path)
  # Fewer steps than the finished GRPO run (which would answer "complete, nothing to do" with GRPO's summary), and
  # more steps (which would train PDCR on from GRPO's checkpoint).
  for overrides in ({"sft.steps": 1}, {"rl.steps": 6}):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as raised:
      _train(_config("pdcr_shapes", **overrides), tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message and "rl.advantage: 'grpo' there, 'pdcr' now" in message, message
    assert "env.format: 'answer' there, 'rows' now" in message
    assert "Remove" not in message  # the checkpoint is good: no advice to delete it
    assert _snapshot(tmp_path) == before  # config.json, metrics, summary and every checkpoint as they were
  assert "Traceback" not in capfd.readouterr().err  # one message, no tracebacks from checkpoint threads
  assert _train(_config(), tmp_path) == {"eval/reward": 0.5}  # its own config is fine: the run is complete


def test_a_finished_job_without_its_summary_rebuilds_it_with_the_warm_start_rewards(tmp_path):
  # Killed between the last checkpoint and writing final_metrics.json: the rerun rebuilds it from metrics.jsonl.
  _grpo_workdir(tmp_path, _LAST)
  expected = {"sft/loss": 1.5, "grad_norm": 0.5, "reward/mean": 0.625, "kl": 0.02, "eval/reward": 0.5,
              "eval/sampled_reward": 0.4375, "eval/reward_after_sft": 0.25, "eval/sampled_reward_after_sft": 0.1875}
  assert _train(_config(), tmp_path) == expected
  assert json.loads((tmp_path / "final_metrics.json").read_text()) == expected


class _Resumed(Exception):
  """Raised in place of restoring: the loop accepted the workdir and would now restore its checkpoint."""


@pytest.fixture
def accepted(monkeypatch):
  """The fields the loop's config check let change, recorded; restoring is stopped before anything compiles."""
  changes = []

  def check_config(*args, **kwargs):
    changes.append(check(*args, **kwargs))
    return changes[-1]

  def restore(self, step, abstract_state, data_iterator=None):
    raise _Resumed(step)

  check = workdir_lib.check_config
  monkeypatch.setattr(workdir_lib, "check_config", check_config)
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore", restore)
  return changes


_CONSTANT = {"rl.lr_schedule": "constant"}


def test_rl_options_may_change_until_the_first_rl_step_and_only_rl_steps_after_it(tmp_path, accepted):
  # `scripts/compare_rl.py` starts each method's RL from a copy of one warm-start workdir.
  warm, rl = tmp_path / "warm", tmp_path / "rl"
  _grpo_workdir(warm, _SFT_END, **_CONSTANT)
  _grpo_workdir(rl, 6, **_CONSTANT)
  other_rl = {**_CONSTANT, "rl.learning_rate": 5e-4, "rl.steps": 6, "rl.advantage": "rloo", "rl.loss.beta": 0.0}
  with pytest.raises(_Resumed):
    _train(_config(**other_rl), warm)
  assert accepted[-1] == {"rl.learning_rate": (1e-3, 5e-4), "rl.steps": (4, 6), "rl.advantage": ("grpo", "rloo"),
                          "rl.loss.beta": (0.04, 0.0)}

  before = _snapshot(rl)
  for change, refused in (({"rl.learning_rate": 5e-4}, "rl.learning_rate: 0.001 there, 0.0005 now"),
                          ({"rl.advantage": "rloo"}, "rl.advantage: 'grpo' there, 'rloo' now"),
                          ({"sft.steps": 3}, "sft.steps: 4 there, 3 now")):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=refused):
      _train(_config(**_CONSTANT, **change), rl)
    assert _snapshot(rl) == before
  with pytest.raises(_Resumed):
    _train(_config(**_CONSTANT, **{"rl.steps": 6}), rl)
  assert accepted[-1] == {"rl.steps": (4, 6)}
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="at step 6, past this config's last step 5"):
    _train(_config(**_CONSTANT, **{"rl.steps": 1}), rl)
  assert _snapshot(rl) == before


def test_with_a_decaying_rl_learning_rate_not_even_rl_steps_may_change_after_the_first_rl_step(tmp_path, accepted):
  # The cosine schedule's length is rl.steps: a longer run would have taken other steps, not more of the same.
  rl = tmp_path / "rl"
  _grpo_workdir(rl, 6)
  assert _config().rl.lr_schedule == "cosine"
  before = _snapshot(rl)
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="rl.steps: 4 there, 6 now"):
    _train(_config(**{"rl.steps": 6}), rl)
  assert _snapshot(rl) == before
  warm = tmp_path / "warm"
  _grpo_workdir(warm, _SFT_END)
  with pytest.raises(_Resumed):  # before the first RL step, the schedule may still change
    _train(_config(**{"rl.steps": 6, "rl.warmup_steps": 2}), warm)
  assert accepted[-1] == {"rl.steps": (4, 6), "rl.warmup_steps": (15, 2)}
