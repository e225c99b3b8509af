"""Samplers for rectified-flow velocity fields: Euler, and the x0-predict-then-renoise steps of few-step students.

Convention: x_sigma = (1 - sigma) x0 + sigma eps and v = eps - x0 (arXiv 2209.03003; SD3 arXiv 2403.03206 Sec. 2),
so dx/dsigma = v and sampling integrates from sigma = 1 (noise) down to sigma = 0 (data).

* Euler (diffusers `FlowMatchEulerDiscreteScheduler.step`, the sampler of the FLUX.2 and Lens pipelines, Lens-Turbo
  included): x <- x + (sigma_next - sigma) v, in float32, cast back to the dtype of x.
* Renoise [reconstruction for Lens-Turbo, whose distillation is not published]: predict x0 = x - sigma v, then draw a
  fresh eps and jump to x_next = (1 - sigma_next) x0 + sigma_next eps. This is the multi-step sampling of DMD2 students
  (arXiv 2405.14867, the multi-step generator and its backward simulation) and of consistency models (arXiv
  2303.01469 Algorithm 1), written for flow matching as diffusers' `stochastic_sampling=True` branch of the same
  `step`.

`velocity(x, sigma) -> v` takes x [B, ...] and a 0-d float32 `sigma` (the model broadcasts it over the batch, as the
pipelines' `t.expand(batch)` does); it closes over everything else (weights, text features, guidance: see
`guidance.batched_cfg`). The loops are `jax.lax.scan`s over the static number of steps, so the samplers jit whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Velocity = Callable[[Array, Array], Array]
Callback = Callable[[Array, Array], Any]

FEW_STEP_METHODS = ("euler", "renoise")


def euler_step(x: Array, v: Array, sigma: Array, sigma_next: Array) -> Array:
  """One Euler step x + (sigma_next - sigma) v, computed in float32 and cast back to x.dtype."""
  dt = jnp.asarray(sigma_next, jnp.float32) - jnp.asarray(sigma, jnp.float32)
  return (x.astype(jnp.float32) + dt * v.astype(jnp.float32)).astype(x.dtype)


def renoise_step(x: Array, v: Array, sigma: Array, sigma_next: Array, noise: Array) -> Array:
  """x0 = x - sigma v, then (1 - sigma_next) x0 + sigma_next noise, in float32, cast back to x.dtype."""
  sigma, sigma_next = jnp.asarray(sigma, jnp.float32), jnp.asarray(sigma_next, jnp.float32)
  x0 = x.astype(jnp.float32) - sigma * v.astype(jnp.float32)
  return ((1.0 - sigma_next) * x0 + sigma_next * noise.astype(jnp.float32)).astype(x.dtype)


def _steps(sigmas: Any, times: Any) -> tuple[Array, Array]:
  sigmas = jnp.asarray(sigmas, jnp.float32)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f"sigmas: expected shape [N + 1] with N >= 1 steps (terminal sigma included), got {sigmas.shape}.")
  if times is None:
    return sigmas, sigmas[:-1]
  times = jnp.asarray(times, jnp.float32)
  if times.shape != (sigmas.shape[0] - 1,):
    raise ValueError(f"times: expected shape ({sigmas.shape[0] - 1},), one per step, got {times.shape}.")
  return sigmas, times


def _velocity_at(velocity: Velocity, x: Array, time: Array) -> Array:
  v = velocity(x, time)
  if v.shape != x.shape:
    raise ValueError(f"velocity: expected an output of the shape of x {x.shape}, got {v.shape}.")
  return v


def euler_sample(velocity: Velocity, x: Array, sigmas: Any, *, times: Any = None,
                 callback: Callback | None = None) -> Array:
  """Integrate dx/dsigma = velocity(x, sigma) with Euler over `sigmas`, one velocity call per step.

  x: [B, ...] the sample at sigmas[0] (noise for text-to-image); sigmas: [N + 1] as `schedules.inference_sigmas`
  returns them (terminal 0 last). `times` [N] are the values handed to `velocity` instead of sigmas[:-1]: the FLUX.2 and
  Lens pipelines hand the model `timesteps / 1000`, which can differ from sigma by one float32 ulp. `callback(step,
  sigma)` runs on the host after each step (progress bars); it sees no arrays of the size of x.
  """
  sigmas, times = _steps(sigmas, times)

  def body(x, inputs):
    step, sigma, sigma_next, time = inputs
    x = euler_step(x, _velocity_at(velocity, x, time), sigma, sigma_next)
    if callback is not None:
      jax.debug.callback(callback, step, sigma)
    return x, None

  num_steps = sigmas.shape[0] - 1
  x, _ = jax.lax.scan(body, x, (jnp.arange(num_steps), sigmas[:-1], sigmas[1:], times))
  return x


def renoise_sample(velocity: Velocity, x: Array, sigmas: Any, key: Array, *, times: Any = None,
                   callback: Callback | None = None) -> Array:
  """Few-step student sampling: x0-predict, then renoise to the next sigma with fresh Gaussian noise.

  Arguments as `euler_sample`; `key` draws one noise array per step. With a terminal sigma of 0 the last step returns
  the predicted x0 itself. [Reconstruction: DMD2-style multi-step sampling, see the module docstring.]
  """
  sigmas, times = _steps(sigmas, times)
  num_steps = sigmas.shape[0] - 1

  def body(x, inputs):
    step, sigma, sigma_next, time, step_key = inputs
    noise = jax.random.normal(step_key, x.shape, jnp.float32)
    x = renoise_step(x, _velocity_at(velocity, x, time), sigma, sigma_next, noise)
    if callback is not None:
      jax.debug.callback(callback, step, sigma)
    return x, None

  keys = jax.random.split(key, num_steps)
  x, _ = jax.lax.scan(body, x, (jnp.arange(num_steps), sigmas[:-1], sigmas[1:], times, keys))
  return x


def few_step_sample(velocity: Velocity, x: Array, sigmas: Any, *, method: str = "euler", key: Array | None = None,
                    times: Any = None, callback: Callback | None = None) -> Array:
  """A few-step student's sampler by name: "euler" (Lens-Turbo's pipeline: Euler on the given sigmas, e.g. 4 steps at
  CFG 1) or "renoise" (x0-predict-then-renoise, needs `key`; a reconstruction)."""
  if method == "euler":
    return euler_sample(velocity, x, sigmas, times=times, callback=callback)
  if method == "renoise":
    if key is None:
      raise ValueError("key: the 'renoise' method draws fresh noise at every step and needs a PRNG key, got None.")
    return renoise_sample(velocity, x, sigmas, key, times=times, callback=callback)
  raise ValueError(f"method: expected one of {FEW_STEP_METHODS}, got {method!r}.")
