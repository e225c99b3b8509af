"""Checkpoint conversion: HF -> ours -> HF is bitwise for every key, both file layouts load, tied checkpoints
omit lm_head, a dtype is applied, sharded files with an index load, and wrong checkpoints fail by name."""

import json
import os
import re
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.models.qwen_vl import convert
from jaxagents.models.qwen_vl.config import QwenVLConfig
from tests.models.qwen_vl import tiny

torch = pytest.importorskip("torch")


def _state(family):
  return {k: v.numpy() for k, v in tiny.hf_model(family).state_dict().items()}


def _file_layout(state, family):
  """The key names transformers 5.23 writes to disk (`save_pretrained`): Qwen2/2.5 `model.*`/`visual.*`."""
  if family == "qwen3_vl":
    return dict(state) if "lm_head.weight" not in state or not tiny.TINY[family]["tie_word_embeddings"] else {
      k: v for k, v in state.items() if k != "lm_head.weight"}
  out = {}
  for key, value in state.items():
    if key.startswith("model.language_model."):
      key = "model." + key[len("model.language_model."):]
    elif key.startswith("model.visual."):
      key = "visual." + key[len("model.visual."):]
    out[key] = value
  return out


@pytest.mark.parametrize("family", list(tiny.TINY))
def test_hf_to_params_to_hf_is_bitwise_in_the_native_file_layout(family):
  config = QwenVLConfig.from_hf(tiny.TINY[family])
  state = _file_layout(_state(family), family)
  params = convert.hf_to_params(state, config)
  back = dict(convert.params_to_hf(params, config))
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


@pytest.mark.parametrize("family", list(tiny.TINY))
def test_both_key_layouts_load_to_the_same_params(family):
  """In-memory transformers names (`model.language_model.*`, `model.visual.*`) and the file names both load."""
  config = QwenVLConfig.from_hf(tiny.TINY[family])
  state = _state(family)
  if config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  a = convert.hf_to_params(state, config)
  b = convert.hf_to_params(_file_layout(state, family), config)
  for (key_a, x), (key_b, y) in zip(dict(convert.params_to_hf(a, config)).items(),
                                    dict(convert.params_to_hf(b, config)).items(), strict=True):
    assert key_a == key_b and np.array_equal(x, y)


def test_tied_checkpoint_omits_lm_head_and_untied_requires_it():
  tied = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  state = _file_layout(_state("qwen3_vl"), "qwen3_vl")
  assert "lm_head.weight" not in state
  params = convert.hf_to_params(state, tied)
  assert "lm_head" not in params
  assert "lm_head.weight" not in dict(convert.params_to_hf(params, tied))
  # A tied checkpoint that still stores lm_head.weight loads (transformers ignores it too).
  convert.hf_to_params({**state, "lm_head.weight": state["model.language_model.embed_tokens.weight"]}, tied)
  untied = QwenVLConfig.from_hf(tiny.QWEN2_VL)
  state = _file_layout(_state("qwen2_vl"), "qwen2_vl")
  state.pop("lm_head.weight")
  with pytest.raises(ValueError, match=r"1 missing \['lm_head.weight'\]"):
    convert.hf_to_params(state, untied)


def test_missing_unexpected_and_misshapen_keys_are_named():
  config = QwenVLConfig.from_hf(tiny.QWEN2_5_VL)
  state = _file_layout(_state("qwen2_5_vl"), "qwen2_5_vl")
  broken = dict(state)
  broken.pop("model.layers.1.self_attn.q_proj.bias")
  broken["visual.blocks.9.attn.proj.weight"] = np.zeros((32, 32), np.float32)  # depth is 4
  broken["model.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as error:
    convert.hf_to_params(broken, config)
  message = str(error.value)
  assert "1 missing ['layers.1.self_attn.q_proj.bias']" in message
  assert "2 unexpected" in message and "visual.blocks.9.attn.proj.weight" in message and "model.extra" in message
  bad_shape = {**state, "model.norm.weight": np.ones(63, np.float32)}
  with pytest.raises(ValueError, match=r"'model.norm.weight'.*\(63,\).*\(64,\)"):
    convert.hf_to_params(bad_shape, config)


def test_sharded_save_and_load_round_trip_with_dtype(tmp_path):
  config = QwenVLConfig.from_hf(tiny.QWEN2_VL)
  params = convert.hf_to_params(_file_layout(_state("qwen2_vl"), "qwen2_vl"), config)
  names = convert.save_params(params, config, str(tmp_path), max_shard_bytes=100_000)
  assert len(names) > 1 and not list(tmp_path.glob("*.tmp"))
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert sorted(set(index["weight_map"].values())) == sorted(names)
  loaded_config, loaded = convert.load_params(str(tmp_path))
  assert loaded_config == config
  for (key, x), (_, y) in zip(convert.params_to_hf(params, config), convert.params_to_hf(loaded, config),
                              strict=True):
    assert np.array_equal(x, y), key
  _, half = convert.load_params(str(tmp_path), dtype=jnp.bfloat16)
  assert half["text"]["embed"]["embedding"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half["text"]["embed"]["embedding"], np.float32),
                             params["text"]["embed"]["embedding"], rtol=1e-2)


def test_directory_without_safetensors_is_a_clear_error(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pickle checkpoints"):
    convert.checkpoint_files(str(tmp_path))


def _boxed_variables(config, seed=0):
  """What `QwenVL(config).init` returns (params in `LogicallyPartitioned` boxes), filled with random normals.

  The boxes come from `jax.eval_shape` of the init, which is seconds faster than running it.
  """
  from jaxagents.models.qwen_vl.model import QwenVL
  from jaxagents.models.qwen_vl.vision_layout import vision_inputs

  v = config.vision
  grid = np.array([[1, v.merge_size, v.merge_size]])
  inputs = vision_inputs(np.zeros((v.merge_size**2, v.patch_dim), np.float32), grid, config)
  ids = np.full((1, 1), config.image_token_id, np.int32)
  abstract = jax.eval_shape(QwenVL(config).init, jax.random.key(0), ids, np.zeros((3, 1, 1), np.int32),
                            np.ones((1, 1), bool), inputs)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)


def _is_box(x):
  return isinstance(x, nn.LogicallyPartitioned)


@pytest.mark.parametrize("family", sorted(tiny.EVERY_FIELD))
def test_boxed_params_save_and_reload_with_every_config_field(family, tmp_path):
  config = QwenVLConfig.from_hf(tiny.EVERY_FIELD[family])
  variables = _boxed_variables(config)
  assert all(_is_box(x) for x in jax.tree.leaves(variables, is_leaf=_is_box))
  convert.save_params(variables, config, str(tmp_path))
  loaded_config, loaded = convert.load_params(str(tmp_path))
  assert loaded_config == config
  expected = flax.traverse_util.flatten_dict(nn.meta.unbox(variables)["params"], sep="/")
  got = flax.traverse_util.flatten_dict(loaded, sep="/")
  assert sorted(got) == sorted(expected)
  for path, value in expected.items():
    assert np.array_equal(got[path], value), path


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory):
  """A small checkpoint directory of several shards and an index, written once; tests damage copies of it."""
  directory = tmp_path_factory.mktemp("sharded")
  config = QwenVLConfig.from_hf(tiny.EVERY_FIELD["qwen2_vl"])
  names = convert.save_params(_boxed_variables(config), config, str(directory), max_shard_bytes=20_000)
  assert len(names) > 1
  return directory, names


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_safetensors_file_is_named_in_the_error(damage, sharded_checkpoint, tmp_path):
  source, names = sharded_checkpoint
  shutil.copytree(source, tmp_path / "checkpoint")
  path = tmp_path / "checkpoint" / names[1]
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"not a safetensors file" * 8)
  with pytest.raises(ValueError, match=re.escape(repr(str(path)))) as error:
    convert.load_params(str(tmp_path / "checkpoint"))
  assert type(error.value.__cause__).__name__ == "SafetensorError"


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlinked_directory"])
def test_index_entries_outside_the_checkpoint_directory_are_refused(escape, sharded_checkpoint, tmp_path):
  source, names = sharded_checkpoint
  checkpoint, elsewhere = tmp_path / "checkpoint", tmp_path / "other"
  shutil.copytree(source, checkpoint)
  elsewhere.mkdir()
  os.replace(checkpoint / names[0], elsewhere / names[0])
  entry = {"dotdot": f"../other/{names[0]}", "absolute": str(elsewhere / names[0]),
           "symlinked_directory": f"link/{names[0]}"}[escape]
  if escape == "symlinked_directory":
    os.symlink(elsewhere, checkpoint / "link")
  index_path = checkpoint / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  index["weight_map"] = {key: entry if name == names[0] else name for key, name in index["weight_map"].items()}
  index_path.write_text(json.dumps(index))
  with pytest.raises(ValueError, match="outside the checkpoint directory") as error:
    convert.load_params(str(checkpoint))
  assert repr(str(index_path)) in str(error.value) and repr(entry) in str(error.value)


def test_a_hub_cache_snapshot_of_file_symlinks_into_blobs_loads(sharded_checkpoint, tmp_path):
  """huggingface_hub's cache stores snapshots/<revision>/<file> as symlinks to ../../blobs/<hash>."""
  source, names = sharded_checkpoint
  blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
  blobs.mkdir()
  snapshot.mkdir(parents=True)
  for k, name in enumerate([*names, "config.json", "model.safetensors.index.json"]):
    shutil.copy(source / name, blobs / f"blob{k}")
    os.symlink(f"../../blobs/blob{k}", snapshot / name)
  config, params = convert.load_params(str(snapshot))
  _, direct = convert.load_params(str(source))
  assert config == QwenVLConfig.from_hf(tiny.EVERY_FIELD["qwen2_vl"])
  assert jax.tree.all(jax.tree.map(np.array_equal, params, direct))
