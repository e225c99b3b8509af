"""Rematerialisation of scanned blocks by policy name (maxtext-style `remat_policy` in configs)."""

import flax.linen as nn
import jax

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat(module_cls: type[nn.Module], policy: str) -> type[nn.Module]:
  """`module_cls` wrapped in `nn.remat` with the named policy ('none' returns it unchanged)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat: expected one of {sorted(REMAT_POLICIES)}, got {policy!r}.")
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=False)
