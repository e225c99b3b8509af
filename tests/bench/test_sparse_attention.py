"""The sparse-attention benchmark runs end to end on CPU (tiny shape, XLA backend) and its kept-pair counts match
independent counts: the causal triangle S(S+1)/2 and a brute-force token mask. No timing is asserted."""

import json

import numpy as np
import pytest

from jaxagents.bench import sparse_attention as bench
from kernels_pallas.block_sparse.layout import from_block_mask, to_token_mask

SEQ = 256


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_benchmark_runs_on_a_tiny_shape_and_reports_every_configuration(tmp_path, capsys):
  out = tmp_path / "rows.json"
  rows = bench.main(["--seq", str(SEQ), "--density", "1.0,0.25", "--heads", "2", "--kv-heads", "1", "--head-dim",
                     "32", "--block", "64", "--frame", "4x8", "--repeats", "1", "--dtype", "float32", "--backend",
                     "xla,pallas_triton", "--interpret", "--out", str(out)])
  configs = [r["config"] for r in rows]
  assert configs == [
    "anchor: dense causal", "dense-layout kernel", "dense-layout kernel", "random layout", "random layout",
    *(f"block top-k: {stage}" for stage in ("estimate + layout", "kernel", "total")),
    *(f"vertical-slash (local + sinks): {stage}" for stage in ("estimate", "layout", "kernel", "total")),
    *(f"grid (video): {stage}" for stage in ("estimate", "layout", "permute", "kernel", "total")),
    *(f"2d boundary (video + text): {stage}" for stage in ("estimate + layout", "permute", "kernel", "total")),
  ]
  assert all(r["skipped"] is None and r["ms"] > 0 and r["seq"] == SEQ for r in rows)
  # The layout rows run once per backend, the pattern pipelines on the first.
  assert [r["backend"] for r in rows[1:5]] == ["xla", "pallas_triton"] * 2
  assert {r["backend"] for r in rows[5:]} == {"xla"}
  by_config = {r["config"]: r for r in rows}
  causal = SEQ * (SEQ + 1) // 2
  assert by_config["anchor: dense causal"]["kept_pairs"] == causal
  assert by_config["dense-layout kernel"]["kept_pairs"] == causal
  assert by_config["dense-layout kernel"]["density"] == 1.0
  # 4 x 4 blocks: the 4 diagonal ones plus round(0.25 * 10) - 4 < 0 -> none extra, so diagonal only.
  assert by_config["random layout"]["kept_pairs"] == 4 * 64 * 65 // 2
  assert by_config["anchor: dense causal"]["speedup"] is None and by_config["random layout"]["speedup"] > 0
  grid_total = by_config["grid (video): total"]
  parts = sum(by_config[f"grid (video): {stage}"]["ms"] for stage in ("estimate", "layout", "permute", "kernel"))
  assert np.isclose(grid_total["ms"], parts)
  for name in ("block top-k", "vertical-slash (local + sinks)", "2d boundary (video + text)"):
    total = by_config[f"{name}: total"]
    assert 0 < total["density"] <= 1 and total["kept_pairs"] == by_config[f"{name}: kernel"]["kept_pairs"]
  assert grid_total["stride"] == 4 * 8 and grid_total["phase"] == 8 + 1  # the planted frame stride and column
  assert 0 < grid_total["density"] < 1 and grid_total["tflops"] > 0
  table = capsys.readouterr().out
  assert "| S | config | density" in table and table.count("\n| ") == len(rows) + 1
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_random_block_mask_is_causal_with_the_diagonal_and_the_requested_density():
  mask = bench.random_causal_block_mask(16, 3, 0.3, seed=1)
  assert not (mask & ~np.tril(np.ones((16, 16), bool))).any()
  assert mask[..., np.arange(16), np.arange(16)].all()
  assert (mask.sum((-1, -2)) == round(0.3 * 16 * 17 / 2)).all()


def test_permuted_pair_count_matches_a_brute_force_token_mask():
  rng = np.random.default_rng(0)
  seq, block = 64, 16
  block_mask = rng.random((1, 2, 4, 4)) < 0.5
  layout = from_block_mask(block_mask, block, block)
  perm = np.stack([rng.permutation(seq) for _ in range(2)])[None].astype(np.int32)  # [1, 2, S]
  token = np.asarray(to_token_mask(layout, seq))  # [1, 2, S, S] over slots
  causal = perm[..., None, :] <= perm[..., :, None]  # key slot's position <= query slot's position
  np.testing.assert_array_equal(bench.permuted_causal_pairs(layout, perm, perm), (token & causal).sum((-1, -2)))
  # Unpermuted, the closed form per square block agrees too.
  identity = np.broadcast_to(np.arange(seq, dtype=np.int32), (1, 2, seq))
  np.testing.assert_array_equal(bench.permuted_causal_pairs(layout, identity, identity),
                                bench.causal_block_pairs(block_mask & np.tril(np.ones((4, 4), bool)), block))


def test_block_topk_row_keeps_about_the_requested_density():
  seq, block = 16384, 128  # 128 blocks: topk = round(0.1 * 129 / 2) - 1 = 5, the diagonal listed besides
  q, k, v = (np.random.default_rng(i).standard_normal((1, seq, 2, 32)).astype(np.float32) for i in range(3))
  rows = bench._block_topk_rows(seq, q, k[:, :, :1], v[:, :, :1], block, 0.1, 1, lambda *a, **kw: np.zeros(()),
                                "stub", None, 2, 32)
  total = rows[-1]
  assert total["config"] == "block top-k: total" and total["topk"] == 5
  # Rows list 5 or 6 blocks (fewer in the first rows); the diagonal block holds only half its pairs.
  assert 0.08 < total["density"] < 0.1


def test_local_qk_puts_the_large_logits_on_own_and_previous_window_and_the_sinks():
  seq, window, sinks = 512, 128, 16
  q, k, _ = bench.local_qk(seq, 1, 1, 128, window, sinks, np.float32)
  logits = np.asarray(q[0, :, 0] @ k[0, :, 0].T) / np.sqrt(128)
  query, key = np.arange(seq)[:, None], np.arange(seq)[None, :]
  near = (key >= sinks) & (query // window - key // window <= 1) & (key // window <= query // window)
  sink = np.broadcast_to(key < sinks, near.shape)
  far = ~near & ~sink & (key <= query)
  assert np.median(logits[near]) > 4.5 and np.median(logits[sink]) > 4.5 and abs(np.median(logits[far])) < 1.5
