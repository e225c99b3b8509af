"""block_sparse_attention(): the 'xla' reference backend against `jaxagents.layers.attention` and a float64
log-sum-exp, backend dispatch and fallback, jit-ability, and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import BACKENDS, BlockLayout, block_sparse_attention, from_block_mask
from tests.kernels.block_sparse_cases import (
  Case,
  attention_oracle,
  causal_visible,
  interpret_for,
  library_attention,
  lse_oracle,
  qkv,
  random_block_mask,
  token_mask,
)

CASE = Case(batch=2, seq_len=64, num_q_heads=4, num_kv_heads=2, head_dim=16, block_q=16, block_kv=16)


def _inputs(case=CASE, **kwargs):
  q, k, v = qkv(case, **kwargs)
  block_mask = random_block_mask(case)
  return q, k, v, block_mask, from_block_mask(block_mask, case.block_q, case.block_kv)


@pytest.mark.parametrize("per_q_head_layout", [False, True], ids=["per-kv-head", "per-q-head"])
def test_xla_reference_matches_library_attention_and_float64_lse(per_q_head_layout):
  case = Case(**{**CASE.__dict__, "per_q_head_layout": per_q_head_layout})
  q, k, v, block_mask, layout = _inputs(case)
  out, lse = block_sparse_attention(q, k, v, layout, backend="xla", return_lse=True)
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-6)
  expected_lse = lse_oracle(q, k, causal_visible(case, block_mask), case.head_dim**-0.5)
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
  np.testing.assert_allclose(lse, expected_lse, atol=1e-5, rtol=1e-6)


def test_rows_without_visible_keys_give_zero_output_and_minus_infinity_lse_without_nan():
  q, k, v, _, _ = _inputs()
  empty = from_block_mask(np.zeros((2, 2, 4, 4), bool), 16, 16)
  # The Hopper kernel takes bf16/f16 and 64-row tiles only: its empty rows are checked in test_block_sparse_mosaic_gpu.
  for backend in sorted(set(BACKENDS) - {"pallas_mosaic_gpu"}):
    out, lse = block_sparse_attention(q, k, v, empty, backend=backend, interpret=True, return_lse=True)
    np.testing.assert_array_equal(out, 0.0)
    assert np.isneginf(lse).all()


def test_xla_reference_keeps_float32_accuracy_at_large_logits():
  # Integer q, k and sm_scale = 1 make every score exact in float32 (about 2704 +- 15, so lse ~ 2.7e3); the only
  # error left is the normalisation's. Subtracting lse (rounded to ulp(2.7e3) = 2.4e-4) would scale every
  # probability of a row by up to e^1.2e-4; subtracting the row max keeps it to a few float32 ulps.
  case = Case(batch=1, seq_len=64, num_q_heads=4, num_kv_heads=2, head_dim=16, block_q=16, block_kv=16)
  rng = np.random.default_rng(3)
  q = rng.integers(-1, 2, (case.batch, case.seq_len, case.num_q_heads, case.head_dim)).astype(np.float32)
  k = rng.integers(-1, 2, (case.batch, case.seq_len, case.num_kv_heads, case.head_dim)).astype(np.float32)
  q[..., 0] = k[..., 0] = 52.0
  v = rng.standard_normal(k.shape).astype(np.float32)
  block_mask = random_block_mask(case, density=0.7)
  visible = causal_visible(case, block_mask)
  out, lse = block_sparse_attention(
    q, k, v, from_block_mask(block_mask, case.block_q, case.block_kv), backend="xla", sm_scale=1.0, return_lse=True
  )
  expected_lse = lse_oracle(q, k, visible, 1.0)
  assert np.nanmax(np.where(np.isfinite(expected_lse), expected_lse, np.nan)) > 2.7e3
  expected = attention_oracle(q, k, v, visible, 1.0)
  row_norm = np.linalg.norm(expected, axis=-1, keepdims=True)
  row_error = np.linalg.norm(np.asarray(out, np.float64) - expected, axis=-1, keepdims=True)
  assert np.max(np.where(row_norm > 0, row_error / np.maximum(row_norm, 1e-30), 0.0)) < 2e-6
  np.testing.assert_allclose(lse, expected_lse, rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice")
def test_auto_backend_on_cpu_is_the_xla_reference_eager_jitted_and_with_interpret():
  q, k, v, _, layout = _inputs()
  expected = block_sparse_attention(q, k, v, layout, backend="xla")
  np.testing.assert_array_equal(block_sparse_attention(q, k, v, layout), expected)
  np.testing.assert_array_equal(block_sparse_attention(q, k, v, layout, interpret=True), expected)
  np.testing.assert_array_equal(jax.jit(block_sparse_attention)(q, k, v, layout), expected)


@pytest.mark.parametrize("backend", ["pallas_triton", "pallas_tpu"])
def test_pallas_backend_off_its_platform_without_interpret_raises_not_implemented(backend):
  if not interpret_for(backend):
    pytest.skip(f"JAX runs on {backend}'s platform")
  q, k, v, _, layout = _inputs()
  with pytest.raises(NotImplementedError, match=f"{backend}.*interpret"):
    block_sparse_attention(q, k, v, layout, backend=backend)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the Pallas backends run natively on GPU/TPU")
def test_backend_sequence_falls_back_to_the_first_one_that_runs():
  q, k, v, _, layout = _inputs()
  out = block_sparse_attention(q, k, v, layout, backend=("pallas_triton", "pallas_tpu", "xla"))
  np.testing.assert_array_equal(out, block_sparse_attention(q, k, v, layout, backend="xla"))


def test_triton_backend_refuses_block_sizes_its_lowering_cannot_take():
  case = Case(batch=1, seq_len=64, num_q_heads=2, num_kv_heads=2, head_dim=16, block_q=8, block_kv=16)
  q, k, v, _, layout = _inputs(case)
  with pytest.raises(NotImplementedError, match="power of two >= 16"):
    block_sparse_attention(q, k, v, layout, backend="pallas_triton", interpret=True)


def test_api_is_jittable_with_the_layout_as_a_traced_pytree():
  q, k, v, _, layout = _inputs()
  jitted = jax.jit(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout, backend="xla"))
  np.testing.assert_allclose(
    jitted(q, k, v, layout), block_sparse_attention(q, k, v, layout, backend="xla"), atol=1e-6, rtol=1e-6
  )


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda q, k, v, lay: (q[0], k, v, lay, {}), "`q` must be rank 4"),
    (lambda q, k, v, lay: (q, k, v[..., :8], lay, {}), "`v` must have the shape of k"),
    (lambda q, k, v, lay: (q[..., :3, :], k, v, lay, {}), "multiple of kv heads"),
    (lambda q, k, v, lay: (q, k[..., :8], v[..., :8], lay, {}), "`k` must be"),
    (lambda q, k, v, lay: (q.astype(np.float16), k, v, lay, {}), "share one dtype"),
    (lambda q, k, v, lay: (q.astype(np.int32), k.astype(np.int32), v.astype(np.int32), lay, {}), "share one dtype"),
    (lambda q, k, v, lay: (q, k, v, "dense", {}), "BlockLayout"),
    (lambda q, k, v, lay: (q, k, v, lay, {"q_positions": np.arange(32)}), "q_positions"),
    (lambda q, k, v, lay: (q, k, v, lay, {"kv_positions": np.zeros(64, np.float32)}), "kv_positions"),
    (lambda q, k, v, lay: (q, k, v, lay, {"block_q": 32}), "block_q"),
    (lambda q, k, v, lay: (q, k, v, lay, {"backend": "cudnn"}), "backend"),
    (lambda q, k, v, lay: (q, k, v, lay, {"backend": ()}), "backend"),
  ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(change, message):
  q, k, v, _, layout = _inputs()
  q, k, v, layout, kwargs = change(q, k, v, layout)
  with pytest.raises(ValueError, match=message):
    block_sparse_attention(q, k, v, layout, **kwargs)


def _with_row(layout, row, ids, count):
  """`layout` with row (b, h, i) = row replaced by `ids` (padded by repeating the last one) and `count`."""
  blocks, counts = np.array(layout.kv_blocks), np.array(layout.kv_count)
  blocks[row] = ids + [ids[-1]] * (blocks.shape[-1] - len(ids))
  counts[row] = count
  return BlockLayout(jnp.asarray(blocks), jnp.asarray(counts), layout.block_q, layout.block_kv)


@pytest.mark.parametrize(
  "ids, count, message",
  [
    ([0, 1, 4], 3, r"`layout.kv_blocks` ids must be in \[0, 4\).*got 4 at \(b, h, i\)=\(1, 0, 2\)"),
    ([-1, 2], 2, r"`layout.kv_blocks` ids must be in \[0, 4\).*got -1 at \(b, h, i\)=\(1, 0, 2\)"),
    ([1, 2, 1], 3, r"`layout.kv_blocks` row \(b, h, i\)=\(1, 0, 2\) lists block 1 twice"),
    ([0, 1], 5, r"`layout.kv_count` must be in \[0, MAXN=4\], got 5 at \(b, h, i\)=\(1, 0, 2\)"),
    ([0, 1], -1, r"`layout.kv_count` must be in \[0, MAXN=4\], got -1 at \(b, h, i\)=\(1, 0, 2\)"),
  ],
  ids=["id-too-large", "id-negative", "duplicate-id", "count-too-large", "count-negative"],
)
def test_concrete_layout_with_bad_ids_or_counts_raises_naming_the_row_and_value(ids, count, message):
  q, k, v, _, layout = _inputs()
  bad = _with_row(layout, (1, 0, 2), ids, count)
  for backend in ("xla", ("pallas_triton", "pallas_tpu")):  # checked before any backend runs
    with pytest.raises(ValueError, match=message):
      block_sparse_attention(q, k, v, bad, backend=backend, interpret=True)


def test_unsorted_but_valid_layout_rows_are_accepted_and_attend_the_listed_blocks():
  q, k, v, block_mask, layout = _inputs()
  block_mask[1, 0, 2] = [True, False, True, True]
  reordered = _with_row(from_block_mask(block_mask, 16, 16), (1, 0, 2), [3, 0, 2], 3)
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(token_mask(block_mask, CASE)))
  np.testing.assert_allclose(block_sparse_attention(q, k, v, reordered, backend="xla"), expected, atol=1e-5, rtol=1e-6)


def test_traced_layouts_skip_the_value_check():
  q, k, v, _, layout = _inputs()
  bad = _with_row(layout, (1, 0, 2), [0, 7], 2)
  jitted = jax.jit(lambda layout: block_sparse_attention(q, k, v, layout, backend="xla"))
  assert np.isfinite(np.asarray(jitted(bad))).all()


def test_hopper_backend_through_the_api_in_the_mosaic_gpu_interpreter_matches_the_reference():
  from kernels_pallas.block_sparse._compat import MosaicGPUInterpretParams

  if MosaicGPUInterpretParams is None:
    pytest.skip("this jax has no Mosaic GPU interpreter")
  rng = np.random.default_rng(7)
  q = jnp.asarray(rng.standard_normal((1, 256, 4, 64)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.standard_normal((1, 256, 2, 64)), jnp.bfloat16) for _ in range(2))
  block_mask = rng.random((1, 2, 2, 2)) < 0.7
  block_mask[..., np.arange(2), np.arange(2)] = True
  layout = from_block_mask(block_mask, 128, 128)
  out = block_sparse_attention(q, k, v, layout, backend="pallas_mosaic_gpu", interpret=True)
  expected = block_sparse_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), layout,
                                    backend="xla")
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2)
