"""Argument checks shared by the RL losses and advantages: named errors with the expected and actual shape/dtype."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def canonical(name: str) -> str:
  return name.replace("-", "_").lower()


def lookup(registry: Mapping[str, Any], name: str, argument: str) -> Any:
  key = canonical(name)
  if key not in registry:
    raise ValueError(f"{argument}: expected one of {sorted(registry)}, got {name!r}.")
  return registry[key]


def float_array(x: Any, name: str) -> Array:
  x = jnp.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
    raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}.")
  return x.astype(jnp.float32)


def bool_mask(mask: Any, name: str, shape: tuple[int, ...]) -> Array:
  mask = jnp.asarray(mask)
  if mask.shape != shape:
    raise ValueError(f"{name}: expected shape {shape}, got {mask.shape}.")
  numeric = jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype, jnp.floating)
  if not (mask.dtype == jnp.bool_ or numeric):
    raise ValueError(f"{name}: expected bool or 0/1 values, got dtype {mask.dtype}.")
  return mask.astype(bool) if mask.dtype == jnp.bool_ else mask != 0


def check_shape(x: Array, name: str, shape: tuple[int, ...]) -> None:
  if x.shape != shape:
    raise ValueError(f"{name}: expected shape {shape}, got {x.shape}.")


def check_rank(x: Array, name: str, rank: int, what: str) -> None:
  if x.ndim != rank:
    raise ValueError(f"{name}: expected {what} (rank {rank}), got shape {x.shape}.")
