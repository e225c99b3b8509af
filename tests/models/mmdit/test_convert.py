"""Checkpoint reading: sharded directories, stored dtypes, and errors that name the file, the key and the shape."""

import json

import numpy as np
import pytest

from jaxagents.models import mmdit
from jaxagents.models.mmdit import convert
from tests.models.mmdit.test_lens import lens_config, random_state, write_checkpoint

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _flat(params, prefix=""):
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = np.asarray(value)
  return out


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
  config = lens_config()
  state = random_state(config)
  _, single = mmdit.load_params(write_checkpoint(tmp_path / "single", config, state))
  sharded = tmp_path / "sharded"
  sharded.mkdir()
  (sharded / "config.json").write_text(json.dumps(config))
  keys = sorted(state)
  names = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
  parts = [keys[::2], keys[1::2]]
  for name, part in zip(names, parts, strict=True):
    safetensors_numpy.save_file({k: state[k] for k in part}, str(sharded / name))
  weight_map = {k: name for name, part in zip(names, parts, strict=True) for k in part}
  (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _, loaded = mmdit.load_params(str(sharded))
  a, b = _flat(single), _flat(loaded)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_bfloat16_checkpoints_are_read_through_ml_dtypes(tmp_path):
  torch = pytest.importorskip("torch")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  config = lens_config(num_layers=1)
  state = random_state(config)
  directory = tmp_path / "bf16"
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(config))
  bf16 = {k: torch.from_numpy(v).bfloat16() for k, v in state.items()}
  safetensors_torch.save_file(bf16, str(directory / "diffusion_pytorch_model.safetensors"))
  _, params = mmdit.load_params(str(directory), dtype=np.float32)
  expected = bf16["img_in.weight"].float().numpy().T
  np.testing.assert_array_equal(params["img_in"]["kernel"], expected)
  assert params["img_in"]["kernel"].dtype == np.float32


def test_missing_key_is_named_with_the_directory(tmp_path):
  config = lens_config()
  state = random_state(config)
  del state["transformer_blocks.1.attn.txt_qkv.bias"]
  directory = write_checkpoint(tmp_path / "ckpt", config, state)
  with pytest.raises(ValueError, match=r"1 missing \['transformer_blocks\.1\.attn\.txt_qkv\.bias'\]") as error:
    mmdit.load_params(directory)
  assert directory in str(error.value)


def test_unexpected_key_is_named_with_its_file(tmp_path):
  config = lens_config()
  state = random_state(config)
  state["transformer_blocks.2.img_mod.1.bias"] = state["transformer_blocks.1.img_mod.1.bias"]  # only 2 blocks
  state["pos_embed.pos_freqs"] = np.zeros(3, np.float32)
  directory = write_checkpoint(tmp_path / "ckpt", config, state)
  with pytest.raises(ValueError, match="2 unexpected") as error:
    mmdit.load_params(directory)
  assert "transformer_blocks.2.img_mod.1.bias" in str(error.value) and "pos_embed.pos_freqs" in str(error.value)
  assert "diffusion_pytorch_model.safetensors" in str(error.value)


def test_wrong_shape_is_named_with_file_key_and_both_shapes(tmp_path):
  config = lens_config()
  state = random_state(config)
  state["txt_in.weight"] = state["txt_in.weight"][:, :-1]
  directory = write_checkpoint(tmp_path / "ckpt", config, state)
  with pytest.raises(ValueError, match=r"'txt_in\.weight' of shape \(32, 47\) converts to \(47, 32\)") as error:
    mmdit.load_params(directory)
  assert "diffusion_pytorch_model.safetensors" in str(error.value) and "(48, 32)" in str(error.value)


def test_fused_weight_that_does_not_split_is_named(tmp_path):
  config = lens_config()
  state = random_state(config)
  state["transformer_blocks.0.attn.img_qkv.bias"] = np.zeros(95, np.float32)
  directory = write_checkpoint(tmp_path / "ckpt", config, state)
  with pytest.raises(ValueError, match=r"img_qkv\.bias.*does not split into \[32, 32, 32\]"):
    mmdit.load_params(directory)


def test_corrupt_safetensors_file_is_named(tmp_path):
  directory = tmp_path / "ckpt"
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(lens_config()))
  (directory / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 12)
  with pytest.raises(ValueError, match="not a readable safetensors file") as error:
    mmdit.load_params(str(directory))
  assert "diffusion_pytorch_model.safetensors" in str(error.value)


def test_directory_without_safetensors_is_refused(tmp_path):
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="pickle files are not read"):
    convert.checkpoint_files(str(tmp_path))


def test_unknown_diffusers_class_is_refused():
  with pytest.raises(ValueError, match="`_class_name`"):
    mmdit.MMDiTConfig.from_diffusers({"_class_name": "SD3Transformer2DModel"})
