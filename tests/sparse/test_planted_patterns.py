"""Builders find planted structure: A-shape lists exactly the sink and window blocks;
vertical-slash picks planted heavy columns and a planted diagonal and always keeps MInference's forced ones;
block top-k picks planted heavy blocks; `grid` recovers a planted stride and phase per head, orders tokens
phase-major, and its layout recalls >= 95 % of the true attention mass."""

import numpy as np
import pytest

from jaxagents.sparse import a_shape, block_topk, grid, grid_search, vertical_slash
from tests.sparse.oracles import block_mask, causal_probs, original_token_mask, perm_positions, recall

RECALL_THRESHOLD = 0.95  # the search keeps the cheapest candidate above a 0.95 recall


def test_a_shape_lists_exactly_the_sink_and_window_blocks():
  seq_len, block, n_init, n_local = 512, 32, 40, 70
  listed = block_mask(a_shape(seq_len, n_init, n_local, block_q=block, block_kv=block), seq_len)[0, 0]
  i, n = np.indices(listed.shape)
  # Sinks: the block holds a token < n_init. Window: some query q in block i and key t in block n with
  # q - n_local < t <= q. Both only on or below the diagonal.
  sinks = n * block < n_init
  window = (n * block + block - 1 > i * block - n_local) & (n <= i)
  np.testing.assert_array_equal(listed, (sinks | window) & (n <= i))


def _fourier(x, freqs):
  return np.concatenate([np.cos(np.outer(x, freqs)), np.sin(np.outer(x, freqs))], axis=-1)


def test_vertical_slash_picks_the_planted_columns_and_diagonal():
  seq_len, head_dim, block, offset, columns = 512, 32, 64, 150, (70, 200)
  rng = np.random.default_rng(0)
  freqs = rng.uniform(0.3, 3.0, 14)
  # q_i . k_j peaks at i - j = offset (a sharp kernel from random Fourier features), plus two heavy columns.
  q = np.zeros((1, seq_len, 1, head_dim))
  k = np.zeros((1, seq_len, 1, head_dim))
  q[0, :, 0, :28] = 2.2 * _fourier(np.arange(seq_len), freqs)
  k[0, :, 0, :28] = 2.2 * _fourier(np.arange(seq_len) + offset, freqs)
  q[0, :, 0, 28] = 8.0
  k[0, list(columns), 0, 28] = 8.0
  layout = vertical_slash(
    q.astype(np.float32),
    k.astype(np.float32),
    2,
    1,
    block_q=block,
    block_kv=block,
    n_forced_vertical=0,
    n_forced_slash=0,
  )
  listed = block_mask(layout, seq_len)[0, 0]
  i, n = np.indices(listed.shape)
  column_blocks = np.isin(n, [c // block for c in columns]) & (n <= i)
  first_key, last_key = i * block - offset, i * block + block - 1 - offset  # the diagonal's keys per query block
  slash_blocks = (last_key >= 0) & (n * block <= last_key) & (n * block + block - 1 >= first_key)
  np.testing.assert_array_equal(listed, (i == n) | column_blocks | slash_blocks)


def test_vertical_slash_always_keeps_the_first_30_columns_and_the_100_nearest_diagonals():
  rng = np.random.default_rng(1)
  q, k = (rng.standard_normal((1, 512, 2, 16)).astype(np.float32) for _ in range(2))
  listed = block_mask(vertical_slash(q, k, 30, 100, block_q=32, block_kv=32), 512)
  i, n = np.indices(listed.shape[2:])
  # Column 0..29 -> key block 0; offsets 0..99 from queries [32 i, 32 i + 31] -> keys [32 i - 99, 32 i + 31].
  forced = (n == 0) | ((n <= i) & (n * 32 + 31 >= i * 32 - 99))
  assert listed[:, :, forced].all()
  assert not listed.all(), "the pattern should stay sparse at S = 512"


def test_block_topk_picks_the_planted_blocks_and_matches_a_pooled_score_oracle():
  seq_len, head_dim, block, heavy = 512, 16, 64, (1, 5)
  rng = np.random.default_rng(2)
  direction = rng.standard_normal(head_dim)
  q = 0.3 * rng.standard_normal((1, seq_len, 2, head_dim)) + direction
  k = rng.standard_normal((1, seq_len, 1, head_dim))
  for n in heavy:
    k[0, n * block : (n + 1) * block, 0] += 2.0 * direction
  q, k = q.astype(np.float32), k.astype(np.float32)
  listed = block_mask(block_topk(q, k, 2, block_q=block, block_kv=block), seq_len)
  num_blocks = seq_len // block
  pooled_q = q[0].reshape(num_blocks, block, 2, head_dim).mean(1)  # [NQ, Hq, D]
  pooled_k = k[0, :, 0].reshape(num_blocks, block, head_dim).mean(1)  # [NK, D]
  for h in range(2):
    scores = pooled_q[:, h] @ pooled_k.T
    for i in range(num_blocks):
      top = np.argsort(-scores[i, : i + 1], kind="stable")[:2]
      expected = np.zeros(num_blocks, bool)
      expected[top] = True
      expected[i] = True
      np.testing.assert_array_equal(listed[0, h, i], expected, err_msg=f"head {h}, query block {i}")
      if i >= max(heavy):
        assert listed[0, h, i, list(heavy)].all()


def _planted_grid(seq_len, head_dim, planted, seed=3):
  """q, k [1, S, H, D] with logit 5 on keys of the query's residue mod s (slashes) and on keys = p (mod s)."""
  rng = np.random.default_rng(seed)
  basis = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))[0]
  scale = np.sqrt(5.0 * np.sqrt(head_dim))
  tokens = np.arange(seq_len)
  q = 0.1 * rng.standard_normal((1, seq_len, len(planted), head_dim))
  k = 0.1 * rng.standard_normal((1, seq_len, len(planted), head_dim))
  for h, (stride, phase) in enumerate(planted):
    q[0, :, h] += scale * (basis[tokens % stride] + basis[-1])
    k[0, :, h] += scale * (basis[tokens % stride] + np.outer(tokens % stride == phase, basis[-1]))
  return q.astype(np.float32), k.astype(np.float32)


def test_grid_search_recovers_the_planted_stride_and_phase_per_head():
  planted = [(8, 3), (12, 5)]
  q, k = _planted_grid(512, 32, planted)
  stride, phase, excess = grid_search(q, k, [4, 6, 8, 12, 16])
  np.testing.assert_array_equal(np.stack([stride[0], phase[0]], -1), planted)
  assert excess.shape == (1, 2, 5, 16) and np.isneginf(np.asarray(excess)[0, 0, 0, 4:]).all()


@pytest.mark.parametrize("block", [32, 64])
def test_grid_orders_tokens_phase_major_and_recalls_the_planted_attention(block):
  planted = [(8, 3), (12, 5)]
  q, k = _planted_grid(512, 32, planted)
  perm, layout = grid(q, k, (4, 6, 8, 12, 16), block_q=block, block_kv=block)
  q_pos, kv_pos = perm_positions(perm)
  np.testing.assert_array_equal(q_pos, kv_pos)
  for h, (stride, phase) in enumerate(planted):
    group = (q_pos[0, h] - phase) % stride
    key = group * 512 + q_pos[0, h]  # groups in order, original order inside a group, found phase first
    assert (np.diff(key) > 0).all() and group[0] == 0
  mask = original_token_mask(layout, q_pos, kv_pos)
  probs = causal_probs(q, k)
  got = recall(probs, mask)
  assert (got >= RECALL_THRESHOLD).all(), got
  density = (mask & np.tri(512, dtype=bool)).sum((-1, -2)) / np.tri(512).sum()
  assert (density < 0.6).all(), density
