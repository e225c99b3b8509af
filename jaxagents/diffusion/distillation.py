"""Few-step distillation by distribution matching (DMD2: Yin et al., arXiv 2405.14867), for flow-matching models.

A student G maps noise to clean latents in a few steps; it is trained so that its output distribution matches the
teacher's. The gradient of KL(p_student || p_teacher) with respect to a student sample x0 is the difference of the
two distributions' scores at a noised copy x_tau (DMD, arXiv 2311.18828 Eq. 7); with the flow parameterisation
x_tau = (1 - tau) x0 + tau eps, each score is read from that model's clean-sample prediction
x0_hat = x_tau - tau v(x_tau, tau), and the difference is normalised per sample by |x0 - x0_real| (DMD Eq. 8):

    grad = (x0_fake - x0_real) / mean |x0 - x0_real|,      loss = 1/2 mean (x0 - stop_gradient(x0 - grad))^2,

so that d loss / d x0 = grad / x0.size (tianweiy/DMD2, `main/sd_guidance.py`, `compute_distribution_matching_loss`).
x0_real comes from the frozen teacher with classifier-free guidance (the student learns the guided distribution and
samples at CFG 1); x0_fake from a "fake score" network trained alongside on the student's samples with the ordinary
flow-matching loss (`losses.flow_matching_loss`), updated more often than the student (DMD2 Sec. 4.2, the two
time-scale rule). DMD2's backward simulation (Sec. 4.5) trains a multi-step student on inputs its own sampler
produces: `backward_simulation` runs the student from noise to a random one of its sigmas.

[Reconstruction: Lens-Turbo's distillation method is unpublished (Lens, arXiv 2605.21573); a 4-step student at CFG 1
points to the DMD family. Not here: DMD2's GAN head and Decoupled-DMD's separate CFG-augmentation term (Z-Image,
arXiv 2511.22677).]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxagents.diffusion.samplers import euler_step, renoise_step

Array = jax.Array
Velocity = Callable[[Array, Array], Array]


def _per_sample(value: Array, like: Array) -> Array:
  return jnp.reshape(value, value.shape + (1,) * (like.ndim - value.ndim))


def distribution_matching_loss(x0: Array, x0_real: Array, x0_fake: Array) -> tuple[Array, dict[str, Array]]:
  """DMD's surrogate loss whose gradient in x0 is the normalised score difference (module docstring).

  x0: [B, ...] the student's samples (differentiable); x0_real, x0_fake: the teacher's and the fake score's
  clean-sample predictions at a noised copy of x0 (gradients stopped here). Returns (loss, metrics).
  """
  if not x0.shape == x0_real.shape == x0_fake.shape:
    raise ValueError(f"x0, x0_real, x0_fake: expected one shape, got {x0.shape}, {x0_real.shape}, {x0_fake.shape}.")
  x0_real, x0_fake = jax.lax.stop_gradient(x0_real), jax.lax.stop_gradient(x0_fake)
  axes = tuple(range(1, x0.ndim))
  scale = jnp.mean(jnp.abs(jax.lax.stop_gradient(x0) - x0_real), axis=axes, keepdims=True)
  grad = jnp.nan_to_num((x0_fake - x0_real) / scale)
  target = jax.lax.stop_gradient(x0 - grad)
  loss = 0.5 * jnp.mean(jnp.square(x0.astype(jnp.float32) - target.astype(jnp.float32)))
  return loss, {"dmd_grad_norm": jnp.sqrt(jnp.mean(jnp.square(grad))), "dmd_scale": jnp.mean(scale)}


def clean_prediction(x: Array, velocity: Array, sigma: Array) -> Array:
  """x0_hat = x - sigma v: a flow model's prediction of the clean sample (sigma per sample or a scalar)."""
  return x - _per_sample(jnp.asarray(sigma, x.dtype), x) * velocity


def backward_simulation(velocity: Velocity, noise: Array, sigmas: Array, steps: Array, key: Array, *,
                        method: str = "renoise") -> tuple[Array, Array]:
  """The student's own inputs (DMD2 Sec. 4.5): from `noise` at sigmas[0], `steps[b]` steps of the student's sampler
  ("euler" or "renoise", as `samplers.few_step_sample`) for each sample b. Returns (x, sigma) [B, ...], [B].

  `velocity(x, sigma[B])` is called len(sigmas) - 2 times (every sample runs every step; each keeps the state
  after its own count), so call it on stopped-gradient parameters.
  """
  sigmas = jnp.asarray(sigmas, jnp.float32)
  num_steps = sigmas.shape[0] - 1
  if method not in ("euler", "renoise"):
    raise ValueError(f"method: expected 'euler' or 'renoise', got {method!r}.")
  batch = noise.shape[0]
  x, chosen = noise, noise
  for i in range(num_steps - 1):
    v = velocity(x, jnp.full((batch,), sigmas[i]))
    if method == "euler":
      x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    else:
      x = renoise_step(x, v, sigmas[i], sigmas[i + 1], jax.random.normal(jax.random.fold_in(key, i), x.shape))
    chosen = jnp.where(_per_sample(steps == i + 1, x), x, chosen)
  return jax.lax.stop_gradient(chosen), sigmas[steps]
