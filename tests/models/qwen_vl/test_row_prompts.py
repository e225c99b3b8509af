"""Per-prompt vision layout: rows with 0, 1 and 3 images in one batch give each row's logits alone, the layout gives
the logits of the flat layout it replaced (one patch list for the whole call, one block-diagonal mask,
features scattered row-major over the batch), and `ModelInputs.repeat` shares one tower run per prompt."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.segment_packing import SegmentPacking
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs, prepare_inputs, row_vision_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.vision import VisionTower
from jaxagents.models.qwen_vl.vision_layout import vision_inputs
from tests.models.qwen_vl import tiny
from tests.models.qwen_vl.tiny import IMG, VE, VID, VS

# Rows with 0, 1 and 3 images (grids (1, 4, 6) -> 6 tokens, (1, 2, 2) -> 1, (1, 6, 4) -> 6).
ROW_GRIDS = [[], [[1, 4, 6]], [[1, 2, 2], [1, 6, 4], [1, 4, 6]]]


def _image_row(b, grids):
  row = [5 + b, 6]
  for t, h, w in grids:
    row += [VS, *[IMG] * (t * h * w // 4), VE, 7]
  return row + [8]


def _batch(config, row_grids, seed=0):
  """(input_ids, attention_mask, per-row pixel lists, per-row grid lists) for rows of images."""
  rng = np.random.default_rng(seed)
  ids, mask = tiny.left_pad([_image_row(b, g) for b, g in enumerate(row_grids)])
  pixels = [[rng.standard_normal((t * h * w, config.vision.patch_dim)).astype(np.float32) for t, h, w in grids]
            for grids in row_grids]
  return ids, mask, pixels, [np.array(g, np.int64).reshape(-1, 3) for g in row_grids]


def _prepare(config, ids, mask, pixels, grids, **kwargs):
  flat = [p for row in pixels for p in row]
  if not flat:
    return prepare_inputs(config, ids, mask, **kwargs)
  return prepare_inputs(config, ids, mask, pixel_values=np.concatenate(flat), image_grid_thw=np.concatenate(grids),
                        **kwargs)


@functools.cache
def _model(family):
  config = QwenVLConfig.from_hf(tiny.TINY[family])
  model = QwenVL(config)
  ids, mask, pixels, grids = _batch(config, ROW_GRIDS)
  inputs = _prepare(config, ids, mask, pixels, grids)
  params = jax.jit(model.init)(jax.random.key(0), inputs.input_ids, inputs.positions, inputs.attention_mask,
                               inputs.vision)
  return config, model, params


@functools.cache
def _forward(model):
  return jax.jit(model.apply)


def _logits(model, params, inputs):
  return np.asarray(_forward(model)(params, inputs.input_ids, inputs.positions, inputs.attention_mask,
                                    inputs.vision, inputs.row_prompt)[0])


def test_rows_with_zero_one_and_three_images_equal_each_row_alone():
  config, model, params = _model("qwen2_5_vl")  # windows: both packings hold rows of several prompts
  ids, mask, pixels, grids = _batch(config, ROW_GRIDS)
  batched = _logits(model, params, _prepare(config, ids, mask, pixels, grids, pad_patches_to=96))
  for b in range(len(ROW_GRIDS)):  # alone: a batch of one row (same padding, so one compilation serves all three)
    alone = _prepare(config, ids[b:b + 1], mask[b:b + 1], pixels[b:b + 1], grids[b:b + 1], pad_patches_to=96)
    valid = mask[b].astype(bool)
    np.testing.assert_allclose(batched[b, valid], _logits(model, params, alone)[0, valid], rtol=0, atol=2e-5)


def _one_dense_row(segments):
  """The flat layout's attention: every patch of the call in one row under one block-diagonal segment mask."""
  n, length = segments.shape
  return SegmentPacking(np.tile(np.arange(length, dtype=np.int32), (n, 1, 1)), segments[:, None],
                        np.tile(np.arange(length, dtype=np.int32), (n, 1)))


def _flat_scatter(embeds, input_ids, features, image_token_id, video_token_id):
  """The flat layout's scatter: the k-th placeholder, row-major over the whole batch, takes feature k (videos
  after all images)."""
  is_image = (input_ids == image_token_id).reshape(-1)
  is_video = (input_ids == video_token_id).reshape(-1)
  rank = jnp.where(is_image, jnp.cumsum(is_image) - 1, jnp.sum(is_image) + jnp.cumsum(is_video) - 1)
  flat = embeds.reshape(-1, embeds.shape[-1])
  flat = jnp.where((is_image | is_video)[:, None], features[jnp.clip(rank, 0, len(features) - 1)], flat)
  return flat.reshape(embeds.shape)


def _flat_forward(module, input_ids, positions, attention_mask, vision):
  c = module.config
  embeds = module.text.embed_tokens(input_ids)
  features, deepstack = module.visual(vision)
  scatter = lambda x, f: _flat_scatter(x, input_ids, f[0], c.image_token_id, c.video_token_id)  # noqa: E731
  embeds = scatter(embeds, features)
  deepstack = jnp.stack([scatter(jnp.zeros_like(embeds), f) for f in deepstack]) if deepstack else None
  hidden, _ = module.text(embeds, positions, attention_mask.astype(bool), deepstack=deepstack)
  return module.text.attend(hidden) if c.tie_word_embeddings else module.lm_head(hidden)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])  # windows and videos; DeepStack
def test_per_prompt_layout_gives_the_logits_of_the_flat_layout(family):
  config, model, params = _model(family)
  rng = np.random.default_rng(2)
  image_grids = np.array([[1, 4, 6], [1, 2, 2], [1, 6, 4]])
  image_pixels = rng.standard_normal((52, config.vision.patch_dim)).astype(np.float32)
  if family == "qwen3_vl":  # Qwen3-VL videos need timestamp tokens around each frame: images only here
    rows = [_image_row(0, image_grids[:1]), _image_row(1, []), _image_row(2, image_grids[1:])]
    media = dict(pixel_values=image_pixels, image_grid_thw=image_grids)
  else:  # images and videos interleaved across rows: the flat layout put all images before all videos
    video_grids = np.array([[2, 4, 4], [3, 2, 4]])
    rows = [[5, VS, *[IMG] * 6, VE, 6, VS, *[VID] * 8, VE, 7], [8, VS, *[VID] * 6, VE, 9, VS, IMG, VE],
            [10, VS, *[IMG] * 6, VE, 11]]
    media = dict(pixel_values=image_pixels, image_grid_thw=image_grids,
                 pixel_values_videos=rng.standard_normal((56, config.vision.patch_dim)).astype(np.float32),
                 video_grid_thw=video_grids)
  ids, mask = tiny.left_pad(rows)
  inputs = prepare_inputs(config, ids, mask, **media)
  ours = _logits(model, params, inputs)

  flat = vision_inputs(np.concatenate([media[k] for k in ("pixel_values", "pixel_values_videos") if k in media]),
                       np.concatenate([media[k] for k in ("image_grid_thw", "video_grid_thw") if k in media]), config)
  flat = dataclasses.replace(flat, packing=_one_dense_row(flat.segment_ids), window_packing=(
    None if flat.window_segment_ids is None else _one_dense_row(flat.window_segment_ids)))
  reference = jax.jit(functools.partial(model.apply, method=_flat_forward))(
    params, inputs.input_ids, inputs.positions, inputs.attention_mask, flat)
  valid = mask.astype(bool)
  np.testing.assert_allclose(ours[valid], np.asarray(reference)[valid], rtol=0, atol=2e-5)


def _tower_calls(model, params, inputs):
  """(logits, [patches shape of every `VisionTower` call])."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, VisionTower) and context.method_name == "__call__":
      calls.append(tuple(args[0].patches.shape))
    return next_fun(*args, **kwargs)

  @jax.jit
  def forward(params, inputs):
    with nn.intercept_methods(record):  # records while tracing: once per call of the compiled program
      return model.apply(params, inputs.input_ids, inputs.positions, inputs.attention_mask, inputs.vision,
                         inputs.row_prompt)[0]

  return np.asarray(forward(params, inputs)), calls


def test_a_repeated_group_runs_the_tower_once_per_prompt_with_the_logits_of_separate_rows():
  config, model, params = _model("qwen3_vl")  # DeepStack features are scattered per row too
  ids, mask, pixels, grids = _batch(config, ROW_GRIDS)
  prompts = _prepare(config, ids, mask, pixels, grids)
  repeated = prompts.repeat(4)
  np.testing.assert_array_equal(repeated.row_prompt, np.repeat(np.arange(3), 4))
  logits, calls = _tower_calls(model, params, repeated)
  assert calls == [prompts.vision.patches.shape] and calls[0][0] == 3  # 3 prompts, not 12 rows

  copies = np.repeat(np.arange(3), 4)
  separate = _prepare(config, ids[copies], mask[copies], [pixels[b] for b in copies], [grids[b] for b in copies])
  expected, calls = _tower_calls(model, params, separate)
  assert calls[0][0] == 12
  valid = repeated.attention_mask.astype(bool)
  np.testing.assert_allclose(logits[valid], expected[valid], rtol=0, atol=2e-5)


def test_repeat_keeps_the_prompt_of_every_row():
  inputs = ModelInputs(np.arange(6).reshape(2, 3), np.ones((2, 3)), np.zeros((3, 2, 3), np.int32),
                       np.array([[1, 2]] * 3, np.int32), None, row_prompt=np.array([1, 0], np.int32))
  twice = inputs.repeat(2).repeat(3)
  np.testing.assert_array_equal(twice.row_prompt, [1] * 6 + [0] * 6)
  np.testing.assert_array_equal(twice.input_ids[:, 0], [0] * 6 + [3] * 6)
  np.testing.assert_array_equal(twice.decode_base, [[1] * 6 + [2] * 6] * 3)
  with pytest.raises(ValueError, match="repeat"):
    inputs.repeat(0)


def test_prompts_and_rows_that_disagree_are_named():
  config, model, params = _model("qwen2_vl")
  ids, mask, pixels, grids = _batch(config, ROW_GRIDS)
  inputs = _prepare(config, ids, mask, pixels, grids)
  with pytest.raises(ValueError, match="one prompt per row"):
    model.apply(params, inputs.input_ids[:2], inputs.positions[:, :2], inputs.attention_mask[:2], inputs.vision)
  with pytest.raises(ValueError, match="do not split into the rows"):  # the (1, 2, 2) image moved to row 1
    row_vision_inputs(config, ids, pixel_values=np.concatenate([p for row in pixels for p in row]),
                      image_grid_thw=np.array([[1, 2, 2], [1, 4, 6], [1, 6, 4], [1, 4, 6]]))
