"""Multi-head self-attention block: q/k/v/o projections, optional QK-norm (Qwen3; Dehghani et al. 2023,
arXiv 2302.05442), RoPE, and `attention()` with any of its masks and backends.

A KV cache slots in between RoPE and `attention()` later: keys/values are rotated at their own positions, so
the cache stores rotated keys and the call passes `q_positions` / `kv_positions` (or `kv_lengths`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention import attention
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
  def __call__(self, x: jax.Array, angles: jax.Array | None = None, **attention_kwargs) -> jax.Array:
    """x: [B, S, E]; angles: [B, S, D/2] (or broadcastable) or None for no RoPE; `attention_kwargs` are passed
    to `attention()` (causal, q_segment_ids, kv_segment_ids, kv_mask, kv_lengths, mask, q_positions,
    kv_positions, scale). Returns [B, S, E]."""
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
    # Keep q/k/v in one dtype for attention(): the norms may promote when dtype is None.
    q, k, v = (t.astype(v.dtype) for t in (q, k, v))
    out = attention(q, k, v, backend=self.backend, **attention_kwargs)
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    return Dense(embed, axes=("heads", "embed"), use_bias=self.out_bias, name="o", **kw)(out)
