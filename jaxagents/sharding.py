"""Device meshes and logical-axis rules: the one place that maps parameter names to devices.

Modules annotate every parameter with logical axis names (`nn.with_logical_partitioning`) and constrain
activations with `nn.with_logical_constraint`; nothing else in the library names a mesh axis. This module
builds a `jax.sharding.Mesh` with the axes `data`, `fsdp` and `tensor` (any of them of size 1) and maps
logical names to those axes with one rules table, as MaxText's `logical_axis_rules` does.

Multi-host runs call `maybe_initialize_distributed()` first: under SLURM, on GKE TPU slices, or with
`JAXAGENTS_DISTRIBUTED=1` (what `tpu/launch.sh` sets) / `JAX_COORDINATOR_ADDRESS` set, it calls
`jax.distributed.initialize()`, whose cluster auto-detection fills in the coordinator, process count and
process id (see docs/multihost.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (MaxText's naming). Weights are split along their `embed` dimension over fsdp
# (ZeRO-3 style) and along heads/mlp/vocab over tensor (Megatron style). Activations have names of their own:
# their batch is split over every data-parallel axis, their heads over tensor, and their embedding dimension is
# whole on each device (fsdp gathers weights, never activations).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("activation_batch", ("data", "fsdp")),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_kv_heads", "tensor"),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("norm", None),
  ("layers", None),  # the stacked axis of `nn.scan`ned blocks
  # KV caches (`layers.kv_cache.CACHE_AXES`): rows follow the batch, heads follow the attention heads.
  ("cache_batch", ("data", "fsdp")),
  ("cache_sequence", None),
  ("cache_heads", "tensor"),
  ("cache_kv", None),
)


_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar("jaxagents_mesh", default=None)


@contextlib.contextmanager
def active(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Iterator[None]:
  """Runs the block under `mesh` and `rules`: the mesh is JAX's current one (so `nn.with_logical_constraint` in a
  model becomes a sharding constraint), `rules` are flax's `nn.logical_axis_rules`, and both are what
  `shard_batch`, `host_rows` and `current` use when not given. The train loop runs everything inside one, so a
  task's `prepare`, `evaluate` and `write_samples` shard their arrays like the loop."""
  set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    with set_mesh(mesh), nn.logical_axis_rules(list(rules)):
      yield
  finally:
    _ACTIVE.reset(token)


def current() -> tuple[Mesh, tuple]:
  """The (mesh, rules) of the innermost `active` block; outside one, a 1-device mesh of the first local device."""
  value = _ACTIVE.get()
  if value is None:
    return make_mesh({}, jax.local_devices()[:1]), DEFAULT_RULES
  return value


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when this process is one of several; returns whether it did.

  Detection is deliberately explicit: `JAXAGENTS_DISTRIBUTED=1`, a coordinator address in the environment,
  a SLURM job step with more than one task, or a GKE TPU slice (`TPU_WORKER_HOSTNAMES` lists several hosts;
  gcloud TPU VMs do not set it, so `tpu/launch.sh` sets `JAXAGENTS_DISTRIBUTED=1`). A manual launch passes
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (jax itself reads only the first). A
  single-process run never initializes, so laptops and CI are unaffected.
  """
  env = os.environ
  multi_task_slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  multi_host_tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  wanted = (
    env.get("JAXAGENTS_DISTRIBUTED") == "1"
    or "JAX_COORDINATOR_ADDRESS" in env
    or multi_task_slurm
    or multi_host_tpu
  )
  if not wanted or jax.distributed.is_initialized():
    return False
  kwargs = {}
  if "JAX_NUM_PROCESSES" in env:
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if "JAX_PROCESS_ID" in env:
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh with axes `('data', 'fsdp', 'tensor')` from sizes such as `{'data': -1, 'tensor': 2}`.

  Missing axes have size 1; at most one axis may be -1 and takes the devices that remain. The product must
  equal the number of devices. Devices are laid out with `tensor` fastest so that tensor-parallel groups
  stay within a host (and within an ICI/NVLink island).
  """
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axis names {sorted(unknown)}; expected a subset of {MESH_AXES}.")
  devices = list(jax.devices() if devices is None else devices)
  sizes = {name: int(axis_sizes.get(name, 1)) for name in MESH_AXES}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {free} in {dict(axis_sizes)}.")
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(axis_sizes)}.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(
        f"mesh: {len(devices)} devices are not divisible by the fixed axes {dict(axis_sizes)} (product {fixed})."
      )
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
      f"mesh: axis sizes {sizes} multiply to {math.prod(sizes.values())}, but there are {len(devices)} devices."
    )
  shape = tuple(sizes[name] for name in MESH_AXES)
  if len(devices) > 1 and devices == list(jax.devices()):
    device_array = mesh_utils.create_device_mesh(shape, devices)
  else:
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def logical_to_sharding(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """Maps a pytree of boxed params (or abstract values) to `NamedSharding`s via their logical axis names.

  Leaves without logical metadata (step counters, RNG keys, optimizer scalars) are replicated.
  """
  logical_specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def unbox(tree: Any) -> Any:
  """Strips logical-axis metadata boxes, without adding sharding constraints (safe outside `jit` too)."""
  return jax.tree.map(
    lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else nn.meta.unbox(x),
    tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES, axis: int = 0) -> NamedSharding:
  """Sharding for host batches: dimension `axis` (the batch) over the data-parallel axes, the others whole."""
  batch_axes = nn.logical_to_mesh_axes(("activation_batch",), list(rules))[0]
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), batch_axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_axes(batch: Any) -> Any:
  """The batch axis of every leaf of `batch`: 0, except inside objects with a `batch_axes()` method (e.g. Qwen-VL's
  `ModelInputs`, whose M-RoPE positions are [3, B, L]), which give their own."""
  has_axes = lambda node: hasattr(node, "batch_axes") and not isinstance(node, type)
  return jax.tree.map(lambda node: node.batch_axes() if has_axes(node) else 0, batch, is_leaf=has_axes)


def _data_parallel_size(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> int:
  axes = nn.logical_to_mesh_axes(("activation_batch",), list(rules))[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[axis] for axis in axes)


def shard_batch(batch: Any, mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
  """Turns each host's local numpy batch into global arrays sharded over the data-parallel axes.

  Every host passes its own rows (`batch_size` per host); the global batch is their concatenation along each
  leaf's batch axis (`batch_axes`), which is what `jax.make_array_from_process_local_data` assembles on multi-host
  runs. Leaves that are already `jax.Array`s (computed under the mesh, e.g. by a rollout) are left as they are.
  Objects with a `to_global(process_index, process_count)` method (Qwen-VL's `ModelInputs`, whose rows index their
  prompts) are turned into their part of the global batch first, when they hold this host's rows (numpy leaves);
  one already made of global `jax.Array`s is left as it is too, so sharding a batch twice (a task's `prepare` on
  its rollout, then the train loop on the prepared batch) does not shift its indices a second time on every host
  but the first. `mesh` and `rules` default to `current()`.
  """
  mesh, rules = _mesh_and_rules(mesh, rules)
  data_parallel = _data_parallel_size(mesh, rules)
  if jax.process_count() > 1:  # host-local indices (e.g. a row's prompt) become indices into the global batch
    is_part = lambda node: hasattr(node, "to_global") and not isinstance(node, type)
    batch = jax.tree.map(lambda node: node.to_global(jax.process_index(), jax.process_count())
                         if is_part(node) and _is_host_local(node) else node, batch, is_leaf=is_part)

  def put(x, axis):
    if isinstance(x, jax.Array):
      return x
    x = np.asarray(x)
    global_batch = x.shape[axis] * jax.process_count()
    if global_batch % data_parallel:
      raise ValueError(
        f"batch: the global batch size {global_batch} must be divisible by the data-parallel mesh size "
        f"{data_parallel} (mesh {dict(mesh.shape)}; a leaf of shape {x.shape}, batch axis {axis})."
      )
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rules, axis), x)

  return jax.tree.map(put, batch, batch_axes(batch))


def _is_host_local(part: Any) -> bool:
  """Whether `part` (an object with `to_global`) holds one host's rows (numpy) rather than global `jax.Array`s."""
  on_mesh = [isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(part)]
  if any(on_mesh) and not all(on_mesh):
    raise ValueError(
      f"batch: a {type(part).__name__} mixes global jax.Arrays with host-local arrays, so it is unclear whether its "
      f"indices count this host's rows or the global batch's; shard all of it at once (`shard_batch`)."
    )
  return not any(on_mesh)


def host_rows(batch: Any, mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
  """The inverse of `shard_batch`: this host's rows of global arrays, as numpy (all of them on one host).

  Rewards and other host-side scoring read a rollout's tokens this way, each host for its own rows.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, batch)
  mesh, rules = _mesh_and_rules(mesh, rules)
  from jax.experimental import multihost_utils

  def local(x, axis):
    spec = batch_sharding(mesh, rules, axis).spec
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))

  return jax.tree.map(local, batch, batch_axes(batch))


def _mesh_and_rules(mesh, rules):
  if mesh is None:
    mesh, default_rules = current()
    return mesh, default_rules if rules is None else rules
  return mesh, DEFAULT_RULES if rules is None else rules


def data_parallel_size(mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None) -> int:
  """The number of batch shards (the product of the mesh axes `activation_batch` maps to)."""
  mesh, rules = _mesh_and_rules(mesh, rules)
  return _data_parallel_size(mesh, rules)
