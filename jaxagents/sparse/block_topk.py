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

from jaxagents.sparse.estimate import check_qk_shapes
from jaxagents.sparse.layouts import (
  Frame,
  budget_blocks,
  causal_blocks,
  check_blocks,
  identity_frame,
  layout_from_ranked,
  own_block_ids,
)
from kernels_pallas.block_sparse import BlockLayout


def check_topk(fn: str, topk) -> None:
  if not isinstance(topk, int) or not 1 <= topk:
    raise ValueError(f"{fn}: `topk` must be an int >= 1 (key blocks per query block), got {topk!r}")


def pooled_scores(q: jax.Array, k: jax.Array, block_q: int, block_kv: int, sm_scale: float) -> jax.Array:
  """float32 [B, Hq, NQ, NK]: mean(q[block i]) . mean(k[block n]) * sm_scale, from q [B, S, Hq, D] and
  k [B, T, Hkv, D] in slot order; one read of q and k in their dtype (float32 sums), K never repeated per
  query head."""
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  pooled_q = jnp.mean(q.reshape(batch, q_len // block_q, block_q, num_q_heads, head_dim), axis=2, dtype=jnp.float32)
  pooled_k = jnp.mean(k.reshape(batch, kv_len // block_kv, block_kv, num_kv_heads, head_dim), axis=2, dtype=jnp.float32)
  groups = num_q_heads // num_kv_heads
  pooled_q = pooled_q.reshape(batch, q_len // block_q, num_kv_heads, groups, head_dim)
  scores = jnp.einsum("bikgd,bnkd->bkgin", pooled_q, pooled_k, precision=jax.lax.Precision.HIGHEST) * sm_scale
  return scores.reshape(batch, num_q_heads, q_len // block_q, kv_len // block_kv)


def block_topk_blocks(
  scores: jax.Array, frame: Frame, topk: int, allowed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks (bool [B, H, NQ, NK]): the top `topk` valid blocks of each row by `scores` [B, H, NQ, NK]."""
  valid = causal_blocks(frame) if allowed is None else causal_blocks(frame) & allowed
  valid_scores = jnp.where(valid, scores, -jnp.inf)
  kth = jax.lax.top_k(valid_scores, min(topk, scores.shape[-1]))[0][..., -1:]  # the topk-th largest score
  # Exactly the top `topk`: every score above the threshold, then ties at it by lower id (top_k's order).
  above = valid_scores > kth
  tied = (valid_scores == kth) & jnp.isfinite(kth)
  room = topk - jnp.sum(above, axis=-1, keepdims=True)
  return above | (tied & (jnp.cumsum(tied, axis=-1) <= room)), scores


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
    topk: key blocks kept per query block by pooled score among the causal ones (MInference: 100); the row's own
      (diagonal) blocks are listed whether or not they are among them, so a row lists topk to topk + W.
    block_q, block_kv: pooling / layout block sizes (MInference: 64 x 64).
    max_blocks: MAXN (static), default topk + the blocks of the diagonal (`budget_blocks`), at most NK.
    causal: only causally valid blocks compete.
    sm_scale: default 1 / sqrt(D) (only the ranking matters).
  Returns:
    BlockLayout kv_blocks int32 [B, Hq, S / block_q, MAXN].
  """
  q, k = jnp.asarray(q), jnp.asarray(k)
  check_qk_shapes("block_topk", q.shape, k.shape)
  batch, q_len, heads, head_dim = q.shape
  budget = budget_blocks(topk * block_kv, block_q, block_kv)
  max_blocks = check_blocks("block_topk", q_len, k.shape[1], block_q, block_kv, max_blocks, budget)
  check_topk("block_topk", topk)
  frame = identity_frame(batch, 1, q_len, block_q, block_kv, causal)
  scores = pooled_scores(q, k, block_q, block_kv, head_dim**-0.5 if sm_scale is None else sm_scale)
  # The row's own key blocks first, then its top-k valid blocks by score: a short ranked list per row, so no
  # second pass over the [NQ, NK] scores (`layout_from_ranked`).
  top_scores, top_ids = jax.lax.top_k(jnp.where(causal_blocks(frame), scores, -jnp.inf), min(topk, scores.shape[-1]))
  own_ids, own_ok = own_block_ids(frame)
  shape = (*top_ids.shape[:-1], own_ids.shape[-1])
  ids = jnp.concatenate([jnp.broadcast_to(own_ids, shape), top_ids], axis=-1)
  valid = jnp.concatenate([jnp.broadcast_to(own_ok, shape), top_scores > -jnp.inf], axis=-1)
  return layout_from_ranked(ids, valid, max_blocks, block_q, block_kv, scores.shape[-1])
