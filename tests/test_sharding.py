"""Mesh construction and logical-axis rules."""

import flax.linen as nn
import jax
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
