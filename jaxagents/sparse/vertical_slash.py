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
P x (2NK - 1) entries (`_diagonal_tables`), and a row's candidates are two short lists, as in
`convert_vertical_slash_indexes`: the distinct column blocks (one list per head, <= v_size) and the best block
diagonals of its window (one list per chunk of rows, MAXN + a few), ranked together by one sort per row
(`_ranked_layout`). Memory traffic is O(NQ (v_size + MAXN)) per head instead of O(NQ NK) (at 1M tokens with
128-token blocks and MInference's (1000, 6096): lists of 2115 entries instead of rows of 8192). Where NK is the
shorter (up to ~256k tokens with those settings; at 128k MAXN = NK and nothing needs ranking), one [NQ, NK]
candidate row per query block is gathered from the same tables instead (`_row_keys_layout`). Both list exactly
the blocks of the dense path they replace (`_vertical_slash_layout_dense`), overflowing rows included: the
per-pair scores are the same float32 operations.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.estimate import LAST_Q, Estimate, check_last_q, check_qk_shapes, estimate_logits, line_sums
from jaxagents.sparse.layouts import (
  Frame,
  budget_blocks,
  check_blocks,
  finalize,
  identity_frame,
  kept_layout,
  offset_blocks,
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
  """Slash sums over offsets o in (-T, T), float32 [..., 2T - 1] at index o + T - 1, from `line_sums`' diagonal
  sums of rows at consecutive coordinates first_coord [...] + r: slash[o] = diagonal[first_coord - o + R - 1]."""
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
  vertical, diagonal = line_sums(estimate)
  return vertical, slash_from_diagonals(diagonal, jnp.full((batch, heads), q_len - last_q), last_q)


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

  Built from per-head tables and short per-row candidate lists (`_ranked_layout`), never a [NQ, NK] array, where
  those lists are shorter than NK; else one [NQ, NK] key array (`_row_keys_layout`). Either way the result equals
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
  """`vertical_slash_layout` with the candidate form chosen: "lists" (`_ranked_layout`), "rows"
  (`_row_keys_layout`) or None, the lists when they are shorter than NK."""
  kv_len = vertical.shape[-1]
  budget = vertical_slash_budget(v_size, s_size, block_q, block_kv)
  max_blocks = check_blocks("vertical_slash", kv_len, kv_len, block_q, block_kv, max_blocks, budget)
  num_kv_blocks = kv_len // block_kv
  boost = float(num_rows + 1)  # above any sum of R probabilities
  column_counts, column_weight = _column_blocks(
    vertical, v_size, block_kv, num_kv_blocks, boost, None, n_forced_vertical
  )
  slash_index, forced, unboosted = _chosen_offsets(slash, s_size, boost, n_forced_slash)
  rows = _RowGeometry.of(kv_len // block_q, block_q, block_kv)
  diagonal_score, diagonal_hit = _diagonal_tables(unboosted, slash_index, forced, rows, kv_len, boost)
  plan = _chunk_plan(rows, num_kv_blocks, max_blocks, causal)
  num_columns = min(v_size, num_kv_blocks)
  if candidates is None:
    candidates = "lists" if num_columns + plan.list_len < num_kv_blocks else "rows"
  if candidates == "rows":
    return _row_keys_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, causal, max_blocks)
  return _ranked_layout(
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


@dataclasses.dataclass(frozen=True)
class _RowGeometry:
  """Static placement of the query blocks of an unpermuted frame, in key blocks.

  Query block i starts at token i * block_q = first_own[i] * block_kv + phase[i] * g (g = gcd(block_q,
  block_kv)), so its key blocks are n = first_own[i] - d, d on a per-phase grid of block diagonals: the block
  pair's slash weight depends on (phase, d) only. first_own..last_own are the key blocks holding its own tokens
  (d in [first_own - last_own, 0]); with causal masking they are also its last valid ones.
  """

  block_q: int
  block_kv: int
  num_kv_blocks: int
  first_own: np.ndarray  # int [NQ]
  last_own: np.ndarray  # int [NQ]
  phase: np.ndarray  # int [NQ], in [0, num_phases)
  num_phases: int  # block_kv / g; the phase of block i depends on i mod num_phases only

  @classmethod
  def of(cls, num_q_blocks: int, block_q: int, block_kv: int) -> "_RowGeometry":
    step = math.gcd(block_q, block_kv)
    start = np.arange(num_q_blocks) * block_q
    return cls(
      block_q, block_kv, num_q_blocks * block_q // block_kv, start // block_kv, (start + block_q - 1) // block_kv,
      start % block_kv // step, block_kv // step,
    )

  @property
  def num_diagonals(self) -> int:
    """Block diagonals d = NK - 1 - j, j in [0, 2 NK - 1) (descending d: ascending key block for a row)."""
    return 2 * self.num_kv_blocks - 1


def _diagonal_tables(unboosted, slash_index, forced, rows: _RowGeometry, kv_len: int, boost: float):
  """Per (phase, block diagonal j): the score the chosen offsets give the block pair, float32 [B, H, P, 2NK - 1],
  and whether any chosen offset meets it, bool [B, H, P, 2NK - 1] (P = rows.num_phases).

  The weight is `offset_blocks`' difference of prefix sums of the unboosted table, the same float32 operations on
  the same [B, H, 2T - 1] table, so every pair's score is bit-identical to the dense path's; the counts are exact
  integers, so they come from the s_size sorted chosen offsets instead (a binary search per table entry).
  """
  num_kv_blocks, block_q, block_kv = rows.num_kv_blocks, rows.block_q, rows.block_kv
  diagonal = num_kv_blocks - 1 - np.arange(rows.num_diagonals)
  start = diagonal * block_kv + np.arange(rows.num_phases)[:, None] * (block_kv // rows.num_phases)  # [P, 2NK - 1]
  # Offsets o meeting the pair are first <= o + T - 1 < end (`offset_blocks` with lo = i block_q, n block_kv).
  first = np.clip(start - block_kv + kv_len, 0, 2 * kv_len - 1)
  end = np.clip(start + block_q - 1 + kv_len, 0, 2 * kv_len - 1)
  prefix = jnp.cumsum(unboosted.astype(jnp.float32), axis=-1)
  before = lambda k: jnp.where(k > 0, prefix[..., np.maximum(k - 1, 0)], 0.0)  # noqa: E731
  weight = jnp.where(end > first, before(end) - before(first), 0)
  below = jax.vmap(jax.vmap(lambda sorted_index, k: jnp.searchsorted(sorted_index, k), (0, None)), (0, None))
  flat_first, flat_end = first.reshape(-1), end.reshape(-1)

  def count(index):
    sorted_index = jnp.sort(index, axis=-1)
    counts = (below(sorted_index, flat_end) - below(sorted_index, flat_first)).reshape(*index.shape[:2], *end.shape)
    return jnp.where(end > first, counts, 0)

  forced_count = count(jnp.where(forced[slash_index], slash_index, 2 * kv_len))
  return weight + boost * forced_count, count(slash_index) > 0


def _nan_to_num(score):
  return jnp.nan_to_num(score, nan=0.0, posinf=3e38, neginf=-3e38)  # as `select_blocks`


def _row_keys_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, causal, max_blocks):
  """One [B, H, NQ, NK] key array gathered from the per-head tables, then `select_blocks`' top-k (for shapes
  where NK is no longer than the candidate lists, e.g. MAXN = NK)."""
  num_kv_blocks = rows.num_kv_blocks
  n = jnp.arange(num_kv_blocks)
  first_own, last_own = (jnp.asarray(x)[:, None] for x in (rows.first_own, rows.last_own))
  table_row = jnp.asarray(rows.phase * rows.num_diagonals + num_kv_blocks - 1 - rows.first_own)[:, None]
  flat = lambda x: x.reshape(*x.shape[:2], -1)  # noqa: E731
  score = flat(diagonal_score)[..., table_row + n]  # [B, H, NQ, NK]
  hit = flat(diagonal_hit)[..., table_row + n] | (column_counts > 0)[..., None, :]
  if causal:
    hit &= n <= last_own
  own = (n >= first_own) & (n <= last_own)
  if max_blocks >= num_kv_blocks:  # every candidate is kept: no ranking, the scores are not needed
    ids = jnp.broadcast_to(n, hit.shape)
    return kept_layout(ids, hit | own, max_blocks, num_kv_blocks, rows.block_q, rows.block_kv)
  key = jnp.where(own, jnp.inf, jnp.where(hit, _nan_to_num(score + column_weight[..., None, :]), -jnp.inf))
  top_keys, top_ids = jax.lax.top_k(key, max_blocks)  # ties: lower id first
  return kept_layout(top_ids, top_keys > -jnp.inf, max_blocks, num_kv_blocks, rows.block_q, rows.block_kv)


@dataclasses.dataclass(frozen=True)
class _ChunkPlan:
  """Query blocks in chunks of `chunk_rows` consecutive rows (a multiple of P): per (chunk, phase) one list of the
  `list_len` best diagonals in the union of its rows' windows [window_first, window_last] (in j), int [C, P] each."""

  chunk_rows: int
  list_len: int
  window_first: np.ndarray
  window_last: np.ndarray


def _chunk_plan(rows: _RowGeometry, num_kv_blocks: int, max_blocks: int, causal: bool) -> _ChunkPlan:
  """Chunks that trade the per-chunk pass over the diagonals (C x P x (2NK - 1)) against the longer lists (a row's
  list has MAXN + X entries, X the spread of first_own within a chunk's phase)."""
  num_q_blocks, phases = len(rows.first_own), rows.num_phases
  best = None
  chunk_rows = phases
  while True:
    chunks = -(-num_q_blocks // chunk_rows)
    slot = np.arange(num_q_blocks) // chunk_rows * phases + rows.phase
    top = np.full(chunks * phases, -num_kv_blocks, np.int64)
    low = np.full(chunks * phases, 2 * num_kv_blocks, np.int64)
    np.maximum.at(top, slot, rows.first_own)
    np.minimum.at(low, slot, rows.first_own)
    spread = int(np.max(np.where(top >= low, top - low, 0)))
    list_len = min(max_blocks + spread, rows.num_diagonals)
    # Row i sees d in [first_own - NK + 1, first_own] (n in [0, NK)), causally d >= first_own - last_own.
    own_width = (np.arange(phases) * (rows.block_kv // phases) + rows.block_q - 1) // rows.block_kv
    lowest = np.broadcast_to(-own_width, (chunks, phases)).reshape(-1) if causal else low - num_kv_blocks + 1
    window_first = np.where(top >= low, num_kv_blocks - 1 - top, 1).reshape(chunks, phases)
    window_last = np.where(top >= low, num_kv_blocks - 1 - lowest, 0).reshape(chunks, phases)
    # A list entry is written, sorted with its id and read back (~6 passes), a chunk's diagonal masked and read.
    cost = chunks * phases * rows.num_diagonals + 3 * num_q_blocks * list_len
    if best is None or cost < best[0]:
      best = cost, _ChunkPlan(chunk_rows, list_len, window_first, window_last)
    if chunk_rows >= num_q_blocks:
      return best[1]
    chunk_rows *= 2


def _ranked_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, plan, causal, max_blocks,
                   num_columns):
  """The layout from two short candidate lists per row, ranked together by one sort of [B, H, NQ, V + L] keys
  (MInference's `convert_vertical_slash_indexes` merges the same two lists per row, without a MAXN to rank for).

  Columns: the distinct key blocks of the top columns, one id-sorted list per head [B, H, V] shared by every row
  (a row keeps ids <= last_own when causal), scored with the row's diagonal weight added (a gather of one table
  entry each).
  Slashes: per chunk of rows and phase, the L = MAXN + X best diagonals (`_ChunkPlan`) by diagonal score, ties to
  the higher d (the lower key block): a row's own diagonals (+inf), then diagonals hit by a chosen offset. (One
  list of every hit diagonal per head would hold up to 2 s_size entries, more than NK at 1M tokens.)
  Diagonals whose block is a column block are left to the column list. A slash-only block a row keeps is beaten
  by fewer than MAXN of the row's blocks, and every diagonal ranked above it in the row's window (at most
  MAXN - 1) scores at least as much in the row (column weights are >= 0), so it is among the first MAXN of the
  row's window and the first MAXN + X of the chunk's union window (which holds at most X diagonals outside the
  row's window): the ranked lists keep exactly the blocks the dense top-k keeps.
  """
  batch, heads = column_counts.shape[:2]
  num_kv_blocks, num_q_blocks, phases = rows.num_kv_blocks, len(rows.first_own), rows.num_phases
  first_own, last_own = (jnp.asarray(x)[:, None] for x in (rows.first_own, rows.last_own))
  flat = lambda x: x.reshape(*x.shape[:2], -1)  # noqa: E731
  gather = lambda table, index: jnp.take_along_axis(flat(table), flat(index), axis=-1).reshape(index.shape)  # noqa: E731
  width = num_columns + plan.list_len
  pad = lambda x, before, after, value: jnp.pad(  # noqa: E731
    x, [(0, 0)] * (x.ndim - 1) + [(before, after)], constant_values=value
  )

  # Slash lists [B, H, C, P, L] of diagonal indices j, from the per-phase diagonal keys [B, H, P, 2NK - 1].
  j = np.arange(rows.num_diagonals)
  own_width = (np.arange(phases) * (rows.block_kv // phases) + rows.block_q - 1) // rows.block_kv
  own = (j >= num_kv_blocks - 1) & (j <= num_kv_blocks - 1 + own_width[:, None])  # d in [-own_width, 0]
  # A non-column block's column weight is exactly +0.0, so the diagonal score alone is the dense path's score.
  diagonal_key = jnp.where(own, jnp.inf, jnp.where(diagonal_hit, _nan_to_num(diagonal_score), -jnp.inf))
  window = (j >= plan.window_first[..., None]) & (j <= plan.window_last[..., None])  # [C, P, 2NK - 1]
  list_keys, list_j = jax.lax.top_k(jnp.where(window, diagonal_key[:, :, None], -jnp.inf), plan.list_len)

  # Each row's candidates [B, H, NQ, V + L] are built in one pass: positions < V read the column list, the others
  # the slash list of the row's (chunk, phase), which cycles with period P within a chunk.
  chunks = plan.window_first.shape[0]
  by_offset = rows.phase[:phases]
  spread = lambda x: jnp.broadcast_to(  # noqa: E731
    x[:, :, :, by_offset, None], (batch, heads, chunks, phases, plan.chunk_rows // phases, width)
  ).swapaxes(3, 4).reshape(batch, heads, chunks * plan.chunk_rows, width)[:, :, :num_q_blocks]
  slash_keys = spread(pad(list_keys, num_columns, 0, -jnp.inf))
  slash_ids = first_own - (num_kv_blocks - 1 - spread(pad(list_j, num_columns, 0, 0)))
  ids = jnp.arange(num_kv_blocks, dtype=jnp.int32)
  column_ids = jnp.sort(jnp.where(column_counts > 0, ids, num_kv_blocks), axis=-1)[..., :num_columns]
  column_w = jnp.take_along_axis(column_weight, jnp.minimum(column_ids, num_kv_blocks - 1), axis=-1)
  column_ids = pad(column_ids, 0, plan.list_len, num_kv_blocks)[..., None, :]  # [B, H, 1, V + L]
  column_w = pad(column_w, 0, plan.list_len, 0.0)[..., None, :]
  is_column = np.arange(width) < num_columns

  table_row = jnp.asarray(rows.phase * rows.num_diagonals + num_kv_blocks - 1 - rows.first_own)[:, None]
  index = jnp.broadcast_to(table_row + jnp.minimum(column_ids, num_kv_blocks - 1),
                           (batch, heads, num_q_blocks, width))
  column_ok = column_ids <= last_own if causal else column_ids < num_kv_blocks
  column_own = (column_ids >= first_own) & (column_ids <= last_own)
  slash_ok = (slash_keys > -jnp.inf) & (slash_ids >= 0)
  slash_ok &= (slash_ids <= last_own) if causal else (slash_ids < num_kv_blocks)
  # A column block's diagonal is left to the column list, which scores it with the column weight added.
  slash_ok &= ~gather(column_counts > 0, jnp.clip(slash_ids, 0, num_kv_blocks - 1))
  # Sort keys are negated scores (best first); a position without a candidate carries id NK and ranks last.
  column_rank = jnp.where(
    column_own, -jnp.inf, jnp.where(column_ok, -_nan_to_num(gather(diagonal_score, index) + column_w), jnp.inf)
  )
  ranks = jnp.where(is_column, column_rank, jnp.where(slash_ok, -slash_keys, jnp.inf))
  ids = jnp.where(is_column, jnp.where(column_ok, column_ids, num_kv_blocks),
                  jnp.where(slash_ok, slash_ids, num_kv_blocks))
  _, ranked = jax.lax.sort((ranks, ids), dimension=-1, num_keys=2)  # best first, ties: lower id first
  ranked = ranked[..., : min(max_blocks, width)]
  return kept_layout(ranked, ranked < num_kv_blocks, max_blocks, num_kv_blocks, rows.block_q, rows.block_kv)
