"""Adaptive LayerNorm modulation of DiT (Peebles & Xie 2023, arXiv 2212.09748, Sec. 3.2 "adaLN-Zero").

`AdaLNModulation` maps the conditioning vector c to `num_chunks` vectors with `Linear(SiLU(c))` (DiT uses 6:
shift/scale/gate for attention and for the MLP); zero-initialising that linear makes every DiT block start as
the identity. `modulate(x, shift, scale) = x * (1 + scale) + shift`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.linear import Dense

Dtype = Any


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x: [B, N, E]; shift, scale: [B, E] -> x * (1 + scale[:, None]) + shift[:, None]."""
  if shift.shape != scale.shape or shift.ndim != x.ndim - 1:
    raise ValueError(
      f"modulate: `shift` and `scale` must both have shape [B, E] for x {x.shape}, "
      f"got {shift.shape}, {scale.shape}"
    )
  return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNModulation(nn.Module):
  """c: [B, C] -> `num_chunks` arrays of [B, features] = split(Dense(silu(c))).

  Attributes:
    num_chunks: number of modulation vectors (DiT: 6).
    features: width of each chunk; None uses C.
    zero_init: zero kernel and bias (adaLN-Zero).
    use_bias: bias on the projection.
    dtype / param_dtype: compute and storage dtypes.
  Submodule 'proj' (kernel [C, num_chunks * features], axes ('embed', 'mlp'): the output is 6x wider than the
  model, so it is sharded like an MLP up-projection).
  """

  num_chunks: int
  features: int | None = None
  zero_init: bool = True
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array) -> list[jax.Array]:
    """cond: [B, C] -> list of num_chunks arrays [B, features]."""
    features = self.features or cond.shape[-1]
    kernel_init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.lecun_normal()
    out = Dense(
      self.num_chunks * features,
      axes=("embed", "mlp"),
      use_bias=self.use_bias,
      kernel_init=kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="proj",
    )(jax.nn.silu(cond))
    return jnp.split(out, self.num_chunks, axis=-1)
