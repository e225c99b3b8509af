"""MInference's per-head pattern files (microsoft/MInference `minference/configs/`,
`jaxagents.sparse.minference_format`): a hand-written file in MInference's published shape
(`minference_tiny_config.json`, one dict per layer, head -> [pattern, v_size, s_size, score]) reads into the
expected head entries; `stream_llm` becomes an A-shape whose layout lists exactly
the blocks MInference's streaming kernel touches; unknown patterns and malformed entries raise ValueErrors naming
the layer and head; the writer round-trips and refuses what MInference cannot run."""

import json
import pathlib

import numpy as np
import pytest

from jaxagents.sparse import a_shape, parse_head_config
from jaxagents.sparse.config import SparseAttentionConfig
from jaxagents.sparse.minference_format import from_minference, load_minference, save_minference, to_minference
from tests.sparse.oracles import block_mask

FIXTURE = pathlib.Path(__file__).with_name("minference_tiny_config.json")


def _vs(v_size, s_size, score):
  return {"pattern": "vertical_slash", "params": {"v_size": v_size, "s_size": s_size}, "score": score}


def _stream(n_init, n_local, score):
  return {"pattern": "a_shape", "params": {"n_init": n_init, "n_local": n_local}, "score": score}


def test_reader_maps_every_head_as_minference_runs_it():
  config = load_minference(FIXTURE)
  assert (config.num_layers, config.num_heads, config.block_q, config.block_kv) == (2, 4, 64, 64)
  assert config.model == "minference_tiny_config" and config.min_recall is None
  assert config.layer_heads(0) == [
    _vs(1000, 6096, 0.9623493552207947),
    _stream(100, 800, 0.884873628616333),
    _vs(30, 800, 0.9712),
    # block_sparse ignores its numbers: MInference's kernel keeps the top 100 64 x 64 blocks.
    {"pattern": "block_topk", "params": {"topk": 100}, "score": 0.9104},
  ]
  assert config.layer_heads(1) == [_vs(3500, 100, 0.9931), _vs(500, 700, 0.8975), _stream(100, 800, 0.8032),
                                   _vs(100, 750, 12)]


def test_seq_len_clamps_vertical_slash_sizes_as_minference_runtime_does():
  config = load_minference(FIXTURE, seq_len=512)
  sizes = [(e["params"]["v_size"], e["params"]["s_size"]) for layer in range(2) for e in config.layer_heads(layer)
           if e["pattern"] == "vertical_slash"]
  # min(q_len, max(v, 30)), min(q_len, max(s, 50)) of (1000, 6096), (30, 800), (3500, 100), (500, 700), (100, 750)
  assert sizes == [(512, 512), (30, 512), (512, 100), (500, 512), (100, 512)]
  for layer in range(2):
    for head, entry in enumerate(config.layer_heads(layer)):
      parse_head_config(entry, 512, head)  # the dispatcher accepts every entry at S = 512
  with pytest.raises(ValueError, match="mminference_attention: head 0: `v_size`"):
    parse_head_config(load_minference(FIXTURE).layer_heads(0)[0], 512)


def test_stream_llm_lists_exactly_the_blocks_of_minference_streaming_kernel():
  seq_len, block, n_init, n_local = 512, 64, 30, 100
  (entry,) = from_minference([{"0": ["stream_llm", n_init, n_local, 0.9]}]).layer_heads(0)
  layout = a_shape(seq_len, **entry["params"], block_q=block, block_kv=block)
  # MInference `streaming_forward(q, k, v, n_init, n_local)`: keys t < n_init, plus 0 <= q - t < n_local.
  q, t = np.indices((seq_len, seq_len))
  kernel = ((t < n_init) | ((q - t >= 0) & (q - t < n_local))) & (t <= q)
  touched = kernel.reshape(seq_len // block, block, seq_len // block, block).any(axis=(1, 3))
  np.testing.assert_array_equal(block_mask(layout, seq_len)[0, 0], touched)


@pytest.mark.parametrize(
  "data, message",
  [
    ([{"0": ["stream_llm", 1, 2, 0.5], "1": ["stream_llm", 1, 2, 0.5]},
      {"0": ["stream_llm", 1, 2, 0.5], "1": ["dilated", 1, 2, 0.5]}], r"layer 1 head 1: unknown pattern 'dilated'"),
    ([{"0": ["vertical_and_slash", 30, 800]}], r"layer 0 head 0: expected \[pattern, v_size, s_size, score\]"),
    ([{"0": ["vertical_and_slash", 30.5, 800, 0.9]}], r"layer 0 head 0: expected int v_size"),
    ([{"0": ["stream_llm", 100, 800, True]}], r"layer 0 head 0: expected int v_size, s_size and a numeric"),
    ([{"0": ["stream_llm", 100, 800, 0.9], "2": ["stream_llm", 100, 800, 0.9]}], r"layer 0 must map head indices"),
    ({"0": ["stream_llm", 100, 800, 0.9]}, r"expected a non-empty JSON list"),
    ([], r"expected a non-empty JSON list"),
  ],
)
def test_unknown_patterns_and_malformed_entries_raise_naming_layer_and_head(data, message):
  with pytest.raises(ValueError, match=message):
    from_minference(data)


def test_writer_round_trips_the_fixture_and_normalizes_block_sparse(tmp_path):
  data = json.loads(FIXTURE.read_text())
  config = from_minference(data, model="tiny")
  expected = json.loads(FIXTURE.read_text())
  expected[0]["3"] = ["block_sparse", 100, 0, 0.9104]  # the numbers MInference's block_sparse really runs
  assert to_minference(config) == expected
  save_minference(config, tmp_path / "out.json")
  assert json.loads((tmp_path / "out.json").read_text()) == expected
  assert load_minference(tmp_path / "out.json", model="tiny") == config
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # the temporary file was renamed away
  # An entry without a score is written with a null one, and read back without one.
  unscored = SparseAttentionConfig.from_layers([[{"pattern": "a_shape", "params": {"n_init": 4, "n_local": 64}}]])
  assert to_minference(unscored) == [{"0": ["stream_llm", 4, 64, None]}]
  assert from_minference(to_minference(unscored)) == unscored


@pytest.mark.parametrize(
  "entry, block",
  [
    ({"pattern": "grid", "params": {"strides": [8]}}, 64),
    ({"pattern": "dense"}, 64),
    ({"pattern": "vertical_slash", "params": {"v_size": 30, "s_size": 100}, "boundary": "q"}, 64),
    ({"pattern": "vertical_slash", "params": {"v_size": 30, "s_size": 100, "last_q": 32}}, 64),
    ({"pattern": "block_topk", "params": {"topk": 8}}, 64),
    ({"pattern": "block_topk", "params": {"topk": 100}}, 32),
  ],
)
def test_writer_refuses_what_minference_cannot_run(entry, block):
  ok = {"pattern": "a_shape", "params": {"n_init": 4, "n_local": 64}}
  config = SparseAttentionConfig.from_layers([[ok, ok], [ok, entry]], block_q=block, block_kv=block)
  with pytest.raises(ValueError, match="layer 1 head 1"):
    to_minference(config)


def test_malformed_json_raises_a_value_error_naming_the_file(tmp_path):
  path = tmp_path / "broken_pattern.json"
  path.write_text('[{"0": ["vertical_and_slash", 1000, 6096, 0.9],}]')
  with pytest.raises(ValueError, match=r"broken_pattern\.json.*not valid JSON") as raised:
    load_minference(path)
  assert isinstance(raised.value.__cause__, json.JSONDecodeError)
