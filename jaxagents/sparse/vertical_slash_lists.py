"""The vertical-slash layout stage without [NQ, NK] arrays: per-head block-diagonal tables and short ranked lists.

Without a permutation a block pair's slash weight depends only on its block diagonal (and the query block's phase
when block_q != block_kv), so the chosen offsets' weights form a per-head table of P x (2NK - 1) entries
(`diagonal_tables`). A query block's candidates are then two short lists, as in MInference's
`convert_vertical_slash_indexes` (microsoft/MInference, `csrc/vertical_slash_index.cu`, called by
`minference/ops/pit_sparse_flash_attention_v2.py`): the distinct column blocks (one list per head) and the best
block diagonals of its window (one list per chunk of rows), ranked together by one sort per row
(`ranked_layout`); or, where NK is the shorter, one [NQ, NK] key row per query block gathered from the same tables
(`row_keys_layout`). Both list exactly the blocks of the dense candidate path
(`vertical_slash._vertical_slash_layout_dense`), overflowing rows included.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.layouts import kept_layout


@dataclasses.dataclass(frozen=True)
class RowGeometry:
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
  def of(cls, num_q_blocks: int, block_q: int, block_kv: int) -> "RowGeometry":
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


def diagonal_tables(unboosted, slash_index, forced, rows: RowGeometry, kv_len: int, boost: float):
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


def row_keys_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, causal, max_blocks):
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
class ChunkPlan:
  """Query blocks in chunks of `chunk_rows` consecutive rows (a multiple of P): per (chunk, phase) one list of the
  `list_len` best diagonals in the union of its rows' windows [window_first, window_last] (in j), int [C, P] each."""

  chunk_rows: int
  list_len: int
  window_first: np.ndarray
  window_last: np.ndarray


def chunk_plan(rows: RowGeometry, num_kv_blocks: int, max_blocks: int, causal: bool) -> ChunkPlan:
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
      best = cost, ChunkPlan(chunk_rows, list_len, window_first, window_last)
    if chunk_rows >= num_q_blocks:
      return best[1]
    chunk_rows *= 2


def ranked_layout(diagonal_score, diagonal_hit, column_counts, column_weight, rows, plan, causal, max_blocks,
                   num_columns):
  """The layout from two short candidate lists per row, ranked together by one sort of [B, H, NQ, V + L] keys
  (MInference's `convert_vertical_slash_indexes` merges the same two lists per row, without a MAXN to rank for).

  Columns: the distinct key blocks of the top columns, one id-sorted list per head [B, H, V] shared by every row
  (a row keeps ids <= last_own when causal), scored with the row's diagonal weight added (a gather of one table
  entry each).
  Slashes: per chunk of rows and phase, the L = MAXN + X best diagonals (`ChunkPlan`) by diagonal score, ties to
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
