"""GPT-OSS checkpoint conversion: MXFP4 decoding bit-equal to transformers `convert_moe_packed_tensors`, MXFP4
checkpoints (blocks and scales in either order) loading as the dequantised weights, the table round trip, and the
named errors of a checkpoint that does not fit its config.
"""

import numpy as np
import pytest
from safetensors.numpy import save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")

import ml_dtypes  # noqa: E402

from jaxagents.models.text_encoders import gpt_oss_convert  # noqa: E402
from jaxagents.models.text_encoders.gpt_oss import GptOssConfig  # noqa: E402
from tests.models.text_encoders import tiny  # noqa: E402

SMALL = {**tiny.GPT_OSS["mha_top1_tied"], "model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 32,
         "head_dim": 32}  # widths divisible by MXFP4's 32-value blocks


def _packed(rng, experts, rows, groups):
  blocks = rng.integers(0, 256, (experts, rows, groups, 16), dtype=np.uint8)
  scales = rng.integers(0, 256, (experts, rows, groups), dtype=np.uint8)  # every E8M0 code, 255 (NaN) included
  return blocks, scales


@pytest.mark.parametrize("shape", [(2, 6, 1), (3, 5, 4), (1, 64, 2)])
def test_dequantisation_equals_transformers_bit_for_bit(shape):
  blocks, scales = _packed(np.random.default_rng(sum(shape)), *shape)
  reference = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                               dtype=torch.float32).numpy()
  ours = gpt_oss_convert.dequantize_mxfp4(blocks, scales)
  assert ours.shape == reference.shape == (shape[0], shape[2] * 32, shape[1])
  np.testing.assert_array_equal(ours, reference)  # NaN == NaN here; inf and signed zeros must agree too
  assert np.array_equal(np.signbit(ours), np.signbit(reference))


def test_bfloat16_dequantisation_equals_transformers():
  blocks, scales = _packed(np.random.default_rng(7), 2, 4, 3)
  scales = np.clip(scales, 100, 150).astype(np.uint8)  # finite values: compare as numbers
  reference = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                               dtype=torch.bfloat16).float().numpy()
  ours = gpt_oss_convert.dequantize_mxfp4(blocks, scales, dtype=ml_dtypes.bfloat16)
  assert ours.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(ours.astype(np.float32), reference)


def test_one_byte_decodes_low_nibble_first():
  blocks = np.zeros((1, 1, 1, 16), np.uint8)
  blocks[..., 0] = 0xA3  # low nibble 3 -> 1.5, high nibble 0xA -> -1.0
  scales = np.full((1, 1, 1), 128, np.uint8)  # 2^(128 - 127) = 2
  values = gpt_oss_convert.mxfp4_values(blocks, scales)
  assert values.shape == (1, 1, 32)
  np.testing.assert_array_equal(values[0, 0, :2], [3.0, -2.0])


def _write(directory, tensors, config):
  import json

  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / "model.safetensors"))
  (directory / "config.json").write_text(json.dumps(config.to_hf()))
  return str(directory)


@pytest.fixture(scope="module")
def small():
  """(config, HF-layout float32 tensors of a random small GPT-OSS)."""
  config = GptOssConfig.from_hf(SMALL)
  rng = np.random.default_rng(0)
  shapes = gpt_oss_convert.param_shapes(config)
  params = {path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()}
  import flax

  tensors = dict(gpt_oss_convert.params_to_hf(flax.traverse_util.unflatten_dict(params, sep="/"), config))
  return config, params, tensors


def test_hf_tensors_round_trip_through_our_params(small):
  config, params, tensors = small
  ours = gpt_oss_convert.hf_to_params(tensors, config)
  import flax

  flat = flax.traverse_util.flatten_dict(ours, sep="/")
  assert flat.keys() == params.keys()
  for path, value in params.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)
  assert "lm_head.weight" not in tensors  # tied: transformers writes no lm_head


@pytest.mark.parametrize("scales_first", [False, True])
def test_mxfp4_checkpoints_load_as_their_dequantised_weights(small, tmp_path, scales_first):
  config, _, tensors = small
  rng = np.random.default_rng(1)
  quantised = {k: v for k, v in tensors.items() if not k.endswith(("gate_up_proj", "down_proj"))}
  expected = {}
  for i in range(config.num_layers):
    for proj, rows, width in (("gate_up_proj", 2 * config.intermediate_size, config.hidden_size),
                              ("down_proj", config.hidden_size, config.intermediate_size)):
      blocks, scales = _packed(rng, config.num_experts, rows, width // 32)
      scales = np.clip(scales, 120, 130).astype(np.uint8)
      key = f"model.layers.{i}.mlp.experts.{proj}"
      pair = {f"{key}_blocks": blocks, f"{key}_scales": scales}
      for name in sorted(pair, reverse=scales_first):
        quantised[name] = pair[name]
      expected[(i, proj)] = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                             dtype=torch.float32).numpy()
  # The dict streams in insertion order (the file in its own): either half of a pair may come first.
  params = gpt_oss_convert.hf_to_params(quantised, config)
  if not scales_first:
    _, params = gpt_oss_convert.load_params(_write(tmp_path, quantised, config))
  for (i, proj), value in expected.items():
    ours = params["layers"]["moe"]["gate_up" if proj == "gate_up_proj" else "down"][i]
    np.testing.assert_array_equal(ours, value)


def test_a_blocks_tensor_without_its_scales_is_named(small, tmp_path):
  config, _, tensors = small
  broken = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.experts.down_proj"}
  broken["model.layers.1.mlp.experts.down_proj_blocks"] = np.zeros((config.num_experts, config.hidden_size, 1, 16),
                                                                   np.uint8)
  with pytest.raises(ValueError, match=r"layers\.1\.mlp\.experts\.down_proj_scales") as error:
    gpt_oss_convert.load_params(_write(tmp_path, broken, config))
  assert str(tmp_path) in str(error.value)


def test_missing_unexpected_and_misshaped_tensors_are_named(small, tmp_path):
  config, _, tensors = small
  missing = {k: v for k, v in tensors.items() if k != "model.layers.0.self_attn.sinks"}
  with pytest.raises(ValueError, match=r"1 missing \['layers\.0\.self_attn\.sinks'\]"):
    gpt_oss_convert.hf_to_params(missing, config)
  extra = {**tensors, "model.layers.9.self_attn.sinks": np.zeros(2, np.float32)}
  with pytest.raises(ValueError, match=r"1 unexpected \['model\.layers\.9\.self_attn\.sinks'\]"):
    gpt_oss_convert.hf_to_params(extra, config)
  wrong = {**tensors, "model.norm.weight": np.zeros(5, np.float32)}
  with pytest.raises(ValueError, match=r"'model\.norm\.weight'.*\(5,\).*\(64,\)") as error:
    gpt_oss_convert.load_params(_write(tmp_path, wrong, config))
  assert str(tmp_path) in str(error.value)


def test_checkpoints_of_the_base_model_without_prefix_load_too(small):
  config, params, tensors = small
  bare = {k.removeprefix("model."): v for k, v in tensors.items()}
  ours = gpt_oss_convert.hf_to_params(bare, config)
  np.testing.assert_array_equal(ours["final_norm"]["scale"], params["final_norm/scale"])


def test_a_directory_without_config_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    gpt_oss_convert.load_config(str(tmp_path))


def test_mismatched_blocks_and_scales_are_named():
  blocks = np.zeros((2, 3, 4, 16), np.uint8)
  with pytest.raises(ValueError, match=r"`scales` must have shape \(2, 3, 4\)"):
    gpt_oss_convert.dequantize_mxfp4(blocks, np.zeros((2, 3, 5), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    gpt_oss_convert.mxfp4_values(blocks.astype(np.int32), np.zeros((2, 3, 4), np.uint8))
