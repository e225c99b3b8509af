"""Checkpointer: atomic saves, restore into a sharding, data position restored, corrupt dirs named."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import sharding


def _state(seed=0):
  key = jax.random.key(seed)
  return {"step": jnp.asarray(3, jnp.int32), "params": {"w": jax.random.normal(key, (8, 4)), "b": jnp.ones(4)}}


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset())


def test_restore_gives_same_arrays_in_the_requested_sharding_and_data_position(tmp_path):
  state = _state()
  data = _iterator()
  for _ in range(3):
    next(data)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=1, keep=2, async_save=True)
  assert checkpointer.save(3, state, data)
  expected_next = next(data)
  checkpointer.wait()

  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  shardings = {"step": NamedSharding(mesh, PartitionSpec()),
               "params": {"w": NamedSharding(mesh, PartitionSpec("fsdp", "tensor")),
                          "b": NamedSharding(mesh, PartitionSpec())}}
  abstract = checkpoint_lib.abstract_with_shardings(state, shardings)
  fresh = _iterator()
  restored = checkpoint_lib.Checkpointer(tmp_path, save_every=1).restore(3, abstract, fresh)
  assert restored["params"]["w"].sharding == shardings["params"]["w"]
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  np.testing.assert_array_equal(next(fresh), expected_next)


def test_keep_limits_the_number_of_checkpoints(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=2, keep=2, async_save=False)
  for step in range(1, 9):
    checkpointer.save(step, _state(step))
  checkpointer.close()
  assert checkpoint_lib.Checkpointer(tmp_path, save_every=2).all_steps() == [6, 8]


def test_truncated_checkpoint_raises_error_naming_the_path(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=1, async_save=False)
  checkpointer.save(5, _state())
  checkpointer.close()
  step_dir = tmp_path / "5"
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state") for name in names]
  for path in files:  # truncate every file of the state item to half its size
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  abstract = jax.eval_shape(_state)
  with pytest.raises(checkpoint_lib.CheckpointError, match=str(step_dir)):
    checkpoint_lib.Checkpointer(tmp_path, save_every=1).restore(5, abstract)


def test_save_every_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="save_every"):
    checkpoint_lib.Checkpointer(tmp_path, save_every=0)


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpointer = checkpoint_lib.Checkpointer("runs/checkpoints", save_every=1, async_save=True)
  checkpointer.save(1, _state())
  checkpointer.close()
  assert checkpoint_lib.Checkpointer("runs/checkpoints", save_every=1).all_steps() == [1]
  restored = checkpoint_lib.Checkpointer("runs/checkpoints", save_every=1).restore(1, jax.eval_shape(_state))
  jax.tree.map(np.testing.assert_array_equal, restored, _state())


def test_keep_below_one_is_refused_naming_the_config_field(tmp_path):
  # keep=0 made orbax delete every checkpoint: the run ended with none and a rerun started over.
  with pytest.raises(ValueError, match=r"checkpoint\.keep: expected None .* or an integer >= 1, got 0"):
    checkpoint_lib.Checkpointer(tmp_path, save_every=1, keep=0)
  assert checkpoint_lib.Checkpointer(tmp_path, save_every=1, keep=None).all_steps() == []


def test_checkpoint_of_another_shape_is_refused_from_metadata_and_left_in_place(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=1, async_save=False)
  checkpointer.save(2, _state())
  checkpointer.close()
  other = jax.eval_shape(lambda: {**_state(), "params": {"w": jnp.zeros((8, 2)), "b": jnp.ones(4)},
                                  "extra": jnp.zeros(3, jnp.bfloat16)})
  with pytest.raises(checkpoint_lib.CheckpointMismatchError) as raised:
    checkpoint_lib.Checkpointer(tmp_path, save_every=1).restore(2, other)
  message = str(raised.value)
  assert str(tmp_path / "2") in message
  assert "params.w float32[8, 4] vs float32[8, 2]" in message and "extra expected, not saved" in message
  assert "Remove" not in message  # the checkpoint is intact: no advice to delete it
  assert checkpoint_lib.Checkpointer(tmp_path, save_every=1).all_steps() == [2]


def test_checkpoint_of_another_dtype_is_refused(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_every=1, async_save=False)
  checkpointer.save(1, _state())
  checkpointer.close()
  bf16 = jax.eval_shape(lambda: jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim else x, _state()))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"params\.b float32\[4\] vs bfloat16\[4\]"):
    checkpoint_lib.Checkpointer(tmp_path, save_every=1).check_matches(1, bf16)
  checkpoint_lib.Checkpointer(tmp_path, save_every=1).check_matches(1, jax.eval_shape(_state))  # the same passes


def test_restore_trees_reads_named_trees_of_another_run_and_refuses_mismatches(tmp_path):
  state = {**_state(), "ema": {"w": jnp.full((8, 4), 2.0)}, "opt_state": {"mu": jnp.zeros(4)}}
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "teacher" / "checkpoints", save_every=1, async_save=False)
  checkpointer.save(1, jax.tree.map(jnp.zeros_like, state))
  checkpointer.save(5, state)
  checkpointer.close()
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  wanted = {"params": {"w": NamedSharding(mesh, PartitionSpec("fsdp", "tensor")),
                       "b": NamedSharding(mesh, PartitionSpec())},
            "ema": {"w": NamedSharding(mesh, PartitionSpec())}}
  abstract = checkpoint_lib.abstract_with_shardings({k: state[k] for k in wanted}, wanted)
  restored = checkpoint_lib.restore_trees(tmp_path / "teacher", abstract)  # the latest step; opt_state not read
  assert set(restored) == {"params", "ema"}
  assert restored["params"]["w"].sharding == wanted["params"]["w"]
  jax.tree.map(np.testing.assert_array_equal, restored, {k: state[k] for k in wanted})
  older = checkpoint_lib.restore_trees(tmp_path / "teacher", abstract, step=1)
  np.testing.assert_array_equal(older["ema"]["w"], 0.0)
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"params\.w float32\[8, 4\] vs float32\[4, 8\]"):
    checkpoint_lib.restore_trees(tmp_path / "teacher", {"params": {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32),
                                                                   "b": jax.ShapeDtypeStruct((4,), jnp.float32)}})
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match="holds no \\['student'\\]"):
    checkpoint_lib.restore_trees(tmp_path / "teacher", {"student": abstract["ema"]})
  with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint at step 3"):
    checkpoint_lib.restore_trees(tmp_path / "teacher", abstract, step=3)
  with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint to read"):
    checkpoint_lib.restore_trees(tmp_path / "elsewhere", abstract)
