"""A-shape (Lambda-shape, StreamingLLM) heads: `n_init` sink tokens plus a local window of `n_local` tokens
(StreamingLLM, arXiv 2309.17453; MInference `minference/ops/streaming_kernel.py`).

In key-slot coordinates (see `layouts.py`), the query at coordinate c sees the keys

    t < n_init                      (attention sinks)
    c - n_local < t <= c            (local window; c - n_local < t < c + n_local when not causal)

and the layout lists every key block that intersects those tokens for some query of the block. The window is
measured on the query block's coordinate span, so the layout is a superset of the token pattern.
"""

import functools

import jax
import jax.numpy as jnp

from jaxagents.sparse.layouts import Frame, budget_blocks, check_blocks, finalize, identity_frame, q_coord_bounds
from kernels_pallas.block_sparse import BlockLayout


def check_a_shape_params(fn: str, n_init, n_local) -> None:
  if not isinstance(n_init, int) or n_init < 0:
    raise ValueError(f"{fn}: `n_init` must be an int >= 0, got {n_init!r}")
  if not isinstance(n_local, int) or n_local < 1:
    raise ValueError(f"{fn}: `n_local` must be an int >= 1 (the window includes the query), got {n_local!r}")


def a_shape_budget(n_init: int, n_local: int, block_q: int, block_kv: int) -> int:
  """Default MAXN: the sink blocks plus the window's blocks for a whole query block."""
  return -(-n_init // block_kv) + budget_blocks(n_local, block_q, block_kv)


def a_shape_blocks(frame: Frame, n_init: int, n_local: int) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks (bool [B, H, NQ, NK]) and scores (sinks 2, window blocks in (1, 2), nearer = higher)."""
  num_kv_blocks = frame.shape[-1]
  lo, hi = q_coord_bounds(frame)  # [B, H, NQ]
  window_lo = lo - n_local + 1
  window_hi = hi if frame.causal else hi + n_local - 1
  block_start = jnp.arange(num_kv_blocks) * frame.block_kv
  block_end = block_start + frame.block_kv - 1
  window = (block_start <= window_hi[..., None]) & (block_end >= window_lo[..., None])
  sinks = jnp.broadcast_to(block_start < n_init, window.shape)
  nearness = 1.0 + (jnp.arange(num_kv_blocks) + 1) / (num_kv_blocks + 1)
  score = jnp.where(sinks, 2.0, jnp.where(window, nearness, 0.0))
  return window | sinks, score


@functools.partial(
  jax.jit,
  static_argnames=("seq_len", "n_init", "n_local", "block_q", "block_kv", "max_blocks", "batch", "num_heads", "causal"),
)
def a_shape(
  seq_len: int,
  n_init: int,
  n_local: int,
  *,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  batch: int = 1,
  num_heads: int = 1,
  causal: bool = True,
) -> BlockLayout:
  """A-shape layout over unpermuted tokens; input-independent.

  Args:
    seq_len: S (= T).
    n_init: sink tokens at the start (MInference's stream_llm uses e.g. 100).
    n_local: local-window tokens, the query included (>= 1).
    block_q, block_kv: block sizes (MInference: 64 x 64).
    max_blocks: MAXN (static), default the sink and window blocks (`a_shape_budget`), at most NK; sinks, then the
      blocks nearest the diagonal, are kept first.
    batch, num_heads: leading layout dimensions.
    causal: drop blocks with no causally visible pair.
  Returns:
    BlockLayout kv_blocks int32 [batch, num_heads, S / block_q, MAXN].
  """
  budget = a_shape_budget(n_init, n_local, block_q, block_kv) if isinstance(n_init, int) else None
  max_blocks = check_blocks("a_shape", seq_len, seq_len, block_q, block_kv, max_blocks, budget)
  check_a_shape_params("a_shape", n_init, n_local)
  frame = identity_frame(batch, num_heads, seq_len, block_q, block_kv, causal)
  mask, score = a_shape_blocks(frame, n_init, n_local)
  return finalize(frame, mask, score, max_blocks)
