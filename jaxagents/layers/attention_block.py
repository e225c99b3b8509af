"""Multi-head self-attention block: q/k/v/o projections, optional QK-norm (Qwen3; Dehghani et al. 2023,
arXiv 2302.05442), RoPE, and `attention()` with any of its masks and backends.

With a `KVCache` the block writes its rotated keys and values at slot `cache_index` and attends over the whole
cache; causality is then by cache slot (`q_positions = cache_index + arange(S)`, `kv_positions = arange(S_max)`
unless given), and the caller masks empty or padded slots with `kv_mask: [B, S_max]`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention import attention
from jaxagents.layers.kv_cache import KVCache, update_cache
from jaxagents.layers.linear import Dense
from jaxagents.layers.norms import RMSNorm
from jaxagents.layers.rotary import apply_rope

Dtype = Any


class SelfAttention(nn.Module):
  """Self-attention over x: [B, S, E] with Hq query heads and Hk key/value heads of width D.

  Attributes:
    num_heads: Hq.
    num_kv_heads: Hk (Hq % Hk == 0; Hk < Hq is GQA).
    head_dim: D.
    qkv_bias: biases on q/k/v (Qwen2 / Qwen2-VL: True).
    out_bias: bias on o.
    qk_norm: RMSNorm over head_dim on q and k before RoPE (Qwen3: True), submodules 'q_norm', 'k_norm'.
    norm_eps: eps of the QK norms.
    rope_style: 'half' or 'interleaved' (see `apply_rope`).
    rope_compute_dtype: None (HF text semantics) or jnp.float32 (rotate in fp32, HF vision semantics).
    backend: attention backend ('xla', 'cudnn', 'auto', ...).
    dtype / param_dtype: compute and storage dtypes.
  Submodules 'q' (kernel [E, Hq*D], axes ('embed', 'heads')), 'k' / 'v' ([E, Hk*D], ('embed', 'kv_heads')),
  'o' ([Hq*D, E], ('heads', 'embed')).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  norm_eps: float = 1e-6
  rope_style: str = "half"
  rope_compute_dtype: Dtype | None = None
  backend: str = "xla"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    angles: jax.Array | None = None,
    *,
    cache: KVCache | None = None,
    cache_index: jax.Array | int | None = None,
    **attention_kwargs,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """x: [B, S, E]; angles: [B, S, D/2] (or broadcastable) or None for no RoPE; `attention_kwargs` are passed
    to `attention()` (causal, q_segment_ids, kv_segment_ids, kv_mask, kv_lengths, mask, q_positions,
    kv_positions, scale). Returns [B, S, E], or `(out, updated cache)` when `cache` ([B, S_max, Hk, D]) is
    given, in which case `cache_index` (int or traced scalar) is the slot of x's first token."""
    if x.ndim != 3:
      raise ValueError(f"SelfAttention: `x` must have shape [B, S, E], got {x.shape}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"SelfAttention: `num_heads` ({self.num_heads}) must be a multiple of "
        f"`num_kv_heads` ({self.num_kv_heads})"
      )
    batch, length, embed = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = Dense(
      self.num_heads * self.head_dim, axes=("embed", "heads"), use_bias=self.qkv_bias, name="q", **kw
    )(x)
    k = Dense(
      self.num_kv_heads * self.head_dim, axes=("embed", "kv_heads"), use_bias=self.qkv_bias, name="k", **kw
    )(x)
    v = Dense(
      self.num_kv_heads * self.head_dim, axes=("embed", "kv_heads"), use_bias=self.qkv_bias, name="v", **kw
    )(x)
    q = q.reshape(batch, length, self.num_heads, self.head_dim)
    k = k.reshape(batch, length, self.num_kv_heads, self.head_dim)
    v = v.reshape(batch, length, self.num_kv_heads, self.head_dim)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))
    v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))
    if self.qk_norm:
      q = RMSNorm(eps=self.norm_eps, name="q_norm", **kw)(q)
      k = RMSNorm(eps=self.norm_eps, name="k_norm", **kw)(k)
    if angles is not None:
      q = apply_rope(q, angles, style=self.rope_style, compute_dtype=self.rope_compute_dtype)
      k = apply_rope(k, angles, style=self.rope_style, compute_dtype=self.rope_compute_dtype)
    compute_dtype = v.dtype  # the norms may promote q/k when dtype is None; the cache may store another dtype
    if cache is not None:
      if cache_index is None:
        raise ValueError("SelfAttention: `cache_index` is required with `cache` (the slot of x's first token)")
      cache = update_cache(cache, k, v, cache_index)
      k, v = cache.k, cache.v
      attention_kwargs.setdefault("q_positions", jnp.asarray(cache_index, jnp.int32) + jnp.arange(length))
      attention_kwargs.setdefault("kv_positions", jnp.arange(cache.max_length))
    q, k, v = (t.astype(compute_dtype) for t in (q, k, v))
    out = attention(q, k, v, backend=self.backend, **attention_kwargs)
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    out = Dense(embed, axes=("heads", "embed"), use_bias=self.out_bias, name="o", **kw)(out)
    return out if cache is None else (out, cache)
