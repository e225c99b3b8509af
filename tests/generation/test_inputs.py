"""The prompt-batch protocol: completions appended to prompts get the positions their decode steps had, which are
the ones `rope_index` (Qwen-VL) or `TokenInputs.from_ids` compute for the concatenated rows; rows roll to left
padding the same way on the host and under `jit`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.generation import TokenInputs, roll_to_left_padding
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.positions import decode_positions, rope_index
from tests.models.qwen_vl import tiny

PAD = 249


def _right_padded(ids, mask):
  """The same rows with their padding moved to the right."""
  shift = mask.sum(axis=1) - mask.shape[1]  # roll left by the number of pads
  columns = (np.arange(mask.shape[1])[None] - shift[:, None]) % mask.shape[1]
  rows = np.arange(mask.shape[0])[:, None]
  return ids[rows, columns], mask[rows, columns]


def _qwen(family, kind, mode, right=False):
  config = QwenVLConfig.from_hf(tiny.TINY[family])
  raw = tiny.batch(family, kind)
  ids, mask = raw["input_ids"], raw["attention_mask"]
  if right:
    ids, mask = _right_padded(ids, mask)
  grids = {k: raw[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in raw}
  pixels = {k: raw[k] for k in ("pixel_values", "pixel_values_videos") if k in raw}
  return config, grids, prepare_inputs(config, ids, mask, mode=mode, **pixels, **grids)


@pytest.mark.parametrize("family,kind,mode", [("qwen3_vl", "images", "qwen"), ("qwen2_5_vl", "video", "qwen"),
                                              ("qwen2_5_vl", "video", "hf"), ("qwen2_vl", "images", "hf")])
@pytest.mark.parametrize("right", [False, True], ids=["left_padded", "right_padded"])
def test_completion_positions_equal_rope_index_of_the_concatenated_rows(family, kind, mode, right):
  config, grids, prompts = _qwen(family, kind, mode, right)
  tokens = np.array([[30, 31, 32, 33, 34], [40, 41, 42, 43, 44]], np.int32)
  lengths = np.array([5, 2])
  inputs, completion_mask = prompts.with_completions(tokens, lengths, pad_id=PAD)
  assert isinstance(inputs.input_ids, np.ndarray) and inputs.input_ids.shape == (2, prompts.input_ids.shape[1] + 5)
  expected, expected_base = rope_index(inputs.input_ids, inputs.attention_mask, config, mode=mode, **grids)
  np.testing.assert_array_equal(inputs.positions, expected)
  np.testing.assert_array_equal(inputs.decode_base, expected_base)
  prompt_length = prompts.input_ids.shape[1]
  np.testing.assert_array_equal(completion_mask[:, prompt_length:], [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  assert not completion_mask[:, :prompt_length].any()
  np.testing.assert_array_equal(inputs.input_ids[1, prompt_length:], [40, 41, PAD, PAD, PAD])
  # Every prompt now ends in its last column (left padding), and the vision inputs are the prompts' own.
  assert inputs.attention_mask[:, prompt_length - 1].all()
  assert inputs.vision is prompts.vision


def test_right_padded_prompts_complete_like_left_padded_ones():
  _, _, left = _qwen("qwen3_vl", "images", "qwen")
  _, _, right = _qwen("qwen3_vl", "images", "qwen", right=True)
  assert not right.attention_mask[:, -1].all()
  tokens, lengths = np.array([[7, 8], [9, 10]]), np.array([2, 1])
  from_left, mask_left = left.with_completions(tokens, lengths, PAD)
  from_right, mask_right = right.with_completions(tokens, lengths, PAD)
  for a, b in zip(jax.tree.leaves((from_left, mask_left)), jax.tree.leaves((from_right, mask_right)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_decode_args_continue_each_prompt_at_decode_base_plus_one_plus_step():
  _, _, prompts = _qwen("qwen3_vl", "images", "qwen")
  tokens = jnp.array([[3], [4]], jnp.int32)
  ids, positions, mask, vision = prompts.decode_args(tokens, jnp.int32(2))
  np.testing.assert_array_equal(positions, decode_positions(prompts.decode_base, 2))
  assert ids is tokens and vision is None and np.asarray(mask).all()
  with pytest.raises(ValueError, match="decode_base"):
    type(prompts)(prompts.input_ids, prompts.attention_mask, prompts.positions, prompts.decode_base[0],
                  prompts.vision).decode_args(tokens, 0)


def test_rolling_to_left_padding_is_the_same_on_the_host_and_under_jit():
  mask = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], np.int32)
  ids = np.arange(16, dtype=np.int32).reshape(4, 4)
  positions = np.stack([ids, ids + 100, ids + 200])
  host = roll_to_left_padding(mask, ids, positions)
  device = jax.jit(roll_to_left_padding)(mask, ids, positions)
  np.testing.assert_array_equal(host[0], [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]])
  np.testing.assert_array_equal(host[1], [[2, 3, 0, 1], [4, 5, 6, 7], [8, 9, 10, 11], [15, 12, 13, 14]])
  np.testing.assert_array_equal(host[2][1], host[1] + 100)  # positions travel with their tokens
  for a, b in zip(host, device, strict=True):
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, b)


def test_token_inputs_completions_get_the_positions_from_ids_gives_the_concatenation():
  ids, mask = _right_padded(*tiny.left_pad([[5, 6, 7], [8]], pad=0))
  prompts = TokenInputs.from_ids(ids, mask)
  np.testing.assert_array_equal(prompts.positions, [[0, 1, 2], [0, 0, 0]])
  inputs, completion_mask = prompts.with_completions(np.array([[1, 2], [3, 4]]), np.array([1, 2]), pad_id=0)
  np.testing.assert_array_equal(inputs.input_ids, [[5, 6, 7, 1, 0], [0, 0, 8, 3, 4]])
  counted = TokenInputs.from_ids(inputs.input_ids, inputs.attention_mask)
  np.testing.assert_array_equal(inputs.positions, counted.positions)
  np.testing.assert_array_equal(completion_mask, [[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(prompts.repeat(2).input_ids, ids[[0, 0, 1, 1]])
  with pytest.raises(ValueError, match="tokens"):
    prompts.with_completions(np.zeros((3, 2), np.int32), np.ones(3, np.int32), pad_id=0)
