"""The vision-cost benchmark runs end to end at a tiny size (CPU) and prints both ratios: tower one call vs
chunks, and our Qwen2.5-VL prefill vs transformers'. No timing is asserted."""

import json

import pytest

from jaxagents.bench import qwen_vl_vision as bench


def test_benchmark_prints_the_tower_and_the_prefill_ratios(tmp_path, capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  rows = bench.main(["--images", "8", "--chunk", "4", "--layouts", "one-prompt", "--prefill-images", "2",
                     "--image-size", "56", "--hidden", "64", "--layers", "1", "--vision-depth", "1",
                     "--vision-width", "32", "--repeats", "1", "--out", str(tmp_path / "rows.json")])
  assert [r["case"] for r in rows] == ["tower, all images in 1 prompt", "Qwen2.5-VL prefill, 2 x 56px"]
  assert all(r["a_s"] > 0 and r["b_s"] > 0 and 0 < r["ratio"] < float("inf") for r in rows)
  table = capsys.readouterr().out
  assert "| case | A | A s | B | B s | A / B |" in table and "n/a" not in table
  assert "| tower, all images in 1 prompt | 1 call x 8 images |" in table and "| ours |" in table
  assert json.loads((tmp_path / "rows.json").read_text())["rows"] == json.loads(json.dumps(rows))


def test_prefill_config_is_a_valid_qwen2_5_vl_with_windows():
  from jaxagents.models.qwen_vl.config import QwenVLConfig

  config = QwenVLConfig.from_hf(bench.prefill_hf_config(256, 2, 4, 128))
  assert config.family == "qwen2_5_vl" and config.vision.window_size == 112
  assert config.vision.fullatt_block_indexes == (3,) and config.text.hidden_size == 256
