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
Causal masking is applied on top of the layout by the kernels, from token positions; listing a block above the
diagonal is allowed and costs compute but not correctness. A traced layout that breaks the contract gives
unspecified results (the kernels clamp ids and counts so they never read out of bounds); `block_sparse_attention`
refuses a concrete one whose listed ids or counts are out of range or repeat (`check_layout_values`), and
`check_layout` checks the whole contract.

Not implemented: `block_kind` (full vs. partial blocks, splash attention's `block_mask`) and MInference's
vertical-column path (`column_count` / `column_index` of `csrc/vertical_slash_index.cu`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["kv_blocks", "kv_count"], meta_fields=["block_q", "block_kv"]
)
@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Per-query-block key/value block lists; see the module docstring for the contract.

  Attributes:
    kv_blocks: int32 [B, H, NQ, MAXN] key/value block ids, sorted, padded by repeating the last valid id.
    kv_count: int32 [B, H, NQ] number of valid ids per row.
    block_q: query tokens per block (static).
    block_kv: key/value tokens per block (static).
  """

  kv_blocks: jax.Array
  kv_count: jax.Array
  block_q: int
  block_kv: int

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
  return not any(isinstance(x, jax.core.Tracer) for x in (layout.kv_blocks, layout.kv_count))


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


def to_block_mask(layout: BlockLayout, num_kv_blocks: int) -> jax.Array:
  """bool [B, H, NQ, NK]: True where block n is among the first kv_count ids of row (b, h, i)."""
  valid = jnp.arange(layout.max_blocks) < layout.kv_count[..., None]
  ids = jnp.where(valid, layout.kv_blocks, num_kv_blocks)  # invalid entries land in a dropped extra column
  one_hot = jax.nn.one_hot(ids, num_kv_blocks + 1, dtype=jnp.bool_)  # [B, H, NQ, MAXN, NK + 1]
  return jnp.any(one_hot, axis=-2)[..., :num_kv_blocks]


def to_token_mask(layout: BlockLayout, kv_len: int) -> jax.Array:
  """bool [B, H, S, T]: the layout expanded to tokens (no causal part). O(S * T): references and tests only."""
  block_mask = to_block_mask(layout, kv_len // layout.block_kv)
  return jnp.repeat(jnp.repeat(block_mask, layout.block_q, axis=2), layout.block_kv, axis=3)
