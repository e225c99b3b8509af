"""QwenVLConfig reads transformers configs (nested and legacy flat), writes them back, and rejects what it can't run."""

import copy

import pytest

from jaxagents.models.qwen_vl import QwenVLConfig
from tests.models.qwen_vl.tiny import TINY, hf_config


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
