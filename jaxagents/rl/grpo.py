"""GRPO and its variants: group-relative advantages and the clipped policy-ratio loss.

Reference implementations: trl `trl/trainer/grpo_trainer.py`, verl `verl/trainer/ppo/core_algos.py`, tunix
`tunix/rl/algo_core.py`. The advantages are in `advantages.py`
(`grpo_advantages` picks one by config):

* DeepSeekMath GRPO (arXiv 2402.03300), per token t of completion i, with r = pi_theta / pi_old:
    J = 1/G sum_i 1/|o_i| sum_t [ min(r A_i, clip(r, 1-eps, 1+eps) A_i) - beta KL_k3 ],
    A_i = (R_i - mean_group(R)) / (std_group(R) + eps_std),   KL_k3 = pi_ref/pi - log(pi_ref/pi) - 1 >= 0.
* Dr. GRPO (arXiv 2503.20783): A_i = R_i - mean (no std) and a constant normalizer (`seq_mean_token_sum_norm`).
* DAPO (arXiv 2503.14476): clip-higher (eps_low 0.2, eps_high 0.28), token-level loss (`token_mean`), no KL,
  dynamic-sampling keep mask, soft overlong punishment.
* GSPO (arXiv 2507.18071): sequence ratio s_i = exp(1/|y_i| sum_t log r_{i,t}) (`level="sequence"`), and GSPO-token
  s_{i,t} = sg[s_i] pi/sg[pi] (`level="sequence_token"`), equal in value and gradient for per-sequence advantages.
* Dual-clip (verl `compute_policy_loss_vanilla`, `clip_ratio_c`): for A < 0 the per-token loss is capped at -A c.

Shapes: B completions (B = num_groups * G when grouped by size), T completion positions. `logp`, `old_logp`,
`ref_logp`: [B, T] log-probabilities of the sampled tokens; `mask`: [B, T] bool or 0/1 (1 = completion token);
`rewards`: [B]; `advantages`: [B] or [B, T]. All math is float32; padded positions may hold any value (even inf or
NaN) and never reach the loss or its gradient. Every option that changes the computation is a Python value, so the
functions jit with those options static (`GRPOConfig` is a frozen, hashable dataclass).

Variants are presets registered by name in `VARIANTS` (the style of tunix `tunix/rl/algo_core.py`), aggregation
modes in `AGGREGATIONS`, KL estimators in `kl.KL_ESTIMATORS`, advantage estimators in `ADVANTAGE_ESTIMATORS`; names
accept verl's hyphens ("seq-mean-token-mean") as well as underscores.

Choices where the references (trl, verl, tunix, maxtext) disagree, made explicit:
* std: `std="unbiased"` (trl, verl, tunix) or `"population"` (maxtext); eps is an argument (trl 1e-4, verl/tunix 1e-6,
  maxtext 1e-8).
* A group whose rewards are all equal (including a group of one) gets A = 0 exactly; verl gives a group of one A = R.
  RLOO likewise gives a group of one A = 0, as verl's `compute_rloo_vectorized_outcome_advantage` does; verl's
  loop version `compute_rloo_outcome_advantage` leaves a lone row's advantage at A = R.
* Rows with an empty mask are left out of every sequence count (verl, tunix). trl divides by all rows, empty ones
  included, in both its `grpo` loss (the mean over rows of each row's token mean) and its `dr_grpo` loss (the full
  batch size times the max completion length); the results differ only when a row is empty.
* The KL estimators follow verl `kl_penalty`: only k3 clips the log-ratio (+-20), and "k3+" clamps only the value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxagents.rl._checks import bool_mask, canonical, check_rank, check_shape, float_array, lookup
from jaxagents.rl.advantages import ADVANTAGE_ESTIMATORS, group_advantages, rloo_advantages
from jaxagents.rl.kl import DEFAULT_LOG_RATIO_CLAMP, kl_estimator, kl_penalty

Array = jax.Array



# ---------------------------------------------------------------------------------------------------------------------
# Loss aggregation (verl `agg_loss` in `core_algos.py`; trl `loss_type`)
# ---------------------------------------------------------------------------------------------------------------------


def _row_counts(mask_f: Array, global_seq_count: Any) -> tuple[Array, Array]:
  tokens_per_row = mask_f.sum(axis=-1)
  nonempty = (tokens_per_row > 0).astype(jnp.float32)
  num_seqs = jnp.sum(nonempty) if global_seq_count is None else jnp.asarray(global_seq_count, jnp.float32)
  return tokens_per_row, jnp.maximum(num_seqs, 1.0)


def _agg_token_mean(loss, mask_f, *, norm_len, global_token_count, global_seq_count):
  del norm_len, global_seq_count
  count = mask_f.sum() if global_token_count is None else jnp.asarray(global_token_count, jnp.float32)
  return jnp.sum(loss) / jnp.maximum(count, 1.0)


def _agg_seq_mean_token_mean(loss, mask_f, *, norm_len, global_token_count, global_seq_count):
  del norm_len, global_token_count
  tokens_per_row, num_seqs = _row_counts(mask_f, global_seq_count)
  return jnp.sum(loss.sum(axis=-1) / jnp.maximum(tokens_per_row, 1.0)) / num_seqs


def _agg_seq_mean_token_sum(loss, mask_f, *, norm_len, global_token_count, global_seq_count):
  del norm_len, global_token_count
  _, num_seqs = _row_counts(mask_f, global_seq_count)
  return jnp.sum(loss) / num_seqs


def _agg_seq_mean_token_sum_norm(loss, mask_f, *, norm_len, global_token_count, global_seq_count):
  del global_token_count
  _, num_seqs = _row_counts(mask_f, global_seq_count)
  norm_len = loss.shape[-1] if norm_len is None else norm_len
  return jnp.sum(loss) / (num_seqs * float(norm_len))


AGGREGATIONS: dict[str, Callable[..., Array]] = {
  "token_mean": _agg_token_mean,
  "seq_mean_token_mean": _agg_seq_mean_token_mean,
  "seq_mean_token_sum": _agg_seq_mean_token_sum,
  "seq_mean_token_sum_norm": _agg_seq_mean_token_sum_norm,
}


@functools.partial(jax.jit, static_argnames=("mode", "norm_len"))
def aggregate(
  per_token: Any,
  mask: Any,
  mode: str = "seq_mean_token_mean",
  *,
  norm_len: int | None = None,
  global_token_count: Any = None,
  global_seq_count: Any = None,
) -> Array:
  """Reduces a per-token quantity `[B, T]` to a scalar over the tokens selected by `mask: [B, T]`.

  Modes (verl `agg_loss` names; L = per-token value, M = mask, B' = number of rows with at least one token):
    token_mean               sum L M / sum M                  DAPO, verl default, trl "dapo"/"bnpo"
    seq_mean_token_mean      1/B' sum_i (sum_t L M / sum_t M)  GRPO, trl "grpo", tunix default, GSPO
    seq_mean_token_sum_norm  sum L M / (B' * norm_len)        Dr. GRPO (trl "dr_grpo"), norm_len defaults to T
    seq_mean_token_sum       1/B' sum L M                     verl option

  Rows with an empty mask add nothing and are not counted. Under gradient accumulation pass the counts of the
  whole optimizer batch: `global_token_count` (token_mean) or `global_seq_count` (the seq_* modes); the
  microbatch losses then sum to the full-batch loss. No mode ever divides by zero.
  """
  reducer = lookup(AGGREGATIONS, mode, "mode")
  per_token = float_array(per_token, "per_token")
  check_rank(per_token, "per_token", 2, "[B, T]")
  mask = bool_mask(mask, "mask", per_token.shape)
  if norm_len is not None and norm_len < 1:
    raise ValueError(f"norm_len: expected a positive length, got {norm_len}.")
  # where, not multiply: padded positions may hold inf/NaN, and 0 * NaN = NaN.
  loss = jnp.where(mask, per_token, 0.0)
  return reducer(
    loss, mask.astype(jnp.float32), norm_len=norm_len, global_token_count=global_token_count,
    global_seq_count=global_seq_count,
  )


def _masked_token_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Importance ratios and the clipped surrogate
# ---------------------------------------------------------------------------------------------------------------------

IMPORTANCE_LEVELS = ("token", "sequence", "sequence_token")


def importance_log_ratio(
  logp: Array, old_logp: Array, mask: Array, level: str = "token", clamp: float | None = DEFAULT_LOG_RATIO_CLAMP,
) -> Array:
  """log r `[B, T]` at the chosen level; zero at padded positions.

  token:          log pi_theta(y_t) - log pi_old(y_t)                          (PPO/GRPO)
  sequence:       1/|y| sum_t (log pi_theta - log pi_old), broadcast over t    (GSPO, gradient through every token)
  sequence_token: sg[sequence] + log pi_theta(y_t) - sg[log pi_theta(y_t)]      (GSPO-token)
  clamp: |log r| bound before exp (verl/tunix use 20); None disables it.
  """
  level = canonical(level)
  if level not in IMPORTANCE_LEVELS:
    raise ValueError(f"level: expected one of {IMPORTANCE_LEVELS}, got {level!r}.")
  token = jnp.where(mask, logp - old_logp, 0.0)
  if level == "token":
    log_ratio = token
  else:
    length = jnp.maximum(mask.astype(jnp.float32).sum(axis=-1, keepdims=True), 1.0)
    seq = jnp.broadcast_to(token.sum(axis=-1, keepdims=True) / length, token.shape)
    if level == "sequence":
      log_ratio = seq
    else:
      safe_logp = jnp.where(mask, logp, 0.0)
      log_ratio = jax.lax.stop_gradient(seq) + safe_logp - jax.lax.stop_gradient(safe_logp)
    log_ratio = jnp.where(mask, log_ratio, 0.0)
  return log_ratio if clamp is None else jnp.clip(log_ratio, -clamp, clamp)


@functools.partial(
  jax.jit, static_argnames=("eps_low", "eps_high", "dual_clip", "level", "agg", "norm_len", "log_ratio_clamp")
)
def policy_loss(
  logp: Any,
  old_logp: Any,
  advantages: Any,
  mask: Any,
  *,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  level: str = "token",
  agg: str = "seq_mean_token_mean",
  norm_len: int | None = None,
  global_token_count: Any = None,
  global_seq_count: Any = None,
  log_ratio_clamp: float | None = DEFAULT_LOG_RATIO_CLAMP,
) -> tuple[Array, dict[str, Array]]:
  """Clipped policy-ratio loss (to minimise) and its metrics.

  Per token: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)); with `dual_clip` c (> 1) and A < 0 the value is
  capped at -A c. The per-token loss is then reduced by `aggregate(..., agg)`.

  Args:
    logp: [B, T] log pi_theta of the sampled tokens (differentiated).
    old_logp: [B, T] log pi_old of the same tokens, or None for the on-policy case (old = stop_gradient(logp)).
    advantages: [B] (one per completion) or [B, T] (per token).
    mask: [B, T] bool or 0/1, 1 on completion tokens.
    eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high]; eps_high=None means eps_low (DAPO: 0.2 / 0.28).
    dual_clip: c > 1 or None (verl uses 3).
    level: "token", "sequence" (GSPO) or "sequence_token" (GSPO-token); see `importance_log_ratio`.
    agg, norm_len, global_token_count, global_seq_count: see `aggregate`.
    log_ratio_clamp: |log r| bound before exp; None disables it.

  Returns:
    (loss, metrics): scalar loss; metrics of token means over the mask: `clip_frac_low` (r < 1 - eps_low and
    A < 0, as trl), `clip_frac_high` (r > 1 + eps_high and A > 0), `clip_frac` (either), `dual_clip_frac`,
    `approx_kl` (k3 estimate of KL(pi_old || pi_theta): r - 1 - log r), `ratio_mean`/`ratio_min`/`ratio_max`,
    `num_tokens`, `num_sequences` (non-empty rows).
  """
  logp = float_array(logp, "logp")
  check_rank(logp, "logp", 2, "[B, T]")
  mask = bool_mask(mask, "mask", logp.shape)
  if old_logp is None:
    old_logp = jax.lax.stop_gradient(logp)
  old_logp = float_array(old_logp, "old_logp")
  check_shape(old_logp, "old_logp", logp.shape)
  advantages = float_array(advantages, "advantages")
  if advantages.shape == logp.shape[:1]:
    advantages = advantages[:, None]
  elif advantages.shape != logp.shape:
    raise ValueError(f"advantages: expected shape {logp.shape[:1]} or {logp.shape}, got {advantages.shape}.")
  eps_high = eps_low if eps_high is None else eps_high
  if not (0.0 <= eps_low < 1.0 and eps_high >= 0.0):
    raise ValueError(f"eps_low/eps_high: expected 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}.")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip: expected a constant > 1 (verl uses 3) or None, got {dual_clip}.")

  log_ratio = importance_log_ratio(logp, old_logp, mask, level, log_ratio_clamp)
  ratio = jnp.exp(log_ratio)
  # Padded positions may carry any advantage (even NaN): zero it so every intermediate and metric stays finite.
  advantages = jnp.where(mask, jnp.broadcast_to(advantages, logp.shape), 0.0)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  per_token = jnp.maximum(unclipped, clipped)
  dual_clipped = jnp.zeros_like(mask)
  if dual_clip is not None:
    cap = -advantages * dual_clip
    dual_clipped = (advantages < 0) & (per_token > cap)
    per_token = jnp.where(advantages < 0, jnp.minimum(per_token, cap), per_token)
  loss = aggregate(
    per_token, mask, agg, norm_len=norm_len, global_token_count=global_token_count,
    global_seq_count=global_seq_count,
  )

  ratio_sg = jax.lax.stop_gradient(ratio)
  low = (ratio_sg < 1.0 - eps_low) & (advantages < 0)
  high = (ratio_sg > 1.0 + eps_high) & (advantages > 0)
  has_tokens = jnp.any(mask)
  log_ratio_sg = jax.lax.stop_gradient(log_ratio)
  metrics = {
    "clip_frac_low": _masked_token_mean(low.astype(jnp.float32), mask),
    "clip_frac_high": _masked_token_mean(high.astype(jnp.float32), mask),
    "clip_frac": _masked_token_mean((low | high).astype(jnp.float32), mask),
    "dual_clip_frac": _masked_token_mean(dual_clipped.astype(jnp.float32), mask),
    "approx_kl": _masked_token_mean(ratio_sg - 1.0 - log_ratio_sg, mask),
    "ratio_mean": _masked_token_mean(ratio_sg, mask),
    "ratio_min": jnp.where(has_tokens, jnp.min(jnp.where(mask, ratio_sg, jnp.inf)), 0.0),
    "ratio_max": jnp.where(has_tokens, jnp.max(jnp.where(mask, ratio_sg, -jnp.inf)), 0.0),
    "num_tokens": jnp.sum(mask.astype(jnp.float32)),
    "num_sequences": jnp.sum(jnp.any(mask, axis=-1).astype(jnp.float32)),
  }
  return loss, metrics


# ---------------------------------------------------------------------------------------------------------------------
# Variants by name, and the full GRPO loss
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Every option of the GRPO family; hashable, so it can be a static jit argument.

  Advantage options feed `grpo_advantages` (`advantage`, `std`, `std_eps`, `scale`); the rest feed `grpo_loss`.
  `beta` weights the per-token KL to the reference, added before aggregation (trl; equal to tunix's separately
  aggregated KL term). `entropy_coef` subtracts an aggregated entropy bonus when the entropy is given.
  """

  advantage: str = "grpo"
  std: str | None = "unbiased"
  std_eps: float = 1e-6
  scale: str = "group"
  eps_low: float = 0.2
  eps_high: float | None = None
  dual_clip: float | None = None
  level: str = "token"
  agg: str = "seq_mean_token_mean"
  norm_len: int | None = None
  beta: float = 0.04
  kl: str = "k3"
  kl_clamp: float | None = None
  entropy_coef: float = 0.0
  log_ratio_clamp: float | None = DEFAULT_LOG_RATIO_CLAMP

  def __post_init__(self):
    lookup(ADVANTAGE_ESTIMATORS, self.advantage, "advantage")
    lookup(AGGREGATIONS, self.agg, "agg")
    kl_estimator(self.kl, "kl")
    if canonical(self.level) not in IMPORTANCE_LEVELS:
      raise ValueError(f"level: expected one of {IMPORTANCE_LEVELS}, got {self.level!r}.")
    if self.std is not None and self.std not in ("unbiased", "population"):
      raise ValueError(f"std: expected 'unbiased', 'population' or None, got {self.std!r}.")
    if self.beta < 0:
      raise ValueError(f"beta: expected a non-negative KL weight, got {self.beta}.")


# Presets, each citing where its numbers come from.
VARIANTS: dict[str, GRPOConfig] = {
  # DeepSeekMath GRPO; beta 0.04 and eps 0.2 are tunix's defaults.
  "grpo": GRPOConfig(),
  # Dr. GRPO: no std, constant normalizer B * T (trl loss_type="dr_grpo"), no KL (as the paper trains).
  "dr_grpo": GRPOConfig(std=None, agg="seq_mean_token_sum_norm", beta=0.0),
  # DAPO: clip-higher 0.2 / 0.28, token-level loss, no KL.
  "dapo": GRPOConfig(eps_low=0.2, eps_high=0.28, agg="token_mean", beta=0.0),
  # GSPO: sequence ratio, eps_l 3e-4 / eps_r 4e-4 as in the paper, seq-mean-token-mean as verl, no KL.
  "gspo": GRPOConfig(level="sequence", eps_low=3e-4, eps_high=4e-4, beta=0.0),
  "gspo_token": GRPOConfig(level="sequence_token", eps_low=3e-4, eps_high=4e-4, beta=0.0),
}


def grpo_config(variant: str = "grpo", **overrides: Any) -> GRPOConfig:
  """The preset `variant` from `VARIANTS` with `overrides` applied, e.g. from a ConfigDict:
  `grpo_config(**config.rl)` where `config.rl = {"variant": "dapo", "beta": 0.01}`.
  """
  if "variant" in overrides:
    variant = overrides.pop("variant")
  base = lookup(VARIANTS, variant, "variant")
  fields = {field.name for field in dataclasses.fields(GRPOConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"overrides: expected fields of GRPOConfig {sorted(fields)}, got unknown {unknown}.")
  return dataclasses.replace(base, **overrides)


def grpo_advantages(
  rewards: Any, config: GRPOConfig, group_ids: Any = None, *, group_size: int | None = None, valid: Any = None,
) -> Array:
  """Advantages `[B]` from `rewards: [B]` with the estimator and normalisation chosen by `config`."""
  estimator = canonical(config.advantage)
  if estimator == "rloo":
    return rloo_advantages(rewards, group_ids, group_size=group_size, valid=valid)
  return group_advantages(
    rewards, group_ids, group_size=group_size, std=config.std, eps=config.std_eps, scale=config.scale, valid=valid,
  )


@functools.partial(jax.jit, static_argnames=("config",))
def grpo_loss(
  logp: Any,
  old_logp: Any,
  advantages: Any,
  mask: Any,
  *,
  ref_logp: Any = None,
  entropy: Any = None,
  config: GRPOConfig = GRPOConfig(),  # noqa: B008 (frozen, immutable default)
  global_token_count: Any = None,
  global_seq_count: Any = None,
) -> tuple[Array, dict[str, Array]]:
  """The GRPO-family loss for one (micro)batch: clipped surrogate + beta * KL_to_ref - entropy_coef * entropy.

  Args:
    logp, old_logp, advantages, mask: as in `policy_loss` (old_logp None = on-policy).
    ref_logp: [B, T] log pi_ref of the sampled tokens; required when `config.beta > 0`, otherwise only logged.
    entropy: optional [B, T] per-token policy entropy; logged, and used when `config.entropy_coef != 0`.
    config: a `GRPOConfig` (e.g. `grpo_config("dapo")`); static under jit.
    global_token_count, global_seq_count: counts of the whole optimizer batch under gradient accumulation.

  Returns:
    (loss, metrics): the scalar to minimise and the `policy_loss` metrics plus `loss`, `pg_loss`, and, when their
    inputs are given, `kl` (token mean of the per-token KL to the reference), `kl_loss` (aggregated like the loss)
    and `entropy` (token mean).
  """
  if config.beta > 0 and ref_logp is None:
    raise ValueError(f"ref_logp: expected [B, T] reference log-probs because config.beta={config.beta} > 0, got None.")
  logp = float_array(logp, "logp")
  check_rank(logp, "logp", 2, "[B, T]")
  mask_b = bool_mask(mask, "mask", logp.shape)
  counts = dict(global_token_count=global_token_count, global_seq_count=global_seq_count)
  pg_loss, metrics = policy_loss(
    logp, old_logp, advantages, mask_b, eps_low=config.eps_low, eps_high=config.eps_high, dual_clip=config.dual_clip,
    level=config.level, agg=config.agg, norm_len=config.norm_len, log_ratio_clamp=config.log_ratio_clamp, **counts,
  )
  loss = pg_loss
  metrics = {**metrics, "pg_loss": pg_loss}
  if ref_logp is not None:
    kl = kl_penalty(logp, ref_logp, config.kl, config.kl_clamp, mask=mask_b)
    kl_loss = aggregate(kl, mask_b, config.agg, norm_len=config.norm_len, **counts)
    if config.beta > 0:
      loss = loss + config.beta * kl_loss
    metrics["kl"] = _masked_token_mean(jax.lax.stop_gradient(kl), mask_b)
    metrics["kl_loss"] = kl_loss
  if entropy is not None:
    entropy = float_array(entropy, "entropy")
    check_shape(entropy, "entropy", logp.shape)
    if config.entropy_coef != 0.0:
      loss = loss - config.entropy_coef * aggregate(entropy, mask_b, config.agg, norm_len=config.norm_len, **counts)
    metrics["entropy"] = _masked_token_mean(jax.lax.stop_gradient(entropy), mask_b)
  metrics["loss"] = loss
  return loss, metrics
