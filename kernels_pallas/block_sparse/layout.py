"""`BlockLayout`: the compact per-query-block list of key/value blocks that drives the block-sparse kernels
(the "dynamic sparse index" stage of MMInference, arXiv 2504.16083).

A layout never holds an S x S mask. For batch b, layout head h and query block i (tokens
[i * block_q, (i + 1) * block_q)), the kernel visits the key/value blocks

    kv_blocks[b, h, i, 0], ..., kv_blocks[b, h, i, kv_count[b, h, i] - 1]

(key/value block n = tokens [n * block_kv, (n + 1) * block_kv)). Contract (`check_layout` verifies it):
  * kv_blocks: int32 [B, H, NQ, MAXN]; the first kv_count ids of a row are strictly increasing and in
    [0, NK), NK = T / block_kv. Entries past kv_count repeat the last valid id (0 for an empty row): the
    splash-attention trick, so the TPU pipeline sees an unchanged block index and issues no new DMA.
  * kv_count: int32 [B, H, NQ], 0 <= kv_count <= MAXN. A row with kv_count = 0 attends to nothing.
  * H is either the number of **kv heads** (GQA: one layout per group of Hq / Hkv query heads, which then
    share their K/V block loads; the natural choice) or the number of **query heads** (a pattern per query
    head). For MHA both are the same.
  * block_q, block_kv: static token sizes of a block (pytree metadata, so one compile per shape bucket).
  * partial: bool [B, H, NQ, MAXN] or None, the block kinds (splash attention's `block_mask` of partial and
    full blocks): True where the listed block holds some (query, key) pair with kv_position > q_position, so
    the causal mask must be applied; False ("full") where every pair is causally visible and the kernels skip
    the mask. None means "not computed": `block_sparse_attention` fills it from the positions it is given
    (`with_block_kinds`), so the kernels always receive kinds. Without a permutation the partial blocks of a
    causal layout are the diagonal ones; with one (grid, modality heads) they can be anywhere.
Causal masking is applied on top of the layout by the kernels, from token positions, on partial blocks; listing
a block above the diagonal is allowed and costs compute but not correctness. Marking a block full that is not
(`check_block_kinds`) changes the result: the kernels then attend all of its keys. A traced layout that breaks
the contract gives unspecified results (the kernels clamp ids and counts so they never read out of bounds);
`block_sparse_attention` refuses a concrete one whose listed ids or counts are out of range or repeat
(`check_layout_values`) or whose kinds contradict the positions (`check_block_kinds`), and `check_layout` checks
the whole contract.

Positions. The kernels read causal positions as int32 [B, P, S] (queries) and [B, P, T] (keys) with P = 1
(shared by every head) or P = Hkv (one order per kv head: a permuted head group, whose query heads share their
kv head's permutation).

Not implemented: MInference's vertical-column path (`column_count` / `column_index` of
`csrc/vertical_slash_index.cu`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["kv_blocks", "kv_count", "partial"],
  meta_fields=["block_q", "block_kv"],
)
@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Per-query-block key/value block lists; see the module docstring for the contract.

  Attributes:
    kv_blocks: int32 [B, H, NQ, MAXN] key/value block ids, sorted, padded by repeating the last valid id.
    kv_count: int32 [B, H, NQ] number of valid ids per row.
    block_q: query tokens per block (static).
    block_kv: key/value tokens per block (static).
    partial: bool [B, H, NQ, MAXN] block kinds (True = causal mask needed), or None (not computed).
  """

  kv_blocks: jax.Array
  kv_count: jax.Array
  block_q: int
  block_kv: int
  partial: jax.Array | None = None

  @property
  def batch(self) -> int:
    return self.kv_blocks.shape[0]

  @property
  def num_heads(self) -> int:
    return self.kv_blocks.shape[1]

  @property
  def num_q_blocks(self) -> int:
    return self.kv_blocks.shape[2]

  @property
  def max_blocks(self) -> int:
    return self.kv_blocks.shape[3]


def validate_layout(
  layout: BlockLayout, *, batch: int, q_len: int, kv_len: int, num_q_heads: int, num_kv_heads: int
) -> None:
  """Static (shape/dtype) checks of `layout` against the attention inputs; works on traced arrays.

  Raises ValueError naming the field, the expected and the actual value.
  """
  if not isinstance(layout, BlockLayout):
    raise ValueError(f"block_sparse_attention: `layout` must be a BlockLayout, got {type(layout).__name__}")
  for name in ("block_q", "block_kv"):
    size = getattr(layout, name)
    if not isinstance(size, int | np.integer) or size <= 0:
      raise ValueError(f"BlockLayout: `{name}` must be a positive int, got {size!r}")
  blocks, count = layout.kv_blocks, layout.kv_count
  if blocks.ndim != 4 or blocks.dtype != jnp.int32:
    raise ValueError(
      f"BlockLayout: `kv_blocks` must be int32 of rank 4 [B, H, NQ, MAXN], got {blocks.dtype}{tuple(blocks.shape)}"
    )
  if count.dtype != jnp.int32 or tuple(count.shape) != tuple(blocks.shape[:3]):
    raise ValueError(
      f"BlockLayout: `kv_count` must be int32 of shape [B, H, NQ] = {tuple(blocks.shape[:3])} (from kv_blocks), "
      f"got {count.dtype}{tuple(count.shape)}"
    )
  if blocks.shape[3] < 1:
    raise ValueError(f"BlockLayout: `kv_blocks` needs MAXN >= 1 (last axis), got shape {tuple(blocks.shape)}")
  partial = layout.partial
  if partial is not None and (partial.dtype != jnp.bool_ or tuple(partial.shape) != tuple(blocks.shape)):
    raise ValueError(
      f"BlockLayout: `partial` must be None or bool of the shape of kv_blocks {tuple(blocks.shape)}, "
      f"got {partial.dtype}{tuple(partial.shape)}"
    )
  if blocks.shape[0] != batch:
    raise ValueError(f"BlockLayout: `kv_blocks` batch must be B={batch} (from q), got {blocks.shape[0]}")
  if blocks.shape[1] not in (num_kv_heads, num_q_heads):
    raise ValueError(
      f"BlockLayout: `kv_blocks` heads must be Hkv={num_kv_heads} (one layout per GQA group) or Hq={num_q_heads} "
      f"(one per query head), got {blocks.shape[1]}"
    )
  if q_len % layout.block_q or blocks.shape[2] != q_len // layout.block_q:
    raise ValueError(
      f"BlockLayout: query length S={q_len} must equal NQ * block_q, got NQ={blocks.shape[2]}, block_q={layout.block_q}"
    )
  if kv_len % layout.block_kv:
    raise ValueError(
      f"BlockLayout: key length T={kv_len} must be a multiple of block_kv, got block_kv={layout.block_kv}"
    )


def is_concrete(layout: BlockLayout) -> bool:
  """True when the layout's arrays hold values (not tracers), so `check_layout_values` can read them."""
  return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(layout))


def check_layout_values(layout: BlockLayout, kv_len: int, *, where: str = "BlockLayout", name: str = "layout") -> None:
  """The value checks every backend needs for correct results, on concrete arrays (host side; not jit-able).

  Raises ValueError at the first violation, naming the field, the (b, h, i) row and the value: a count outside
  [0, MAXN], a listed id (among the first kv_count) outside [0, T / block_kv) (the kernels would clamp it and
  read the wrong block), or an id listed twice in a row (its keys would be counted twice). Order and padding
  are not checked: the backends give correct results without them (`check_layout` checks the full contract).
  `where` and `name` prefix the messages (the caller and its argument).
  """
  blocks, count = np.asarray(layout.kv_blocks), np.asarray(layout.kv_count)
  max_blocks, num_kv_blocks = blocks.shape[-1], kv_len // layout.block_kv
  bad = np.argwhere((count < 0) | (count > max_blocks))
  if bad.size:
    row = tuple(int(x) for x in bad[0])
    raise ValueError(
      f"{where}: `{name}.kv_count` must be in [0, MAXN={max_blocks}], got {count[row]} at (b, h, i)={row}"
    )
  valid = np.arange(max_blocks) < count[..., None]
  bad = np.argwhere(valid & ((blocks < 0) | (blocks >= num_kv_blocks)))
  if bad.size:
    row = tuple(int(x) for x in bad[0][:3])
    raise ValueError(
      f"{where}: `{name}.kv_blocks` ids must be in [0, {num_kv_blocks}) (T={kv_len} / block_kv={layout.block_kv}), "
      f"got {blocks[row][bad[0][3]]} at (b, h, i)={row} (its first kv_count ids: {blocks[row][: count[row]].tolist()})"
    )
  # Unlisted entries become distinct negative ids, so after sorting only listed ids can sit next to an equal one.
  listed = np.sort(np.where(valid, blocks, -1 - np.arange(max_blocks)), axis=-1)
  repeated = (listed[..., 1:] == listed[..., :-1]) & (listed[..., 1:] >= 0)
  bad = np.argwhere(repeated)
  if bad.size:
    row = tuple(int(x) for x in bad[0][:3])
    raise ValueError(
      f"{where}: `{name}.kv_blocks` row (b, h, i)={row} lists block {listed[row][bad[0][3]]} twice among its first "
      f"kv_count={count[row]} ids {blocks[row][: count[row]].tolist()} (its keys would be counted twice)"
    )


def _position_head(layout: BlockLayout, num_q_heads: int, num_position_heads: int) -> np.ndarray:
  """int [H]: the positions row ([B, P, N], P in {1, Hkv}) each layout head reads."""
  heads = np.arange(layout.num_heads)
  if num_position_heads == 1:
    return np.zeros_like(heads)
  per_q_head = layout.num_heads == num_q_heads and num_q_heads != num_position_heads
  return heads // (num_q_heads // num_position_heads) if per_q_head else heads


def _block_bounds(positions: jax.Array, block: int, reduce) -> jax.Array:
  """[B, P, N] -> [B, P, N / block] by `reduce` over each block."""
  return reduce(positions.reshape(*positions.shape[:-1], -1, block), axis=-1)


def block_kinds(layout: BlockLayout, q_positions: jax.Array, kv_positions: jax.Array, num_q_heads: int) -> jax.Array:
  """bool [B, H, NQ, MAXN]: True where listed block n = kv_blocks[b, h, i, j] holds a pair with kv_position >
  q_position (max kv position of block n > min q position of query block i); jit-able, O(B H NQ MAXN).

  Args:
    layout: BlockLayout [B, H, NQ, MAXN].
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv}.
    num_q_heads: Hq (to map a per-query-head layout onto per-kv-head positions).
  """
  rows = _position_head(layout, num_q_heads, q_positions.shape[1])
  earliest_query = _block_bounds(q_positions, layout.block_q, jnp.min)[:, rows]  # [B, H, NQ]
  latest_key = _block_bounds(kv_positions, layout.block_kv, jnp.max)[:, rows]  # [B, H, NK]
  num_kv_blocks = latest_key.shape[-1]
  ids = jnp.clip(layout.kv_blocks, 0, num_kv_blocks - 1).reshape(*layout.kv_blocks.shape[:2], -1)
  latest = jnp.take_along_axis(latest_key, ids, axis=-1).reshape(layout.kv_blocks.shape)
  return latest > earliest_query[..., None]


def with_block_kinds(
  layout: BlockLayout, q_positions: jax.Array, kv_positions: jax.Array, num_q_heads: int
) -> BlockLayout:
  """`layout` with `partial` = `block_kinds(...)` (see there)."""
  partial = block_kinds(layout, q_positions, kv_positions, num_q_heads)
  return dataclasses.replace(layout, partial=partial)


def check_block_kinds(
  layout: BlockLayout, q_positions, kv_positions, num_q_heads: int, *, where: str = "BlockLayout"
) -> None:
  """Concrete check (host side) that no listed block marked full (`partial` False) holds a causally invisible
  pair; ValueError naming the (b, h, i) row and the block. A block marked partial that is full only costs time."""
  if layout.partial is None:
    return
  needed = np.asarray(block_kinds(layout, jnp.asarray(q_positions), jnp.asarray(kv_positions), num_q_heads))
  valid = np.arange(layout.max_blocks) < np.asarray(layout.kv_count)[..., None]
  bad = np.argwhere(valid & needed & ~np.asarray(layout.partial))
  if bad.size:
    row, j = tuple(int(x) for x in bad[0][:3]), int(bad[0][3])
    raise ValueError(
      f"{where}: `layout.partial` marks block {int(np.asarray(layout.kv_blocks)[row][j])} of row (b, h, i)={row} "
      "full, but it holds a key after a query by the given positions (it must be marked partial)"
    )


def check_layout(layout: BlockLayout, kv_len: int) -> None:
  """Value checks of the layout contract on concrete arrays (host side; not jit-able).

  Raises ValueError at the first violation, naming the (b, h, i) row: the `check_layout_values` checks (counts
  in [0, MAXN], ids in [0, T / block_kv), no id twice), then ids not strictly increasing, or padding that does
  not repeat the last valid id.
  """
  check_layout_values(layout, kv_len)
  blocks, count = np.asarray(layout.kv_blocks), np.asarray(layout.kv_count)
  valid = np.arange(blocks.shape[-1]) < count[..., None]
  bad = np.argwhere((valid[..., 1:] & (np.diff(blocks, axis=-1) <= 0)).any(-1))
  if bad.size:
    row = tuple(int(x) for x in bad[0])
    raise ValueError(
      f"BlockLayout: the first kv_count ids of a row must be strictly increasing, got "
      f"{blocks[row][: count[row]].tolist()} at (b, h, i)={row}"
    )
  last = np.take_along_axis(blocks, np.maximum(count - 1, 0)[..., None], axis=-1)
  expected_padding = np.where(count[..., None] > 0, last, 0)
  bad = np.argwhere((~valid & (blocks != expected_padding)).any(-1))
  if bad.size:
    row = tuple(int(x) for x in bad[0])
    raise ValueError(
      f"BlockLayout: `kv_blocks` padding past kv_count must repeat the last valid id (0 for an empty row), got "
      f"{blocks[row].tolist()} with kv_count={count[row]} at (b, h, i)={row}"
    )


def from_block_mask(block_mask, block_q: int, block_kv: int, max_blocks: int | None = None) -> BlockLayout:
  """Builds a contract-abiding layout from a dense block mask (for tests and small builders); jit-able.

  Args:
    block_mask: bool [B, H, NQ, NK], True = query block i attends key/value block n.
    block_q, block_kv: token sizes of a block.
    max_blocks: MAXN (static); default NK. With concrete inputs, a row with more blocks raises ValueError;
      under tracing the lowest `max_blocks` ids of such a row are kept.
  Returns:
    BlockLayout with kv_blocks int32 [B, H, NQ, MAXN] and kv_count int32 [B, H, NQ].
  """
  block_mask = jnp.asarray(block_mask)
  if block_mask.ndim != 4 or block_mask.dtype != jnp.bool_:
    raise ValueError(
      f"from_block_mask: `block_mask` must be bool [B, H, NQ, NK], got {block_mask.dtype}{tuple(block_mask.shape)}"
    )
  num_kv_blocks = block_mask.shape[-1]
  max_blocks = num_kv_blocks if max_blocks is None else max_blocks
  if not 1 <= max_blocks:
    raise ValueError(f"from_block_mask: `max_blocks` must be >= 1, got {max_blocks}")
  count = jnp.sum(block_mask, axis=-1, dtype=jnp.int32)
  if not isinstance(count, jax.core.Tracer) and int(jnp.max(count)) > max_blocks:
    raise ValueError(f"from_block_mask: a row lists {int(jnp.max(count))} blocks, more than `max_blocks`={max_blocks}")
  count = jnp.minimum(count, max_blocks)
  # A stable sort of "not listed" puts the listed ids first, in increasing order.
  order = jnp.argsort(~block_mask, axis=-1, stable=True).astype(jnp.int32)
  if max_blocks > num_kv_blocks:
    order = jnp.pad(order, [(0, 0)] * 3 + [(0, max_blocks - num_kv_blocks)])
  order = order[..., :max_blocks]
  last = jnp.take_along_axis(order, jnp.maximum(count - 1, 0)[..., None], axis=-1)
  padding = jnp.where(count[..., None] > 0, last, 0)
  kv_blocks = jnp.where(jnp.arange(max_blocks) < count[..., None], order, padding)
  return BlockLayout(kv_blocks=kv_blocks, kv_count=count, block_q=block_q, block_kv=block_kv)


def to_block_mask(layout: BlockLayout, num_kv_blocks: int, *, full_only: bool = False) -> jax.Array:
  """bool [B, H, NQ, NK]: True where block n is among the first kv_count ids of row (b, h, i) (and, with
  `full_only`, marked full: `partial` False; a layout without kinds has no full blocks)."""
  valid = jnp.arange(layout.max_blocks) < layout.kv_count[..., None]
  if full_only:
    valid = jnp.zeros_like(valid) if layout.partial is None else valid & ~layout.partial
  ids = jnp.where(valid, layout.kv_blocks, num_kv_blocks)  # invalid entries land in a dropped extra column
  one_hot = jax.nn.one_hot(ids, num_kv_blocks + 1, dtype=jnp.bool_)  # [B, H, NQ, MAXN, NK + 1]
  return jnp.any(one_hot, axis=-2)[..., :num_kv_blocks]


def to_token_mask(layout: BlockLayout, kv_len: int, *, full_only: bool = False) -> jax.Array:
  """bool [B, H, S, T]: the layout (or its full blocks) expanded to tokens (no causal part). O(S * T): references
  and tests only."""
  block_mask = to_block_mask(layout, kv_len // layout.block_kv, full_only=full_only)
  return jnp.repeat(jnp.repeat(block_mask, layout.block_q, axis=2), layout.block_kv, axis=3)
