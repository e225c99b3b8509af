"""Multi-head self-attention block: q/k/v/o projections, optional QK-norm (Qwen3; Dehghani et al. 2023,
arXiv 2302.05442), RoPE, and `attention()` with any of its masks and backends.

With a `KVCache` the block writes its rotated keys and values at slot `cache_index` and attends over the whole
cache; causality is then by cache slot (`q_positions = cache_index + arange(S)`, `kv_positions = arange(S_max)`
unless given), and the caller masks empty or padded slots with `kv_mask: [B, S_max]`.

MMInference sparse prefill (arXiv 2504.16083): a block built with `sparse_configs`
runs a call that passes `modality_ids` with `attention(backend='sparse')` under
`sparse_configs[sparse_index]` (a `jax.lax.switch` when the index is traced, e.g. a scanned layer index); calls
without `modality_ids` (decode steps) use `backend`. A sparse call with a cache must be the prefill at slot 0:
it attends over the first S cache slots only (the later ones are empty and causally hidden anyway).

The rotated q and the new k, v ([B, S, H, D], as `attention` sees them) are sown into the 'attention_inputs'
collection when the caller applies with `mutable=['attention_inputs']` (never at init, so `init` returns
params only); scanned models stack them on the layer axis.
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
    backend: attention backend ('xla', 'cudnn', 'auto', ...) of dense calls.
    sparse_configs: one-layer `SparseAttentionConfig`s a sparse call picks from by `sparse_index` (module
      docstring); empty: no sparse calls.
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
  sparse_configs: tuple = ()
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
    modality_ids: jax.Array | None = None,
    sparse_index: jax.Array | int = 0,
    **attention_kwargs,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """x: [B, S, E]; angles: [B, S, D/2] (or broadcastable) or None for no RoPE; `attention_kwargs` are passed
    to `attention()` (causal, q_segment_ids, kv_segment_ids, kv_mask, kv_lengths, mask, q_positions,
    kv_positions, scale). Returns [B, S, E], or `(out, updated cache)` when `cache` ([B, S_max, Hk, D]) is
    given, in which case `cache_index` (int or traced scalar) is the slot of x's first token.

    `modality_ids` [B, S] int makes this a sparse call (module docstring) under `sparse_configs[sparse_index]`
    (int or traced int32 scalar)."""
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
    if not self.is_initializing():
      self.sow("attention_inputs", "qkv", tuple(t.astype(compute_dtype) for t in (q, k, v)))
    sparse = modality_ids is not None
    if sparse and not self.sparse_configs:
      raise ValueError("SelfAttention: `modality_ids` asks for sparse attention, but `sparse_configs` is empty")
    if cache is not None:
      if cache_index is None:
        raise ValueError("SelfAttention: `cache_index` is required with `cache` (the slot of x's first token)")
      cache = update_cache(cache, k, v, cache_index)
      k, v = cache.k, cache.v
      if sparse:  # the prefill at slot 0: its own S slots, read back from the cache to keep the cache's rounding
        k, v = k[:, :length], v[:, :length]
        if attention_kwargs.get("kv_mask") is not None:
          attention_kwargs["kv_mask"] = attention_kwargs["kv_mask"][:, :length]
      else:
        attention_kwargs.setdefault("q_positions", jnp.asarray(cache_index, jnp.int32) + jnp.arange(length))
        attention_kwargs.setdefault("kv_positions", jnp.arange(cache.max_length))
    q, k, v = (t.astype(compute_dtype) for t in (q, k, v))
    if sparse:
      out = self._sparse_attention(q, k, v, modality_ids, sparse_index, attention_kwargs)
    else:
      out = attention(q, k, v, backend=self.backend, **attention_kwargs)
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    out = Dense(embed, axes=("heads", "embed"), use_bias=self.out_bias, name="o", **kw)(out)
    return out if cache is None else (out, cache)

  def _sparse_attention(self, q, k, v, modality_ids, sparse_index, attention_kwargs) -> jax.Array:
    """`attention(backend='sparse')` under `sparse_configs[sparse_index]`; a traced index switches between them."""

    def branch(config):
      return lambda q, k, v: attention(
        q, k, v, backend="sparse", sparse_config=config, modality_ids=modality_ids, **attention_kwargs
      )

    if isinstance(sparse_index, int):
      if not 0 <= sparse_index < len(self.sparse_configs):
        raise ValueError(
          f"SelfAttention: `sparse_index` must be in [0, {len(self.sparse_configs)}), got {sparse_index}"
        )
      return branch(self.sparse_configs[sparse_index])(q, k, v)
    if len(self.sparse_configs) == 1:
      return branch(self.sparse_configs[0])(q, k, v)
    return jax.lax.switch(sparse_index, [branch(config) for config in self.sparse_configs], q, k, v)
