"""The text-to-image training benchmark runs end to end on CPU with the tiny Lens preset (no timing asserted): the
square row and the bucket stream are measured, their FLOPs are the step's model FLOPs, and MFU uses the given peak."""

import json

import pytest

from jaxagents.bench import text_to_image as inference_bench
from jaxagents.bench import text_to_image_train as bench
from jaxagents.data.buckets import lens_buckets


@pytest.mark.slow  # in CI after the suite (.ci/run): a few compilations of a training step
def test_benchmark_runs_the_square_step_and_a_bucket_stream_with_tiny_presets(tmp_path):
  out = tmp_path / "rows.json"
  rows = bench.main(["--model", "lens-tiny", "--size", "256", "--batch", "2", "--text-len", "5", "--base", "256",
                     "--buckets", "1:1,16:9", "--stream-steps", "4", "--repeats", "1", "--dtype", "float32",
                     "--remat", "full", "--ceiling-size", "64", "--peak-tflops", "1.0", "--out", str(out)])
  assert [r["config"].split(" ")[0] for r in rows] == ["matmul", "lens-tiny", "lens-tiny"]
  assert all(r["skipped"] is None and r["ms"] > 0 and r["tflops"] > 0 for r in rows)
  square, stream = rows[1], rows[2]
  config = bench.get_config("lens-tiny")
  expected = 3 * inference_bench.dit_forward_flops(config, 2, 16 * 16, 5)
  assert square["tflops"] * square["ms"] * 1e9 == pytest.approx(expected, rel=1e-9)
  assert square["mfu"] == pytest.approx(square["tflops"] / 1.0)
  assert "2 buckets" in stream["config"] and "1:1@256" in stream["note"] and "16:9@256" in stream["note"]
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_step_flops_are_three_forwards_and_lens_at_1024_matches_its_published_forward():
  config = bench.get_config("lens")
  assert bench.step_flops(config, 4, 1024, 1024, 256) == pytest.approx(3 * 4 * 1.74e13, rel=5e-3)
  # A bucket costs its own token count.
  tall = lens_buckets(1024)[0]
  assert bench.step_flops(config, 2, tall.height, tall.width, 256) == pytest.approx(
    3 * inference_bench.dit_forward_flops(config, 2, tall.tokens(16), 256), rel=1e-12)
