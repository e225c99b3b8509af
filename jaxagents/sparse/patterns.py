"""The pattern table: names, parameters and block candidates of every head pattern (MMInference,
arXiv 2504.16083; the config's `"pattern": "grid|vertical_slash|a_shape|block_topk|dense"`, see `config.py`).

`pattern_blocks` evaluates one pattern on tokens in slot order, optionally restricted to the query rows and
keys of one modality (pair); the boundary builder (`modality.py`) unions those per-modality candidates.
"""

import jax
import jax.numpy as jnp

from jaxagents.sparse.a_shape import a_shape_blocks, check_a_shape_params
from jaxagents.sparse.block_topk import block_topk_blocks, check_topk
from jaxagents.sparse.estimate import LAST_Q, attention_estimate, check_last_q, estimation_rows
from jaxagents.sparse.grid import check_strides
from jaxagents.sparse.layouts import Frame
from jaxagents.sparse.vertical_slash import (
  FORCED_COLUMNS,
  FORCED_DIAGONALS,
  check_vertical_slash_params,
  vertical_slash_blocks,
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


def pattern_blocks(
  pattern: str,
  params: dict,
  *,
  q: jax.Array,
  k: jax.Array,
  frame: Frame,
  segment_end: jax.Array,
  q_ok: jax.Array,
  key_ok: jax.Array | None,
  allowed: jax.Array,
  sm_scale: float,
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks (bool [B, H, NQ, NK], within `allowed`) and scores of one non-grid pattern.

  Args:
    pattern, params: a checked entry of PATTERNS (not 'grid').
    q: [B, H, S, D], k: [B, H, T, D] in slot order.
    frame: token placement.
    segment_end: int [B, H], exclusive end slot of the rows whose last `last_q` queries are the estimate.
    q_ok: bool [B, H, S], query slots the pattern serves (estimation rows outside it are ignored).
    key_ok: bool [B, H, T] or None, keys the pattern may pick (vertical-slash sums).
    allowed: bool [B, H, NQ, NK], block region of the pattern (a modality sub-block).
    sm_scale: score scale of the estimate.
  """
  if pattern == "dense":
    mask, score = allowed, jnp.zeros(allowed.shape, jnp.float32)
  elif pattern == "a_shape":
    mask, score = a_shape_blocks(frame, params["n_init"], params["n_local"])
  elif pattern == "block_topk":
    mask, score = block_topk_blocks(q, k, frame, params["topk"], sm_scale, allowed=allowed)
  elif pattern == "vertical_slash":
    rows = estimation_rows(segment_end, params["last_q"], q.shape[2])
    probs = attention_estimate(q, k, rows, frame, sm_scale)
    mask, score = vertical_slash_blocks(
      probs,
      jnp.take_along_axis(frame.q_coords, rows, axis=-1),
      jnp.take_along_axis(q_ok, rows, axis=-1).astype(jnp.float32),
      frame,
      params["v_size"],
      params["s_size"],
      key_ok=key_ok,
      n_forced_vertical=params["n_forced_vertical"],
      n_forced_slash=params["n_forced_slash"],
    )
  else:
    raise ValueError(f"pattern_blocks: pattern {pattern!r} cannot serve a modality sub-block")
  return mask & allowed, score
