"""Block top-k heads: mean-pooled queries and keys score every block pair, the top `topk` causal key blocks of
each query block are kept (MMInference, arXiv 2504.16083; MInference `ops/block_sparse_flash_attention.py`, 64-token
blocks, k = 100):

    score[i, n] = mean(q[block i]) . mean(k[block n]) * sm_scale,   kept = top-topk_n {score[i, n] : (i, n) valid}

Valid pairs are the causally valid ones (see `layouts.py`), intersected with an optional `allowed` block mask
(a modality sub-block). The diagonal block is always listed as well, so a row holds up to topk + 1 blocks.
"""

import functools

import jax
import jax.numpy as jnp

from jaxagents.sparse.estimate import heads_first
from jaxagents.sparse.layouts import Frame, causal_blocks, check_blocks, finalize, identity_frame
from kernels_pallas.block_sparse import BlockLayout


def check_topk(fn: str, topk) -> None:
  if not isinstance(topk, int) or not 1 <= topk:
    raise ValueError(f"{fn}: `topk` must be an int >= 1 (key blocks per query block), got {topk!r}")


def block_topk_blocks(
  q: jax.Array, k: jax.Array, frame: Frame, topk: int, sm_scale: float, allowed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks (bool [B, H, NQ, NK]) and pooled scores; q [B, H, S, D], k [B, H, T, D] in slot order."""
  batch, heads, num_q_blocks, num_kv_blocks = frame.shape
  pooled_q = q.astype(jnp.float32).reshape(batch, heads, num_q_blocks, frame.block_q, -1).mean(axis=3)
  pooled_k = k.astype(jnp.float32).reshape(batch, heads, num_kv_blocks, frame.block_kv, -1).mean(axis=3)
  scores = jnp.einsum("bhid,bhnd->bhin", pooled_q, pooled_k, precision=jax.lax.Precision.HIGHEST) * sm_scale
  valid = causal_blocks(frame) if allowed is None else causal_blocks(frame) & allowed
  top_scores, top_ids = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), min(topk, num_kv_blocks))
  b, h, i = (x[..., None] for x in jnp.ogrid[:batch, :heads, :num_q_blocks])
  marks = jnp.zeros(scores.shape, jnp.int32).at[b, h, i, top_ids].add(jnp.isfinite(top_scores).astype(jnp.int32))
  return marks > 0, scores


@functools.partial(jax.jit, static_argnames=("topk", "block_q", "block_kv", "max_blocks", "causal", "sm_scale"))
def block_topk(
  q: jax.Array,
  k: jax.Array,
  topk: int,
  *,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  sm_scale: float | None = None,
) -> BlockLayout:
  """Block top-k layout over unpermuted tokens.

  Args:
    q: [B, S, Hq, D]; k: [B, T, Hkv, D] with S == T.
    topk: key blocks kept per query block (MInference: 100), besides the diagonal block.
    block_q, block_kv: pooling / layout block sizes (MInference: 64 x 64).
    max_blocks: MAXN (static), default NK.
    causal: only causally valid blocks compete.
    sm_scale: default 1 / sqrt(D) (only the ranking matters).
  Returns:
    BlockLayout kv_blocks int32 [B, Hq, S / block_q, MAXN].
  """
  q_bh, k_bh = heads_first("block_topk", q, k)
  batch, heads, q_len, head_dim = q_bh.shape
  max_blocks = check_blocks("block_topk", q_len, k_bh.shape[2], block_q, block_kv, max_blocks)
  check_topk("block_topk", topk)
  frame = identity_frame(batch, heads, q_len, block_q, block_kv, causal)
  mask, score = block_topk_blocks(q_bh, k_bh, frame, topk, head_dim**-0.5 if sm_scale is None else sm_scale)
  return finalize(frame, mask, score, max_blocks)
