"""Vertical-slash heads: the top key columns and top diagonals of the last-queries estimate (MInference 1.0,
arXiv 2407.02490; microsoft/MInference `minference/modules/minference_forward.py` `vertical_and_slash_kernel` and
`csrc/vertical_slash_index.cu` `convert_vertical_slash_indexes`).

From A_hat [R, T] (`estimate.py`), in key-slot coordinates (see `layouts.py`):

    vertical[t] = sum_r A_hat[r, t]                            (+ boost for t < n_forced_vertical)
    slash[o]    = sum_r A_hat[r, q_coord_r - o]                (+ boost for 0 <= o < n_forced_slash)
    columns     = top-v_size of vertical;  offsets = top-s_size of slash

MInference forces the first 30 columns and the last 100 diagonals (offsets 0..99) with +inf; here they get a
boost above any unforced sum, which ranks them first the same way. Slash offset o covers, for query block i
with coordinates [lo_i, hi_i], the keys [lo_i - o, hi_i - o], i.e. a run of key blocks (the merged
`block_offset` ranges of `convert_vertical_slash_indexes`). Offsets run over (-T, T) so that permuted frames,
where a causally visible key may sit at a later slot, are covered too.

Deviation: MInference serves vertical columns that fall outside the slash blocks through a separate gathered
column path (`column_index`); `BlockLayout` has no column path yet (the kernels read block lists
only), so a selected column lists its whole key block. That is a superset of
MInference's pattern (more compute, never less accuracy).

Layout stage (`vertical_slash_layout`). A block pair's score is the chosen offsets' slash sum over the pair plus
its chosen columns' sum; MAXN keeps each row's best blocks. Without a permutation the slash part depends only on
the pair's block diagonal (and the row's phase when block_q != block_kv), so it is a per-head table of
P x (2NK - 1) entries (`diagonal_tables`), and a row's candidates are two short lists, as in
`convert_vertical_slash_indexes`: the distinct column blocks (one list per head, <= v_size) and the best block
diagonals of its window (one list per chunk of rows, MAXN + a few), ranked together by one sort per row
(`ranked_layout`). Memory traffic is O(NQ (v_size + MAXN)) per head instead of O(NQ NK) (at 1M tokens with
128-token blocks and MInference's (1000, 6096): lists of 2115 entries instead of rows of 8192). Where NK is the
shorter (up to ~256k tokens with those settings; at 128k MAXN = NK and nothing needs ranking), one [NQ, NK]
candidate row per query block is gathered from the same tables instead (`row_keys_layout`). Both list exactly
the blocks of the dense path they replace (`_vertical_slash_layout_dense`), overflowing rows included: the
per-pair scores are the same float32 operations.
"""

import functools

import jax
import jax.numpy as jnp

from jaxagents.sparse.estimate import (
  LAST_Q,
  Estimate,
  check_last_q,
  check_qk_shapes,
  estimate_logits,
  line_sums,
)
from jaxagents.sparse.layouts import (
  Frame,
  budget_blocks,
  check_blocks,
  finalize,
  identity_frame,
  offset_blocks,
)
from jaxagents.sparse.vertical_slash_lists import (
  RowGeometry,
  chunk_plan,
  diagonal_tables,
  ranked_layout,
  row_keys_layout,
)
from kernels_pallas.block_sparse import BlockLayout

FORCED_COLUMNS = 30  # MInference: vertical[..., :30] = inf
FORCED_DIAGONALS = 100  # MInference: slash[..., -100:] = inf (the 100 diagonals nearest the main one)


def check_vertical_slash_params(fn: str, kv_len: int, v_size, s_size, n_forced_vertical, n_forced_slash) -> None:
  for name, value, top in (("v_size", v_size, kv_len), ("s_size", s_size, 2 * kv_len - 1)):
    if not isinstance(value, int) or not 0 <= value <= top:
      raise ValueError(f"{fn}: `{name}` must be an int in [0, {top}] (T={kv_len}), got {value!r}")
  for name, value in (("n_forced_vertical", n_forced_vertical), ("n_forced_slash", n_forced_slash)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{fn}: `{name}` must be an int >= 0, got {value!r}")


def vertical_slash_budget(v_size: int, s_size: int, block_q: int, block_kv: int) -> int:
  """Default MAXN (capped at NK by the builders): a block per column (MInference gathers its v_size columns one
  by one; a block layout lists each column's whole block, and columns may sit in v_size different blocks), the
  s_size diagonals as one run of blocks (two more for the block boundaries it straddles), and the query block's
  own key blocks. For MInference's (1000, 6096) this is NK up to ~128k tokens with 128-token blocks; a smaller
  `max_blocks` keeps each row's highest-mass blocks."""
  return v_size + -(-s_size // block_kv) + 2 + budget_blocks(0, block_q, block_kv)


def slash_from_diagonals(diagonal: jax.Array, first_coord: jax.Array, num_rows: int) -> jax.Array:
  """Slash sums over offsets o in (-T, T), float32 [..., 2T - 1] at index o + T - 1, from `line_sums`'
  diagonal sums of rows at consecutive coordinates first_coord [...] + r:
  slash[o] = diagonal[first_coord - o + R - 1]."""
  kv_len = diagonal.shape[-1] - num_rows + 1
  offsets = jnp.arange(2 * kv_len - 1) - (kv_len - 1)
  index = first_coord[..., None] - offsets + num_rows - 1
  inside = (index >= 0) & (index < diagonal.shape[-1])
  picked = jnp.take_along_axis(diagonal, jnp.clip(index, 0, diagonal.shape[-1] - 1), axis=-1)
  return jnp.where(inside, picked, 0.0)


def slash_from_rows(probs: jax.Array, row_coords: jax.Array) -> jax.Array:
  """Slash sums float32 [..., 2T - 1] of rows at arbitrary coordinates row_coords [..., R] (a scatter over R x T:
  only for query-permuted frames, whose estimation rows do not sit at consecutive coordinates)."""
  *lead, _, kv_len = probs.shape
  row_coords = jnp.broadcast_to(row_coords, (*lead, row_coords.shape[-1]))
  offset_index = row_coords[..., None] - jnp.arange(kv_len) + kv_len - 1  # [..., R, T]
  flat = probs.reshape(-1, probs.shape[-2] * kv_len)
  index = offset_index.reshape(-1, flat.shape[-1])
  out = jax.vmap(lambda x, i: jnp.zeros(2 * kv_len - 1, jnp.float32).at[i].add(x))(flat, index)
  return out.reshape(*lead, 2 * kv_len - 1)


def _column_blocks(
  vertical: jax.Array, v_size: int, block_kv: int, num_kv_blocks: int, boost: float, key_ok, n_forced_vertical: int
) -> tuple[jax.Array, jax.Array]:
  """The top-v_size columns per key block: (column count int32 [B, H, NK], summed column score float32 [B, H, NK],
  the forced columns' boost included)."""
  batch, heads, kv_len = vertical.shape
  b, h = (x[..., None] for x in jnp.ogrid[:batch, :heads])
  vertical = vertical + boost * (jnp.arange(kv_len) < n_forced_vertical)
  if key_ok is not None:
    vertical = jnp.where(key_ok, vertical, -1.0)
  column_scores, columns = jax.lax.top_k(vertical, v_size)  # [B, H, V]
  picked = column_scores >= 0
  column_blocks = columns // block_kv
  counts = jnp.zeros((batch, heads, num_kv_blocks), jnp.int32).at[b, h, column_blocks].add(picked)
  weights = jnp.zeros((batch, heads, num_kv_blocks)).at[b, h, column_blocks].add(
    jnp.where(picked, column_scores, 0.0)
  )
  return counts, weights


def _chosen_offsets(slash: jax.Array, s_size: int, boost: float, n_forced_slash: int):
  """The top-s_size offsets: (their indices o + T - 1, int32 [B, H, K]; whether an offset is forced, bool [2T - 1];
  the unboosted slash table, float32 [B, H, 2T - 1], 0 where not chosen, whose prefix sums weigh the blocks)."""
  batch, heads, num_offsets = slash.shape
  kv_len = (num_offsets + 1) // 2
  b, h = (x[..., None] for x in jnp.ogrid[:batch, :heads])
  offsets = jnp.arange(num_offsets) - (kv_len - 1)
  forced = (offsets >= 0) & (offsets < n_forced_slash)
  slash_scores, slash_index = jax.lax.top_k(slash + boost * forced, s_size)  # [B, H, K]
  # The forced boost is counted separately, so the prefix sums over this table only add probabilities.
  unboosted = jnp.zeros((batch, heads, num_offsets)).at[b, h, slash_index].add(
    slash_scores - boost * forced[slash_index]
  )
  return slash_index, forced, unboosted


def vertical_slash_blocks(
  vertical: jax.Array,
  slash: jax.Array,
  frame: Frame,
  v_size: int,
  s_size: int,
  *,
  num_rows: int,
  key_ok: jax.Array | None = None,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks and scores of the vertical-slash pattern, dense over [NQ, NK] (any frame; the modality
  path's builder, and the reference of the unpermuted layout stage, `vertical_slash_layout`).

  Args:
    vertical: float32 [B, H, T], column sums of A_hat (`line_sums`).
    slash: float32 [B, H, 2T - 1], slash sums per offset o at index o + T - 1.
    frame: token placement.
    v_size, s_size: number of columns / diagonals kept.
    num_rows: R, the estimation rows (the forced columns and diagonals rank above any sum of R probabilities).
    key_ok: bool [B, H, T] or None; columns are picked among these keys only (a modality sub-block); the slash
      sums must already be restricted to them.
    n_forced_vertical, n_forced_slash: always-kept leading columns / diagonals.
  Returns:
    (bool [B, H, NQ, NK], float32 [B, H, NQ, NK]).
  """
  batch, heads, _ = vertical.shape
  boost = float(num_rows + 1)  # above any sum of R probabilities
  b, h = (x[..., None] for x in jnp.ogrid[:batch, :heads])
  column_counts, column_weight = _column_blocks(
    vertical, v_size, frame.block_kv, frame.shape[-1], boost, key_ok, n_forced_vertical
  )
  slash_index, forced, unboosted = _chosen_offsets(slash, s_size, boost, n_forced_slash)
  chosen = jnp.zeros(unboosted.shape, jnp.int32).at[b, h, slash_index].add(1)
  slash_weight, forced_count, slash_count = offset_blocks(frame, unboosted, chosen * forced, chosen)
  mask = (slash_count > 0) | (column_counts > 0)[..., None, :]
  return mask, slash_weight + boost * forced_count + column_weight[..., None, :]


@functools.partial(
  jax.jit,
  static_argnames=(
    "v_size",
    "s_size",
    "last_q",
    "block_q",
    "block_kv",
    "max_blocks",
    "causal",
    "sm_scale",
    "n_forced_vertical",
    "n_forced_slash",
  ),
)
def vertical_slash(
  q: jax.Array,
  k: jax.Array,
  v_size: int,
  s_size: int,
  *,
  last_q: int = LAST_Q,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  sm_scale: float | None = None,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
) -> BlockLayout:
  """Vertical-slash layout over unpermuted tokens, estimated from the last `last_q` queries.

  Args:
    q: [B, S, Hq, D]; k: [B, T, Hkv, D] with S == T.
    v_size, s_size: columns / diagonals kept (MInference default config: 1000, 6096).
    last_q: estimation rows (MInference: 64).
    block_q, block_kv: block sizes (MInference: 64 x 64).
    max_blocks: MAXN (static), default the blocks of the v_size + s_size key budget (`vertical_slash_budget`),
      at most NK; the diagonal block, then the highest-scoring blocks, are kept.
    causal: causal estimate and causal-valid blocks.
    sm_scale: default 1 / sqrt(D).
    n_forced_vertical, n_forced_slash: MInference's always-kept 30 first columns and 100 nearest diagonals.
  Returns:
    BlockLayout kv_blocks int32 [B, Hq, S / block_q, MAXN] (one layout per query head).
  """
  q, k = jnp.asarray(q), jnp.asarray(k)
  check_qk_shapes("vertical_slash", q.shape, k.shape)
  batch, q_len, heads, head_dim = q.shape
  budget = vertical_slash_budget(v_size, s_size, block_q, block_kv)
  max_blocks = check_blocks("vertical_slash", q_len, k.shape[1], block_q, block_kv, max_blocks, budget)
  check_last_q("vertical_slash", last_q, q_len)
  check_vertical_slash_params("vertical_slash", q_len, v_size, s_size, n_forced_vertical, n_forced_slash)
  vertical, slash = vertical_slash_sums(q, k, last_q=last_q, causal=causal, sm_scale=sm_scale)
  return vertical_slash_layout(
    vertical, slash, v_size, s_size, num_rows=last_q, block_q=block_q, block_kv=block_kv, max_blocks=max_blocks,
    causal=causal, n_forced_vertical=n_forced_vertical, n_forced_slash=n_forced_slash,
  )


@functools.partial(jax.jit, static_argnames=("last_q", "causal", "sm_scale"))
def vertical_slash_sums(
  q: jax.Array, k: jax.Array, *, last_q: int = LAST_Q, causal: bool = True, sm_scale: float | None = None
) -> tuple[jax.Array, jax.Array]:
  """The estimate stage of `vertical_slash`: (vertical float32 [B, Hq, T], slash float32 [B, Hq, 2T - 1]) sums
  of the Last-Q estimate over unpermuted tokens (slash index o + T - 1 for offset o)."""
  batch, q_len, heads, head_dim = q.shape
  rows = jnp.arange(q_len - last_q, q_len, dtype=jnp.int32)
  visible = (jnp.arange(q_len) <= rows[:, None])[None, None] if causal else jnp.bool_(True)
  logits = estimate_logits(q, k, q_len - last_q, last_q)
  estimate = Estimate(logits, visible, head_dim**-0.5 if sm_scale is None else sm_scale)
  first_row = jnp.full((batch, heads), q_len - last_q)
  vertical, diagonal = line_sums(estimate)
  return vertical, slash_from_diagonals(diagonal, first_row, last_q)


_LAYOUT_STATIC = ("v_size", "s_size", "num_rows", "block_q", "block_kv", "max_blocks", "causal", "n_forced_vertical",
                  "n_forced_slash")


@functools.partial(jax.jit, static_argnames=_LAYOUT_STATIC)
def vertical_slash_layout(
  vertical: jax.Array,
  slash: jax.Array,
  v_size: int,
  s_size: int,
  *,
  num_rows: int = LAST_Q,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
) -> BlockLayout:
  """The layout stage of `vertical_slash`, from `vertical_slash_sums`' sums (same arguments).

  Built from per-head tables and short per-row candidate lists (`ranked_layout`), never a [NQ, NK] array, where
  those lists are shorter than NK; else one [NQ, NK] key array (`row_keys_layout`). Either way the result equals
  `_vertical_slash_layout_dense`, the dense [NQ, NK] candidate path.
  """
  return _vertical_slash_layout(
    vertical, slash, v_size, s_size, num_rows=num_rows, block_q=block_q, block_kv=block_kv, max_blocks=max_blocks,
    causal=causal, n_forced_vertical=n_forced_vertical, n_forced_slash=n_forced_slash,
  )


@functools.partial(jax.jit, static_argnames=(*_LAYOUT_STATIC, "candidates"))
def _vertical_slash_layout(
  vertical: jax.Array,
  slash: jax.Array,
  v_size: int,
  s_size: int,
  *,
  num_rows: int = LAST_Q,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
  candidates: str | None = None,
) -> BlockLayout:
  """`vertical_slash_layout` with the candidate form chosen: "lists" (`ranked_layout`), "rows"
  (`row_keys_layout`) or None, the lists when they are shorter than NK."""
  kv_len = vertical.shape[-1]
  budget = vertical_slash_budget(v_size, s_size, block_q, block_kv)
  max_blocks = check_blocks("vertical_slash", kv_len, kv_len, block_q, block_kv, max_blocks, budget)
  num_kv_blocks = kv_len // block_kv
  boost = float(num_rows + 1)  # above any sum of R probabilities
  column_counts, column_weight = _column_blocks(
    vertical, v_size, block_kv, num_kv_blocks, boost, None, n_forced_vertical
  )
  slash_index, forced, unboosted = _chosen_offsets(slash, s_size, boost, n_forced_slash)
  rows = RowGeometry.of(kv_len // block_q, block_q, block_kv)
  diagonal_score, diagonal_hit = diagonal_tables(unboosted, slash_index, forced, rows, kv_len, boost)
  plan = chunk_plan(rows, num_kv_blocks, max_blocks, causal)
  num_columns = min(v_size, num_kv_blocks)
  if candidates is None:
    candidates = "lists" if num_columns + plan.list_len < num_kv_blocks else "rows"
  if candidates == "rows":
    return row_keys_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, causal, max_blocks)
  return ranked_layout(
    diagonal_score, diagonal_hit, column_counts, column_weight, rows, plan, causal, max_blocks, num_columns
  )


@functools.partial(jax.jit, static_argnames=_LAYOUT_STATIC)
def _vertical_slash_layout_dense(
  vertical: jax.Array,
  slash: jax.Array,
  v_size: int,
  s_size: int,
  *,
  num_rows: int = LAST_Q,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
) -> BlockLayout:
  """The layout stage from dense [B, H, NQ, NK] candidates (`vertical_slash_blocks` + `finalize`): the reference
  `vertical_slash_layout` must equal (tests/sparse/test_vertical_slash_ranked.py)."""
  batch, heads, kv_len = vertical.shape
  budget = vertical_slash_budget(v_size, s_size, block_q, block_kv)
  max_blocks = check_blocks("vertical_slash", kv_len, kv_len, block_q, block_kv, max_blocks, budget)
  frame = identity_frame(batch, 1, kv_len, block_q, block_kv, causal)
  mask, score = vertical_slash_blocks(
    vertical,
    slash,
    frame,
    v_size,
    s_size,
    num_rows=num_rows,
    n_forced_vertical=n_forced_vertical,
    n_forced_slash=n_forced_slash,
  )
  return finalize(frame, mask, score, max_blocks)
