"""Mesh construction and logical-axis rules."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxagents import sharding


def test_free_axis_takes_remaining_devices_and_tensor_is_fastest():
  mesh = sharding.make_mesh({"data": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert mesh.axis_names == sharding.MESH_AXES


@pytest.mark.parametrize("sizes, message", [
  ({"data": 3}, "multiply to 3"),
  ({"data": -1, "fsdp": -1}, "at most one axis"),
  ({"model": 2}, "unknown axis names"),
  ({"data": -1, "tensor": 3}, "not divisible"),
])
def test_bad_mesh_sizes_raise_clear_errors(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(sizes)


def test_logical_names_map_to_mesh_axes():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")), (8, 6))
      return x @ kernel

  abstract = jax.eval_shape(Tiny().init, jax.random.key(0), np.ones((2, 8), np.float32))
  shardings = sharding.logical_to_sharding(abstract, mesh)
  assert shardings["params"]["kernel"].spec == PartitionSpec("fsdp", "tensor")


def test_shard_batch_splits_over_data_parallel_axes():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = sharding.shard_batch({"x": np.arange(8 * 3).reshape(8, 3)}, mesh)
  assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"))
  assert {shard.data.shape for shard in batch["x"].addressable_shards} == {(2, 3)}
  with pytest.raises(ValueError, match="divisible by the data-parallel mesh size 4"):
    sharding.shard_batch({"x": np.zeros((6, 3))}, mesh)


def test_single_process_run_does_not_initialize_distributed(monkeypatch):
  for name in ("JAXAGENTS_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert sharding.maybe_initialize_distributed() is False


def _grpo_rows(prompts: int, group: int):
  """(model, params, ModelInputs) of `prompts` one-image prompts of the tiny Qwen3-VL, repeated into groups."""
  from jaxagents.models.qwen_vl.config import QwenVLConfig
  from jaxagents.models.qwen_vl.inputs import prepare_inputs
  from jaxagents.models.qwen_vl.model import QwenVL
  from tests.models.qwen_vl import tiny

  config = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  ids = np.array([[5 + p, tiny.VS, tiny.IMG, tiny.VE, 7] for p in range(prompts)], np.int32)
  pixels = np.random.default_rng(0).standard_normal((4 * prompts, config.vision.patch_dim)).astype(np.float32)
  inputs = prepare_inputs(config, ids, pixel_values=pixels, image_grid_thw=np.array([[1, 2, 2]] * prompts))
  model = QwenVL(config)
  params = jax.jit(model.init)(jax.random.key(0), *inputs.model_args())
  return model, sharding.unbox(params), inputs.repeat(group)


def test_shard_batch_leaves_global_model_inputs_as_they_are_on_every_host(monkeypatch):
  """A task's `prepare` shards its rollout (`rollouts.sample_groups`), and the train loop shards the prepared batch
  again. On host h > 0 the second call must not add h x prompts to `row_prompt` once more: the rows would read other
  prompts' vision features, and the update's log-probs would differ from the `old_logp` / `ref_logp` that `prepare`
  recomputed with the same parameters (what two processes showed as a non-zero KL at the first RL step)."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model, params, local = _grpo_rows(prompts=4, group=2)
  with sharding.active(mesh):
    rollout = sharding.shard_batch(local)  # one process: the global batch is this host's rows
    params = jax.device_put(params, sharding.replicated(mesh))
    expected, _ = jax.jit(model.apply)(params, *rollout.model_args())
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    batch = sharding.shard_batch({"inputs": rollout, "old_logp": jnp.zeros(rollout.input_ids.shape)})
    monkeypatch.undo()
    logits, _ = jax.jit(model.apply)(params, *batch["inputs"].model_args())
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
  np.testing.assert_array_equal(np.asarray(batch["inputs"].row_prompt), np.repeat(np.arange(4), 2))
  assert all(a is b for a, b in zip(jax.tree.leaves(batch["inputs"]), jax.tree.leaves(rollout), strict=True))


def test_shard_batch_refuses_model_inputs_half_global(monkeypatch):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, _, local = _grpo_rows(prompts=4, group=2)
  with sharding.active(mesh):
    mixed = dataclasses.replace(local, row_prompt=sharding.shard_batch(local.row_prompt))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="mixes global jax.Arrays with host-local arrays"):
      sharding.shard_batch(mixed)
