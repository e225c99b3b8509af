"""The generic train loop: sharded == unsharded, kill/resume is bitwise, NaNs stop the run with a message."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import train as train_lib
from jaxagents.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def _config(**overrides):
  sys.path.insert(0, os.path.join(REPO, "configs"))
  try:
    import quickstart
  finally:
    sys.path.pop(0)
  config = quickstart.get_config()
  config.data.num_train_records = 4096
  config.data.num_eval_records = 64
  config.tensorboard = False
  config.update_from_flattened_dict(overrides)
  return config


def _final_params(workdir):
  checkpoints = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(checkpoints, str(step), "state"))
  return step, restored


def test_sharded_fsdp4_tensor2_equals_single_device(tmp_path):
  assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
  overrides = {"total_steps": 4, "log_every": 1, "eval_every": 1000, "checkpoint.save_every": 4,
               "checkpoint.async_save": False, "batch_size": 8}
  single = train(_config(**overrides, **{"mesh.data": 1}), str(tmp_path / "one"), devices=jax.devices()[:1])
  sharded = train(_config(**overrides, **{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}),
                  str(tmp_path / "eight"))
  np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
  _, params_one = _final_params(tmp_path / "one")
  _, params_eight = _final_params(tmp_path / "eight")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_one["params"], params_eight["params"])
  losses = [r["loss"] for r in metrics_lib.read_metrics(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
  losses8 = [r["loss"] for r in metrics_lib.read_metrics(tmp_path / "eight" / "metrics.jsonl") if "loss" in r]
  assert len(losses) == 4
  np.testing.assert_allclose(losses8, losses, rtol=1e-5)


def _run(workdir, *extra, kill_after=None):
  env = dict(os.environ)
  env.pop("JAXAGENTS_SIGKILL_AFTER_STEP", None)
  env["XLA_FLAGS"] = ""  # one CPU device: the subprocesses compile faster
  if kill_after is not None:
    env["JAXAGENTS_SIGKILL_AFTER_STEP"] = str(kill_after)
  args = [sys.executable, "-m", "jaxagents.train", "--config", QUICKSTART, "--workdir", str(workdir),
          "--config.total_steps=30", "--config.checkpoint.save_every=10", "--config.log_every=5",
          "--config.eval_every=1000", "--config.data.num_train_records=4096", "--config.data.num_eval_records=64",
          "--config.batch_size=16", *extra]
  return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_sigkilled_run_resumes_bitwise_identical(tmp_path):
  straight = _run(tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]

  # Killed right after step 20 started its asynchronous save: step 10 is committed (orbax finishes one save
  # before starting the next), step 20 may or may not be. A half-written step must never be restored.
  killed = _run(tmp_path / "resumed", kill_after=20)
  assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-3000:]}"
  committed = sorted(int(d) for d in os.listdir(tmp_path / "resumed" / "checkpoints") if d.isdigit())
  assert committed in ([10], [10, 20]), committed
  resumed = _run(tmp_path / "resumed")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {committed[-1]}" in resumed.stderr

  step_a, state_a = _final_params(tmp_path / "straight")
  step_b, state_b = _final_params(tmp_path / "resumed")
  assert step_a == step_b == 30
  leaves_a, tree_a = jax.tree.flatten(state_a)
  leaves_b, tree_b = jax.tree.flatten(state_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise, not approximately
  # The data order continued where it stopped: the logged losses after the resume point agree exactly.
  loss_a = {r["step"]: r.get("loss") for r in metrics_lib.read_metrics(tmp_path / "straight" / "metrics.jsonl")}
  loss_b = {r["step"]: r.get("loss") for r in metrics_lib.read_metrics(tmp_path / "resumed" / "metrics.jsonl")}
  assert {s: loss_a[s] for s in (15, 20, 25, 30)} == {s: loss_b[s] for s in (15, 20, 25, 30)}
  assert (tmp_path / "resumed" / "loss.png").stat().st_size > 0

  final = json.loads((tmp_path / "resumed" / "final_metrics.json").read_text())
  again = _run(tmp_path / "resumed")  # a complete run is left as it is
  assert again.returncode == 0 and "is complete (step 30 of 30)" in again.stderr, again.stderr[-3000:]
  assert json.loads((tmp_path / "resumed" / "final_metrics.json").read_text()) == final


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  # Warmup from 0 to a peak of 1e30: step 1 updates with lr 0 (a good state, saved), step 2 with lr 1e27, whose
  # parameters overflow. The run must stop there, name the step, and keep step 1 as the last checkpoint.
  config = _config(**{"total_steps": 40, "log_every": 1, "eval_every": 1000, "checkpoint.save_every": 1,
                      "checkpoint.async_save": False, "optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 1000,
                      "optimizer.grad_clip_norm": 0.0, "batch_size": 8})
  expected = r"Non-finite training metrics at step 2.*last good checkpoint is step 1"
  with pytest.raises(FloatingPointError, match=expected):
    train(config, str(tmp_path), devices=jax.devices()[:1])
  logged = [r for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
  assert logged and all(np.isfinite(r["loss"]) for r in logged)  # the bad step is reported, not logged
  first_bad = logged[-1]["step"] + 1
  saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert first_bad == 2 and saved == [1]


@pytest.mark.parametrize("saved_step", [None, 3])
def test_divergence_message_says_where_a_rerun_starts_and_does_not_suggest_clipping_that_is_on(tmp_path, saved_step):
  # It once said "the last good checkpoint is step None ... resumes from it" on a fresh run, and suggested enabling
  # gradient clipping that was on. The loop's own divergence is tested above; here, what the message says.
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=1, async_save=False)
  if saved_step is not None:
    checkpointer.save(saved_step, {"step": np.int32(saved_step)})
  optimizer = _config().optimizer
  optimizer.update({"learning_rate": 1e30, "grad_clip_norm": 1.0})
  with pytest.raises(FloatingPointError) as raised:
    train_lib._check_finite([(1, {"loss": 1.0}), (4, {"loss": float("nan")})], checkpointer, optimizer)
  checkpointer.close()
  message = str(raised.value)
  assert "Non-finite training metrics at step 4" in message and "None" not in message
  if saved_step is None:
    assert "No checkpoint was saved yet" in message and "starts from scratch" in message and "resumes" not in message
  else:
    assert f"last good checkpoint is step {saved_step} in {tmp_path}" in message and "resumes from it" in message
  assert "enable" not in message.lower()  # clipping is on already
  assert "optimizer.learning_rate (now 1e+30)" in message and "optimizer.grad_clip_norm (now 1)" in message


_TINY = {"total_steps": 2, "log_every": 1, "eval_every": 1000, "checkpoint.save_every": 2,
         "checkpoint.async_save": False, "batch_size": 8}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny quick-start run (2 steps, checkpoint at step 2) and its returned final metrics."""
  workdir = tmp_path_factory.mktemp("finished")
  return workdir, train(_config(**_TINY), str(workdir), devices=jax.devices()[:1])


def _copy(run, tmp_path):
  shutil.copytree(run, tmp_path / "run")
  return tmp_path / "run"


def test_rerun_of_a_finished_run_without_its_summary_rebuilds_it_from_the_metrics(finished_run, tmp_path):
  # Killed between the last checkpoint and writing final_metrics.json: every rerun failed with FileNotFoundError.
  workdir = _copy(finished_run[0], tmp_path)
  os.remove(workdir / "final_metrics.json")
  final = train(_config(**_TINY), str(workdir), devices=jax.devices()[:1])
  assert final == finished_run[1]
  assert json.loads((workdir / "final_metrics.json").read_text()) == final


def test_finished_run_is_complete_under_the_same_config_with_other_logging(finished_run, tmp_path):
  workdir = _copy(finished_run[0], tmp_path)
  again = train(_config(**{**_TINY, "log_every": 2, "checkpoint.keep": 3}), str(workdir), devices=jax.devices()[:1])
  assert again == finished_run[1]


def test_workdir_of_another_model_size_is_refused_with_one_message_before_anything_is_written(finished_run, tmp_path):
  workdir = _copy(finished_run[0], tmp_path)
  before = {name: (workdir / name).read_text() for name in ("config.json", "metrics.jsonl", "final_metrics.json")}
  flags = [f"--config.{key}={value}" for key, value in _TINY.items() if key != "total_steps"]
  refused = _run(workdir, "--config.model.embed_dim=32", "--config.total_steps=4", *flags)
  assert refused.returncode == 1
  assert "CheckpointMismatchError" in refused.stderr and str(workdir) in refused.stderr
  assert "model.embed_dim: 64 there, 32 now" in refused.stderr
  # One traceback: no reader threads failing after the error (it once came with ~480 lines ending in these).
  assert refused.stderr.count("Traceback") == 1 and "Event loop is closed" not in refused.stderr, refused.stderr
  assert {name: (workdir / name).read_text() for name in before} == before
  assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [2]
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="total_steps: 2 there, 3 now"):
    train(_config(**{**_TINY, "total_steps": 3}), str(workdir), devices=jax.devices()[:1])
