"""Logit parity with transformers 5.23 (PyTorch, CPU, fp32, eager attention) on tiny randomized models.

For each of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the HF model is saved with `save_pretrained` (safetensors), our
model is loaded from those files, and both run (a) text only, (b) text + three images of different sizes, (c)
text + two videos, batches of 2 with left padding. Positions come from HF's `get_rope_index` here so that this
file tests the network; `test_positions.py` tests our position ids against the same function. Then our params
are saved back and transformers' `from_pretrained` reproduces its own logits.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jaxagents.models.qwen_vl import convert  # noqa: E402
from jaxagents.models.qwen_vl.inputs import row_vision_inputs  # noqa: E402
from jaxagents.models.qwen_vl.model import QwenVL  # noqa: E402
from jaxagents.models.qwen_vl.vision_layout import vision_inputs  # noqa: E402
from tests.models.qwen_vl import tiny  # noqa: E402

FAMILIES = list(tiny.TINY)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
  """(family, HF model, our config, our params loaded from the HF model's safetensors)."""
  family = request.param
  hf = tiny.hf_model(family)
  directory = str(tmp_path_factory.mktemp(family))
  hf.save_pretrained(directory)
  config, params = convert.load_params(directory, convert.load_config(directory, mrope_mode="hf"))
  return family, hf, config, params


def _vision(config, inputs):
  """One prompt per row, padded past the largest row (48 image, 32 video patches) to exercise the padding."""
  keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
  pad = 56 if "pixel_values" in inputs else 60
  return row_vision_inputs(config, inputs["input_ids"], pad_patches_to=pad, **{k: inputs[k] for k in keys
                                                                               if k in inputs})


def _relative_error(ours, ref, mask):
  """max |ours - ref| over valid tokens, relative to the range of the reference logits."""
  ours, ref = np.asarray(ours)[mask], ref[mask]
  return float(np.abs(ours - ref).max() / (ref.max() - ref.min()))


@pytest.mark.parametrize("kind", ["text", "images", "video"])
def test_logits_match_transformers_fp32(loaded, kind):
  family, hf, config, params = loaded
  inputs = tiny.batch(family, kind)
  ref, positions = tiny.hf_logits(hf, inputs)
  logits, cache = QwenVL(config).apply({"params": params}, inputs["input_ids"], positions,
                                       inputs["attention_mask"], _vision(config, inputs))
  mask = inputs["attention_mask"].astype(bool)
  assert cache is None
  assert logits.shape == ref.shape
  assert _relative_error(logits, ref, mask) < 1e-5
  assert np.abs(np.asarray(logits)[mask] - ref[mask]).max() < 1e-4


def test_padded_row_equals_the_row_alone(loaded):
  """Left padding changes nothing on the valid tokens: row 1 of the image batch vs the same row unbatched."""
  family, hf, config, params = loaded
  inputs = tiny.batch(family, "images")
  hf_positions = tiny.hf_logits(hf, inputs)[1]
  model = QwenVL(config)
  batched, _ = model.apply({"params": params}, inputs["input_ids"], hf_positions, inputs["attention_mask"],
                           _vision(config, inputs))
  valid = inputs["attention_mask"][1].astype(bool)
  alone_ids = inputs["input_ids"][1:, valid]
  alone_positions = hf_positions[:, 1:, valid]
  grids = inputs["image_grid_thw"][2:]
  alone_vision = vision_inputs(inputs["pixel_values"][-4:], grids, config)
  alone, _ = model.apply({"params": params}, alone_ids, alone_positions, np.ones_like(alone_ids), alone_vision)
  np.testing.assert_allclose(np.asarray(batched)[1, valid], np.asarray(alone)[0], rtol=0, atol=2e-5)


def test_saved_params_reload_in_transformers_with_identical_logits(loaded, tmp_path):
  family, hf, config, params = loaded
  convert.save_params(params, config, str(tmp_path), max_shard_bytes=200_000)  # forces several shards
  assert (tmp_path / "model.safetensors.index.json").exists()
  reloaded = type(hf).from_pretrained(str(tmp_path), attn_implementation="eager").eval()
  for name, tensor in hf.state_dict().items():
    assert torch.equal(reloaded.state_dict()[name], tensor), name
  inputs = tiny.batch(family, "images")
  np.testing.assert_array_equal(tiny.hf_logits(reloaded, inputs)[0], tiny.hf_logits(hf, inputs)[0])


def test_bf16_is_as_close_to_fp32_as_transformers_bf16(loaded):
  """bf16 runs (params and compute) stay within twice transformers' own bf16-vs-fp32 error on the same inputs.

  The randomized tiny models have logits of range ~12, so bf16 rounding alone moves them by ~0.2 in both
  implementations; comparing against HF's own bf16 error keeps the bound meaningful.
  """
  import copy

  import jax.numpy as jnp

  family, hf, config, params = loaded
  inputs = tiny.batch(family, "images")
  ref32, positions = tiny.hf_logits(hf, inputs)
  ref16, _ = tiny.hf_logits(copy.deepcopy(hf).to(torch.bfloat16), inputs)
  half = convert.hf_to_params(dict(convert.params_to_hf(params, config)), config, dtype=jnp.bfloat16)
  logits, _ = QwenVL(config, dtype=jnp.bfloat16).apply({"params": half}, inputs["input_ids"], positions,
                                                       inputs["attention_mask"], _vision(config, inputs))
  mask = inputs["attention_mask"].astype(bool)
  ours = np.abs(np.asarray(logits)[mask] - ref32[mask]).max()
  theirs = np.abs(ref16[mask] - ref32[mask]).max()
  assert logits.dtype == np.float32 and np.isfinite(np.asarray(logits)).all()
  assert ours <= 2 * theirs, (ours, theirs)


@pytest.mark.parametrize("family, text, vision", [
  # transformers' Qwen3-VL `attention_bias` puts biases on q, k, v and o.
  ("qwen3_vl", {"attention_bias": True}, {}),
  # DeepStack features reach the decoder in ViT-block order, whatever the order of the list.
  ("qwen3_vl", {}, {"deepstack_visual_indexes": [2, 0]}),
])
def test_config_variants_match_transformers_fp32(family, text, vision, tmp_path):
  hf = tiny.hf_model(family, config=tiny.with_changes(family, text, vision))
  hf.save_pretrained(str(tmp_path))
  config, params = convert.load_params(str(tmp_path), convert.load_config(str(tmp_path), mrope_mode="hf"))
  inputs = tiny.batch(family, "images")
  ref, positions = tiny.hf_logits(hf, inputs)
  logits, _ = QwenVL(config).apply({"params": params}, inputs["input_ids"], positions, inputs["attention_mask"],
                                   _vision(config, inputs))
  assert _relative_error(logits, ref, inputs["attention_mask"].astype(bool)) < 1e-5
