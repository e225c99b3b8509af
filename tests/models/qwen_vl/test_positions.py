"""M-RoPE positions (`positions.py`) against hand-worked rows (A, B, C), transformers 5.23 `get_rope_index` and
`generate`, an independent re-implementation of the transformers <= 5.2 rule, and hand computations."""

import functools
import random

import numpy as np
import pytest

from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.positions import decode_positions, mm_token_type_ids, rope_deltas, rope_index
from tests.models.qwen_vl.tiny import TINY, hf_model

IMG, VID, VS, VE, PAD = 254, 255, 252, 253, 249
FAMILIES = sorted(TINY)


@functools.cache
def config(family, mode="qwen"):
  return QwenVLConfig.from_hf(TINY[family], mrope_mode=mode)


def pad_rows(rows, left=0, right=0):
  """Left-pads every row to the longest (plus `left` extra pads), then adds `right` pads: (ids [B, L], mask [B, L])."""
  width = max(map(len, rows)) + left
  ids = [[PAD] * (width - len(r)) + list(r) + [PAD] * right for r in rows]
  mask = [[0] * (width - len(r)) + [1] * len(r) + [0] * right for r in rows]
  return np.array(ids, np.int64), np.array(mask, np.int64)


def types_of(ids):
  """Independent `create_mm_token_type_ids`: 1 at image pads, 2 at video pads."""
  return np.where(ids == IMG, 1, np.where(ids == VID, 2, 0)).astype(np.int32)


@functools.cache
def hf(family):
  pytest.importorskip("torch")
  return hf_model(family)


def hf_rope_index(family, ids, mask, image_grid=None, video_grid=None, spg=None):
  """transformers 5.23 `get_rope_index` of the tiny model: (positions [3, B, L], deltas [B])."""
  import torch

  model = hf(family).model
  kwargs = dict(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(types_of(ids)),
                attention_mask=torch.tensor(mask))
  if image_grid is not None:
    kwargs["image_grid_thw"] = torch.tensor(image_grid)
  if video_grid is not None:
    kwargs["video_grid_thw"] = torch.tensor(video_grid)
  if spg is not None:
    kwargs["second_per_grid_ts"] = torch.tensor(spg, dtype=torch.float32)  # what the processor's BatchFeature holds
  positions, deltas = model.get_rope_index(**kwargs)
  return positions.numpy(), deltas.numpy()[:, 0]


def ours(family, ids, mask, image_grid=None, video_grid=None, spg=None, mode="hf"):
  return rope_index(ids, mask, config(family), image_grid_thw=image_grid, video_grid_thw=video_grid,
                    second_per_grid_ts=spg, mode=mode)


def row_from_types(types, text_start=5):
  """A row whose token types are `types` (text tokens 5, 6, ... which are never special)."""
  return [IMG if t == 1 else VID if t == 2 else text_start + i for i, t in enumerate(types)]


# --- hand-worked rows ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hf", "qwen"])
def test_oracle_a_qwen2_vl_image_with_two_left_pads(mode):
  ids, mask = pad_rows([row_from_types([0] * 5 + [1] * 6 + [0] * 2)], left=2)
  positions, base = ours("qwen2_vl", ids, mask, image_grid=[[1, 4, 6]], mode=mode)
  t, h, w = positions[:, 0].tolist()
  assert t == [0, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 8, 9]
  assert h[7:13] == [5, 5, 5, 6, 6, 6] and w[7:13] == [5, 6, 7, 5, 6, 7]
  assert h[2:7] == w[2:7] == t[2:7] and h[13:] == w[13:] == [8, 9] and h[:2] == w[:2] == [0, 0]
  assert rope_deltas(positions, mask).tolist() == [-3]
  assert base[:, 0].tolist() == [9, 9, 9]


@pytest.mark.parametrize("mode, trailing, delta", [("hf", [4, 5], -3), ("qwen", [9, 10], -1)])
def test_oracle_b_qwen2_5_vl_video_modes_differ_after_the_block(mode, trailing, delta):
  ids, mask = pad_rows([row_from_types([0] * 2 + [2] * 8 + [0] * 2)])
  positions, _ = ours("qwen2_5_vl", ids, mask, video_grid=[[4, 2, 4]], spg=[1.0], mode=mode)
  t, h, w = positions[:, 0].tolist()
  assert t == [0, 1, 2, 2, 4, 4, 6, 6, 8, 8, *trailing]
  assert h == [0, 1, *[2] * 8, *trailing]
  assert w == [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, *trailing]
  assert rope_deltas(positions, mask).tolist() == [delta]


@pytest.mark.parametrize("mode", ["hf", "qwen"])
def test_oracle_c_qwen3_vl_video_frames_are_separate_runs(mode):
  ids, mask = pad_rows([row_from_types([0] * 4 + [2] * 2 + [0] * 4 + [2] * 2 + [0] * 2)])
  positions, _ = ours("qwen3_vl", ids, mask, video_grid=[[2, 2, 4]], mode=mode)
  t, h, w = positions[:, 0].tolist()
  assert t == h == [0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 10, 12, 13]
  assert w == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
  assert rope_deltas(positions, mask).tolist() == [0]


# --- against transformers 5.23 on tiny.py's inputs-------------------------------------------------------------------


def parity_inputs(family, kind):
  """(rows, image_grid, video_grid, second_per_grid_ts) of `tiny.batch`: (a) text, (b) images, (c) video."""
  if kind == "text":
    return [list(range(5, 12)), [12, 13, 14]], None, None, None
  if kind == "images":
    rows = [[5, 6, VS, *[IMG] * 6, VE, 7, VS, *[IMG] * 6, VE, 8, 9], [10, VS, IMG, VE, 11]]
    return rows, [[1, 4, 6], [1, 6, 4], [1, 2, 2]], None, None
  grids = [[2, 4, 4], [3, 2, 4]]
  if family == "qwen3_vl":  # per frame: timestamp-ish text, VS, h*w/4 pads, VE
    rows = [[5, *[x for f in range(t) for x in (20 + f, 21, VS, *[VID] * (h * w // 4), VE)], 6] for t, h, w in grids]
  else:
    rows = [[5, VS, *[VID] * 8, VE, 6, 7, 8], [9, VS, *[VID] * 6, VE, 10]]
  return rows, None, grids, ([1.0, 0.5] if family == "qwen2_5_vl" else None)


@pytest.mark.parametrize("kind", ["text", "images", "video"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_mode_equals_transformers_on_text_image_and_video_rows_with_left_padding(family, kind):
  rows, image_grid, video_grid, spg = parity_inputs(family, kind)
  ids, mask = pad_rows(rows, left=1)
  expected, expected_deltas = hf_rope_index(family, ids, mask, image_grid, video_grid, spg)
  positions, _ = ours(family, ids, mask, image_grid, video_grid, spg, mode="hf")
  np.testing.assert_array_equal(positions, expected)  # valid tokens, and 0 on the pads as HF
  np.testing.assert_array_equal(rope_deltas(positions, mask), expected_deltas)
  if kind != "video" or family == "qwen3_vl":  # where the two semantics agree
    np.testing.assert_array_equal(ours(family, ids, mask, image_grid, video_grid, spg, mode="qwen")[0], expected)


def test_mm_token_type_ids_marks_only_pad_tokens():
  ids = np.array([[5, VS, IMG, IMG, VE, VS, VID, VE, PAD]])
  assert mm_token_type_ids(ids, config("qwen2_vl")).tolist() == [[0, 0, 1, 1, 0, 0, 2, 0, 0]]
  assert mm_token_type_ids(ids, config("qwen2_vl")).dtype == np.int32


def test_hf_generate_decodes_from_the_last_prompt_position_per_axis():
  """`decode_positions` in "hf" mode equals the position_ids HF `generate` feeds its decoder (one row ends in video
  pads, so the three axes differ at the last prompt token)."""
  torch = pytest.importorskip("torch")
  model = hf("qwen2_5_vl")
  rows = [[5, VS, *[VID] * 8, VE, 6, 7, 8], [9, VS, *[VID] * 6]]
  ids, mask = pad_rows(rows)
  grids, spg = [[2, 4, 4], [3, 2, 4]], [1.0, 0.5]
  seen = []
  hook = model.model.language_model.register_forward_pre_hook(
    lambda module, args, kwargs: seen.append(kwargs["position_ids"][-3:].numpy()), with_kwargs=True)
  try:
    model.model.rope_deltas = None
    model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   mm_token_type_ids=torch.tensor(types_of(ids)), pixel_values_videos=torch.randn(56, 1176),
                   video_grid_thw=torch.tensor(grids), second_per_grid_ts=torch.tensor(spg), do_sample=False,
                   max_new_tokens=3)
  finally:
    hook.remove()
  positions, base = ours("qwen2_5_vl", ids, mask, video_grid=grids, spg=spg, mode="hf")
  np.testing.assert_array_equal(seen[0], positions)
  assert len(seen) == 3 and len(set(positions[:, 1, -1].tolist())) > 1
  for step, fed in enumerate(seen[1:]):
    np.testing.assert_array_equal(decode_positions(base, step), fed)


# --- randomized batches against transformers -------------------------------------------------------------------------


def random_batch(rng, family, with_video):
  """Rows of random text / image / video runs (separators sometimes left out), grids and second_per_grid_ts."""
  rows, image_grids, video_grids, spg = [], [], [], []
  for _ in range(rng.randint(1, 3)):
    row = [rng.randrange(5, 200) for _ in range(rng.randint(0, 2))]
    for _ in range(rng.randint(1, 4)):
      image = not with_video or rng.random() < 0.5
      # two runs of one kind must be separated (else they are one run); of different kinds they may touch
      separate = rng.random() < 0.75 or bool(row) and row[-1] == (IMG if image else VID)
      if image:
        # processors give images t = 1; t = 2 only where positions are compared in "hf" mode or to the legacy rule,
        # because "qwen" and "hf" differ for it as for video
        grid = [rng.choice([1, 1, 2]) if with_video else 1, 2 * rng.randint(1, 3), 2 * rng.randint(1, 3)]
        image_grids.append(grid)
        pads = [[IMG] * (grid[0] * grid[1] * grid[2] // 4)]
      else:
        grid = [rng.randint(1, 4), 2 * rng.randint(1, 2), 2 * rng.randint(1, 3)]
        video_grids.append(grid)
        spg.append(rng.choice([0.35, 0.5, 1.0, 1.3, 2.0]))
        frame = [VID] * (grid[1] * grid[2] // 4)
        # Qwen3-VL: one run per frame, each after a timestamp token
        pads = [frame] * grid[0] if family == "qwen3_vl" else [frame * grid[0]]
        if family == "qwen3_vl":
          separate = True
      for block in pads:
        row += [20 + rng.randrange(9), VS, *block, VE] if separate else block
      row += [rng.randrange(5, 200) for _ in range(rng.randint(0, 3))]
    rows.append(row)
  ids, mask = pad_rows(rows, left=rng.randint(0, 2))
  spg = spg if family == "qwen2_5_vl" and video_grids else None
  return ids, mask, image_grids or None, video_grids or None, spg


@pytest.mark.parametrize("family", FAMILIES)
def test_random_image_rows_equal_transformers_in_both_modes(family):
  rng = random.Random(family)
  for _ in range(6):
    ids, mask, image_grid, _, _ = random_batch(rng, family, with_video=False)
    expected, expected_deltas = hf_rope_index(family, ids, mask, image_grid)
    for mode in ("hf", "qwen"):
      positions, _ = ours(family, ids, mask, image_grid, mode=mode)
      np.testing.assert_array_equal(positions, expected, err_msg=f"{mode}: {ids.tolist()} {image_grid}")
      np.testing.assert_array_equal(rope_deltas(positions, mask), expected_deltas)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_video_rows_equal_transformers_in_hf_mode(family):
  rng = random.Random(f"video-{family}")
  for _ in range(6):
    ids, mask, image_grid, video_grid, spg = random_batch(rng, family, with_video=True)
    expected, expected_deltas = hf_rope_index(family, ids, mask, image_grid, video_grid, spg)
    positions, _ = ours(family, ids, mask, image_grid, video_grid, spg, mode="hf")
    np.testing.assert_array_equal(positions, expected, err_msg=f"{ids.tolist()} {image_grid} {video_grid} {spg}")
    np.testing.assert_array_equal(rope_deltas(positions, mask), expected_deltas)


def legacy_rope_row(ids, items, tokens_per_second):
  """transformers <= 5.2 / original Qwen rule, written as that code was: find the next vision token, put the text
  before it at st = max(previous) + 1, the vision block after that text, and the tail text at max + 1.
  items: (kind_token, (t, h, w), seconds_per_grid or None) in order. Returns [3, n]."""
  pieces, pos = [], 0
  for token, (t, h, w), seconds in items:
    end = ids.index(token, pos)
    st = pieces[-1].max() + 1 if pieces else 0
    text_len = end - pos
    pieces.append(np.arange(text_len)[None].repeat(3, 0) + st)
    scale = np.float32(1) if seconds is None else np.float32(tokens_per_second) * np.float32(seconds)
    t_idx = (np.arange(t, dtype=np.float32) * scale).astype(np.int64)
    t_idx, h_idx, w_idx = (a.ravel() for a in np.meshgrid(t_idx, np.arange(h // 2), np.arange(w // 2), indexing="ij"))
    pieces.append(np.stack([t_idx, h_idx, w_idx]) + text_len + st)
    pos = end + t * h * w // 4
  st = pieces[-1].max() + 1 if pieces else 0
  pieces.append(np.arange(len(ids) - pos)[None].repeat(3, 0) + st)
  return np.concatenate(pieces, axis=1)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_random_video_rows_in_qwen_mode_equal_the_legacy_rule(family):
  rng = random.Random(f"legacy-{family}")
  for _ in range(6):
    ids, mask, image_grid, video_grid, spg = random_batch(rng, family, with_video=True)
    positions, _ = ours(family, ids, mask, image_grid, video_grid, spg, mode="qwen")
    images, videos = iter(image_grid or []), iter(zip(video_grid or [], spg or [None] * 99))
    for b in range(ids.shape[0]):
      row = ids[b][mask[b] == 1].tolist()
      items, k = [], 0
      while k < len(row):  # the row's vision items in order
        if row[k] in (IMG, VID):
          grid, seconds = (next(images), None) if row[k] == IMG else next(videos)
          items.append((row[k], grid, seconds))
          k += grid[0] * grid[1] * grid[2] // 4
        else:
          k += 1
      expected = legacy_rope_row(row, items, config(family).vision.tokens_per_second)
      np.testing.assert_array_equal(positions[:, b, mask[b] == 1], expected)


# --- padding, modes and decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_positions_do_not_depend_on_left_or_right_padding(family):
  rows, _, video_grid, spg = parity_inputs(family, "video")
  reference = {}
  for left, right in [(0, 0), (3, 0), (0, 2), (5, 4)]:
    ids, mask = pad_rows(rows, left=left, right=right)
    for mode in ("hf", "qwen"):
      positions, base = ours(family, ids, mask, video_grid=video_grid, spg=spg, mode=mode)
      assert (positions[:, mask == 0] == 0).all()
      valid = [positions[:, b, mask[b] == 1] for b in range(len(rows))]
      want_valid, want_base = reference.setdefault(mode, (valid, base))
      for got, want in zip(valid, want_valid):
        np.testing.assert_array_equal(got, want)
      np.testing.assert_array_equal(base, want_base)


def test_qwen_mode_starts_each_run_at_the_previous_maximum_plus_one():
  """Hand computation, Qwen2-VL, grids (4,2,2) video (T runs past H, W) and (1,2,4) image directly after it:
  text 0,1,2 | video T 3,4,5,6 H=W 3 | image starts at 7: T 7,7 H 7,7 W 7,8 | text 9,10.
  "hf": the image starts at 3 + max(1,1) = 4 (T 4,4 H 4,4 W 4,5), the text at 4 + max(1,2) = 6: 6,7."""
  ids = np.array([[5, 6, 7, *[VID] * 4, *[IMG] * 2, 8, 9]])
  grids = dict(video_grid=[[4, 2, 2]], image_grid=[[1, 2, 4]])
  qwen, _ = ours("qwen2_vl", ids, None, **grids, mode="qwen")
  assert qwen[:, 0].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 7, 9, 10],
                                 [0, 1, 2, 3, 3, 3, 3, 7, 7, 9, 10],
                                 [0, 1, 2, 3, 3, 3, 3, 7, 8, 9, 10]]
  hf_mode, _ = ours("qwen2_vl", ids, None, **grids, mode="hf")
  assert hf_mode[:, 0].tolist() == [[0, 1, 2, 3, 4, 5, 6, 4, 4, 6, 7],
                                    [0, 1, 2, 3, 3, 3, 3, 4, 4, 6, 7],
                                    [0, 1, 2, 3, 3, 3, 3, 4, 5, 6, 7]]


def test_qwen2_5_time_step_is_tokens_per_second_times_seconds_floored():
  """tps 2, spg 0.35: Δ = 0.7, T offsets floor(0, 0.7, 1.4, 2.1) = 0, 0, 1, 2 (one token per frame)."""
  ids = np.array([[5, *[VID] * 4, 6]])
  positions, _ = ours("qwen2_5_vl", ids, None, video_grid=[[4, 2, 2]], spg=[0.35], mode="qwen")
  assert positions[0, 0].tolist() == [0, 1, 1, 2, 3, 4]


def test_qwen2_5_time_positions_are_floored_in_float32_as_transformers():
  """tps 2: spg 2.1 at i_t = 15 and spg 0.58 at i_t = 25 floor differently in float64 (63, 28) and in float32
  (62, 29), and transformers computes in float32."""
  assert int(15 * (2 * 2.1)) == 63 and int(25 * (2 * 0.58)) == 28  # the float64 answers
  ids, mask = pad_rows([[5, *[VID] * 16, VS, *[VID] * 26, 6]])
  grids, spg = [[16, 2, 2], [26, 2, 2]], [2.1, 0.58]
  expected, _ = hf_rope_index("qwen2_5_vl", ids, mask, video_grid=grids, spg=spg)
  assert expected[0, 0, 16] - expected[0, 0, 1] == 62 and expected[0, 0, 43] - expected[0, 0, 18] == 29
  np.testing.assert_array_equal(ours("qwen2_5_vl", ids, mask, video_grid=grids, spg=spg, mode="hf")[0], expected)
  qwen = ours("qwen2_5_vl", ids, mask, video_grid=grids, spg=spg, mode="qwen")[0][:, 0]
  for block in (slice(1, 17), slice(18, 44)):  # the same offsets inside each block, from a different start
    want = expected[:, 0, block]
    np.testing.assert_array_equal(qwen[:, block] - qwen[:, block][:, :1], want - want[:, :1])


def test_config_mode_is_the_default():
  ids, mask = pad_rows([row_from_types([0] * 2 + [2] * 8 + [0] * 2)])
  kwargs = dict(video_grid_thw=[[4, 2, 4]], second_per_grid_ts=[1.0])
  assert rope_index(ids, mask, config("qwen2_5_vl", "hf"), **kwargs)[0][0, 0, -1] == 5
  assert rope_index(ids, mask, config("qwen2_5_vl", "qwen"), **kwargs)[0][0, 0, -1] == 10


@pytest.mark.parametrize("mode", ["hf", "qwen"])
def test_decode_positions_continue_from_the_prompt(mode):
  rows = [[5, VS, *[VID] * 8, VE, 6], [9, VS, *[VID] * 6]]  # row 1 ends inside a video: per-axis values differ
  ids, mask = pad_rows(rows, left=2)
  positions, base = ours("qwen2_5_vl", ids, mask, video_grid=[[2, 4, 4], [3, 2, 4]], spg=[1.0, 2.0], mode=mode)
  n_valid = mask.sum(1)
  for step in (0, 4):
    got = decode_positions(base, step, num_new=2)
    assert got.shape == (3, 2, 2) and got.dtype == np.int32
    for b in range(2):
      if mode == "hf":  # the last prompt token's own position, per axis
        want = positions[:, b, -1]
      else:  # the row's maximum on all axes; equals vLLM's delta + context_len
        want = np.full(3, positions[:, b, mask[b] == 1].max())
        assert rope_deltas(positions, mask)[b] + n_valid[b] + step == want[0] + 1 + step
      np.testing.assert_array_equal(got[:, b], want[:, None] + 1 + step + np.arange(2))
  per_row = decode_positions(base, np.array([0, 3]))
  np.testing.assert_array_equal(per_row[:, :, 0], base + 1 + np.array([0, 3]))


def test_decode_positions_traces_under_jit():
  jax = pytest.importorskip("jax")
  base = np.array([[4, 9], [4, 7], [4, 8]], np.int32)
  got = jax.jit(lambda s: decode_positions(jax.numpy.asarray(base), s))(3)
  np.testing.assert_array_equal(np.asarray(got)[:, :, 0], base + 4)


def test_empty_row_decodes_from_zero():
  ids, mask = np.array([[PAD, PAD], [5, 6]]), np.array([[0, 0], [1, 1]])
  positions, base = rope_index(ids, mask, config("qwen2_vl"))
  assert positions[:, 0].tolist() == [[0, 0]] * 3 and base[:, 0].tolist() == [-1] * 3
  assert decode_positions(base, 0)[:, :, 0].tolist() == [[0, 2]] * 3
  assert rope_deltas(positions, mask).tolist() == [0, 0]


# --- errors -----------------------------------------------------------------------------------------------------------


def raises(match, family="qwen2_vl", ids=None, mask=None, **kwargs):
  ids = np.array([[5, VS, *[IMG] * 6, VE, 6]]) if ids is None else np.asarray(ids)
  with pytest.raises(ValueError, match=match) as info:
    rope_index(ids, mask, config(family), **kwargs)
  return str(info.value)


def test_fewer_grids_than_image_runs_is_an_error():
  message = raises("image_grid_thw", ids=[[5, *[IMG] * 6, 6, *[IMG], 7]], image_grid_thw=[[1, 4, 6]])
  assert "2 image runs with 7 pad tokens" in message and "1 grids with 6 tokens" in message
  assert "row 0, column 8" in message


def test_more_grids_than_image_runs_is_an_error():
  message = raises("image_grid_thw", image_grid_thw=[[1, 4, 6], [1, 2, 2]])
  assert "1 image runs with 6 pad tokens" in message and "2 grids with 7 tokens" in message
  assert "image 1" in message


def test_multimodal_row_without_grids_is_an_error():
  message = raises("image_grid_thw")  # types derived from input_ids: never a silent 1-D fallback
  assert "1 image runs with 6 pad tokens" in message and "0 grids" in message


def test_run_longer_than_its_grid_is_an_error():
  message = raises("image_grid_thw", image_grid_thw=[[1, 2, 4]])
  assert "image 0" in message and "expects 2" in message and "has 6" in message


def test_truncated_image_span_is_named():
  ids, mask = pad_rows([[5, VS, *[IMG] * 6, VE, 6], [7, VS, *[IMG] * 3]])  # row 1 was truncated mid-image
  message = raises("image_grid_thw", ids=ids, mask=mask, image_grid_thw=[[1, 4, 6], [1, 6, 4]])
  assert "image 1" in message and "expects 6" in message and "has 3" in message
  assert "truncat" in message and "trl #5785" in message and "row 1, column 7" in message


def test_qwen3_whole_video_run_without_frame_split_is_an_error():
  message = raises("video_grid_thw", "qwen3_vl", ids=[[5, VS, *[VID] * 8, VE]], video_grid_thw=[[2, 4, 4]])
  assert "expects 4" in message and "has 8" in message and "2 frame grids with 8 tokens" in message


def test_empty_grid_lists_mean_no_items():
  ids = np.array([[5, 6, 7]])
  positions, _ = rope_index(ids, None, config("qwen2_vl"), image_grid_thw=[], video_grid_thw=np.zeros((0, 3), int))
  assert positions[:, 0].tolist() == [[0, 1, 2]] * 3


def test_grid_not_divisible_by_merge_size_is_an_error():
  message = raises(r"image_grid_thw\[0\]", image_grid_thw=[[1, 3, 8]])
  assert "merge size 2" in message and "(1, 3, 8)" in message


@pytest.mark.parametrize("grid, match", [([[1, 4]], r"\[N, 3\].*\(1, 2\)"), ([[0, 4, 6]], "positive"),
                                         ([[1.0, 4.0, 6.0]], "dtype float")])
def test_malformed_grids_are_errors(grid, match):
  raises(f"image_grid_thw.*{match}", image_grid_thw=grid)


def test_type_ids_that_disagree_with_pad_tokens_are_an_error():
  types = types_of(np.array([[5, VS, *[IMG] * 6, VE, 6]]))
  types[0, 3] = 2
  message = raises("mm_token_type_ids", mm_token_type_ids=types, image_grid_thw=[[1, 4, 6]])
  assert "1 valid positions" in message and "row 0, column 3" in message


def test_agreeing_type_ids_are_accepted():
  ids = np.array([[5, VS, *[IMG] * 6, VE, 6]])
  given = rope_index(ids, None, config("qwen2_vl"), mm_token_type_ids=types_of(ids), image_grid_thw=[[1, 4, 6]])
  derived = rope_index(ids, None, config("qwen2_vl"), image_grid_thw=[[1, 4, 6]])
  np.testing.assert_array_equal(given[0], derived[0])


@pytest.mark.parametrize("kwargs, match", [
  (dict(mask=np.ones((1, 5))), r"attention_mask.*\(1, 10\).*\(1, 5\)"),
  (dict(mask=np.full((1, 10), 2)), "attention_mask.*0/1"),
  (dict(mm_token_type_ids=np.zeros((2, 10))), r"mm_token_type_ids.*\(1, 10\).*\(2, 10\)"),
  (dict(ids=np.arange(10)), r"input_ids.*\[B, L\].*\(10,\)"),
  (dict(mode="vllm"), "mode.*'vllm'"),
])
def test_shape_and_value_mismatches_are_errors(kwargs, match):
  raises(match, image_grid_thw=[[1, 4, 6]], **kwargs)


def test_masked_out_placeholders_are_an_error():
  message = raises("attention_mask", mask=np.array([[1, 1, 0, 1, 1, 1, 1, 1, 1, 1]]), image_grid_thw=[[1, 4, 6]])
  assert "1 image/video placeholder tokens" in message and "column 2" in message


def test_second_per_grid_ts_is_checked():
  ids = [[5, *[VID] * 4, 6]]
  message = raises("second_per_grid_ts", "qwen2_5_vl", ids=ids, video_grid_thw=[[1, 4, 4]], second_per_grid_ts=[1, 2])
  assert "(1,)" in message and "(2,)" in message
  raises("second_per_grid_ts.*qwen2_vl", ids=ids, video_grid_thw=[[1, 4, 4]], second_per_grid_ts=[1.0])
  raises("second_per_grid_ts.*>= 0", "qwen2_5_vl", ids=ids, video_grid_thw=[[1, 4, 4]], second_per_grid_ts=[-1.0])


def test_decode_positions_checks_shapes():
  with pytest.raises(ValueError, match=r"decode_base.*\[3, B\].*\(2,\)"):
    decode_positions(np.zeros(2, np.int32), 0)
  with pytest.raises(ValueError, match=r"step.*\[B=2\].*\(3,\)"):
    decode_positions(np.zeros((3, 2), np.int32), np.arange(3))
  with pytest.raises(ValueError, match="num_new.*0"):
    decode_positions(np.zeros((3, 2), np.int32), 0, num_new=0)
