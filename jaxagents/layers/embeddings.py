"""Token embedding with tied-logit `attend`, and the sinusoidal timestep embedding of diffusion models
(Vaswani et al. 2017 Sec. 3.5; DiT, Peebles & Xie 2023, `TimestepEmbedder.timestep_embedding`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class Embed(nn.Module):
  """Lookup table `embedding: [num_embeddings, features]`, logical axes ('vocab', 'embed').

  Attributes:
    num_embeddings: vocabulary size V.
    features: embedding width E.
    dtype: dtype of the looked-up vectors / logits; None keeps `param_dtype`.
    param_dtype: storage dtype.
    embedding_init: initialiser (default N(0, 1/E) fan-in scaling, as `nn.Embed`).
  """

  num_embeddings: int
  features: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  embedding_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
      (self.num_embeddings, self.features),
      self.param_dtype,
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids: [...] int -> [..., E]."""
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"Embed: `ids` must be an integer array, got dtype {ids.dtype}")
    (embedding,) = nn.dtypes.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
    return jnp.take(embedding, ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied output logits x @ E^T. x: [..., E] -> [..., V]."""
    x, embedding = nn.dtypes.promote_dtype(x, self.embedding, dtype=self.dtype)
    return jnp.einsum("...e,ve->...v", x, embedding)


def sinusoidal_timestep_embedding(
  t: jax.Array,
  dim: int,
  max_period: float = 10000.0,
  flip_sin_to_cos: bool = True,
  downscale_freq_shift: float = 0.0,
) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, computed in float32.

  With `half = dim // 2`, `freqs_k = exp(-log(max_period) * k / (half - downscale_freq_shift))` and
  `args = t * freqs`: `flip_sin_to_cos=True` returns `[cos(args), sin(args)]` (DiT / ADM convention, the
  default), False returns `[sin(args), cos(args)]`. `downscale_freq_shift=0` is DiT; diffusers'
  `get_timestep_embedding` defaults to 1 and most recent pipelines pass 0 -- use the value of the checkpoint
  being matched. Odd `dim` is padded with one zero column.

  Args:
    t: [N] timesteps (any real dtype).
    dim: output width.
    max_period: controls the lowest frequency.
  Returns:
    [N, dim] float32.
  """
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f"sinusoidal_timestep_embedding: `t` must have shape [N], got {t.shape}")
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
  emb = jnp.concatenate(parts, axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb
