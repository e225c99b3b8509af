"""Host-side vision layout against hand-worked windows and transformers' `vision_utils` functions."""

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
  assert inputs.patches.shape == (36, config.vision.patch_dim) and (inputs.patches[28:] == 0).all()
  assert (inputs.segment_ids[28:] == -1).all() and (inputs.window_segment_ids[28:] == -1).all()
  np.testing.assert_array_equal(np.sort(inputs.window_index), np.arange(9))


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
