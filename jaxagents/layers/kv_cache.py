"""Preallocated key/value cache for autoregressive decoding under `jit` (static shapes).

The cache of one attention layer is a `KVCache(k, v)` of shape [B, S_max, Hk, D]; a model stacks one per layer
on a leading axis ([L, B, S_max, Hk, D]) so that it rides through `nn.scan` like the stacked parameters. Keys
are stored *after* RoPE, so a cached key never needs its position again. A step writes its S new keys at one
slot offset shared by the whole batch (`cache_index`): batched prompts are left-padded, so every row's next
token goes to the same slot and padding is masked by `kv_mask`, never by moving data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Dtype = Any

CACHE_AXES = ("cache_batch", "cache_sequence", "cache_heads", "cache_kv")


class KVCache(NamedTuple):
  """k, v: [..., B, S_max, Hk, D] (a leading layer axis when stacked)."""

  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_length: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.bfloat16,
            num_layers: int | None = None) -> KVCache:
    """An empty cache; with `num_layers` the stacked [L, B, S_max, Hk, D] form a scanned model carries."""
    shape = (batch, max_length, num_kv_heads, head_dim)
    if num_layers is not None:
      shape = (num_layers, *shape)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  @property
  def max_length(self) -> int:
    return self.k.shape[-3]


def update_cache(cache: KVCache, k: jax.Array, v: jax.Array, cache_index: jax.Array | int) -> KVCache:
  """Writes k, v: [B, S, Hk, D] into slots [cache_index, cache_index + S) of a one-layer cache [B, S_max, Hk, D].

  `cache_index` may be traced (a decode loop counter); the write is a `dynamic_update_slice`, so a step costs
  O(S) writes and no recompilation. Values are cast to the cache dtype.
  """
  if cache.k.ndim != 4:
    raise ValueError(f"update_cache: `cache.k` must be one layer's [B, S_max, Hk, D], got {cache.k.shape}")
  if k.shape[0] != cache.k.shape[0] or k.shape[2:] != cache.k.shape[2:] or k.shape[1] > cache.k.shape[1]:
    raise ValueError(
      f"update_cache: `k` must be [B, S <= S_max, Hk, D] matching the cache {cache.k.shape}, got {k.shape}"
    )
  index = jnp.asarray(cache_index, jnp.int32)
  k_cache = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), index, axis=1)
  v_cache = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), index, axis=1)
  return KVCache(k_cache, v_cache)
