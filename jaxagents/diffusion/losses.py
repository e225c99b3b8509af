"""Flow-matching training: noising, the rectified-flow velocity loss over masked tokens, caption dropout, EMA.

Convention (rectified flow, arXiv 2209.03003 Eq. 1; SD3, arXiv 2403.03206 Sec. 2): x_sigma = (1 - sigma) x0 +
sigma eps and the model regresses v = eps - x0 at x_sigma, the conditional flow-matching objective

    L = E_{x0, eps, sigma} || v_theta(x_sigma, sigma, c) - (eps - x0) ||^2          (SD3 Eq. 2 with w = 1),

here averaged over the valid tokens of each sample (a token mask, for latents padded to a common length) and over
the batch, each sample weighted equally whatever its token count. Caption dropout (replacing the text condition
by the empty one for a fraction of samples, so one network also learns the unconditional velocity that
classifier-free guidance needs; arXiv 2207.12598 Sec. 3.2) and the exponential moving average of the weights that
samples are drawn from (as in the DiT and SD3 training recipes) complete the loop's needs. Sigma sampling is
`schedules.sample_training_sigmas`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def _per_sample(sigma: Array, like: Array) -> Array:
  """sigma [B] (or a scalar) as float32 broadcastable against `like` [B, ...]."""
  sigma = jnp.asarray(sigma, jnp.float32)
  if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != like.shape[0]):
    raise ValueError(f"sigma: expected a scalar or shape ({like.shape[0]},), got shape {sigma.shape}.")
  return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))


def noised(x0: Array, noise: Array, sigma: Array) -> Array:
  """x_sigma = (1 - sigma) x0 + sigma noise, computed in float32 and cast to x0.dtype; sigma [B] or scalar."""
  if noise.shape != x0.shape:
    raise ValueError(f"noise: expected the shape of x0 {x0.shape}, got {noise.shape}.")
  s = _per_sample(sigma, x0)
  return ((1.0 - s) * x0.astype(jnp.float32) + s * noise.astype(jnp.float32)).astype(x0.dtype)


def velocity_target(x0: Array, noise: Array) -> Array:
  """v = noise - x0 (float32)."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def flow_matching_loss(
  velocity: Array, x0: Array, noise: Array, token_mask: Array | None = None
) -> tuple[Array, dict[str, Array]]:
  """Mean squared error between the predicted velocity and noise - x0.

  Args:
    velocity, x0, noise: [B, N, C] latent tokens (any trailing shape after [B, N] works).
    token_mask: optional bool [B, N]; False tokens (padding) contribute nothing. A sample with no valid token
      contributes 0 and is not counted in the batch mean.
  Returns:
    (loss, metrics): loss = mean over samples with a valid token of the per-sample mean squared error over its
    valid tokens and channels (float32); metrics["per_sample"] [B] holds those per-sample errors.
  """
  if velocity.shape != x0.shape:
    raise ValueError(f"velocity: expected the shape of x0 {x0.shape}, got {velocity.shape}.")
  error = jnp.square(velocity.astype(jnp.float32) - velocity_target(x0, noise))
  per_token = error.reshape(error.shape[0], error.shape[1], -1).mean(-1) if error.ndim > 2 else error
  if token_mask is None:
    token_mask = jnp.ones(per_token.shape, bool)
  elif token_mask.shape != per_token.shape:
    raise ValueError(f"token_mask: expected shape {per_token.shape} ([B, N]), got {token_mask.shape}.")
  tokens = jnp.sum(token_mask, axis=-1)
  per_sample = jnp.sum(jnp.where(token_mask, per_token, 0.0), axis=-1) / jnp.maximum(tokens, 1)
  counted = tokens > 0
  loss = jnp.sum(jnp.where(counted, per_sample, 0.0)) / jnp.maximum(jnp.sum(counted), 1)
  return loss, {"per_sample": per_sample}


def caption_dropout(key: Array, text_mask: Array, rate: float) -> tuple[Array, Array]:
  """Drops the whole caption of each sample with probability `rate` (classifier-free guidance training).

  Args:
    text_mask: bool [B, L], valid text tokens.
    rate: in [0, 1].
  Returns:
    (text_mask with dropped rows all False, dropped bool [B]). A dropped caption is the empty prompt: every text
    token masked out, which is what the sampler's unconditional branch feeds the model.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate: expected a probability in [0, 1], got {rate}.")
  dropped = jax.random.bernoulli(key, rate, (text_mask.shape[0],))
  return text_mask & ~dropped[:, None], dropped


def ema_update(ema: Any, params: Any, decay: Any) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf in float32, cast back to each ema leaf's dtype."""
  decay = jnp.asarray(decay, jnp.float32)
  return jax.tree.map(
    lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype), ema, params
  )
