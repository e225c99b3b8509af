"""attention(packing=...): segments packed into rows give the dense segment-masked attention, value and gradient,
without a [S, S] score matrix; tokens in no segment output zeros; other masks are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention import SegmentPacking, attention

# Sequence 0: segments 0 = tokens {0, 2, 7}, 1 = {1, 4, 5}, 2 = {6}; token 3 in none. Rows of W = 4 slots:
# row 0 = segment 0 then segment 2, row 1 = segment 1 and an empty slot.
# Sequence 1: segment 3 = tokens 0..3, tokens 4..7 in none; row 1 empty.
SEGMENTS = np.array([[0, 1, 0, -1, 1, 1, 2, 0], [3, 3, 3, 3, -1, -1, -1, -1]], np.int32)
PACKING = SegmentPacking(
  token_index=np.array([[[0, 2, 7, 6], [1, 4, 5, 0]], [[0, 1, 2, 3], [0, 0, 0, 0]]], np.int32),
  segment_ids=np.array([[[0, 0, 0, 2], [1, 1, 1, -1]], [[3, 3, 3, 3], [-1, -1, -1, -1]]], np.int32),
  slot_index=np.array([[0, 4, 1, -1, 5, 6, 3, 2], [0, 1, 2, 3, -1, -1, -1, -1]], np.int32),
)


def _qkv():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 8, 4, 8)).astype(np.float32)
  k = rng.standard_normal((2, 8, 2, 8)).astype(np.float32)  # GQA: 2 kv heads for 4 query heads
  v = rng.standard_normal((2, 8, 2, 8)).astype(np.float32)
  return q, k, v


def test_packed_segments_equal_dense_segment_attention_and_zero_the_rest():
  q, k, v = _qkv()
  packed = jax.jit(lambda q, k, v, p: attention(q, k, v, packing=p))(q, k, v, PACKING)
  dense = attention(q, k, v, q_segment_ids=SEGMENTS)
  in_segment = SEGMENTS >= 0
  np.testing.assert_allclose(np.asarray(packed)[in_segment], np.asarray(dense)[in_segment], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(packed)[~in_segment], 0.0)
  # A one-token segment (token 6) sees only itself: its output is its own value, per kv head.
  np.testing.assert_allclose(np.asarray(packed)[0, 6], np.repeat(v[0, 6], 2, axis=0), rtol=1e-6)


def test_packed_segments_have_the_dense_gradient():
  q, k, v = _qkv()
  weight = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32) * (SEGMENTS >= 0)[..., None, None]

  def loss(q, k, v, **kwargs):
    return jnp.sum(attention(q, k, v, **kwargs) * weight)

  packed = jax.jit(jax.grad(lambda q, k, v: loss(q, k, v, packing=PACKING), argnums=(0, 1, 2)))(q, k, v)
  dense = jax.jit(jax.grad(lambda q, k, v: loss(q, k, v, q_segment_ids=SEGMENTS), argnums=(0, 1, 2)))(q, k, v)
  for ours, ref in zip(packed, dense, strict=True):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
  (dict(causal=True), "packing"),
  (dict(kv_mask=np.ones((2, 8), bool)), "packing"),
  (dict(q_segment_ids=SEGMENTS), "packing"),
  (dict(backend="sparse"), "backend"),
])
def test_packing_refuses_other_masks(kwargs, match):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=match):
    attention(q, k, v, packing=PACKING, **kwargs)


def test_packing_shapes_are_checked():
  q, k, v = _qkv()
  bad = SegmentPacking(PACKING.token_index, PACKING.segment_ids, PACKING.slot_index[:, :7])
  with pytest.raises(ValueError, match=r"packing.slot_index.*\[B, S\] = \(2, 8\)"):
    attention(q, k, v, packing=bad)
