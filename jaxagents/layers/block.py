"""Pre-norm transformer block (GPT-2 / Llama layout; Xiong et al. 2020, arXiv 2002.04745):
`x = x + attn(attn_norm(x)); x = x + mlp(mlp_norm(x))`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention_block import SelfAttention
from jaxagents.layers.kv_cache import KVCache
from jaxagents.layers.mlp import MLP, GatedMLP
from jaxagents.layers.norms import LayerNorm, RMSNorm

Dtype = Any


def make_norm(kind: str, eps: float, dtype: Dtype | None, param_dtype: Dtype, name: str) -> nn.Module:
  """'rms' -> RMSNorm, 'layer' -> LayerNorm."""
  if kind == "rms":
    return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "layer":
    return LayerNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"make_norm: `norm` must be 'rms' or 'layer', got {kind!r}")


class TransformerBlock(nn.Module):
  """Pre-norm self-attention + MLP block on x: [B, S, E].

  Attributes:
    num_heads, num_kv_heads, head_dim: attention shape (see `SelfAttention`).
    mlp_dim: MLP hidden width.
    norm: 'rms' (Llama / Qwen) or 'layer' (ViT / CLIP / DiT).
    activation: MLP activation name (see `mlp.ACTIVATIONS`).
    gated_mlp: `GatedMLP` (SwiGLU when activation='silu') instead of the two-layer `MLP`.
    mlp_bias: biases in the MLP projections.
    qkv_bias, out_bias, qk_norm, rope_style, rope_compute_dtype, backend, sparse_configs: passed to
      `SelfAttention` (a call with `modality_ids` runs sparse attention, see there).
    norm_eps: eps of every norm in the block.
    dtype / param_dtype: compute and storage dtypes.
  Submodules 'attn_norm', 'attn', 'mlp_norm', 'mlp'.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  norm: str = "rms"
  activation: str = "silu"
  gated_mlp: bool = True
  mlp_bias: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  rope_style: str = "half"
  rope_compute_dtype: Dtype | None = None
  norm_eps: float = 1e-6
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
    **mask_kwargs,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """x: [B, S, E]; angles: [B, S, D/2] or None; `mask_kwargs` go to `attention()`. Returns [B, S, E], or
    `(x, updated cache)` when a `KVCache` is given (see `SelfAttention`)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    h = make_norm(self.norm, self.norm_eps, name="attn_norm", **kw)(x)
    h = SelfAttention(
      num_heads=self.num_heads,
      num_kv_heads=self.num_kv_heads,
      head_dim=self.head_dim,
      qkv_bias=self.qkv_bias,
      out_bias=self.out_bias,
      qk_norm=self.qk_norm,
      norm_eps=self.norm_eps,
      rope_style=self.rope_style,
      rope_compute_dtype=self.rope_compute_dtype,
      backend=self.backend,
      sparse_configs=self.sparse_configs,
      name="attn",
      **kw,
    )(h, angles, cache=cache, cache_index=cache_index, **mask_kwargs)
    if cache is not None:
      h, cache = h
    x = x + h.astype(x.dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    h = make_norm(self.norm, self.norm_eps, name="mlp_norm", **kw)(x)
    mlp_cls = GatedMLP if self.gated_mlp else MLP
    h = mlp_cls(self.mlp_dim, activation=self.activation, use_bias=self.mlp_bias, name="mlp", **kw)(h)
    x = x + h.astype(x.dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    return x if cache is None else (x, cache)
