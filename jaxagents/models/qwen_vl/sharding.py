"""How Qwen-VL params and caches spread over the (data, fsdp, tensor) mesh (logical names as in maxtext
`src/maxtext/configs/base.yml` `logical_axis_rules`).

The text decoder uses the library's logical names as they are (`jaxagents.sharding.DEFAULT_RULES`: embed over
fsdp; heads, kv_heads, mlp and vocab over tensor; the KV cache's heads over tensor). The vision tower is built
from the same shared layers, so its params carry the same names; here they are renamed `vit_<name>` so that
they get rules of their own, replicated by default as in maxtext (0.6-0.7B params; Qwen2.5-VL's ViT MLP width
3420 is not divisible by 8). Pass other `vit_*` rules to shard the tower too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, PartitionSpec

from jaxagents.sharding import DEFAULT_RULES

VISION_RULES: tuple[tuple[str, Any], ...] = tuple(
  (f"vit_{name}", None) for name in ("embed", "heads", "kv_heads", "mlp", "norm", "vocab", "patch", "layers")
)
RULES: tuple[tuple[str, Any], ...] = (*DEFAULT_RULES, *VISION_RULES)


def logical_specs(abstract_variables: Any) -> Any:
  """PartitionSpecs of logical names for boxed (abstract) variables, with the vision tower's names prefixed."""
  specs = nn.get_partition_spec(abstract_variables)

  def rename(path, spec):
    keys = [getattr(p, "key", None) for p in path]
    if "visual" in keys and isinstance(spec, PartitionSpec):
      return PartitionSpec(*(None if n is None else f"vit_{n}" for n in spec))
    return spec

  return jax.tree_util.tree_map_with_path(rename, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(abstract_variables: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES) -> Any:
  """`NamedSharding`s for `jax.eval_shape(QwenVL(config).init, ...)` output, checked for divisibility.

  Raises ValueError naming the param, its shape and the mesh axes when a dimension does not divide.
  """
  shardings = nn.logical_to_mesh_sharding(logical_specs(abstract_variables), mesh, list(rules))
  values = nn.meta.unbox(abstract_variables)
  for (path, sharding), leaf in zip(jax.tree_util.tree_flatten_with_path(shardings)[0], jax.tree.leaves(values),
                                    strict=True):
    for dim, axes in zip(leaf.shape, sharding.spec):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      size = 1
      for axis in axes:
        size *= mesh.shape[axis]
      if dim % size:
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        raise ValueError(
          f"sharding: param {name} of shape {leaf.shape} has a dimension of {dim} that mesh axes {axes} "
          f"(size {size}) do not divide; change the mesh or map its logical axis to None in the rules."
        )
  return shardings
