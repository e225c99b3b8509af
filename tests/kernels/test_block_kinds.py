"""Full vs partial blocks (`BlockLayout.partial`, splash attention's block kinds): the kinds computed from positions
mark exactly the blocks that cross the causal boundary; a concrete layout that marks such a block full is refused;
the kernels mask only partial blocks, which a deliberately full-marked diagonal block shows (its queries then see
their later keys, as the reference with the same kinds does, and unlike causal attention)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import block_sparse_attention, block_sparse_attention_reference, from_block_mask
from kernels_pallas.block_sparse.layout import block_kinds, with_block_kinds
from tests.kernels.block_sparse_cases import interpret_for

S, D, HQ, HKV, BLOCK = 128, 16, 4, 2, 32
NB = S // BLOCK


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((1, S, HQ, D)).astype(np.float32)
  k, v = (rng.standard_normal((1, S, HKV, D)).astype(np.float32) for _ in range(2))
  return q, k, v


def _causal_layout():
  return from_block_mask(np.broadcast_to(np.tri(NB, dtype=bool), (1, HKV, NB, NB)).copy(), BLOCK, BLOCK)


def _positions(perm=None):
  positions = np.arange(S, dtype=np.int32) if perm is None else perm
  return jnp.asarray(np.broadcast_to(positions, (1, 1, S)))


def test_kinds_of_an_unpermuted_causal_layout_are_its_diagonal_blocks():
  layout = _causal_layout()
  partial = np.asarray(block_kinds(layout, _positions(), _positions(), HQ))
  ids, count = np.asarray(layout.kv_blocks), np.asarray(layout.kv_count)
  listed = np.arange(layout.max_blocks) < count[..., None]
  rows = np.arange(NB)[None, None, :, None]
  np.testing.assert_array_equal(partial & listed, (ids == rows) & listed)


def test_kinds_under_a_permutation_follow_the_original_positions():
  perm = np.random.default_rng(3).permutation(S).astype(np.int32)
  layout = from_block_mask(np.ones((1, HKV, NB, NB), bool), BLOCK, BLOCK)
  partial = np.asarray(block_kinds(layout, _positions(perm), _positions(perm), HQ))
  earliest_query = perm.reshape(NB, BLOCK).min(-1)
  latest_key = perm.reshape(NB, BLOCK).max(-1)
  expected = latest_key[None, :] > earliest_query[:, None]  # [NQ, NK]: some key after some query
  np.testing.assert_array_equal(partial[0, 0], expected[:, np.asarray(layout.kv_blocks)[0, 0, 0]])


def test_a_concrete_layout_marking_a_crossing_block_full_is_refused():
  q, k, v = _inputs()
  layout = _causal_layout()
  wrong = dataclasses.replace(layout, partial=jnp.zeros(layout.kv_blocks.shape, bool))
  with pytest.raises(ValueError, match="partial"):
    block_sparse_attention(q, k, v, wrong, backend="xla")


@pytest.mark.parametrize("backend", ["xla", "pallas_triton", "pallas_tpu"])
def test_kernels_mask_only_partial_blocks(backend):
  q, k, v = _inputs()
  layout = with_block_kinds(_causal_layout(), _positions(), _positions(), HQ)
  kw = {"backend": backend, "interpret": backend != "xla" and interpret_for(backend)}
  run = jax.jit(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout, return_lse=True, **kw))
  causal_out, _ = run(q, k, v, layout)
  # Row block 2's diagonal block marked full (traced under jit, so the value check cannot refuse it).
  ids = np.asarray(layout.kv_blocks)
  forged = np.asarray(layout.partial).copy()
  forged[:, :, 2] &= ids[:, :, 2] != 2
  forged_layout = dataclasses.replace(layout, partial=jnp.asarray(forged))
  out, lse = run(q, k, v, forged_layout)
  positions = _positions()
  expected, expected_lse = block_sparse_attention_reference(
    q, k, v, forged_layout, causal=True, q_positions=positions, kv_positions=positions, sm_scale=D**-0.5
  )
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(lse, expected_lse, atol=2e-5, rtol=1e-5)
  rows = slice(2 * BLOCK, 3 * BLOCK - 1)  # its last query sees every key of the block either way
  assert np.abs(np.asarray(out)[:, rows] - np.asarray(causal_out)[:, rows]).max() > 1e-3
  others = np.r_[0 : 2 * BLOCK, 3 * BLOCK : S]
  np.testing.assert_allclose(np.asarray(out)[:, others], np.asarray(causal_out)[:, others], atol=1e-6)
