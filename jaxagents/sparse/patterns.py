"""The pattern table: names, parameters and block candidates of every head pattern (MMInference,
arXiv 2504.16083; the config's `"pattern": "grid|vertical_slash|a_shape|block_topk|dense"`, see `config.py`).

`pattern_blocks` evaluates one pattern on tokens in slot order, optionally restricted to the query rows and
keys of one modality (pair); the boundary builder (`modality.py`) unions those per-modality candidates.
"""

import jax
import jax.numpy as jnp

from jaxagents.sparse.a_shape import a_shape_blocks, a_shape_budget, check_a_shape_params
from jaxagents.sparse.block_topk import block_topk_blocks, check_topk, pooled_scores
from jaxagents.sparse.estimate import (
  LAST_Q,
  Estimate,
  check_last_q,
  estimate_logits,
  estimation_rows,
  line_sums,
)
from jaxagents.sparse.grid import check_strides, grid_budget
from jaxagents.sparse.layouts import Frame, budget_blocks
from jaxagents.sparse.vertical_slash import (
  FORCED_COLUMNS,
  FORCED_DIAGONALS,
  check_vertical_slash_params,
  slash_from_diagonals,
  slash_from_rows,
  vertical_slash_blocks,
  vertical_slash_budget,
)

# pattern -> (required params, optional params with defaults); every pattern also takes `max_blocks`.
PATTERNS: dict[str, tuple[tuple[str, ...], dict]] = {
  "dense": ((), {}),
  "a_shape": (("n_init", "n_local"), {}),
  "vertical_slash": (
    ("v_size", "s_size"),
    {"last_q": LAST_Q, "n_forced_vertical": FORCED_COLUMNS, "n_forced_slash": FORCED_DIAGONALS},
  ),
  "block_topk": (("topk",), {}),
  "grid": (("strides",), {"last_q": LAST_Q}),
}


def check_pattern(fn: str, pattern, params, seq_len: int) -> dict:
  """Validates a pattern name and its params; returns the params with defaults filled in (max_blocks removed)."""
  if pattern not in PATTERNS:
    raise ValueError(f"{fn}: `pattern` must be one of {sorted(PATTERNS)}, got {pattern!r}")
  required, optional = PATTERNS[pattern]
  params = dict(params or {})
  params.pop("max_blocks", None)
  missing = [name for name in required if name not in params]
  unknown = sorted(set(params) - set(required) - set(optional))
  if missing or unknown:
    raise ValueError(
      f"{fn}: pattern {pattern!r} takes params {list(required)} (required), {sorted(optional)} and max_blocks, "
      f"got missing {missing}, unknown {unknown}"
    )
  params = {**optional, **params}
  if pattern == "a_shape":
    check_a_shape_params(fn, params["n_init"], params["n_local"])
  elif pattern == "vertical_slash":
    check_last_q(fn, params["last_q"], seq_len)
    check_vertical_slash_params(
      fn, seq_len, params["v_size"], params["s_size"], params["n_forced_vertical"], params["n_forced_slash"]
    )
  elif pattern == "block_topk":
    check_topk(fn, params["topk"])
  elif pattern == "grid":
    check_last_q(fn, params["last_q"], seq_len)
    params["strides"] = check_strides(fn, params["strides"], seq_len)
  return params


def pattern_budget(pattern: str, params: dict, seq_len: int, block_q: int, block_kv: int) -> int:
  """The pattern's default MAXN (key blocks a query block can need); NK for dense."""
  if pattern == "a_shape":
    return a_shape_budget(params["n_init"], params["n_local"], block_q, block_kv)
  if pattern == "vertical_slash":
    return vertical_slash_budget(params["v_size"], params["s_size"], block_q, block_kv)
  if pattern == "block_topk":
    return budget_blocks(params["topk"] * block_kv, block_q, block_kv)
  if pattern == "grid":
    return grid_budget(seq_len, params["strides"], block_q, block_kv)
  return seq_len // block_kv


def _rows_in_slots(q: jax.Array, q_perm: jax.Array, rows: jax.Array) -> jax.Array:
  """q [B, S, H, D] (original order) at the query slots `rows` [B, R] of the permutation q_perm [B, S]:
  [B, R, H, D], a gather of R rows (the permuted q is never built)."""
  tokens = jnp.take_along_axis(q_perm, rows, axis=-1)
  return jnp.take_along_axis(q, tokens[:, :, None, None], axis=1)


def pattern_blocks(
  pattern: str,
  params: dict,
  *,
  q: jax.Array,
  k: jax.Array,
  frame: Frame,
  segment_end: jax.Array,
  q_ok: jax.Array,
  key_groups: jax.Array | None,
  key_group: int | None,
  allowed: jax.Array,
  sm_scale: float,
  estimates: dict | None = None,
  rows_key=None,
  q_perm: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks (bool [B, H, NQ, NK], within `allowed`) and scores of one non-grid pattern.

  Args:
    pattern, params: a checked entry of PATTERNS (not 'grid').
    q: [B, S, Hq, D] in slot order, or in the original order with `q_perm` [B, S] (slot -> token; the
      vertical-slash estimate then gathers its rows only); k: [B, T, Hkv, D] in slot order.
    frame: token placement, arrays [B, 1, N] (shared by every head).
    segment_end: int [B], exclusive end slot of the rows whose last `last_q` queries are the estimate.
    q_ok: bool [B, S], query slots the pattern serves (estimation rows outside it are ignored).
    key_groups, key_group: bool [G, B, T] and an index into G, or None: the pattern picks only the keys of group
      `key_group` (vertical-slash sums); the diagonal sums of every group come from one pass and are cached.
    allowed: bool [B, 1, NQ, NK], block region of the pattern (a modality sub-block).
    sm_scale: score scale of the estimate.
    estimates, rows_key: a dict shared by the calls of one layout and a hashable name of `segment_end` (e.g. the
      query modality): calls with equal rows reuse one estimate and its line sums, as the 2D boundary's (a, b)
      sub-blocks of one query modality a do.
  """
  if pattern == "dense":
    mask, score = allowed, jnp.zeros(allowed.shape, jnp.float32)
  elif pattern == "a_shape":
    mask, score = a_shape_blocks(frame, params["n_init"], params["n_local"])
  elif pattern == "block_topk":
    q_slots = q if q_perm is None else jnp.take_along_axis(q, q_perm[:, :, None, None], axis=1)
    scores = pooled_scores(q_slots, k, frame.block_q, frame.block_kv, sm_scale)
    mask, score = block_topk_blocks(scores, frame, params["topk"], allowed=allowed)
  elif pattern == "vertical_slash":
    last_q = params["last_q"]
    rows = estimation_rows(segment_end, last_q, q.shape[1])  # [B, R]
    key = None if estimates is None or rows_key is None else (rows_key, last_q)
    groups = None if key_groups is None else key_groups[:, :, None]  # [G, B, 1, T]
    if key is not None and key in estimates:
      estimate, row_weight, column, diagonal = estimates[key]
    else:
      row_positions = jnp.take_along_axis(frame.q_positions[:, 0], rows, axis=-1)
      visible = frame.kv_positions[:, :, None, :] <= row_positions[:, None, :, None] if frame.causal else True
      q_rows = q if q_perm is None else _rows_in_slots(q, q_perm, rows)
      estimate = Estimate(estimate_logits(q_rows, k, 0 if q_perm is not None else rows[:, 0], last_q),
                          jnp.asarray(visible), sm_scale)
      row_weight = jnp.take_along_axis(q_ok, rows, axis=-1).astype(jnp.float32)[:, None]  # [B, 1, R]
      column, diagonal = line_sums(estimate, row_weight, groups) if frame.slot_coords else (None, None)
      if key is not None:
        estimates[key] = estimate, row_weight, column, diagonal
    key_mask = None if groups is None else groups[key_group]
    if frame.slot_coords:  # consecutive rows at consecutive coordinates: shifted adds
      slash = slash_from_diagonals(diagonal if groups is None else diagonal[key_group], rows[:, None, 0], last_q)
    else:
      probs = estimate.probabilities() * row_weight[..., None]
      column = jnp.sum(probs, axis=-2)
      masked = probs if key_mask is None else jnp.where(key_mask[..., None, :], probs, 0.0)
      slash = slash_from_rows(masked, jnp.take_along_axis(frame.q_coords[:, 0], rows, axis=-1)[:, None])
    vertical = column if key_mask is None else jnp.where(key_mask, column, 0.0)
    mask, score = vertical_slash_blocks(
      vertical,
      slash,
      frame,
      params["v_size"],
      params["s_size"],
      num_rows=last_q,
      key_ok=key_mask,
      n_forced_vertical=params["n_forced_vertical"],
      n_forced_slash=params["n_forced_slash"],
    )
  else:
    raise ValueError(f"pattern_blocks: pattern {pattern!r} cannot serve a modality sub-block")
  return mask & allowed, score
