"""The Qwen-VL sparse-attention calibration CLI (`python -m jaxagents.models.qwen_vl.sparse_search`): on a tiny
random Qwen-VL checkpoint it writes a loadable config with one entry per layer and head, prints one table row per
layer, and gives the same file twice."""

from jaxagents.models.qwen_vl import QwenVLConfig, save_params
from jaxagents.models.qwen_vl.sparse_search import main, random_params
from jaxagents.sparse.config import SparseAttentionConfig
from tests.models.qwen_vl.tiny import TINY


def test_cli_writes_a_deterministic_loadable_config_for_a_tiny_qwen_vl_checkpoint(tmp_path, capsys):
  config = QwenVLConfig.from_hf(TINY["qwen2_vl"])
  checkpoint = tmp_path / "tiny_qwen2_vl"
  save_params(random_params(config, seed=0), config, str(checkpoint))
  args = ["--checkpoint", str(checkpoint), "--frames", "4", "--height", "112", "--width", "112", "--samples", "2",
          "--block", "32", "--budgets", "0.5", "--patterns", "a_shape,grid", "--no-boundary"]
  result = main([*args, "--out", str(tmp_path / "a.json")])
  table = capsys.readouterr().out
  loaded = SparseAttentionConfig.load(tmp_path / "a.json")
  assert loaded == result
  assert (loaded.num_layers, loaded.num_heads) == (config.text.num_layers, config.text.num_heads)
  assert (loaded.block_q, loaded.block_kv, loaded.model, len(loaded.calib_hash)) == (32, 32, "tiny_qwen2_vl", 64)
  scores = [entry["score"] for layer in range(loaded.num_layers) for entry in loaded.layer_heads(layer)]
  assert loaded.min_recall == min(scores)
  assert {e["pattern"] for layer in range(2) for e in loaded.layer_heads(layer)} <= {"dense", "a_shape", "grid"}
  assert [line.split()[0] for line in table.splitlines()[2:4]] == ["0", "1"]  # one table row per layer
  main([*args, "--out", str(tmp_path / "b.json")])
  assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
