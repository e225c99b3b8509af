"""block_sparse_attention(): the 'xla' reference backend against `jaxagents.layers.attention` and a float64
log-sum-exp, backend dispatch and fallback, jit-ability, and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import BACKENDS, block_sparse_attention, from_block_mask
from tests.kernels.block_sparse_cases import (
  Case,
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
  for backend in BACKENDS:
    out, lse = block_sparse_attention(q, k, v, empty, backend=backend, interpret=True, return_lse=True)
    np.testing.assert_array_equal(out, 0.0)
    assert np.isneginf(lse).all()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice")
def test_auto_backend_on_cpu_is_the_xla_reference():
  q, k, v, _, layout = _inputs()
  auto = block_sparse_attention(q, k, v, layout)
  np.testing.assert_array_equal(auto, block_sparse_attention(q, k, v, layout, backend="xla"))


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
