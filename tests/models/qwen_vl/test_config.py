"""QwenVLConfig reads transformers configs (nested and legacy flat), writes them back, and rejects what it can't run."""

import copy
import dataclasses
import json

import pytest

from jaxagents.models.qwen_vl import QwenVLConfig
from tests.models.qwen_vl.tiny import EVERY_FIELD, TINY, hf_config, with_changes


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_configs_read_the_family_features(family):
  config = QwenVLConfig.from_hf(TINY[family])
  assert config.family == family
  assert config.text.head_dim == 16 and config.vision.out_dim == 64
  assert config.text.qkv_bias == (family != "qwen3_vl")
  assert config.text.qk_norm == config.text.mrope_interleaved == (family == "qwen3_vl")
  assert config.vision.norm == ("rms" if family == "qwen2_5_vl" else "layer")
  assert config.vision.patch_dim == 3 * 2 * config.vision.patch_size**2
  assert config.vision.deepstack_indexes == ((0, 1) if family == "qwen3_vl" else ())


@pytest.mark.parametrize("family", sorted(TINY))
def test_to_hf_round_trips_through_transformers(family):
  pytest.importorskip("transformers")
  config = QwenVLConfig.from_hf(TINY[family])
  hf = type(hf_config(family))(**{k: v for k, v in config.to_hf().items() if k != "model_type"})
  assert QwenVLConfig.from_hf(hf.to_dict()) == config


def test_legacy_flat_config_with_rope_scaling_is_read():
  flat = copy.deepcopy(TINY["qwen2_vl"])
  text = flat.pop("text_config")
  rope = text.pop("rope_parameters")
  flat.update(text, rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
  assert QwenVLConfig.from_hf(flat) == QwenVLConfig.from_hf(TINY["qwen2_vl"])


@pytest.mark.parametrize("change, message", [
  ({"model_type": "llava"}, "model_type"),
  ({"text_config": {"use_sliding_window": True}}, "use_sliding_window"),
  ({"text_config": {"rope_parameters": {"rope_type": "yarn", "mrope_section": [2, 3, 3]}}}, "rope_type"),
  ({"text_config": {"rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 4]}}}, "mrope_section"),
  ({"vision_config": {"hidden_size": 48}}, "out_hidden_size|merger output"),
])
def test_unsupported_or_inconsistent_fields_say_what_to_change(change, message):
  hf = copy.deepcopy(TINY["qwen2_vl"])
  for key, value in change.items():
    if isinstance(value, dict):
      hf[key].update(value)
    else:
      hf[key] = value
  with pytest.raises(ValueError, match=message):
    QwenVLConfig.from_hf(hf)


@pytest.mark.parametrize("family", sorted(EVERY_FIELD))
def test_to_hf_keeps_every_field_that_from_hf_reads(family):
  original = EVERY_FIELD[family]
  config = QwenVLConfig.from_hf(original)
  assert QwenVLConfig.from_hf(json.loads(json.dumps(config.to_hf()))) == config
  # Our own reading could drop a field on both sides; transformers must also read the written file as the original.
  pytest.importorskip("transformers")
  theirs, ours = hf_config(family, original), hf_config(family, config.to_hf())
  for part, fields in (("text_config", original["text_config"]), ("vision_config", original["vision_config"]),
                       (None, original)):
    read, written = (theirs, ours) if part is None else (getattr(theirs, part), getattr(ours, part))
    for name in fields:
      if name not in ("model_type", "text_config", "vision_config"):
        assert getattr(written, name, None) == getattr(read, name), (part, name)


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("attention_bias", [False, True])
def test_attention_bias_sets_the_projection_biases_transformers_builds(family, attention_bias):
  """Qwen3-VL: biases on q, k, v and o, or none; Qwen2/2.5-VL: always q/k/v biases and no o bias."""
  transformers = pytest.importorskip("transformers")
  hf_family = with_changes(family, {"attention_bias": attention_bias})
  cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
         "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
         "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
  attention = cls(hf_config(family, hf_family)).model.language_model.layers[0].self_attn
  text = QwenVLConfig.from_hf(hf_family).text
  assert text.qkv_bias == (attention.q_proj.bias is not None) == (attention.v_proj.bias is not None)
  assert text.out_bias == (attention.o_proj.bias is not None)


def test_biases_a_config_json_cannot_express_are_refused_on_save():
  config = QwenVLConfig.from_hf(TINY["qwen3_vl"])
  unsaveable = dataclasses.replace(config, text=dataclasses.replace(config.text, qkv_bias=True))
  with pytest.raises(ValueError, match="out_bias"):
    unsaveable.to_hf()


def test_repeated_deepstack_blocks_are_refused():
  with pytest.raises(ValueError, match="deepstack_visual_indexes.*distinct"):
    QwenVLConfig.from_hf(with_changes("qwen3_vl", vision={"deepstack_visual_indexes": [1, 1]}))
