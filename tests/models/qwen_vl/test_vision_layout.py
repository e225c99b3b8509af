"""Host-side vision layout against hand-worked windows and transformers' `vision_utils` functions."""

import jax
import numpy as np
import pytest

from jaxagents.models.qwen_vl import vision_layout
from jaxagents.models.qwen_vl.config import QwenVLConfig
from tests.models.qwen_vl import tiny


def test_patch_coordinates_follow_merge_block_order():
  hw = vision_layout.patch_hw(np.array([[1, 4, 4]]), 2)
  np.testing.assert_array_equal(hw[:, 0], [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3])
  np.testing.assert_array_equal(hw[:, 1], [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3])


def test_segments_are_one_per_item_and_frame_group():
  ids = vision_layout.segment_ids(np.array([[2, 4, 6], [1, 2, 2]]))
  boundaries = np.flatnonzero(np.diff(ids)) + 1
  np.testing.assert_array_equal(np.concatenate([[0], boundaries, [len(ids)]]), [0, 24, 48, 52])  # cu_seqlens


def _cu(window_segment_ids):
  return np.concatenate([[0], np.flatnonzero(np.diff(window_segment_ids)) + 1, [len(window_segment_ids)]])


def test_window_layout_matches_hand_worked_qwen2_5_vl_windows():
  index, windows = vision_layout.window_layout(np.array([[1, 6, 10]]), window_size=56, patch_size=14, merge_size=2)
  np.testing.assert_array_equal(index, [0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14])
  np.testing.assert_array_equal(_cu(windows), [0, 16, 32, 40, 48, 56, 60])
  _, windows = vision_layout.window_layout(np.array([[1, 16, 20]]), window_size=112, patch_size=14, merge_size=2)
  np.testing.assert_array_equal(_cu(windows)[:6], [0, 64, 128, 160, 224, 288])


def test_window_layout_and_interpolation_match_transformers_vision_utils():
  torch = pytest.importorskip("torch")
  from transformers import vision_utils

  grids = np.array([[2, 4, 6], [1, 6, 4], [3, 10, 8]])
  index, windows = vision_layout.window_layout(grids, window_size=112, patch_size=14, merge_size=2)
  ref_index, ref_cu = vision_utils.get_vision_window_index(torch.tensor(grids), 2, 112, 14)
  np.testing.assert_array_equal(index, ref_index.numpy())
  np.testing.assert_array_equal(_cu(windows), ref_cu.numpy())
  for grid in ([[1, 4, 6]], [[2, 6, 4]], [[1, 4, 6], [2, 6, 4], [1, 2, 2]]):
    taps, weights = vision_layout.pos_interp(np.array(grid), 64, 2)
    ref_taps, ref_weights = vision_utils.get_vision_interpolation_indices_and_weights(
      torch.tensor(grid), 8, mode="bilinear", align_corners=True, spatial_merge_size=2)
    np.testing.assert_array_equal(taps, ref_taps.numpy())
    np.testing.assert_array_equal(weights, ref_weights.numpy())
  hw = vision_layout.patch_hw(grids, 2)
  np.testing.assert_array_equal(hw, vision_utils.get_vision_position_ids(torch.tensor(grids), 2).numpy())


def test_vision_inputs_pads_to_the_bucket_and_masks_padding():
  config = QwenVLConfig.from_hf(tiny.QWEN2_5_VL)
  grids = np.array([[1, 4, 6], [1, 2, 2]])
  inputs = vision_layout.vision_inputs(np.ones((28, config.vision.patch_dim)), grids, config, pad_to=36)
  assert inputs.patches.shape == (1, 36, config.vision.patch_dim) and (inputs.patches[0, 28:] == 0).all()
  assert (inputs.segment_ids[0, 28:] == -1).all() and (inputs.window_segment_ids[0, 28:] == -1).all()
  for packing in (inputs.packing, inputs.window_packing):
    assert (packing.slot_index[0, 28:] == -1).all() and (packing.slot_index[0, :28] >= 0).all()


@pytest.mark.parametrize("grid,fix", [([[1, 5, 6]], "multiples of the merge size"), ([[0, 4, 4]], "positive")])
def test_grids_that_break_the_merge_constraint_say_what_to_change(grid, fix):
  config = QwenVLConfig.from_hf(tiny.QWEN2_VL)
  with pytest.raises(ValueError, match=fix):
    vision_layout.vision_inputs(np.ones((30, config.vision.patch_dim)), np.array(grid), config)


def test_pixel_values_that_do_not_match_the_grids_are_rejected():
  config = QwenVLConfig.from_hf(tiny.QWEN2_VL)
  with pytest.raises(ValueError, match=r"pixel_values: expected \[24, 1176\]"):
    vision_layout.vision_inputs(np.ones((20, 1176)), np.array([[1, 4, 6]]), config)
  with pytest.raises(ValueError, match="pad_to"):
    vision_layout.vision_inputs(np.ones((24, 1176)), np.array([[1, 4, 6]]), config, pad_to=26)


def _check_packing(packing, segments):
  """Every token of a segment sits in exactly one slot, whole segments share a row, empty slots are -1."""
  token_index, slot_segments, slot_index = (np.asarray(x) for x in (packing.token_index, packing.segment_ids,
                                                                    packing.slot_index))
  _, rows, width = token_index.shape
  for b, ids in enumerate(segments):
    members = np.flatnonzero(ids >= 0)
    slots = slot_index[b, members]
    assert (slot_index[b, ids < 0] == -1).all()  # padding patches are in no slot (their output is 0)
    assert len(np.unique(slots)) == len(slots) and (slots >= 0).all() and (slots < rows * width).all()
    np.testing.assert_array_equal(token_index[b].reshape(-1)[slots], members)
    np.testing.assert_array_equal(slot_segments[b].reshape(-1)[slots], ids[members])
    empty = np.setdiff1d(np.arange(rows * width), slots)
    assert (slot_segments[b].reshape(-1)[empty] == -1).all()  # masked: -1 never equals a real segment
    for segment in np.unique(ids[members]):
      assert len(np.unique(slot_index[b, ids == segment] // width)) == 1, f"segment {segment} split across rows"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_packing_places_every_patch_once_and_keeps_segments_whole(family):
  config = QwenVLConfig.from_hf(getattr(tiny, family.upper()))
  grids = np.array([[1, 4, 6], [2, 4, 4], [1, 2, 2], [1, 6, 10], [3, 2, 4], [1, 2, 2]])
  counts = [2, 0, 3, 1]
  patches = np.ones((int(np.prod(grids, axis=1).sum()), config.vision.patch_dim), np.float32)
  inputs = vision_layout.vision_inputs(patches, grids, config, pad_to=96, items_per_prompt=counts)
  assert inputs.patches.shape[:2] == (4, 96)
  longest = 60  # the (1, 6, 10) image; frame groups of the (2, 4, 4) video are 16 each
  assert inputs.packing.token_index.shape[2] == 64 == -(-longest // vision_layout.ROW_MULTIPLE) * 8
  _check_packing(inputs.packing, inputs.segment_ids)
  if family == "qwen2_5_vl":
    _check_packing(inputs.window_packing, inputs.window_segment_ids)
    assert inputs.window_packing.token_index.shape[2] == 16  # windows of 56 px: at most 4 x 4 patches
  else:
    assert inputs.window_packing is None


def test_segments_are_packed_first_fit_by_decreasing_length():
  packing = vision_layout.pack_segments(np.array([[0] * 3 + [1] * 8 + [2] * 5 + [3] * 4 + [-1] * 4]))
  rows = np.asarray(packing.segment_ids)[0]
  # W = 8: segment 1 fills row 0, segment 2 (5) opens row 1, segment 3 (4) does not fit there and opens row 2,
  # segment 0 (3) fits into row 1.
  np.testing.assert_array_equal(rows, [[1] * 8, [2] * 5 + [0] * 3, [3] * 4 + [-1] * 4])


def test_one_image_size_under_one_bucket_keeps_every_shape():
  config = QwenVLConfig.from_hf(tiny.QWEN2_5_VL)
  shapes = set()
  for counts in ([1, 1], [3, 0], [2, 1, 0, 1]):
    grids = np.tile([1, 4, 4], (sum(counts), 1))
    patches = np.ones((16 * sum(counts), config.vision.patch_dim), np.float32)
    inputs = vision_layout.vision_inputs(patches, grids, config, pad_to=48, items_per_prompt=counts)
    shapes.add(tuple(x.shape[1:] for x in jax.tree.leaves(inputs)))
  assert len(shapes) == 1, shapes


def test_items_per_prompt_splits_items_in_order():
  config = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  grids = np.array([[1, 2, 2], [1, 4, 2], [1, 2, 4]])
  patches = np.arange(20)[:, None] * np.ones((1, config.vision.patch_dim), np.float32)
  inputs = vision_layout.vision_inputs(patches, grids, config, items_per_prompt=[2, 0, 1])
  assert inputs.patches.shape == (3, 12, config.vision.patch_dim)
  np.testing.assert_array_equal(inputs.patches[0, :, 0], np.arange(12))
  assert (inputs.patches[1] == 0).all() and (inputs.segment_ids[1] == -1).all()
  np.testing.assert_array_equal(inputs.patches[2, :8, 0], np.arange(12, 20))
  np.testing.assert_array_equal(inputs.segment_ids[2], [0] * 8 + [-1] * 4)  # ids restart in every prompt
  np.testing.assert_array_equal(inputs.pos_interp_index[2, :8], vision_layout.pos_interp(grids[2:], 64, 2)[0])
  with pytest.raises(ValueError, match="items_per_prompt"):
    vision_layout.vision_inputs(patches, grids, config, items_per_prompt=[2, 2])
