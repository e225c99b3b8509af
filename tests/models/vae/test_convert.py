"""Checkpoint conversion for the FLUX.2 VAE: diffusers `save_pretrained` directories -> our variables -> diffusers is
bitwise, sharded and bf16 checkpoints load, and corrupted checkpoints fail with the key and the file named."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.models.vae import (
  FLUX2,
  TINY,
  Flux2VAEConfig,
  diffusers_to_variables,
  load_config,
  load_variables,
  save_variables,
  variables_to_diffusers,
)
from jaxagents.models.vae.convert import RULES
from tests.models.vae import reference as R

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _state(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("vae_checkpoint")
  model, _ = R.saved(TINY, directory, seed=2)
  return model, str(directory)


def _corrupt(source: str, target, edit) -> str:
  """A copy of the checkpoint directory `source` whose tensors went through `edit(dict) -> dict`."""
  os.makedirs(target, exist_ok=True)
  with open(os.path.join(source, "config.json")) as f:
    config = f.read()
  with open(os.path.join(target, "config.json"), "w") as f:
    f.write(config)
  tensors = edit(safetensors_numpy.load_file(os.path.join(source, WEIGHTS)))
  safetensors_numpy.save_file(tensors, os.path.join(target, WEIGHTS), metadata={"format": "pt"})
  return str(target)


def test_diffusers_to_ours_to_diffusers_is_bitwise_and_diffusers_loads_what_we_save(checkpoint, tmp_path):
  model, directory = checkpoint
  config, variables = load_variables(directory)
  state = _state(model)
  back = dict(variables_to_diffusers(variables, config))
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    if key != "bn.num_batches_tracked":  # a training counter, written back as 0
      assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
  # an in-memory torch state dict converts to the same variables
  from_state = dict(variables_to_diffusers(diffusers_to_variables(model.state_dict(), config), config))
  assert all(np.array_equal(from_state[k], back[k]) for k in back)
  save_variables(variables, config, str(tmp_path / "ours"))
  reloaded = diffusers.AutoencoderKLFlux2.from_pretrained(str(tmp_path / "ours"))
  for key, value in _state(reloaded).items():
    if key != "bn.num_batches_tracked":
      assert np.array_equal(value, state[key]), key
  assert load_config(str(tmp_path / "ours")) == config


def test_every_rule_is_used_by_some_config():
  """The table has no dead rows: each rule matches a key of the released model or of the tiny one."""
  keys = set()
  for config in (FLUX2, TINY):
    with torch.device("meta"):
      keys |= set(diffusers.AutoencoderKLFlux2.from_config(config.to_diffusers()).state_dict())
  for rule in RULES:
    assert any(rule.match_diffusers(k) is not None for k in keys), rule


def test_missing_key_is_named_with_the_checkpoint_file(checkpoint, tmp_path):
  _, directory = checkpoint
  key = "decoder.mid_block.attentions.0.to_k.bias"
  broken = _corrupt(directory, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != key})
  with pytest.raises(ValueError, match=rf"{re.escape(WEIGHTS)}: keys do not match .* 1 missing \['{re.escape(key)}'\]"):
    load_variables(broken)


def test_unexpected_key_is_named_with_its_file(checkpoint, tmp_path):
  _, directory = checkpoint
  key = "encoder.down_blocks.0.resnets.0.extra.weight"
  broken = _corrupt(directory, tmp_path / "extra", lambda t: {**t, key: np.zeros(3, np.float32)})
  path = os.path.join(broken, WEIGHTS)
  expected = rf"0 missing \[\], 1 unexpected \['{re.escape(key)} \(in {re.escape(path)}\)'\]"
  with pytest.raises(ValueError, match=expected):
    load_variables(broken)


def test_wrong_shape_is_named_with_the_key_the_file_and_both_shapes(checkpoint, tmp_path):
  _, directory = checkpoint
  key = "encoder.conv_in.weight"  # [6, 3, 3, 3]
  broken = _corrupt(directory, tmp_path / "shape", lambda t: {**t, key: np.zeros((6, 3, 3, 1), np.float32)})
  path = os.path.join(broken, WEIGHTS)
  expected = rf"checkpoint file '{re.escape(path)}': tensor '{key}' has shape \[6, 3, 3, 1\], but the config expects "
  with pytest.raises(ValueError, match=expected + r"\[6, 3, 3, 3\]"):
    load_variables(broken)


def test_config_that_does_not_fit_the_weights_names_the_missing_keys(checkpoint):
  _, directory = checkpoint
  deeper = Flux2VAEConfig(**{**load_config(directory).__dict__, "layers_per_block": 2})
  with pytest.raises(ValueError, match=r"32 missing \[.*'decoder\.up_blocks\.0\.resnets\.2\.conv1\.weight'"):
    load_variables(directory, deeper)


def test_unreadable_and_absent_weights_are_named(checkpoint, tmp_path):
  _, directory = checkpoint
  truncated = tmp_path / "truncated"
  _corrupt(directory, truncated, lambda t: t)
  path = truncated / WEIGHTS
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=rf"checkpoint file '{re.escape(str(path))}'"):
    load_variables(str(truncated))
  (tmp_path / "pickle").mkdir()
  (tmp_path / "pickle" / "diffusion_pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"pickle checkpoints \(\*\.bin\) are not read"):
    load_variables(str(tmp_path / "pickle"), TINY)


def test_sharded_checkpoint_loads_like_the_single_file(checkpoint, tmp_path):
  model, directory = checkpoint
  model.save_pretrained(str(tmp_path), max_shard_size="2KB")
  assert os.path.exists(tmp_path / f"{WEIGHTS}.index.json")
  _, sharded = load_variables(str(tmp_path))
  _, single = load_variables(directory)
  assert all(np.array_equal(a, b) for a, b in zip(dict(variables_to_diffusers(sharded, TINY)).values(),
                                                  dict(variables_to_diffusers(single, TINY)).values(), strict=True))


def test_bfloat16_checkpoint_loads_and_dtype_casts_the_params_only(checkpoint, tmp_path):
  model, _ = checkpoint
  half = diffusers.AutoencoderKLFlux2.from_config(TINY.to_diffusers())
  half.load_state_dict(model.state_dict())
  half.to(torch.bfloat16).save_pretrained(str(tmp_path))
  _, variables = load_variables(str(tmp_path))
  kernel = variables["params"]["encoder"]["conv_in"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  expected = half.encoder.conv_in.weight.detach().float().numpy().transpose(2, 3, 1, 0)
  assert np.array_equal(kernel.astype(np.float32), expected)
  _, as_float = load_variables(str(tmp_path), dtype=np.float32)
  assert as_float["params"]["encoder"]["conv_in"]["kernel"].dtype == np.float32
  assert as_float["batch_stats"]["bn"]["running_var"].dtype == np.float32


def test_config_reads_diffusers_config_json_and_rejects_other_models():
  with torch.device("meta"):
    released = dict(diffusers.AutoencoderKLFlux2().config)
  assert Flux2VAEConfig.from_diffusers(released) == FLUX2
  assert Flux2VAEConfig.from_diffusers(json.loads(json.dumps(TINY.to_diffusers()))) == TINY
  assert Flux2VAEConfig.from_diffusers({**TINY.to_diffusers(), "force_upcast": True, "_diffusers_version": "x"}) == TINY
  with pytest.raises(ValueError, match=r"`_class_name` must be 'AutoencoderKLFlux2', got 'AutoencoderKL'"):
    Flux2VAEConfig.from_diffusers({**TINY.to_diffusers(), "_class_name": "AutoencoderKL"})
  with pytest.raises(ValueError, match=r"`down_block_types` must be 2 x 'DownEncoderBlock2D'"):
    Flux2VAEConfig.from_diffusers({**TINY.to_diffusers(), "down_block_types": ["AttnDownEncoderBlock2D"] * 2})
