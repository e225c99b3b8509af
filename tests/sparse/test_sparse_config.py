"""`SparseAttentionConfig` (`jaxagents.sparse.config` format): JSON save/load round trips every field and writes
atomically; equal configs are equal and hash equal whatever the key order of their entries (so jit specializes
on them once); entries come back as fresh dicts; bad files and bad layers raise ValueErrors that say what is
wrong."""

import json

import jax
import jax.numpy as jnp
import pytest

from jaxagents.sparse.config import FORMAT, SparseAttentionConfig

HEADS = [
  {"pattern": "grid", "params": {"strides": [8, 16], "last_q": 32}, "score": 0.97},
  {"pattern": "vertical_slash", "params": {"v_size": 30, "s_size": 100}, "boundary": "2d",
   "per_modality": {"0,1": {"pattern": "a_shape", "params": {"n_init": 4, "n_local": 64}}}, "score": 0.96},
  {"pattern": "dense", "score": 1.0},
]
FIELDS = dict(block_q=32, block_kv=64, num_modalities=3, model="tiny", calib_hash="ab12", jax_version="0.10.2",
              min_recall=0.96)


def _config(layers=None, **fields):
  return SparseAttentionConfig.from_layers(layers or [HEADS, HEADS[::-1]], **{**FIELDS, **fields})


def test_save_load_round_trips_every_field_atomically(tmp_path):
  config = _config()
  config.save(tmp_path / "sub" / "sparse.json")
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["sparse.json"]  # no temporary file left behind
  data = json.loads((tmp_path / "sub" / "sparse.json").read_text())
  assert data["format"] == FORMAT and data["block"] == [32, 64] and data["layers"][1]["0"] == HEADS[2]
  loaded = SparseAttentionConfig.load(tmp_path / "sub" / "sparse.json")
  assert loaded == config and hash(loaded) == hash(config)
  assert [loaded.layer_heads(layer) for layer in range(2)] == [HEADS, HEADS[::-1]]
  assert {name: getattr(loaded, name) for name in FIELDS} == FIELDS
  assert (loaded.num_layers, loaded.num_heads) == (2, 3)


def test_equal_configs_hash_equal_whatever_the_key_order_and_jit_specializes_once():
  reordered = [[dict(reversed(list(entry.items()))) for entry in heads] for heads in [HEADS, HEADS[::-1]]]
  a, b = _config(), _config(reordered)
  assert a == b and hash(a) == hash(b)
  assert _config(min_recall=0.9) != a and _config([HEADS, HEADS]) != a
  traces = []

  def scaled(x, config):
    traces.append(config.model)
    return x * config.block_q

  scaled = jax.jit(scaled, static_argnums=1)
  assert float(scaled(jnp.ones(()), a)) == float(scaled(jnp.ones(()), b)) == 32.0
  assert len(traces) == 1


def test_layer_heads_returns_fresh_dicts_and_uniform_repeats_one_entry():
  config = _config()
  config.layer_heads(0)[0]["params"]["strides"].append(99)
  assert config.layer_heads(0)[0] == HEADS[0]
  uniform = SparseAttentionConfig.uniform({"pattern": "dense"}, num_layers=3, num_heads=2)
  assert [uniform.layer_heads(layer) for layer in range(3)] == [[{"pattern": "dense"}] * 2] * 3
  assert (uniform.block_q, uniform.block_kv, uniform.min_recall) == (64, 64, None)


def _file(**changes):
  data = _config().to_dict()
  data.update(changes)
  return data


@pytest.mark.parametrize(
  "data, message",
  [
    ([{"0": ["vertical_and_slash", 1000, 6096, 0.9]}], r"`format` must be 'jaxagents.sparse/1', got 'list'.*"
                                                       r"minference_format"),
    (_file(format="jaxagents.sparse/2"), r"`format` must be 'jaxagents.sparse/1', got 'jaxagents.sparse/2'"),
    ({k: v for k, v in _file().items() if k != "calib_hash"}, r"keys \['calib_hash'\] are missing"),
    (_file(block=64), r"`block` must be \[block_q, block_kv\], got 64"),
    (_file(layers={"0": {}}), r"`layers` must be a list"),
    (_file(layers=[{"0": HEADS[0], "2": HEADS[0]}]), r"layer 0 must map head indices '0'..'H-1'.*\['0', '2'\]"),
    (_file(layers=[{"0": HEADS[0]}, {"a": HEADS[0]}]), r"layer 1 must map head indices.*\['a'\]"),
    (_file(layers=[{"0": HEADS[0]}, {"0": HEADS[0], "1": HEADS[1]}]), r"every layer must have the same number"),
    (_file(layers=[{"0": {"params": {}}}]), r"layer 0 head 0 must be a dict with a 'pattern'"),
    (_file(block=[0, 64]), r"`block_q` must be a positive int, got 0"),
    (_file(layers=[]), r"`layers` must be a non-empty list"),
  ],
)
def test_bad_files_raise_value_errors_that_say_what_is_wrong(data, message):
  with pytest.raises(ValueError, match=message):
    SparseAttentionConfig.from_dict(data)


def test_malformed_json_raises_a_value_error_naming_the_file(tmp_path):
  path = tmp_path / "broken_sparse.json"
  path.write_text('{"format": "jaxagents.sparse/1", "layers": [')
  with pytest.raises(ValueError, match=r"broken_sparse\.json.*not valid JSON") as raised:
    SparseAttentionConfig.load(path)
  assert isinstance(raised.value.__cause__, json.JSONDecodeError)
