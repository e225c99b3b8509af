"""Normalisation layers: RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467) and LayerNorm (Ba et al. 2016).

Both compute their statistics in float32 whatever the input dtype. `RMSNorm` follows HF `LlamaRMSNorm` /
`Qwen2RMSNorm` exactly: `y = scale * cast(x32 * rsqrt(mean(x32**2) + eps), x.dtype)` -- the cast back to the
input dtype happens *before* the multiply by the weight, which matters in bf16.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _norm_param(module: nn.Module, name: str, init, features: int) -> jax.Array:
  """A per-feature norm parameter `[E]` on the logical axis 'norm'."""
  return module.param(name, nn.with_logical_partitioning(init, ("norm",)), (features,), module.param_dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm over the last axis.

  Attributes:
    eps: added to the mean square before the rsqrt.
    use_scale: learn a per-feature weight `scale: [E]` (axis 'norm'), initialised to ones.
    dtype: compute dtype of the output multiply; None keeps the promoted input/param dtype.
    param_dtype: dtype of `scale`.
  """

  eps: float = 1e-6
  use_scale: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., E]."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    # HF order: back to the input dtype first, then multiply by the weight.
    normed = normed.astype(x.dtype)
    if not self.use_scale:
      return normed.astype(self.dtype or x.dtype)
    scale = _norm_param(self, "scale", nn.initializers.ones_init(), x.shape[-1])
    normed, scale = nn.dtypes.promote_dtype(normed, scale, dtype=self.dtype)
    return normed * scale


class LayerNorm(nn.Module):
  """Layer norm over the last axis, statistics and affine in float32 (as torch's fused kernel does).

  Note the default `eps=1e-6` (ViT/SigLIP/DiT convention); torch's default is 1e-5.

  Attributes:
    eps: added to the variance.
    use_bias: learn `bias: [E]` (axis 'norm'), initialised to zeros.
    use_scale: learn `scale: [E]` (axis 'norm'), initialised to ones.
    dtype: output dtype; None keeps the input dtype.
    param_dtype: dtype of `scale` and `bias`.
  """

  eps: float = 1e-6
  use_bias: bool = True
  use_scale: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., E]."""
    features = x.shape[-1]
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + self.eps)
    if self.use_scale:
      y = y * _norm_param(self, "scale", nn.initializers.ones_init(), features).astype(jnp.float32)
    if self.use_bias:
      y = y + _norm_param(self, "bias", nn.initializers.zeros_init(), features).astype(jnp.float32)
    return y.astype(self.dtype or x.dtype)
