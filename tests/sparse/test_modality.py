"""Modality permutations (MMInference's Q-/2D-boundary heads, arXiv 2504.16083): tokens grouped by modality
with their order kept inside a modality, inverses that restore the original order, and boundary layouts whose
per-modality sub-patterns cover exactly their sub-blocks. A planted vision slash that text spans cut in the
original order is found as one diagonal after the 2D permutation."""

import numpy as np
import pytest

from jaxagents.sparse import boundary_layout, modality_permutation, vertical_slash
from jaxagents.sparse.permutation import gather_tokens
from tests.sparse.oracles import (
  assert_builder_invariants,
  block_mask,
  causal_probs,
  original_token_mask,
  perm_positions,
  recall,
)

S, BLOCK = 256, 32


def _interleaved_ids(batch=2, seq_len=S, seed=0, runs=8):
  """int32 [B, S]: alternating vision (0) / text (1) runs of random lengths, different per row."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, seq_len), np.int32)
  for b in range(batch):
    edges = np.sort(rng.choice(np.arange(4, seq_len - 4), size=runs - 1, replace=False))
    for j, (lo, hi) in enumerate(zip([0, *edges], [*edges, seq_len])):
      ids[b, lo:hi] = (j + b) % 2
  return ids


@pytest.mark.parametrize("mode", ["q", "2d"])
def test_modality_permutation_groups_tokens_by_modality_and_its_inverse_restores_order(mode):
  ids = _interleaved_ids()
  perm = modality_permutation(ids, mode, num_heads=3)
  q_perm, kv_perm = np.asarray(perm.q_perm), np.asarray(perm.kv_perm)
  assert q_perm.shape == kv_perm.shape == (2, 3, S)
  for b in range(2):
    grouped = ids[b][q_perm[b, 0]]
    assert (np.diff(grouped) >= 0).all(), "queries must be grouped by modality"
    for m in (0, 1):  # stable: original order inside a modality
      np.testing.assert_array_equal(q_perm[b, 0][grouped == m], np.flatnonzero(ids[b] == m))
  np.testing.assert_array_equal(kv_perm, q_perm if mode == "2d" else np.broadcast_to(np.arange(S), kv_perm.shape))
  x = np.random.default_rng(1).standard_normal((2, S, 3, 4)).astype(np.float32)
  np.testing.assert_array_equal(gather_tokens(gather_tokens(x, perm.q_perm), perm.q_inverse), x)
  np.testing.assert_array_equal(
    np.take_along_axis(q_perm, np.asarray(perm.q_inverse), -1), np.broadcast_to(np.arange(S), q_perm.shape)
  )


def _qk(seed=2):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((2, S, 2, 16)).astype(np.float32), rng.standard_normal((2, S, 1, 16)).astype(np.float32)


def _block_modalities(ids_in_slots, block):
  """bool [B, H, N, 2]: which modalities each block of slots holds."""
  blocks = ids_in_slots.reshape(*ids_in_slots.shape[:2], -1, block)
  return np.stack([(blocks == m).any(-1) for m in (0, 1)], -1)


def _causal_valid(q_pos, kv_pos, block):
  latest = q_pos.reshape(*q_pos.shape[:2], -1, block).max(-1)
  earliest = kv_pos.reshape(*kv_pos.shape[:2], -1, block).min(-1)
  return earliest[..., None, :] <= latest[..., :, None]


def test_2d_boundary_layout_covers_exactly_the_sub_blocks_of_its_dense_sub_patterns():
  ids = _interleaved_ids()
  q, k = _qk()
  only_own_block = ("a_shape", {"n_init": 0, "n_local": 1})
  perm, layout = boundary_layout(
    q,
    k,
    ids,
    *only_own_block,
    mode="2d",
    per_modality={(0, 0): ("dense", {}), (1, 1): ("dense", {})},
    block_q=BLOCK,
    block_kv=BLOCK,
  )
  q_pos, kv_pos = perm_positions(perm, layout.num_heads)
  assert_builder_invariants(layout, q_pos, kv_pos)
  slot_ids = np.take_along_axis(np.broadcast_to(ids[:, None], q_pos.shape), q_pos, -1)
  has = _block_modalities(slot_ids, BLOCK)  # same for q and kv (shared permutation)
  same_modality = (has[..., :, None, :] & has[..., None, :, :]).any(-1)
  diagonal = np.eye(S // BLOCK, dtype=bool)
  np.testing.assert_array_equal(block_mask(layout, S), (same_modality & _causal_valid(q_pos, kv_pos, BLOCK)) | diagonal)


def test_q_boundary_layout_gives_each_query_modality_its_own_pattern():
  ids = _interleaved_ids()
  q, k = _qk()
  perm, layout = boundary_layout(
    q,
    k,
    ids,
    "a_shape",
    {"n_init": 0, "n_local": 1},
    mode="q",
    per_modality={0: ("dense", {})},
    block_q=BLOCK,
    block_kv=BLOCK,
  )
  q_pos, kv_pos = perm_positions(perm, layout.num_heads)
  np.testing.assert_array_equal(kv_pos, np.broadcast_to(np.arange(S), kv_pos.shape))
  assert_builder_invariants(layout, q_pos, kv_pos)
  slot_ids = np.take_along_axis(np.broadcast_to(ids[:, None], q_pos.shape), q_pos, -1)
  has = _block_modalities(slot_ids, BLOCK)
  # Modality-1 rows: a window of one token around positions [lo, hi] of the block's queries -> key blocks
  # lo // BLOCK .. hi // BLOCK (keys are in original order).
  lo = q_pos.reshape(2, 2, -1, BLOCK).min(-1)[..., None]
  hi = q_pos.reshape(2, 2, -1, BLOCK).max(-1)[..., None]
  n = np.arange(S // BLOCK)
  window = (n >= lo // BLOCK) & (n <= hi // BLOCK)
  valid = _causal_valid(q_pos, kv_pos, BLOCK)
  expected = (has[..., 0, None] & valid) | (has[..., 1, None] & window & valid)
  np.testing.assert_array_equal(block_mask(layout, S), expected)


def test_2d_permutation_turns_a_text_cut_vision_slash_into_one_diagonal():
  seq_len, head_dim, offset = 512, 32, 100
  ids = _interleaved_ids(batch=1, seq_len=seq_len, seed=5, runs=16)
  vision = np.flatnonzero(ids[0] == 0)
  rng = np.random.default_rng(6)
  freqs = rng.uniform(0.3, 3.0, 16)
  fourier = lambda x: np.concatenate([np.cos(np.outer(x, freqs)), np.sin(np.outer(x, freqs))], -1)  # noqa: E731
  q = 0.3 * rng.standard_normal((1, seq_len, 1, head_dim))
  k = 0.3 * rng.standard_normal((1, seq_len, 1, head_dim))
  # Vision token number m attends vision token number m - offset (logit ~ 12); text is noise.
  local = np.arange(len(vision))
  q[0, vision, 0] = 2.05 * fourier(local)
  k[0, vision, 0] = 2.05 * fourier(local + offset)
  q, k = q.astype(np.float32), k.astype(np.float32)
  slash_only = ("vertical_slash", {"v_size": 0, "s_size": 1, "n_forced_vertical": 0, "n_forced_slash": 0})
  own_block = ("a_shape", {"n_init": 0, "n_local": 1})
  perm, layout = boundary_layout(
    q, k, ids, *own_block, mode="2d", per_modality={(0, 0): slash_only}, block_q=BLOCK, block_kv=BLOCK
  )
  plain = vertical_slash(q, k, 0, 1, block_q=BLOCK, block_kv=BLOCK, n_forced_vertical=0, n_forced_slash=0)

  probs = causal_probs(q, k)[0, 0]
  rows = vision[offset:]  # vision queries whose planted key exists
  permuted_mask = original_token_mask(layout, *perm_positions(perm, layout.num_heads))[0, 0]
  plain_mask = original_token_mask(plain, *[np.broadcast_to(np.arange(seq_len), (1, 1, seq_len))] * 2)[0, 0]
  permuted_recall = recall(probs[rows], permuted_mask[rows])
  plain_recall = recall(probs[rows], plain_mask[rows])
  assert permuted_recall >= 0.95 > 0.7 > plain_recall, (permuted_recall, plain_recall)  # measured 0.99 vs 0.48
