"""The text-to-image benchmark runs end to end on CPU with tiny presets (no timing asserted): every row is
measured, FLOPs come from the compiled programs, and the sampling rows run the CFG batch only above 4 steps."""

import json

import pytest

from jaxagents.bench import text_to_image as bench


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_benchmark_runs_with_tiny_presets_and_reports_every_row(tmp_path):
  out = tmp_path / "rows.json"
  rows = bench.main(["--model", "lens-tiny", "--vae", "tiny_one_level", "--size", "32", "--text-len", "5",
                     "--steps", "5,2", "--repeats", "1", "--dtype", "float32", "--ceiling-size", "64",
                     "--out", str(out)])
  configs = [r["config"] for r in rows]
  assert configs[0] == "matmul 64^3 (ceiling)" and configs[1].startswith("lens-tiny DiT forward 32^2, B=2")
  assert configs[2] == "sample 5 steps (CFG 5.0), DiT only" and configs[3] == "sample 2 steps (no CFG), DiT only"
  assert configs[4].startswith("FLUX.2 VAE decode")
  assert all(r["skipped"] is None and r["ms"] > 0 and r["tflops"] > 0 for r in rows)
  forward, cfg_sampling, plain_sampling = rows[1], rows[2], rows[3]
  # Sampling FLOPs: the forward's per image row, times the CFG batch (2 or 1), times the steps.
  assert cfg_sampling["tflops"] * cfg_sampling["ms"] == pytest.approx(
    5 * forward["tflops"] * forward["ms"], rel=1e-9)
  assert plain_sampling["tflops"] * plain_sampling["ms"] == pytest.approx(
    2 * forward["tflops"] * forward["ms"] / 2, rel=1e-9)
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_dit_flop_count_matches_the_published_lens_forward_cost():
  # 1.74e13 FLOPs per 1024^2 sample with 256 text tokens (Lens shape: 48 blocks, width 1536, SwiGLU 4096).
  flops = bench.dit_forward_flops(bench.get_config("lens"), batch=1, num_img=64 * 64, num_txt=256)
  assert flops == pytest.approx(1.74e13, rel=5e-3)
