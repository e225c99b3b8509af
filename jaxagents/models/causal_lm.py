"""A decoder-only language model composed from the shared layers (the quick start's model).

Token embedding, `num_layers` pre-norm `TransformerBlock`s (GQA self-attention with rotary embeddings,
SwiGLU MLP) scanned with `nn.scan` so compile time does not grow with depth, a final RMSNorm and a tied or
untied output projection: the Llama/Qwen2 text-decoder recipe at any size. A stacked KV cache (`init_cache`)
makes the same call a prefill or a one-token decode step, for `jaxagents.generation.generate`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents import layers
from jaxagents.layers.kv_cache import KVCache

REMAT_POLICIES = layers.REMAT_POLICIES  # re-exported: configs and tests name the policies from here


@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
  vocab_size: int
  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  mlp_dim: int = 128
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  remat: str = "none"  # one of REMAT_POLICIES
  attention_backend: str = "xla"


class _ScannedBlock(nn.Module):
  """A `TransformerBlock` with the (carry, x) -> (carry, y) signature `nn.scan` expects; the per-layer input and
  output is this layer's slice of the stacked KV cache (None without one)."""

  config: CausalLMConfig
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, cache, angles, kv_mask, cache_index):
    c = self.config
    out = layers.TransformerBlock(
      num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim,
      norm_eps=c.norm_eps, backend=c.attention_backend, dtype=self.dtype, name="block",
    )(x, angles, causal=True, kv_mask=kv_mask, cache=cache, cache_index=cache_index)
    return out if cache is not None else (out, None)


class CausalLM(nn.Module):
  """`__call__(tokens [B, S] int, positions [B, S] | None, mask [B, S] | None) -> logits [B, S, vocab] float32`.

  With a `KVCache` (`init_cache`) the same call is a prefill or a decode step and returns (logits, cache): the
  decoder protocol of `jaxagents.generation` (its inputs are `generation.TokenInputs`).
  """

  config: CausalLMConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    cache: KVCache | None = None,
    cache_index: jax.Array | int = 0,
    kv_mask: jax.Array | None = None,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """Logits for every input token.

    Args:
      tokens: [B, S] int.
      positions: [B, S] int RoPE positions (default: 0 .. S-1 in every row).
      mask: [B, S] bool, False at padding keys (default: none); ignored with a cache.
      cache: stacked `KVCache` [num_layers, B, S_max, Hk, D]: the tokens are written at `cache_index` and attend
        over the cache (causal by slot).
      cache_index: cache slot of tokens[:, 0] (shared by all rows: batched prompts are left-padded).
      kv_mask: [B, S_max] bool key mask over the cache; required with a cache.
    Returns:
      logits [B, S, vocab] float32, or (logits, updated cache) with a cache.
    """
    c = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens: expected shape [batch, length], got {tokens.shape}.")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if positions.shape != tokens.shape:
      raise ValueError(f"positions: expected {tokens.shape} like tokens, got {positions.shape}.")
    if cache is not None:
      if kv_mask is None or kv_mask.shape != (tokens.shape[0], cache.max_length):
        raise ValueError(
          f"kv_mask: with a cache, expected bool [B, S_max] = {(tokens.shape[0], cache.max_length)}, "
          f"got {None if kv_mask is None else kv_mask.shape}."
        )
      mask = kv_mask
    mask = None if mask is None else mask.astype(bool)
    embed = layers.Embed(c.vocab_size, c.embed_dim, dtype=self.dtype, name="embed")
    x = nn.with_logical_constraint(embed(tokens), ("activation_batch", "activation_length", "activation_embed"))
    angles = layers.rope_angles(positions, c.head_dim, c.rope_theta)

    block = layers.remat(_ScannedBlock, c.remat)
    x, cache = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=c.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, name="layers")(x, cache, angles, mask, cache_index)

    x = layers.RMSNorm(eps=c.norm_eps, dtype=self.dtype, name="final_norm")(x)
    if c.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = layers.Dense(c.vocab_size, axes=("embed", "vocab"), dtype=self.dtype, name="lm_head")(x)
    logits = logits.astype(jnp.float32)
    return logits if cache is None else (logits, cache)

  def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty stacked cache for `batch` rows of up to `max_length` tokens (prompt + generated)."""
    c = self.config
    return KVCache.zeros(batch, max_length, c.num_kv_heads, c.head_dim, dtype, num_layers=c.num_layers)
