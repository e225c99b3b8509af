"""VGS: Visual Gradient Steering for on-policy distillation of VLMs (arXiv 2606.00564), losses and optax transform.

The paper's code is not public; an unofficial port is zsxm1998/awesome-perception-aware-rlvr
`examples/reproduction/vgs/`. Implemented:

* the decomposed distillation terms, each a per-token full-vocabulary reverse KL averaged over the trajectory:
  ℓ_Std = KL(p_S(·|I,x) ‖ q_T(·|I,x)) (Eq. 3), the language prior ℓ_Lang = KL(p_S(·|x) ‖ q_T(·|x)) (Eq. 6–7), the
  visual grounding ℓ_Vis = KL(p_S(·|I,x) ‖ q*) with log q* = log p_S(·|x) + log q_T(·|I,x) − log q_T(·|x) − log Z*
  (Eq. 9–11), the teacher's Visual Dependency Score VDS_t = KL(q_T(·|I,x) ‖ q_T(·|x)) (Eq. 12) and the
  language-preservation term ℓ_LP = 1/|τ| Σ_t 1[VDS_t > Q_0.7]·KL(p_S(·|x) ‖ q_T(·|x)) (Eq. 16);
* the objective η·(ℓ_Std + γ ℓ_Vis + λ ℓ_LP) (Eq. 13–18) and its adaptive-γ variant (App. E);
* the paper's steering rule on gradients: out = η·(g_Std + γ g_Vis) + λ·η·g_LP with the norm-preserving
  η = ‖g_Std‖ / ‖g_Std + γ g_Vis‖ (Eq. 15) or a constant η (App. A), as a pure function on two pytrees and as an
  `optax.GradientTransformationExtraArgs`. Optionally (`project_conflicts=True`, not the paper's method) the component
  of g_Std that conflicts with g_Vis is first projected out, PCGrad-style: g ← g − min(0, ⟨g, g_Vis⟩/‖g_Vis‖²)·g_Vis;
* `two_grads`: the gradients of two losses from one forward pass (one `jax.vjp`, vmapped over the two cotangents).

Reconstructions: p_S(·|x) inside q* is detached (the paper is silent; the unofficial port detaches it); the Q_0.7
gate is taken over the tokens of the arrays passed in (one micro-batch) unless a scope mask or a precomputed
threshold is given; quantiles use linear interpolation (numpy's default); η EMAs are running means for the first
1/(1 − decay) steps, then EMAs. Teacher logits are stop-gradient; all softmaxes and KLs run in fp32.

Shapes: logits [B, T, V] (position t predicts response token t), mask [B, T].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

_AGGREGATIONS = ("seq_mean_token_mean", "token_mean")
# Log-probs are floored here: fp32 exp underflows far above it, so nothing representable changes, but −inf logits
# (banned or padded vocabulary entries) give finite KLs and no −inf − (−inf) inside q*.
_LOG_FLOOR = -1e4


def _log_probs(logits: jax.Array) -> jax.Array:
  return jnp.maximum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), _LOG_FLOOR)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p ‖ q) over the last axis from (floored) log-probs; terms with p = 0 count 0; clamped at 0."""
  p = jnp.exp(log_p)
  diff = jnp.where(p > 0, log_p - log_q, 0.0)
  return jnp.maximum(jnp.sum(p * diff, axis=-1), 0.0)


def _token_divergences(s_img, s_txt, t_img, t_txt) -> dict[str, jax.Array]:
  """[N, V] logits of the four views -> per-token KLs [N]."""
  log_s_img, log_s_txt = _log_probs(s_img), _log_probs(s_txt)
  log_t_img, log_t_txt = _log_probs(jax.lax.stop_gradient(t_img)), _log_probs(jax.lax.stop_gradient(t_txt))
  log_target = jax.nn.log_softmax(jax.lax.stop_gradient(log_s_txt) + log_t_img - log_t_txt, axis=-1)
  return {
    "kl_std": _kl(log_s_img, log_t_img),
    "kl_vis": _kl(log_s_img, log_target),
    "kl_lang": _kl(log_s_txt, log_t_txt),
    "vds": _kl(log_t_img, log_t_txt),
  }


def reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Per-token KL(softmax(student) ‖ softmax(teacher)) over the last (vocabulary) axis, in fp32. [..., V] -> [...]."""
  student_logits, teacher_logits = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}."
    )
  return _kl(_log_probs(student_logits), _log_probs(jax.lax.stop_gradient(teacher_logits)))


def masked_quantile(values: jax.Array, mask: jax.Array, q: float) -> jax.Array:
  """The q-quantile of the masked entries with linear interpolation (numpy's default method); +inf if none."""
  values, mask = jnp.asarray(values), jnp.asarray(mask)
  if values.shape != mask.shape:
    raise ValueError(f"mask: expected the shape of values {tuple(values.shape)}, got {tuple(mask.shape)}.")
  valid = mask.astype(bool).ravel()
  ordered = jnp.sort(jnp.where(valid, values.astype(jnp.float32).ravel(), jnp.inf))
  count = jnp.sum(valid)
  pos = q * jnp.maximum(count - 1, 0).astype(jnp.float32)
  low = jnp.floor(pos).astype(jnp.int32)
  high = jnp.minimum(low + 1, jnp.maximum(count - 1, 0))
  frac = pos - low
  interpolated = jnp.where(frac > 0, ordered[low] + frac * (ordered[high] - ordered[low]), ordered[low])
  return jnp.where(count > 0, interpolated, jnp.inf)


def _token_weights(mask: jax.Array, agg: str) -> jax.Array:
  """[B, T] weights w with loss = Σ w·ℓ_t; rows with an empty mask drop out of the sequence mean."""
  mask = mask.astype(jnp.float32)
  if agg == "token_mean":
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  lengths = jnp.sum(mask, axis=1, keepdims=True)
  num_rows = jnp.maximum(jnp.sum(lengths > 0), 1)
  return mask / jnp.maximum(lengths, 1.0) / num_rows


def vgs_terms(
  s_img: jax.Array,
  s_txt: jax.Array,
  t_img: jax.Array,
  t_txt: jax.Array,
  mask: jax.Array,
  *,
  quantile: float = 0.7,
  low_quantile: float = 0.4,
  quantile_scope_mask: jax.Array | None = None,
  vds_threshold: jax.Array | float | None = None,
  agg: str = "seq_mean_token_mean",
  token_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """The VGS loss terms from the student (s_*) and teacher (t_*) logits with (img) and without (txt) the image.

  s_img, s_txt, t_img, t_txt: [B, T, V]; mask: [B, T]. The Q_`quantile` gate of ℓ_LP and the adaptive-γ
  Q_`low_quantile` are taken over the VDS of `quantile_scope_mask` (default: `mask`); `vds_threshold` overrides the
  gate's threshold (e.g. computed over a whole step). `agg`: "seq_mean_token_mean" (the paper's 1/|τ| Σ_t, then the
  mean over rollouts) or "token_mean" (TRL's). `token_chunk` processes the B·T tokens in chunks of that many, with
  rematerialisation, so only [chunk, V] temporaries live at once.
  Returns scalars std, vis, lang, lp, vds_threshold, vds_threshold_low and [B, T] arrays kl_std, kl_vis, kl_lang,
  vds, gate (bool), token_weights.
  """
  views = [jnp.asarray(x) for x in (s_img, s_txt, t_img, t_txt)]
  mask = jnp.asarray(mask)
  if views[0].ndim != 3:
    raise ValueError(f"s_img: expected rank 3 [B, T, V], got shape {tuple(views[0].shape)}.")
  for name, view in zip(("s_txt", "t_img", "t_txt"), views[1:]):
    if view.shape != views[0].shape:
      raise ValueError(f"{name}: expected the shape of s_img {tuple(views[0].shape)}, got {tuple(view.shape)}.")
  batch, length, vocab = views[0].shape
  if mask.shape != (batch, length):
    raise ValueError(f"mask: expected shape {(batch, length)} ([B, T]), got {tuple(mask.shape)}.")
  if agg not in _AGGREGATIONS:
    raise ValueError(f"agg: expected one of {_AGGREGATIONS}, got {agg!r}.")
  if not 0.0 <= quantile <= 1.0 or not 0.0 <= low_quantile <= quantile:
    raise ValueError(
      f"quantile, low_quantile: expected 0 <= low_quantile <= quantile <= 1, got {low_quantile}, {quantile}."
    )

  flat = [view.reshape(batch * length, vocab) for view in views]
  if token_chunk is None or token_chunk >= batch * length:
    per_token = _token_divergences(*flat)
  else:
    if token_chunk < 1:
      raise ValueError(f"token_chunk: expected a positive integer or None, got {token_chunk}.")
    num_chunks = -(-batch * length // token_chunk)
    padding = num_chunks * token_chunk - batch * length
    chunks = [jnp.pad(x, ((0, padding), (0, 0))).reshape(num_chunks, token_chunk, vocab) for x in flat]
    per_chunk = jax.lax.map(lambda xs: jax.checkpoint(_token_divergences)(*xs), tuple(chunks))
    per_token = {name: value.reshape(-1)[: batch * length] for name, value in per_chunk.items()}
  valid = mask.astype(bool)
  per_token = {name: jnp.where(valid, value.reshape(batch, length), 0.0) for name, value in per_token.items()}

  scope = valid if quantile_scope_mask is None else jnp.asarray(quantile_scope_mask).astype(bool)
  if scope.shape != (batch, length):
    raise ValueError(f"quantile_scope_mask: expected shape {(batch, length)} ([B, T]), got {tuple(scope.shape)}.")
  vds = jax.lax.stop_gradient(per_token["vds"])
  if vds_threshold is None:
    threshold = masked_quantile(vds, scope, quantile)
  else:
    threshold = jnp.asarray(vds_threshold, jnp.float32)
  threshold_low = masked_quantile(vds, scope, low_quantile)
  gate = valid & (vds > threshold)

  weights = _token_weights(mask, agg)
  return {
    "std": jnp.sum(weights * per_token["kl_std"]),
    "vis": jnp.sum(weights * per_token["kl_vis"]),
    "lang": jnp.sum(weights * per_token["kl_lang"]),
    "lp": jnp.sum(weights * jnp.where(gate, per_token["kl_lang"], 0.0)),
    "vds_threshold": threshold,
    "vds_threshold_low": threshold_low,
    "kl_std": per_token["kl_std"],
    "kl_vis": per_token["kl_vis"],
    "kl_lang": per_token["kl_lang"],
    "vds": vds,
    "gate": gate,
    "token_weights": weights,
  }


def vgs_loss(
  terms: dict[str, jax.Array], *, gamma: float = 2.0, lam: float = 0.01, eta: float = 1.0, adaptive: bool = False
) -> jax.Array:
  """L_VGS-LP = η·(ℓ_Std + γ ℓ_Vis + λ ℓ_LP) (Eq. 18) from `vgs_terms`. The paper: γ = 2, λ = 0.01, η = 0.41 (2B
  student) or 0.36 (4B). `adaptive` uses γ_t = 0 / γ/2 / γ for VDS_t ≤ Q_0.4 / ≤ Q_0.7 / above (App. E)."""
  if adaptive:
    vds = terms["vds"]
    gamma_t = jnp.where(
      vds > terms["vds_threshold"], gamma, jnp.where(vds > terms["vds_threshold_low"], 0.5 * gamma, 0.0)
    )
    visual = jnp.sum(terms["token_weights"] * gamma_t * terms["kl_vis"])
  else:
    visual = gamma * terms["vis"]
  return eta * (terms["std"] + visual + lam * terms["lp"])


def _tree_vdot(a: Any, b: Any) -> jax.Array:
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b))
  return sum(leaves, jnp.zeros((), jnp.float32))


def _tree_norm(a: Any) -> jax.Array:
  return jnp.sqrt(_tree_vdot(a, a))


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  positive = den > 0
  return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _axpy(a: jax.Array, x: Any, y: Any) -> Any:
  """a·x + y leaf-wise, computed in fp32 and cast back to y's dtype."""
  return jax.tree.map(lambda xi, yi: (a * xi.astype(jnp.float32) + yi.astype(jnp.float32)).astype(yi.dtype), x, y)


def project_conflict(grads: Any, reference: Any) -> Any:
  """PCGrad's projection (not the paper's method): grads − min(0, ⟨grads, ref⟩ / ‖ref‖²)·ref, so the result never
  points against `reference`; unchanged when they do not conflict or `reference` is 0."""
  grads, reference = jax.tree.map(jnp.asarray, grads), jax.tree.map(jnp.asarray, reference)
  dot = _tree_vdot(grads, reference)
  coef = jnp.minimum(_safe_div(dot, _tree_vdot(reference, reference)), 0.0)
  return _axpy(-coef, reference, grads)


def steer_gradients(
  g_std: Any,
  g_vis: Any,
  *,
  gamma: float,
  eta: str | float = "dynamic",
  lam: float = 0.0,
  g_lp: Any = None,
  project_conflicts: bool = False,
) -> tuple[Any, dict[str, jax.Array]]:
  """Visual gradient steering on two gradient pytrees of the same structure (Eq. 13–15).

  out = η·(g + γ g_vis) + λ·η·g_lp, where g = g_std (or `project_conflict(g_std, g_vis)` when `project_conflicts`)
  and η = ‖g_std‖ / ‖g + γ g_vis‖ with eta="dynamic" (global norms; 0 when the denominator is 0) or the given
  constant. Returns (out, stats) with scalar stats eta (applied), eta_dynamic (the norm ratio, whatever `eta` is),
  norm_std, norm_vis, cos_std_vis, cos_out_vis.
  """
  if isinstance(eta, str) and eta != "dynamic":
    raise ValueError(f"eta: expected 'dynamic' or a number, got {eta!r}.")
  return _steer(g_std, g_vis, gamma, None if isinstance(eta, str) else eta, lam, g_lp, project_conflicts)


def _steer(g_std, g_vis, gamma, eta, lam, g_lp, project_conflicts, frozen=None):
  """`steer_gradients` with eta None (dynamic) or a value; where `frozen` (a bool scalar), η = eta instead."""
  if jax.tree.structure(g_std) != jax.tree.structure(g_vis):
    raise ValueError(
      f"g_vis: expected the pytree structure of g_std {jax.tree.structure(g_std)}, got {jax.tree.structure(g_vis)}."
    )
  if g_lp is not None and jax.tree.structure(g_lp) != jax.tree.structure(g_std):
    raise ValueError(
      f"g_lp: expected the pytree structure of g_std {jax.tree.structure(g_std)}, got {jax.tree.structure(g_lp)}."
    )
  g_std, g_vis = jax.tree.map(jnp.asarray, g_std), jax.tree.map(jnp.asarray, g_vis)
  base = project_conflict(g_std, g_vis) if project_conflicts else g_std
  combined = jax.tree.map(lambda b, v: b.astype(jnp.float32) + gamma * v.astype(jnp.float32), base, g_vis)
  norm_std, norm_vis = _tree_norm(g_std), _tree_norm(g_vis)
  eta_dynamic = _safe_div(norm_std, _tree_norm(combined))
  if eta is None:
    scale = eta_dynamic
  elif frozen is None:
    scale = jnp.asarray(eta, jnp.float32)
  else:
    scale = jnp.where(frozen, jnp.asarray(eta, jnp.float32), eta_dynamic)
  out = jax.tree.map(lambda c, g: (scale * c).astype(g.dtype), combined, g_std)
  if g_lp is not None:
    out = _axpy(lam * scale, g_lp, out)
  stats = {
    "eta": scale,
    "eta_dynamic": eta_dynamic,
    "norm_std": norm_std,
    "norm_vis": norm_vis,
    "cos_std_vis": _safe_div(_tree_vdot(g_std, g_vis), norm_std * norm_vis),
    "cos_out_vis": _safe_div(_tree_vdot(out, g_vis), _tree_norm(out) * norm_vis),
  }
  return out, stats


class VGSState(NamedTuple):
  """count: steps seen; the rest are fp32 EMAs (running means early on) of η, ‖g_std‖, ‖g_vis‖, cos(g_std, g_vis).
  `eta_ema` stops moving once η is frozen."""

  count: jax.Array
  eta_ema: jax.Array
  norm_std_ema: jax.Array
  norm_vis_ema: jax.Array
  cos_ema: jax.Array


def vgs_steering(
  gamma: float,
  *,
  eta: str | float = "dynamic",
  lam: float = 0.0,
  project_conflicts: bool = False,
  ema_decay: float = 0.99,
  freeze_eta_after: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """`steer_gradients` as an optax transform: `update(g_std, state, params=None, *, g_vis, g_lp=None)`.

  With eta="dynamic" and `freeze_eta_after=N`, the first N steps use the per-step η and from then on the EMA of
  those η, frozen (App. A: "η is a constant in practice"). Compose as
  `optax.chain(vgs_steering(2.0), optax.clip_by_global_norm(1.0), optax.adamw(1e-6, weight_decay=1e-2))`:
  `chain` forwards g_vis and g_lp to this transform only, and clipping after steering keeps TRL's order.
  """
  if isinstance(eta, str) and eta != "dynamic":
    raise ValueError(f"eta: expected 'dynamic' or a number, got {eta!r}.")
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay: expected a value in [0, 1), got {ema_decay}.")
  if freeze_eta_after is not None and (not isinstance(eta, str) or freeze_eta_after < 1):
    raise ValueError(f"freeze_eta_after: expected None, or an integer >= 1 with eta='dynamic', got {freeze_eta_after}.")

  def init_fn(params):
    del params
    zero = jnp.zeros((), jnp.float32)
    return VGSState(jnp.zeros((), jnp.int32), zero, zero, zero, zero)

  def update_fn(updates, state, params=None, *, g_vis=None, g_lp=None, **extra_args):
    del params, extra_args
    if g_vis is None:
      raise ValueError("g_vis: expected the visual-term gradient pytree as a keyword argument, got None.")
    if freeze_eta_after is None:
      frozen, eta_value = None, None if isinstance(eta, str) else eta
    else:
      frozen, eta_value = state.count >= freeze_eta_after, state.eta_ema
    out, stats = _steer(updates, g_vis, gamma, eta_value, lam, g_lp, project_conflicts, frozen)
    count = state.count + 1
    rate = jnp.maximum(1.0 - ema_decay, 1.0 / count.astype(jnp.float32))

    def ema(old, new):
      return old + rate * (new - old)

    eta_ema = ema(state.eta_ema, stats["eta_dynamic"])
    if frozen is not None:
      eta_ema = jnp.where(frozen, state.eta_ema, eta_ema)
    new_state = VGSState(
      count, eta_ema, ema(state.norm_std_ema, stats["norm_std"]), ema(state.norm_vis_ema, stats["norm_vis"]),
      ema(state.cos_ema, stats["cos_std_vis"]),
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def value_and_two_grads(
  loss2_fn: Callable[..., jax.Array], params: Any, *args: Any
) -> tuple[jax.Array, tuple[Any, Any]]:
  """Both gradients of a 2-vector of losses from one forward pass: `jax.vjp` once, its pullback vmapped over the
  cotangents e₁, e₂. loss2_fn(params, *args) -> [2] (e.g. [ℓ_Std, ℓ_Vis]). Returns (losses [2], (g1, g2))."""
  losses, pullback = jax.vjp(lambda p: loss2_fn(p, *args), params)
  if losses.shape != (2,):
    raise ValueError(f"loss2_fn: expected a [2] vector of losses, got shape {tuple(losses.shape)}.")
  (stacked,) = jax.vmap(pullback)(jnp.eye(2, dtype=losses.dtype))
  return losses, (jax.tree.map(lambda g: g[0], stacked), jax.tree.map(lambda g: g[1], stacked))


def two_grads(loss2_fn: Callable[..., jax.Array], params: Any, *args: Any) -> tuple[Any, Any]:
  """(∇ loss2_fn[0], ∇ loss2_fn[1]) with one shared forward pass; see `value_and_two_grads`."""
  return value_and_two_grads(loss2_fn, params, *args)[1]
