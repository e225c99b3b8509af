"""`batching.token_batch`: each one-token image placeholder becomes as many placeholders as its grid has merged
patches, rows are left-padded with completions appended, and the batch is what `prepare_inputs` makes of the
hand-expanded rows (0, 1 or 2 images per row).
"""

import jax
import numpy as np
import pytest

from jaxagents.models.qwen_vl import QwenVLConfig, prepare_inputs, preprocess_images
from jaxagents.models.qwen_vl.batching import token_batch
from jaxagents.models.qwen_vl.preprocess import ImageOptions
from tests.models.qwen_vl.tiny import TINY, TOK

PAD = 249
START, END, IMAGE, VIDEO = (TOK[k] for k in ("vision_start_token_id", "vision_end_token_id", "image_token_id",
                                             "video_token_id"))
# Patch 14, merge 2: an image H x W (multiples of 28, inside the pixel bounds) keeps its size and has
# (H / 14) * (W / 14) / 4 merged tokens.
OPTIONS = ImageOptions(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2)


@pytest.fixture(scope="module")
def config():
  return QwenVLConfig.from_hf(TINY["qwen2_vl"])


def _image(height, width, seed):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same_inputs(a, b):
  """Same pytree structure and equal leaves, whatever fields `ModelInputs` / `VisionInputs` have."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_placeholders_expand_by_their_grids_with_zero_one_or_two_images_per_row(config):
  # Row 0: no image. Row 1: a 28 x 56 image (2 merged tokens). Row 2: 56 x 56 (4) then 28 x 28 (1).
  images = [[], [_image(28, 56, 0)], [_image(56, 56, 1), _image(28, 28, 2)]]
  prompts = [[5, 6, 7], [START, IMAGE, END, 8], [9, START, IMAGE, END, 10, START, IMAGE, END]]
  inputs, mask = token_batch(config, prompts, images, OPTIONS, pad_id=PAD)
  assert mask is None
  expanded = [[5, 6, 7], [START, *[IMAGE] * 2, END, 8], [9, START, *[IMAGE] * 4, END, 10, START, IMAGE, END]]
  ids = np.full((3, 11), PAD, np.int32)  # the longest row: 1 + (1 + 4 + 1) + 1 + (1 + 1 + 1) tokens
  attention = np.zeros((3, 11), np.int32)
  for b, row in enumerate(expanded):
    ids[b, 11 - len(row):], attention[b, 11 - len(row):] = row, 1
  np.testing.assert_array_equal(inputs.input_ids, ids)
  np.testing.assert_array_equal(inputs.attention_mask, attention)
  pixels, grid = preprocess_images([image for row in images for image in row], OPTIONS)
  np.testing.assert_array_equal(grid, [[1, 2, 4], [1, 4, 4], [1, 2, 2]])
  _assert_same_inputs(inputs, prepare_inputs(config, ids, attention, pixel_values=pixels, image_grid_thw=grid))


def test_rows_without_images_give_text_only_inputs(config):
  inputs, _ = token_batch(config, [[5, 6], [7]], [[], []], OPTIONS, pad_id=PAD)
  np.testing.assert_array_equal(inputs.input_ids, [[5, 6], [PAD, 7]])
  _assert_same_inputs(inputs, prepare_inputs(config, np.array([[5, 6], [PAD, 7]], np.int32),
                                             np.array([[1, 1], [0, 1]], np.int32)))


def test_completions_follow_their_prompts_and_only_they_are_in_the_completion_mask(config):
  images = [[_image(28, 28, 3)], []]
  inputs, mask = token_batch(config, [[START, IMAGE, END, 5], [6, 7]], images, OPTIONS, pad_id=PAD,
                             completions=[[20, 21, 22], []])
  np.testing.assert_array_equal(inputs.input_ids, [[START, IMAGE, END, 5, 20, 21, 22], [PAD] * 5 + [6, 7]])
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask, [[0, 0, 0, 0, 1, 1, 1], [0] * 7])


@pytest.mark.parametrize(("prompts", "images", "kwargs", "match"), [
  ([[START, IMAGE, END]], [[]], {}, r"prompt_rows\[0\].*one image placeholder"),
  ([[5]], [[_image(28, 28, 0)]], {}, r"prompt_rows\[0\].*got 0"),
  ([[START, VIDEO, END]], [[]], {}, "video"),
  ([[5], [6]], [[]], {}, "images: expected one list"),
  ([[5]], [[]], {"completions": [[1], [2]]}, "completions"),
  ([[-1, 5]], [[]], {}, ">= 0"),
  ([[5]], [[]], {"options": ImageOptions(patch_size=16)}, "patch_size and merge_size"),
])
def test_bad_rows_and_options_are_named(config, prompts, images, kwargs, match):
  options = kwargs.pop("options", OPTIONS)
  with pytest.raises(ValueError, match=match):
    token_batch(config, prompts, images, options, pad_id=PAD, **kwargs)
