"""The Qwen-VL throughput benchmark: its roofline arithmetic reproduces byte counts taken on the meta device, and
it runs end to end (tiny model, CPU) producing a table. No timing is asserted."""

import json

import pytest

from jaxagents.bench import qwen_vl_generate as bench
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.presets import PRESETS
from tests.models.qwen_vl import tiny


@pytest.mark.parametrize("name,gigabytes", [("qwen2_5_vl_7b", 14.14), ("qwen3_vl_8b", 15.14)])
def test_decode_bytes_per_step_match_meta_device_parameter_counts(name, gigabytes):
  config = QwenVLConfig.from_hf(PRESETS[name])
  assert bench.decode_bytes_per_step(config, batch=1, context=0) / 1e9 == pytest.approx(gigabytes, abs=0.005)
  # The KV cache adds 2 (k, v) x layers x kv heads x head_dim x 2 bytes per token of context.
  t = config.text
  extra = bench.decode_bytes_per_step(config, 2, 100) - bench.decode_bytes_per_step(config, 1, 0)
  assert extra == 2 * t.num_layers * t.num_kv_heads * t.head_dim * 2 * 200


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_benchmark_runs_on_a_tiny_model_and_prints_a_table(tmp_path, capsys):
  config_path = tmp_path / "config.json"
  config_path.write_text(json.dumps(QwenVLConfig.from_hf(tiny.QWEN3_VL).to_hf()))
  rows = bench.main(["--config-json", str(config_path), "--batch", "2", "--prompt-len", "16", "--new-tokens", "4",
                     "--repeats", "1", "--dtype", "float32", "--out", str(tmp_path / "rows.json")])
  assert [r["batch"] for r in rows] == [2]
  assert all(r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)
  assert all(r["decode_ceiling_tokens_per_s"] is None for r in rows)  # a CPU has no entry in DEVICE_PEAKS
  table = capsys.readouterr().out
  assert "| batch | prefill tok/s" in table and table.count("\n| ") >= 2
  assert json.loads((tmp_path / "rows.json").read_text())["rows"] == json.loads(json.dumps(rows))
