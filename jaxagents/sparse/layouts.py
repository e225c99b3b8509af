"""Shared machinery of the pattern builders: where tokens sit (`Frame`), block-level causality and diagonals,
and the step every builder ends with, block scores -> `BlockLayout` with a static MAXN (MMInference,
arXiv 2504.16083; the invariants below are checked in `tests/sparse/test_builder_invariants.py`).

Coordinates. A builder works on one attention problem per (batch, query head) in *slot* order (the identity, or
a grid/modality permutation). For slot s of the queries, `Frame.q_coords[s]` is the key slot that holds the
query's own token; every pattern geometry (sink columns, local windows, slash diagonals, vertical columns) is
drawn in key-slot coordinates with the query placed at q_coords. Without a permutation, and with a shared Q/KV
permutation (grid, 2D boundary), q_coords = arange(S); with a query-only permutation (Q boundary) it is the
query's original position. Causality is always judged on the *original* positions.

Every layout a builder returns satisfies (`finalize`):
  * the kernel contract (`check_layout`): ids sorted, unique, padded by repeating the last valid id;
  * causal-valid: a listed block (i, n) holds at least one pair with kv_position <= q_position, i.e.
    min(kv positions of key block n) <= max(q positions of query block i). Without a permutation this is
    "no block strictly above the block diagonal";
  * no empty rows: the key blocks holding each query's own token ("diagonal" blocks) are always listed, ahead
    of every other block when MAXN forces a choice; with equal block sizes and a shared permutation that is
    exactly one block per row, so MAXN >= 1 suffices. Ties are broken towards lower block ids.
Intermediates are [B, H, NQ, NK] block arrays, each built by one fused elementwise pass (prefix sums instead of
scatter-adds, `offset_blocks`) and read by one `top_k` per row (`select_blocks`): O((S / block)^2) memory per head,
fine up to ~256k tokens with 64-token blocks. Builders whose candidates are known as short lists avoid them and
rank only those (`layout_from_ranked`, `kept_layout`): block top-k, and the unpermuted vertical-slash layout
(`vertical_slash.py`, after MInference's CUDA index builder). MAXN defaults to the pattern's budget of key blocks
(`budget_blocks`), not NK.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.permutation import Permutation
from kernels_pallas.block_sparse import BlockLayout, to_block_mask


@dataclasses.dataclass(frozen=True)
class Frame:
  """Token placement of one attention problem per (batch, head); see the module docstring.

  Attributes:
    q_positions: int32 [B, H, S], original position of the query in slot s.
    kv_positions: int32 [B, H, T], original position of the key in slot t.
    q_coords: int32 [B, H, S], key slot of the query's own token (pattern coordinates).
    block_q, block_kv: tokens per query / key block.
    causal: whether keys after the query (by original position) are masked.
    slot_coords: static; True when q_coords[s] == s (no permutation, or one shared by queries and keys), so the
      own-token key blocks of query block i are the contiguous range holding its slots (no scatter needed).
  Arrays may have H = 1 (shared by every head); the builders broadcast.
  """

  q_positions: jax.Array
  kv_positions: jax.Array
  q_coords: jax.Array
  block_q: int
  block_kv: int
  causal: bool
  slot_coords: bool = False

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """(B, H, NQ, NK)."""
    batch, heads, q_len = self.q_positions.shape
    return batch, heads, q_len // self.block_q, self.kv_positions.shape[-1] // self.block_kv


def check_blocks(
  fn: str, q_len: int, kv_len: int, block_q: int, block_kv: int, max_blocks: int | None, budget: int | None = None
) -> int:
  """Validates the static sizes shared by every builder; returns MAXN: `max_blocks`, else the pattern's `budget`
  (key blocks a query block can need, `budget_blocks`), else NK = kv_len / block_kv; never more than NK by
  default."""
  if q_len != kv_len:
    raise ValueError(f"{fn}: the builders cover self-attention prefill, S == T, got S={q_len}, T={kv_len}")
  for name, size, length in (("block_q", block_q, q_len), ("block_kv", block_kv, kv_len)):
    if not isinstance(size, int) or size <= 0 or length % size:
      raise ValueError(f"{fn}: `{name}` must be a positive int dividing the sequence length {length}, got {size!r}")
  num_kv_blocks = kv_len // block_kv
  if max_blocks is None:
    max_blocks = num_kv_blocks if budget is None else max(1, min(budget, num_kv_blocks))
  if not isinstance(max_blocks, int) or max_blocks < 1:
    raise ValueError(f"{fn}: `max_blocks` (MAXN) must be an int >= 1, got {max_blocks!r}")
  return max_blocks


def budget_blocks(key_tokens: int, block_q: int, block_kv: int) -> int:
  """MAXN for a pattern that gives each query `key_tokens` keys besides its own: those keys' blocks, plus the key
  blocks a query block's own tokens span (a superset bound when the keys of one query block are contiguous)."""
  return -(-key_tokens // block_kv) + -(-block_q // block_kv) + 1


def identity_frame(batch: int, num_heads: int, seq_len: int, block_q: int, block_kv: int, causal: bool) -> Frame:
  """Frame of unpermuted tokens: positions and coordinates are arange(S)."""
  positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, num_heads, seq_len))
  return Frame(positions, positions, positions, block_q, block_kv, causal, slot_coords=True)


def permuted_frame(perm: Permutation, block_q: int, block_kv: int, causal: bool, *, shared: bool = False) -> Frame:
  """Frame of tokens in `perm`'s slot order (S == T): q_coords[s] = kv_inverse[q_perm[s]]; `shared` (static): q
  and kv share the permutation, so q_coords = arange(S)."""
  if shared:
    q_coords = jnp.broadcast_to(jnp.arange(perm.q_perm.shape[-1], dtype=jnp.int32), perm.q_perm.shape)
  else:
    q_coords = jnp.take_along_axis(perm.kv_inverse, perm.q_perm, axis=-1)
  return Frame(perm.q_perm, perm.kv_perm, q_coords, block_q, block_kv, causal, slot_coords=shared)


def _per_block(x: jax.Array, block: int, reduce) -> jax.Array:
  """[B, H, N * block] -> [B, H, N] by `reduce` over each block."""
  return reduce(x.reshape(*x.shape[:-1], -1, block), axis=-1)


def q_coord_bounds(frame: Frame) -> tuple[jax.Array, jax.Array]:
  """(lowest, highest) key-slot coordinate of the queries of each query block, int32 [B, H, NQ] each."""
  return _per_block(frame.q_coords, frame.block_q, jnp.min), _per_block(frame.q_coords, frame.block_q, jnp.max)


def causal_blocks(frame: Frame) -> jax.Array:
  """bool [B, H, NQ, NK]: block pairs holding at least one causally visible (query, key) pair."""
  batch, heads, num_q_blocks, num_kv_blocks = frame.shape
  if not frame.causal:
    return jnp.ones((batch, heads, num_q_blocks, num_kv_blocks), bool)
  latest_query = _per_block(frame.q_positions, frame.block_q, jnp.max)
  earliest_key = _per_block(frame.kv_positions, frame.block_kv, jnp.min)
  return earliest_key[..., None, :] <= latest_query[..., :, None]


def _own_block_range(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
  """For a slot-coordinate frame: (first, last) key block holding each query block's own slots, int [NQ] each."""
  query_blocks = np.arange(frame.shape[2])
  return query_blocks * frame.block_q // frame.block_kv, ((query_blocks + 1) * frame.block_q - 1) // frame.block_kv


def diagonal_blocks(frame: Frame) -> jax.Array:
  """bool [B, H, NQ, NK]: key blocks holding the own token of some query of the block (always visible)."""
  batch, heads, num_q_blocks, num_kv_blocks = frame.shape
  if frame.slot_coords:  # own tokens = the block's slots: a contiguous run of key blocks
    first, last = _own_block_range(frame)
    n = np.arange(num_kv_blocks)
    return jnp.broadcast_to((n >= first[:, None]) & (n <= last[:, None]), (batch, heads, num_q_blocks, num_kv_blocks))
  q_len = frame.q_coords.shape[-1]
  b, h = jnp.ogrid[:batch, :heads]
  q_block = jnp.arange(q_len) // frame.block_q
  marks = jnp.zeros((batch, heads, num_q_blocks, num_kv_blocks), jnp.int32)
  marks = marks.at[b[..., None], h[..., None], q_block, frame.q_coords // frame.block_kv].add(1)
  return marks > 0


def offset_blocks(frame: Frame, *tables: jax.Array) -> tuple[jax.Array, ...]:
  """Per (query block i, key block n) and per table: the sum of the table over the chosen offsets o whose keys
  [lo_i - o, hi_i - o] (the block's coordinate span shifted by o; `q_coord_bounds`) meet key block n, i.e.
  lo_i - (n + 1) block_kv < o <= hi_i - n block_kv. Prefix sums over the offsets make each pair O(1): one fused
  elementwise pass over [B, H, NQ, NK] per table, no scatter (MInference's merged `block_offset` ranges of
  `csrc/vertical_slash_index.cu`, at block granularity).

  Args:
    frame: token placement (T keys).
    tables: [B, H, 2T - 1] each, the value of offset o = index - (T - 1) (0 where not chosen): float weights or
      int counts (summed in float32 / int32).
  Returns:
    one [B, H, NQ, NK] sum per table, in float32 or int32.
  """
  kv_len = frame.kv_positions.shape[-1]
  accumulate = lambda x: jnp.int32 if jnp.issubdtype(x.dtype, jnp.integer) else jnp.float32  # noqa: E731
  prefixes = [jnp.pad(jnp.cumsum(x.astype(accumulate(x)), axis=-1), [(0, 0)] * (x.ndim - 1) + [(1, 0)])
              for x in tables]
  if frame.slot_coords and frame.block_q == frame.block_kv:
    # Query block i holds slots [i b, i b + b - 1], so the offsets meeting key block n depend on d = i - n only:
    # one vector over d, expanded to [NQ, NK] by a gather with a constant (Toeplitz) index.
    block, (num_q_blocks, num_kv_blocks) = frame.block_kv, frame.shape[2:]
    d = jnp.arange(-(num_kv_blocks - 1), num_q_blocks)
    first = jnp.clip(d * block - block + kv_len, 0, 2 * kv_len - 1)
    end = jnp.clip(d * block + block - 1 + kv_len, 0, 2 * kv_len - 1)
    toeplitz = np.arange(num_q_blocks)[:, None] - np.arange(num_kv_blocks) + num_kv_blocks - 1
    return tuple(jnp.where(end > first, table[..., end] - table[..., first], 0)[..., toeplitz] for table in prefixes)
  lo, hi = q_coord_bounds(frame)  # [B, H, NQ]
  starts = jnp.arange(frame.shape[-1]) * frame.block_kv  # [NK]
  first = jnp.clip(lo[..., None] - starts - frame.block_kv + 1 + kv_len - 1, 0, 2 * kv_len - 1)
  end = jnp.clip(hi[..., None] - starts + kv_len, 0, 2 * kv_len - 1)  # exclusive
  batch_heads = jnp.broadcast_shapes(first.shape[:2], *(x.shape[:2] for x in prefixes))
  first, end = (jnp.broadcast_to(x, (*batch_heads, *x.shape[2:])) for x in (first, end))
  flat = lambda index: index.reshape(*index.shape[:2], -1)  # noqa: E731
  sums = []
  for table in prefixes:
    table = jnp.broadcast_to(table, (*batch_heads, table.shape[-1]))
    total = jnp.take_along_axis(table, flat(end), axis=-1) - jnp.take_along_axis(table, flat(first), axis=-1)
    sums.append(jnp.where(end > first, total.reshape(end.shape), 0))
  return tuple(sums)


def select_blocks(mask, score, must_keep, max_blocks: int, block_q: int, block_kv: int) -> BlockLayout:
  """Keeps at most `max_blocks` listed blocks per row: `must_keep` first, then by descending score, then by id.

  One `top_k` over each row (not a full sort) picks them; only the MAXN kept ids are then sorted.

  Args:
    mask: bool [B, H, NQ, NK], candidate blocks.
    score: float [B, H, NQ, NK], priority among candidates (NaN counts as 0).
    must_keep: bool [B, H, NQ, NK], blocks ranked ahead of all others (among themselves by id).
    max_blocks: MAXN (static).
  Returns:
    BlockLayout with kv_blocks int32 [B, H, NQ, MAXN] (sorted, padding repeats the last id).
  """
  shape = jnp.broadcast_shapes(mask.shape, score.shape, must_keep.shape)
  num_kv_blocks = shape[-1]
  score = jnp.nan_to_num(score.astype(jnp.float32), nan=0.0, posinf=3e38, neginf=-3e38)
  key = jnp.where(must_keep, jnp.inf, jnp.where(mask, score, -jnp.inf))
  key = jnp.broadcast_to(key, shape)
  top_scores, top_ids = jax.lax.top_k(key, min(max_blocks, num_kv_blocks))  # ties: lower id first
  return kept_layout(top_ids, top_scores > -jnp.inf, max_blocks, num_kv_blocks, block_q, block_kv)


def kept_layout(ids, chosen, max_blocks: int, num_kv_blocks: int, block_q: int, block_kv: int) -> BlockLayout:
  """The layout listing each row's chosen ids: ids int [B, H, NQ, W] in any order, distinct where chosen, chosen
  bool [B, H, NQ, W], W <= MAXN (a row's selection, e.g. the first MAXN of a ranking)."""
  if max_blocks > ids.shape[-1]:
    pad = [(0, 0)] * 3 + [(0, max_blocks - ids.shape[-1])]
    chosen, ids = jnp.pad(chosen, pad), jnp.pad(ids, pad)
  kept = jnp.sort(jnp.where(chosen, ids, num_kv_blocks), axis=-1)
  count = jnp.sum(chosen, axis=-1, dtype=jnp.int32)
  last = jnp.take_along_axis(kept, jnp.maximum(count - 1, 0)[..., None], axis=-1)
  # Repeating the last id makes the padding free for the kernels (no new block load is issued).
  kv_blocks = jnp.where(jnp.arange(max_blocks) < count[..., None], kept, jnp.where(count[..., None] > 0, last, 0))
  return BlockLayout(kv_blocks=kv_blocks.astype(jnp.int32), kv_count=count, block_q=block_q, block_kv=block_kv)


def layout_from_ranked(ids, valid, max_blocks: int, block_q: int, block_kv: int, num_kv_blocks: int) -> BlockLayout:
  """A layout from ranked candidate lists: ids int [B, H, NQ, K] best first, valid bool [B, H, NQ, K]; an id listed
  twice counts at its first (best) place; the first `max_blocks` distinct valid ids are kept. Only [.., K] arrays
  are sorted, never a [.., NK] row (for patterns whose candidates are known as a short list, e.g. block top-k)."""
  num = ids.shape[-1]
  rank = jnp.broadcast_to(jnp.arange(num, dtype=jnp.int32), ids.shape)
  ids = jnp.where(valid, ids, num_kv_blocks).astype(jnp.int32)
  by_id, by_id_rank = jax.lax.sort((ids, rank), dimension=-1, num_keys=2)
  first = jnp.concatenate([jnp.ones_like(by_id[..., :1], bool), by_id[..., 1:] != by_id[..., :-1]], axis=-1)
  keep = first & (by_id < num_kv_blocks)
  _, ranked = jax.lax.sort((jnp.where(keep, by_id_rank, num + by_id_rank), by_id), dimension=-1, num_keys=1)
  count = jnp.minimum(jnp.sum(keep, axis=-1, dtype=jnp.int32), max_blocks)
  if max_blocks > num:
    ranked = jnp.pad(ranked, [(0, 0)] * 3 + [(0, max_blocks - num)], constant_values=num_kv_blocks)
  kept = jnp.sort(jnp.where(jnp.arange(max_blocks) < count[..., None], ranked[..., :max_blocks], num_kv_blocks), -1)
  last = jnp.take_along_axis(kept, jnp.maximum(count - 1, 0)[..., None], axis=-1)
  kv_blocks = jnp.where(jnp.arange(max_blocks) < count[..., None], kept, jnp.where(count[..., None] > 0, last, 0))
  return BlockLayout(kv_blocks=kv_blocks.astype(jnp.int32), kv_count=count, block_q=block_q, block_kv=block_kv)


def own_block_ids(frame: Frame) -> tuple[jax.Array, jax.Array]:
  """For a slot-coordinate frame: the key blocks holding each query block's own slots, int32 [NQ, W] ids and bool
  [NQ, W] validity, W = ceil(block_q / block_kv) + 1."""
  width = -(-frame.block_q // frame.block_kv) + 1
  first, last = _own_block_range(frame)
  ids = first[:, None] + np.arange(width)
  return jnp.asarray(np.minimum(ids, frame.shape[3] - 1), jnp.int32), jnp.asarray(ids <= last[:, None])


def finalize(frame: Frame, mask, score, max_blocks: int) -> BlockLayout:
  """A pattern's candidate blocks -> contract-abiding layout: causal filter, diagonal blocks forced in."""
  valid = causal_blocks(frame)
  return select_blocks(mask & valid, score, diagonal_blocks(frame), max_blocks, frame.block_q, frame.block_kv)


def dense_layout(frame: Frame, max_blocks: int | None = None) -> BlockLayout:
  """Every causally valid block (density 1); MAXN defaults to NK."""
  num_kv_blocks = frame.shape[-1]
  mask = causal_blocks(frame)
  return finalize(frame, mask, jnp.zeros(mask.shape, jnp.float32), max_blocks or num_kv_blocks)


def compose(layouts, kv_len: int, max_blocks: int | None = None) -> BlockLayout:
  """Union of layouts over the same token order and block sizes.

  Args:
    layouts: non-empty sequence of BlockLayout, all [B, H, NQ, *] with equal block sizes.
    kv_len: T, the key length.
    max_blocks: MAXN of the result; default min(sum of the inputs' MAXN, NK), which never drops a block.
  Returns:
    BlockLayout listing every block listed by any input (lowest ids kept if max_blocks is smaller).
  """
  layouts = list(layouts)
  if not layouts:
    raise ValueError("compose: `layouts` must be a non-empty sequence of BlockLayout, got an empty one")
  first = layouts[0]
  for layout in layouts[1:]:
    if (layout.block_q, layout.block_kv) != (first.block_q, first.block_kv) or (
      layout.kv_blocks.shape[:3] != first.kv_blocks.shape[:3]
    ):
      raise ValueError(
        f"compose: every layout must have [B, H, NQ] = {tuple(first.kv_blocks.shape[:3])} and blocks "
        f"{first.block_q}x{first.block_kv}, got {tuple(layout.kv_blocks.shape[:3])} with "
        f"{layout.block_q}x{layout.block_kv}"
      )
  num_kv_blocks = kv_len // first.block_kv
  union = to_block_mask(first, num_kv_blocks)
  for layout in layouts[1:]:
    union |= to_block_mask(layout, num_kv_blocks)
  max_blocks = max_blocks or min(sum(layout.max_blocks for layout in layouts), num_kv_blocks)
  nothing = jnp.zeros(union.shape, bool)
  return select_blocks(union, jnp.zeros(union.shape), nothing, max_blocks, first.block_q, first.block_kv)
