"""`prepare_inputs`: a batch mixing images and videos matches transformers end to end (our positions, our
layout), and placeholder/feature mismatches fail at data preparation with errors that say what to change."""

import numpy as np
import pytest

from jaxagents.models.qwen_vl import convert
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from tests.models.qwen_vl import tiny
from tests.models.qwen_vl.tiny import IMG, VE, VID, VS


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_images_and_videos_in_one_batch_match_transformers(family, tmp_path):
  torch = pytest.importorskip("torch")
  hf = tiny.hf_model(family, seed=3)
  hf.save_pretrained(str(tmp_path))
  config, params = convert.load_params(str(tmp_path), convert.load_config(str(tmp_path), mrope_mode="hf"))
  ids, mask = tiny.left_pad([[5, VS, *[IMG] * 6, VE, 6, VS, *[VID] * 8, VE, 7], [8, VS, *[VID] * 6, VE, 9,
                                                                                     VS, IMG, VE]])
  rng = np.random.default_rng(1)
  hf_inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=rng.standard_normal((28, 1176), np.float32),
                   image_grid_thw=np.array([[1, 4, 6], [1, 2, 2]]),
                   pixel_values_videos=rng.standard_normal((56, 1176), np.float32),
                   video_grid_thw=np.array([[2, 4, 4], [3, 2, 4]]),
                   mm_token_type_ids=np.where(ids == IMG, 1, np.where(ids == VID, 2, 0)))
  if family == "qwen2_5_vl":
    hf_inputs["second_per_grid_ts"] = np.array([1.0, 0.5], np.float32)
  hf.model.rope_deltas = None
  with torch.no_grad():
    expected = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in hf_inputs.items()}).logits.numpy()
  batch = prepare_inputs(config, ids, mask, pixel_values=hf_inputs["pixel_values"],
                         image_grid_thw=hf_inputs["image_grid_thw"],
                         pixel_values_videos=hf_inputs["pixel_values_videos"],
                         video_grid_thw=hf_inputs["video_grid_thw"],
                         second_per_grid_ts=hf_inputs.get("second_per_grid_ts"), pad_patches_to=96)
  logits, _ = QwenVL(config).apply({"params": params}, batch.input_ids, batch.positions, batch.attention_mask,
                                   batch.vision)
  valid = mask.astype(bool)
  error = np.abs(np.asarray(logits)[valid] - expected[valid]).max()
  assert error / np.ptp(expected[valid]) < 1e-5


def _config():
  return QwenVLConfig.from_hf(tiny.QWEN2_VL)


def test_fewer_placeholders_than_features_is_rejected():
  ids, mask = tiny.left_pad([[5, VS, *[IMG] * 5, VE, 6]])  # the (1, 4, 6) grid needs 6 placeholders
  with pytest.raises(ValueError, match="image"):
    prepare_inputs(_config(), ids, mask, pixel_values=np.zeros((24, 1176), np.float32),
                   image_grid_thw=np.array([[1, 4, 6]]))


def test_truncation_that_cuts_an_image_span_is_named():
  ids, mask = tiny.left_pad([[5, VS, *[IMG] * 6, VE, 6]])
  with pytest.raises(ValueError, match="trunc"):
    prepare_inputs(_config(), ids[:, :5], mask[:, :5], pixel_values=np.zeros((24, 1176), np.float32),
                   image_grid_thw=np.array([[1, 4, 6]]))


def test_pixels_without_grids_and_patch_count_mismatch_are_rejected():
  ids, mask = tiny.left_pad([[5, VS, *[IMG] * 6, VE, 6]])
  with pytest.raises(ValueError, match="image_grid_thw: pass both"):
    prepare_inputs(_config(), ids, mask, pixel_values=np.zeros((24, 1176), np.float32))
  with pytest.raises(ValueError, match=r"pixel_values: expected \[24, 1176\]"):
    prepare_inputs(_config(), ids, mask, pixel_values=np.zeros((20, 1176), np.float32),
                   image_grid_thw=np.array([[1, 4, 6]]))
