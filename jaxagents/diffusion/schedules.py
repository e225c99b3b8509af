"""Flow-matching noise schedules: time shifts, FLUX.2's empirical mu, inference sigmas, training-time sigma sampling.

Convention (rectified flow, arXiv 2209.03003; SD3, arXiv 2403.03206 Secs. 2-3): x_sigma = (1 - sigma) x0
+ sigma eps with sigma in [0, 1], sigma = 1 pure noise, and the model predicts v = eps - x0. Timesteps are
`sigma * num_train_timesteps` (1000), as in diffusers `FlowMatchEulerDiscreteScheduler`.

Time shifts (all monotone maps of [0, 1] onto itself that move mass towards sigma = 1, i.e. towards more noise):
* static (SD3 Sec. 5.3.2; diffusers `set_timesteps` without dynamic shifting; Z-Image-Turbo uses 3.0):
    sigma' = shift sigma / (1 + (shift - 1) sigma);
* exponential (diffusers `_time_shift_exponential`, FLUX.1/FLUX.2 dynamic shifting):
    sigma' = e^mu / (e^mu + (1 / sigma - 1)^exponent).
  With exponent 1 this is the static shift with shift = e^mu, i.e. logit(sigma') = logit(sigma) + mu;
* linear (diffusers `_time_shift_linear`, `time_shift_type="linear"`): sigma' = mu / (mu + (1 / sigma - 1)^exponent).

mu comes from the image token count: FLUX.2's `compute_empirical_mu(image_seq_len, num_steps)` (diffusers
`src/diffusers/pipelines/flux2/pipeline_flux2.py`, repeated unchanged in the Lens pipeline
`src/diffusers/pipelines/lens/pipeline_lens.py` of diffusers commit ecb3c4e79a), or FLUX.1's linear
`calculate_shift` (diffusers `src/diffusers/pipelines/flux/pipeline_flux.py`; also Z-Image's pipeline), `linear_mu`
here.

`inference_sigmas` reproduces what the FLUX.2 / Lens pipelines get back from
`FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)`, bit for bit in float32: the
arithmetic below is done in numpy float32 in the scheduler's order of operations (host-side; a schedule is a
constant of the sampling program).

`sample_training_sigmas` is a reconstruction: neither the FLUX.2 nor the Lens report publishes its training density.
It draws SD3's logit-normal (Sec. 3.1, loc 0 and scale 1 being the best setting of Sec. 5.1) or uniform
sigmas and applies the exponential shift with a resolution-dependent mu (SD3 Sec. 5.3.2 motivates shifting by
resolution; the default mu rule is FLUX.1's `calculate_shift`). Because the shift adds mu in logit space, a shifted
logit-normal(loc, scale) is exactly logit-normal(loc + mu, scale), with median sigmoid(loc + mu).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

TIME_SHIFT_TYPES = ("exponential", "linear")
SIGMA_SPACINGS = ("karras", "exponential", "beta")
TRAINING_DENSITIES = ("logit_normal", "uniform")


def _positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool):
    raise ValueError(f"{name}: expected a positive int, got {value!r}.")
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__}).") from None
  if value < 1:
    raise ValueError(f"{name}: expected a positive int, got {value}.")
  return value


def _exp(mu: Any) -> Any:
  # A Python float stays a Python float, so numpy rounds e^mu to float32 inside each op exactly as diffusers does.
  return math.exp(mu) if isinstance(mu, int | float) else jnp.exp(mu)


# ---------------------------------------------------------------------------------------------------------------------
# Time shifts (work on numpy and jax arrays alike)
# ---------------------------------------------------------------------------------------------------------------------


def static_shift(sigmas: Any, shift: float) -> Any:
  """sigma' = shift sigma / (1 + (shift - 1) sigma) (SD3 arXiv 2403.03206 Sec. 5.3.2; diffusers
  `FlowMatchEulerDiscreteScheduler.set_timesteps` without dynamic shifting). shift = 1 is the identity."""
  if isinstance(shift, int | float) and not shift > 0:
    raise ValueError(f"shift: expected a positive float, got {shift}.")
  return shift * sigmas / (1 + (shift - 1) * sigmas)


def exponential_time_shift(sigmas: Any, mu: Any, exponent: float = 1.0) -> Any:
  """sigma' = e^mu / (e^mu + (1 / sigma - 1)^exponent) (diffusers `_time_shift_exponential`). sigma = 0 maps to 0."""
  return _exp(mu) / (_exp(mu) + (1 / sigmas - 1) ** exponent)


def linear_time_shift(sigmas: Any, mu: Any, exponent: float = 1.0) -> Any:
  """sigma' = mu / (mu + (1 / sigma - 1)^exponent) (diffusers `_time_shift_linear`); needs mu > 0."""
  if isinstance(mu, int | float) and not mu > 0:
    raise ValueError(f"mu: the linear time shift needs mu > 0, got {mu}.")
  return mu / (mu + (1 / sigmas - 1) ** exponent)


def time_shift(sigmas: Any, mu: Any, time_shift_type: str = "exponential", exponent: float = 1.0) -> Any:
  """The scheduler's dynamic shift by name: `time_shift_type` in ("exponential", "linear")."""
  if time_shift_type == "exponential":
    return exponential_time_shift(sigmas, mu, exponent)
  if time_shift_type == "linear":
    return linear_time_shift(sigmas, mu, exponent)
  raise ValueError(f"time_shift_type: expected one of {TIME_SHIFT_TYPES}, got {time_shift_type!r}.")


# ---------------------------------------------------------------------------------------------------------------------
# mu from the image token count
# ---------------------------------------------------------------------------------------------------------------------


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
  """FLUX.2's empirical mu (diffusers `pipelines/flux2/pipeline_flux2.py`, `compute_empirical_mu`), in float64.

  Two fitted lines in the token count L: mu_200(L) = 1.6927e-4 L + 0.45667 and mu_10(L) = 8.7381e-5 L + 1.89833
  (the fit's values at 200 and 10 steps). Up to 4300 tokens mu is the line through (10, mu_10) and (200, mu_200)
  evaluated at `num_steps`; above 4300 tokens it is mu_200(L) whatever the step count. The jump at 4300 -> 4301 tokens
  is the reference's and is kept (e.g. 20 steps: mu 2.2167 at 4300 tokens, 1.1847 at 4301).
  """
  image_seq_len = _positive_int(image_seq_len, "image_seq_len")
  num_steps = _positive_int(num_steps, "num_steps")
  a1, b1 = 8.73809524e-05, 1.89833333
  a2, b2 = 0.00016927, 0.45666666
  mu_200 = a2 * image_seq_len + b2
  if image_seq_len > 4300:
    return float(mu_200)
  mu_10 = a1 * image_seq_len + b1
  slope = (mu_200 - mu_10) / 190.0
  intercept = mu_200 - 200.0 * slope
  return float(slope * num_steps + intercept)


def linear_mu(image_seq_len: Any, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
              max_shift: float = 1.15) -> Any:
  """FLUX.1's mu, linear in the token count: base_shift at base_seq_len, max_shift at max_seq_len, extrapolated
  beyond (diffusers `pipelines/flux/pipeline_flux.py`, `calculate_shift`). `image_seq_len` may be an int or an
  array (per-sample token counts of a mixed-resolution batch)."""
  if max_seq_len == base_seq_len:
    raise ValueError(f"max_seq_len: expected a value different from base_seq_len={base_seq_len}, got {max_seq_len}.")
  slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
  intercept = base_shift - slope * base_seq_len
  return image_seq_len * slope + intercept


# ---------------------------------------------------------------------------------------------------------------------
# Inference schedule
# ---------------------------------------------------------------------------------------------------------------------


class Schedule(NamedTuple):
  """sigmas: float32 [N + 1], decreasing to the terminal 0 (1 with `invert_sigmas`); timesteps: float32 [N], the
  values the pipelines hand the model after dividing by num_train_timesteps."""
  sigmas: np.ndarray
  timesteps: np.ndarray


def _respace(sigmas: np.ndarray, num_steps: int, spacing: str) -> np.ndarray:
  """Karras (arXiv 2206.00364 eq. 5, rho 7), log-linear or Beta(0.6, 0.6) (arXiv 2407.12173) spacing between the
  shifted schedule's end points, in float64 as diffusers `EulerDiscreteScheduler._convert_to_karras`,
  `_convert_to_exponential` and `_convert_to_beta` compute them."""
  sigma_min, sigma_max = float(sigmas[-1]), float(sigmas[0])
  if spacing == "karras":
    rho = 7.0
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
  if spacing == "exponential":
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))
  from scipy import stats  # jax depends on scipy; imported here because only this spacing needs it

  quantiles = stats.beta.ppf(1 - np.linspace(0, 1, num_steps), 0.6, 0.6)
  return np.array([sigma_min + q * (sigma_max - sigma_min) for q in quantiles])


def inference_sigmas(num_steps: int, image_seq_len: int | None = None, *, mu: float | None = None,
                     shift: float | None = None, time_shift_type: str = "exponential",
                     shift_terminal: float | None = None, spacing: str | None = None, invert_sigmas: bool = False,
                     base_sigmas: Any = None, num_train_timesteps: int = 1000) -> Schedule:
  """The sigmas and timesteps of `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=..., mu=...)`, float32.

  The shift is picked by what is given, exactly one of:
  * `image_seq_len` (FLUX.2 and Lens): mu = `empirical_mu(image_seq_len, num_steps)`, dynamic shifting;
  * `mu` (e.g. `linear_mu(seq_len)` for FLUX.1-style pipelines): dynamic shifting with that mu;
  * `shift` (a static shift, e.g. 3.0 as Z-Image-Turbo; 1.0 for none): `use_dynamic_shifting=False`.
  Dynamic shifting is `time_shift_type` ("exponential" as FLUX.2's scheduler config, or "linear").

  The scheduler's other options: `shift_terminal` stretches the schedule so that its last sigma is that value (LTX-Video
  `ltx_video/schedulers/rf.py`); `spacing` in ("karras", "exponential", "beta") is `use_karras_sigmas`,
  `use_exponential_sigmas`, `use_beta_sigmas`; `invert_sigmas` (Mochi) returns 1 - sigma with a terminal 1.
  `base_sigmas` ([N], default linspace(1, 1/N, N) as the FLUX.2 and Lens pipelines pass) are the sigmas before the
  shift.
  """
  num_steps = _positive_int(num_steps, "num_steps")
  choices = (("image_seq_len", image_seq_len), ("mu", mu), ("shift", shift))
  given = [name for name, value in choices if value is not None]
  if len(given) != 1:
    raise ValueError(f"inference_sigmas: expected exactly one of image_seq_len, mu, shift, got {given or 'none'}.")
  if time_shift_type not in TIME_SHIFT_TYPES:
    raise ValueError(f"time_shift_type: expected one of {TIME_SHIFT_TYPES}, got {time_shift_type!r}.")
  if spacing is not None and spacing not in SIGMA_SPACINGS:
    raise ValueError(f"spacing: expected None or one of {SIGMA_SPACINGS}, got {spacing!r}.")
  if shift_terminal is not None and not 0 <= shift_terminal < 1:
    raise ValueError(f"shift_terminal: expected a value in [0, 1), got {shift_terminal}.")

  if base_sigmas is None:
    base_sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
  sigmas = np.asarray(base_sigmas).astype(np.float32)
  if sigmas.shape != (num_steps,):
    raise ValueError(f"base_sigmas: expected shape ({num_steps},), got {sigmas.shape}.")
  if not np.all((sigmas > 0) & (sigmas <= 1)):
    raise ValueError(f"base_sigmas: expected values in (0, 1], got min {sigmas.min()} max {sigmas.max()}.")

  if shift is not None:
    sigmas = static_shift(sigmas, float(shift))
  else:
    mu = empirical_mu(image_seq_len, num_steps) if mu is None else float(mu)
    sigmas = time_shift(sigmas, mu, time_shift_type)
  if shift_terminal:  # diffusers skips 0 and None alike
    one_minus = 1 - sigmas
    sigmas = 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))
  if spacing is not None:
    sigmas = _respace(sigmas, num_steps, spacing).astype(np.float32)

  if invert_sigmas:
    sigmas = 1.0 - sigmas
    terminal = np.ones(1, np.float32)
  else:
    terminal = np.zeros(1, np.float32)
  timesteps = sigmas * num_train_timesteps
  return Schedule(np.concatenate([sigmas, terminal]), timesteps)


# ---------------------------------------------------------------------------------------------------------------------
# Training-time sigmas [reconstruction]
# ---------------------------------------------------------------------------------------------------------------------


def sample_training_sigmas(key: Array, batch: int, image_seq_len: Any = None, kind: str = "logit_normal", *,
                           loc: float = 0.0, scale: float = 1.0, mu_fn: Callable[[Any], Any] = linear_mu,
                           eps: float = 1e-5) -> Array:
  """Training sigmas [batch], float32 in [eps, 1 - eps] (reconstruction: the Lens density is not published).

  kind="logit_normal": sigma = sigmoid(loc + scale n + mu), n ~ N(0, 1) (SD3 arXiv 2403.03206 Sec. 3.1, shifted);
  kind="uniform": sigma = exponential_time_shift(u, mu), u ~ U(eps, 1 - eps).
  mu = `mu_fn(image_seq_len)` (default FLUX.1's `linear_mu`: 0.5 at 256 tokens, 1.15 at 4096); `image_seq_len` is an
  int or an int array [batch] (a mixed-resolution batch); None means no resolution shift (mu = 0).
  The clip to [eps, 1 - eps] keeps 1 / sigma and logit(sigma) finite in float32.
  """
  batch = _positive_int(batch, "batch")
  if kind not in TRAINING_DENSITIES:
    raise ValueError(f"kind: expected one of {TRAINING_DENSITIES}, got {kind!r}.")
  if not 0 < eps < 0.5:
    raise ValueError(f"eps: expected a value in (0, 0.5), got {eps}.")
  if image_seq_len is None:
    mu = 0.0
  else:
    seq_len = jnp.asarray(image_seq_len)
    if seq_len.ndim not in (0, 1) or (seq_len.ndim == 1 and seq_len.shape != (batch,)):
      raise ValueError(f"image_seq_len: expected an int or an array of shape ({batch},), got shape {seq_len.shape}.")
    mu = mu_fn(seq_len.astype(jnp.float32))
  if kind == "logit_normal":
    sigmas = jax.nn.sigmoid(loc + scale * jax.random.normal(key, (batch,), jnp.float32) + mu)
  else:
    sigmas = jax.random.uniform(key, (batch,), jnp.float32, minval=eps, maxval=1 - eps)
    if image_seq_len is not None:
      sigmas = exponential_time_shift(sigmas, mu)
  return jnp.clip(sigmas, eps, 1 - eps)
