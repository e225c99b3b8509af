"""Independent numpy oracles for the pattern-builder tests: permutation invariance, layout invariants, planted
structure.

Nothing here calls the builders' own block logic: layouts are expanded with the kernel package's
`to_token_mask`, mapped back to the original token order with numpy fancy indexing, and checked against
definitions written out below.
"""

import numpy as np

from kernels_pallas.block_sparse import check_layout, to_block_mask, to_token_mask


def identity_positions(batch: int, heads: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  positions = np.broadcast_to(np.arange(seq_len), (batch, heads, seq_len))
  return positions, positions


def perm_positions(perm, heads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(q positions, kv positions) [B, H, N] of a Permutation's slots; a permutation per kv head or shared ([B, P, N])
  is repeated to `heads` layout heads (H = heads // P consecutive heads per row)."""
  q_pos, kv_pos = np.asarray(perm.q_perm), np.asarray(perm.kv_perm)
  if heads is not None and heads != q_pos.shape[1]:
    q_pos, kv_pos = (np.repeat(x, heads // x.shape[1], axis=1) for x in (q_pos, kv_pos))
  return q_pos, kv_pos


def block_mask(layout, kv_len: int) -> np.ndarray:
  return np.asarray(to_block_mask(layout, kv_len // layout.block_kv))


def assert_builder_invariants(layout, q_pos: np.ndarray, kv_pos: np.ndarray, causal: bool = True) -> None:
  """The layout invariants over slot positions q_pos [B, H, S], kv_pos [B, H, T] (original positions per slot).

  The kernel contract (sorted, unique, in range, count <= MAXN, padding repeats the last id); causal-valid
  blocks (each listed block holds some pair kv_pos <= q_pos); every query's own token's key block listed; and
  every query row has a visible key after the causal mask.
  """
  kv_len = kv_pos.shape[-1]
  check_layout(layout, kv_len)
  listed = block_mask(layout, kv_len)  # [B, H, NQ, NK]
  bq, bk = layout.block_q, layout.block_kv
  batch, heads, num_q_blocks, num_kv_blocks = listed.shape
  if causal:
    latest_query = q_pos.reshape(batch, heads, num_q_blocks, bq).max(-1)
    earliest_key = kv_pos.reshape(batch, heads, num_kv_blocks, bk).min(-1)
    invalid = listed & (earliest_key[..., None, :] > latest_query[..., :, None])
    assert not invalid.any(), f"blocks with no causally visible pair listed at {np.argwhere(invalid)[:4].tolist()}"
  own_slot = np.argsort(kv_pos, axis=-1)[np.arange(batch)[:, None, None], np.arange(heads)[:, None], q_pos]
  b, h, s = np.indices(q_pos.shape)
  assert listed[b, h, s // bq, own_slot // bk].all(), "a query's own key block is missing"
  visible = np.asarray(to_token_mask(layout, kv_len))
  if causal:
    visible = visible & (kv_pos[:, :, None, :] <= q_pos[:, :, :, None])
  assert visible.any(-1).all(), "a query row has no visible key"


def original_token_mask(layout, q_pos: np.ndarray, kv_pos: np.ndarray) -> np.ndarray:
  """bool [B, H, S, T] in original token order: out[b, h, q_pos[s], kv_pos[t]] = layout token mask[b, h, s, t]."""
  slot_mask = np.asarray(to_token_mask(layout, kv_pos.shape[-1]))
  out = np.zeros_like(slot_mask)
  b, h = np.arange(slot_mask.shape[0])[:, None, None, None], np.arange(slot_mask.shape[1])[:, None, None]
  out[b, h, q_pos[:, :, :, None], kv_pos[:, :, None, :]] = slot_mask
  return out


def causal_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
  """float64 causal softmax(q k^T / sqrt(D)) [B, Hq, S, T] (K repeated over GQA groups)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  logits = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.tri(q.shape[1], k.shape[1], dtype=bool), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


def recall(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Mean over rows of the attention mass inside `mask`, per (batch, head): [B, H]."""
  return (probs * mask).sum(-1).mean(-1)
