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
"""

import functools

import jax
import jax.numpy as jnp

from jaxagents.sparse.estimate import LAST_Q, attention_estimate, check_last_q, estimation_rows, heads_first
from jaxagents.sparse.layouts import Frame, check_blocks, finalize, identity_frame, q_coord_bounds, range_blocks
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


def vertical_slash_blocks(
  probs: jax.Array,
  row_coords: jax.Array,
  row_weight: jax.Array,
  frame: Frame,
  v_size: int,
  s_size: int,
  *,
  key_ok: jax.Array | None = None,
  n_forced_vertical: int = FORCED_COLUMNS,
  n_forced_slash: int = FORCED_DIAGONALS,
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks and scores of the vertical-slash pattern.

  Args:
    probs: A_hat float32 [B, H, R, T].
    row_coords: int32 [B, H, R], key-slot coordinate of each estimation row.
    row_weight: float [B, H, R], 0 drops a row from the sums (rows of another modality).
    frame: token placement.
    v_size, s_size: number of columns / diagonals kept.
    key_ok: bool [B, H, T] or None; columns and diagonal sums use only these keys (a modality sub-block).
    n_forced_vertical, n_forced_slash: always-kept leading columns / diagonals.
  Returns:
    (bool [B, H, NQ, NK], float32 [B, H, NQ, NK]).
  """
  batch, heads, num_rows, kv_len = probs.shape
  num_kv_blocks = frame.shape[-1]
  boost = float(num_rows + 1)  # above any sum of R probabilities
  mass = probs * row_weight[..., None]
  if key_ok is not None:
    mass = jnp.where(key_ok[..., None, :], mass, 0.0)
  b, h = (x[..., None] for x in jnp.ogrid[:batch, :heads])

  vertical = jnp.sum(mass, axis=-2) + boost * (jnp.arange(kv_len) < n_forced_vertical)
  if key_ok is not None:
    vertical = jnp.where(key_ok, vertical, -1.0)
  column_scores, columns = jax.lax.top_k(vertical, v_size)  # [B, H, V]
  picked = (column_scores >= 0).astype(jnp.int32)
  column_counts = jnp.zeros((batch, heads, num_kv_blocks), jnp.int32).at[b, h, columns // frame.block_kv].add(picked)
  column_weight = (
    jnp.zeros((batch, heads, num_kv_blocks))
    .at[b, h, columns // frame.block_kv]
    .add(jnp.where(picked > 0, column_scores, 0.0))
  )

  # slash index o + T - 1 for offset o = q_coord - t in (-T, T).
  offset_index = row_coords[..., None] - jnp.arange(kv_len) + kv_len - 1  # [B, H, R, T]
  slash = jnp.zeros((batch, heads, 2 * kv_len - 1)).at[b[..., None], h[..., None], offset_index].add(mass)
  offsets = jnp.arange(2 * kv_len - 1) - (kv_len - 1)
  slash = slash + boost * ((offsets >= 0) & (offsets < n_forced_slash))
  slash_scores, slash_index = jax.lax.top_k(slash, s_size)  # [B, H, K]
  chosen_offsets = slash_index - (kv_len - 1)
  lo, hi = q_coord_bounds(frame)  # [B, H, NQ]
  token_lo = lo[..., None] - chosen_offsets[..., None, :]  # [B, H, NQ, K]
  token_hi = hi[..., None] - chosen_offsets[..., None, :]
  valid = (token_hi >= 0) & (token_lo <= kv_len - 1)
  slash_mask, slash_weight = range_blocks(
    jnp.clip(token_lo, 0, kv_len - 1),
    jnp.clip(token_hi, 0, kv_len - 1),
    valid,
    jnp.broadcast_to(slash_scores[..., None, :], valid.shape),
    num_kv_blocks,
    frame.block_kv,
  )
  mask = slash_mask | (column_counts > 0)[..., None, :]
  return mask, slash_weight + column_weight[..., None, :]


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
    max_blocks: MAXN (static), default NK; the diagonal block, then the highest-scoring blocks, are kept.
    causal: causal estimate and causal-valid blocks.
    sm_scale: default 1 / sqrt(D).
    n_forced_vertical, n_forced_slash: MInference's always-kept 30 first columns and 100 nearest diagonals.
  Returns:
    BlockLayout kv_blocks int32 [B, Hq, S / block_q, MAXN] (one layout per query head).
  """
  q_bh, k_bh = heads_first("vertical_slash", q, k)
  batch, heads, q_len, head_dim = q_bh.shape
  max_blocks = check_blocks("vertical_slash", q_len, k_bh.shape[2], block_q, block_kv, max_blocks)
  check_last_q("vertical_slash", last_q, q_len)
  check_vertical_slash_params("vertical_slash", q_len, v_size, s_size, n_forced_vertical, n_forced_slash)
  frame = identity_frame(batch, heads, q_len, block_q, block_kv, causal)
  rows = estimation_rows(jnp.full((batch, heads), q_len), last_q, q_len)
  probs = attention_estimate(q_bh, k_bh, rows, frame, head_dim**-0.5 if sm_scale is None else sm_scale)
  mask, score = vertical_slash_blocks(
    probs,
    rows,
    jnp.ones(rows.shape),
    frame,
    v_size,
    s_size,
    n_forced_vertical=n_forced_vertical,
    n_forced_slash=n_forced_slash,
  )
  return finalize(frame, mask, score, max_blocks)
