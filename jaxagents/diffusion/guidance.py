"""Classifier-free guidance for velocity fields, with the Lens pipeline's per-token norm rescale.

CFG (arXiv 2207.12598 eq. 6, written for velocities, its w being w - 1 here): v = u + w (c - u), c and u the
conditional and unconditional velocities, w the guidance scale (w = 1 is the conditional model, w = 0 the
unconditional one).

Norm rescale (diffusers `src/diffusers/pipelines/lens/pipeline_lens.py`, `LensPipeline.__call__`, from the Lens pull
request, commit ecb3c4e79a; not in diffusers releases up to 0.42): every token's guided velocity is scaled back to the
norm of its conditional velocity along the channel axis, v <- v ||c|| / ||v||, and left as it is where ||v|| = 0 (the
pipeline clamps ||v|| at 1e-12 before dividing). It keeps large scales (the pipeline's default is w = 4) from
inflating the velocity, in the spirit of the guidance rescale of arXiv 2305.08891 Sec. 3.4 (which rescales the whole
sample by its standard deviation and blends; Lens rescales every token, fully). The pipeline applies it at every
step, at w = 1 too.

Batched CFG: the Lens pipeline runs one model call per step on the latents repeated twice, the text features of the
prompt first and of the negative prompt second (`torch.cat([positive, negative])`), then splits the output with
`chunk(2)`. `batched_cfg` wraps such a call into a velocity field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Velocity = Callable[[Array, Array], Array]


def cfg_velocity(cond: Array, uncond: Array, guidance_scale: Any, *, renorm: bool = True, axis: int = -1) -> Array:
  """u + w (c - u), optionally rescaled per token to ||c|| along `axis` (the channel axis).

  cond, uncond: [..., C] velocities of the same shape; guidance_scale: a float or a 0-d array (may be traced).
  Computed as c + (w - 1)(c - u), equal to u + w (c - u) in exact arithmetic, so that w = 1 returns `cond` bit for bit
  (with renorm the scale is then ||c|| / ||c|| = 1 exactly). The output has the promoted dtype of the inputs, at
  least float32.
  """
  cond, uncond = jnp.asarray(cond), jnp.asarray(uncond)
  if cond.shape != uncond.shape:
    raise ValueError(f"uncond: expected the shape of cond {cond.shape}, got {uncond.shape}.")
  if cond.ndim == 0:
    raise ValueError("cond: expected an array with a channel axis, got a scalar.")
  dtype = jnp.promote_types(jnp.result_type(cond, uncond), jnp.float32)
  cond, uncond = cond.astype(dtype), uncond.astype(dtype)
  guided = cond + (jnp.asarray(guidance_scale, dtype) - 1) * (cond - uncond)
  if not renorm:
    return guided
  cond_norm = jnp.linalg.norm(cond, axis=axis, keepdims=True)
  guided_norm = jnp.linalg.norm(guided, axis=axis, keepdims=True)
  scale = jnp.where(guided_norm > 0, cond_norm / jnp.maximum(guided_norm, 1e-12), 1)
  return guided * scale


def batched_cfg(velocity_pair: Velocity, guidance_scale: Any, *, renorm: bool = True, axis: int = -1) -> Velocity:
  """A guided velocity field that calls `velocity_pair` once per evaluation, on the batch doubled.

  velocity_pair(x2 [2B, ...], sigma) -> v2 [2B, ...]: rows :B conditioned on the prompts, rows B: on the negative (or
  empty) prompts, as the Lens pipeline concatenates them. The returned field maps x [B, ...] to
  `cfg_velocity(v2[:B], v2[B:], guidance_scale)`. At w = 1 call the conditional model alone instead: this wrapper
  still pays for the unconditional half.
  """
  def velocity(x: Array, sigma: Array) -> Array:
    both = velocity_pair(jnp.concatenate([x, x], axis=0), sigma)
    if both.shape[0] != 2 * x.shape[0]:
      raise ValueError(f"velocity_pair: expected an output batch of {2 * x.shape[0]} (cond then uncond), got "
                       f"shape {both.shape}.")
    cond, uncond = jnp.split(both, 2, axis=0)
    return cfg_velocity(cond, uncond, guidance_scale, renorm=renorm, axis=axis)

  return velocity
