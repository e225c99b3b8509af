"""BlockLayout: building from a block mask keeps the `layout.py` contract (sorted, counted, padding repeats the last
id), expands back to the same mask, and bad layouts are refused with ValueErrors naming the field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import (
  BlockLayout,
  check_layout,
  from_block_mask,
  to_block_mask,
  to_token_mask,
  validate_layout,
)


def _block_mask(shape=(2, 3, 4, 6), seed=0):
  mask = np.random.default_rng(seed).random(shape) < 0.5
  mask[0, 0, 1] = False  # an empty row
  return mask


def test_from_block_mask_lists_sorted_ids_and_pads_with_the_last_one():
  block_mask = np.zeros((1, 1, 3, 5), bool)
  block_mask[0, 0, 0, [4, 1, 2]] = True
  block_mask[0, 0, 2, [0]] = True
  layout = from_block_mask(block_mask, block_q=16, block_kv=8)
  np.testing.assert_array_equal(layout.kv_count, [[[3, 0, 1]]])
  np.testing.assert_array_equal(layout.kv_blocks, [[[[1, 2, 4, 4, 4], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]]])
  assert layout.kv_blocks.dtype == jnp.int32 and layout.kv_count.dtype == jnp.int32
  assert (layout.block_q, layout.block_kv, layout.max_blocks) == (16, 8, 5)


def test_from_block_mask_round_trips_through_to_block_mask_and_satisfies_the_contract():
  block_mask = _block_mask()
  layout = from_block_mask(block_mask, block_q=4, block_kv=2, max_blocks=6)
  check_layout(layout, kv_len=12)
  np.testing.assert_array_equal(to_block_mask(layout, num_kv_blocks=6), block_mask)


def test_from_block_mask_is_jittable_and_layout_is_a_pytree_with_static_block_sizes():
  block_mask = _block_mask()
  layout = jax.jit(lambda m: from_block_mask(m, 4, 2, max_blocks=6))(block_mask)
  leaves, treedef = jax.tree_util.tree_flatten(layout)
  assert len(leaves) == 2
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert (rebuilt.block_q, rebuilt.block_kv) == (4, 2)
  np.testing.assert_array_equal(to_block_mask(rebuilt, 6), block_mask)


def test_to_token_mask_repeats_blocks_into_tokens():
  block_mask = _block_mask()
  tokens = np.asarray(to_token_mask(from_block_mask(block_mask, 4, 2), kv_len=12))
  assert tokens.shape == (2, 3, 16, 12)
  s, t = np.meshgrid(np.arange(16), np.arange(12), indexing="ij")
  np.testing.assert_array_equal(tokens, block_mask[:, :, s // 4, t // 2])


def test_from_block_mask_refuses_rows_longer_than_max_blocks():
  with pytest.raises(ValueError, match="max_blocks"):
    from_block_mask(np.ones((1, 1, 2, 4), bool), 8, 8, max_blocks=3)
  with pytest.raises(ValueError, match="block_mask"):
    from_block_mask(np.ones((2, 4), bool), 8, 8)


def _layout(blocks, count, block_q=8, block_kv=8):
  return BlockLayout(jnp.asarray(blocks, jnp.int32), jnp.asarray(count, jnp.int32), block_q, block_kv)


@pytest.mark.parametrize(
  "blocks, count, message",
  [
    ([[[[0, 1]]]], [[[3]]], "kv_count"),  # more than MAXN
    ([[[[0, 1]]]], [[[-1]]], "kv_count"),
    ([[[[0, 4]]]], [[[2]]], r"ids must be in \[0, 4\)"),  # T=32 / block_kv=8 -> 4 blocks
    ([[[[-1, 1]]]], [[[2]]], r"ids must be in \[0, 4\)"),
    ([[[[2, 1]]]], [[[2]]], "strictly increasing"),
    ([[[[1, 1]]]], [[[2]]], "lists block 1 twice"),  # a duplicate would be counted twice
    ([[[[1, 2, 0]]]], [[[2]]], "padding"),
    ([[[[3, 0]]]], [[[0]]], "padding"),  # empty rows pad with 0
  ],
)
def test_check_layout_refuses_contract_violations(blocks, count, message):
  with pytest.raises(ValueError, match=message):
    check_layout(_layout(blocks, count), kv_len=32)


def test_check_layout_accepts_a_valid_hand_written_layout():
  check_layout(_layout([[[[0, 2, 2], [1, 3, 3], [0, 0, 0]]]], [[[2, 2, 0]]]), kv_len=32)


_SHAPES = {"batch": 2, "q_len": 32, "kv_len": 32, "num_q_heads": 4, "num_kv_heads": 2}


@pytest.mark.parametrize(
  "blocks_shape, count_shape, block_q, message",
  [
    ((2, 2, 4), (2, 2, 4), 8, "rank 4"),
    ((2, 2, 4, 3), (2, 2, 3), 8, "kv_count"),
    ((1, 2, 4, 3), (1, 2, 4), 8, "batch must be B=2"),
    ((2, 3, 4, 3), (2, 3, 4), 8, "heads must be Hkv=2"),
    ((2, 2, 3, 3), (2, 2, 3), 8, "NQ \\* block_q"),
    ((2, 4, 4, 3), (2, 4, 4), 0, "block_q"),
  ],
)
def test_validate_layout_refuses_shapes_that_do_not_fit_the_inputs(blocks_shape, count_shape, block_q, message):
  layout = BlockLayout(jnp.zeros(blocks_shape, jnp.int32), jnp.zeros(count_shape, jnp.int32), block_q, 8)
  with pytest.raises(ValueError, match=message):
    validate_layout(layout, **_SHAPES)


def test_validate_layout_refuses_wrong_dtypes_and_key_lengths():
  good = BlockLayout(jnp.zeros((2, 2, 4, 3), jnp.int32), jnp.zeros((2, 2, 4), jnp.int32), 8, 8)
  validate_layout(good, **_SHAPES)
  validate_layout(BlockLayout(good.kv_blocks.repeat(2, 1), good.kv_count.repeat(2, 1), 8, 8), **_SHAPES)  # H = Hq
  with pytest.raises(ValueError, match="kv_blocks.*int32"):
    validate_layout(BlockLayout(good.kv_blocks.astype(jnp.int16), good.kv_count, 8, 8), **_SHAPES)
  with pytest.raises(ValueError, match="kv_count.*int32"):
    validate_layout(BlockLayout(good.kv_blocks, good.kv_count.astype(jnp.float32), 8, 8), **_SHAPES)
  with pytest.raises(ValueError, match="multiple of block_kv"):
    validate_layout(good, **{**_SHAPES, "kv_len": 36})
