"""KL(pi_theta || pi_ref) per sampled token: Schulman's k1/k2/k3 estimators (http://joschu.net/blog/kl-approx.html),
the k3 term of DeepSeekMath GRPO (arXiv 2402.03300, Eq. 4), and verl's names and straight-through "+" forms
(verl `verl/trainer/ppo/core_algos.py::kl_penalty`, `kl_penalty_forward`).

Shapes: `logp`, `ref_logp`, `mask`: [B, T]. All math is float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxagents.rl._checks import bool_mask, canonical, check_shape, float_array

Array = jax.Array

# The largest |log ratio| passed to exp; verl and tunix clamp at 20 so a stale token cannot overflow the ratio.
DEFAULT_LOG_RATIO_CLAMP = 20.0


def _kl_k1(log_ratio: Array) -> Array:
  return log_ratio


def _kl_abs(log_ratio: Array) -> Array:
  return jnp.abs(log_ratio)


def _kl_k2(log_ratio: Array) -> Array:
  return 0.5 * jnp.square(log_ratio)


def _kl_k3(log_ratio: Array) -> Array:
  # log_ratio = log pi - log pi_ref, so pi_ref / pi = exp(-log_ratio). Only k3 exponentiates, so only k3 clips the
  # log-ratio (as verl does): exp() stays finite for tokens the reference finds (near) impossible.
  log_ratio = jnp.clip(log_ratio, -DEFAULT_LOG_RATIO_CLAMP, DEFAULT_LOG_RATIO_CLAMP)
  return jnp.exp(-log_ratio) + log_ratio - 1.0


# Schulman's estimators under our names and verl's (`kl_penalty_forward`: "kl", "abs", "mse", "low_var_kl"). Any
# name may end in "+" (verl's straight-through form, "k3+"): the value of the named estimator, the k2 gradient.
KL_ESTIMATORS: dict[str, Callable[[Array], Array]] = {
  "k1": _kl_k1,
  "kl": _kl_k1,
  "abs": _kl_abs,
  "k2": _kl_k2,
  "mse": _kl_k2,
  "k3": _kl_k3,
  "low_var_kl": _kl_k3,
}


def kl_estimator(kind: str, argument: str = "kind") -> tuple[Callable[[Array], Array], bool]:
  """The estimator named `kind` and whether it takes the k2 gradient (a trailing "+"); raises on an unknown name."""
  straight_through = kind.endswith("+")
  base = kind[:-1] if straight_through else kind
  if canonical(base) not in KL_ESTIMATORS:
    names = sorted(KL_ESTIMATORS)
    raise ValueError(
      f"{argument}: expected one of {names}, optionally with a trailing '+' (k2 gradient), got {kind!r}."
    )
  estimator = KL_ESTIMATORS[canonical(base)]
  return estimator, straight_through and estimator is not _kl_k2


@functools.partial(jax.jit, static_argnames=("kind", "clamp"))
def kl_penalty(
  logp: Any, ref_logp: Any, kind: str = "k3", clamp: float | None = None, mask: Any = None,
) -> Array:
  """Per-token estimate of KL(pi_theta || pi_ref) on sampled tokens, `[B, T]` (Schulman's k1/k2/k3).

  k1 = log pi - log pi_ref; k2 = (log pi - log pi_ref)^2 / 2; k3 = pi_ref/pi - log(pi_ref/pi) - 1 (>= 0, the
  DeepSeekMath GRPO term, arXiv 2402.03300 Eq. 4); "abs" = |log pi - log pi_ref|. A trailing "+" ("k3+") keeps the
  named estimator's value with the k2 gradient (straight-through), as verl `core_algos.py::kl_penalty` does.
  clamp: optional bound c on the value, clipped to [-c, c] (verl fixes c = 10 for k3). With "+" only the value is
  clipped and the k2 gradient is kept everywhere, as in verl; without it, a clipped token has zero gradient.
  The log-ratio is clipped to +-20 inside k3 only (verl `kl_penalty_forward`); k1, k2 and the "+" gradient use the
  unclipped log-ratio. `mask`, when given, zeroes padded positions (whatever they hold) in the value and gradient.
  """
  estimator, straight_through = kl_estimator(kind)
  logp = float_array(logp, "logp")
  ref_logp = float_array(ref_logp, "ref_logp")
  check_shape(ref_logp, "ref_logp", logp.shape)
  log_ratio = logp - ref_logp
  if mask is not None:
    mask = bool_mask(mask, "mask", logp.shape)
    log_ratio = jnp.where(mask, log_ratio, 0.0)
  kl = estimator(log_ratio)
  if clamp is not None:
    kl = jnp.clip(kl, -clamp, clamp)
  if straight_through:
    k2 = _kl_k2(log_ratio)
    kl = jax.lax.stop_gradient(kl) + k2 - jax.lax.stop_gradient(k2)
  return kl if mask is None else jnp.where(mask, kl, 0.0)
