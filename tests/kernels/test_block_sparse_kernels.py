"""Block-sparse attention kernels: each Pallas backend (the Triton-style GPU kernel and the TPU
kernel; interpret mode on CPU, natively on its own platform) against `jaxagents.layers.attention` with the
expanded mask and against a float64 log-sum-exp; density-1 == dense causal; permutation invariance; determinism."""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention, check_layout, from_block_mask
from kernels_pallas.block_sparse._compat import TPUInterpretParams
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

F32 = {"atol": 1e-5, "rtol": 1e-6}
BF16 = {"atol": 1e-2, "rtol": 1e-3}

KERNELS = [pytest.param("pallas_triton", id="triton"), pytest.param("pallas_tpu", id="tpu")]

CASES = [
  Case(batch=1, seq_len=256, num_q_heads=2, num_kv_heads=2, head_dim=32, block_q=32, block_kv=32),
  Case(batch=2, seq_len=256, num_q_heads=4, num_kv_heads=2, head_dim=32, block_q=32, block_kv=32),
  Case(batch=2, seq_len=512, num_q_heads=4, num_kv_heads=2, head_dim=64, block_q=64, block_kv=64),
  Case(batch=1, seq_len=512, num_q_heads=2, num_kv_heads=2, head_dim=32, block_q=64, block_kv=32),
  Case(
    batch=1, seq_len=256, num_q_heads=4, num_kv_heads=1, head_dim=24, block_q=32, block_kv=32, per_q_head_layout=True
  ),
  Case(batch=1, seq_len=1024, num_q_heads=2, num_kv_heads=1, head_dim=32, block_q=128, block_kv=128),
]
GQA_CASE = CASES[1]


def _run(backend, q, k, v, layout, **kwargs):
  return block_sparse_attention(q, k, v, layout, backend=backend, interpret=interpret_for(backend), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_matches_dense_masked_attention_and_lse_f32(backend, case):
  q, k, v = qkv(case)
  block_mask = random_block_mask(case)
  layout = from_block_mask(block_mask, case.block_q, case.block_kv)
  check_layout(layout, case.seq_len)
  out, lse = _run(backend, q, k, v, layout, return_lse=True)
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(out, expected, **F32)
  expected_lse = lse_oracle(q, k, causal_visible(case, block_mask), case.head_dim**-0.5)
  assert np.isneginf(expected_lse).any() and np.isfinite(expected_lse).any()  # both kinds of rows are tested
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
  np.testing.assert_allclose(lse, expected_lse, **F32)


@pytest.mark.parametrize("case", [CASES[0], GQA_CASE], ids=str)
@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_matches_float32_reference_in_bfloat16(backend, case):
  q, k, v = qkv(case, dtype=jnp.bfloat16)
  block_mask = random_block_mask(case)
  out = _run(backend, q, k, v, from_block_mask(block_mask, case.block_q, case.block_kv))
  assert out.dtype == jnp.bfloat16
  upcast = [np.asarray(x, np.float32) for x in (q, k, v)]
  expected = library_attention(*upcast, causal=True, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, **BF16)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_with_density_one_layout_equals_dense_causal_attention(backend):
  case = GQA_CASE
  q, k, v = qkv(case)
  num_blocks = case.seq_len // case.block_q
  every_block = np.ones((case.batch, case.num_kv_heads, num_blocks, num_blocks), bool)
  lower_triangle = np.broadcast_to(np.tri(num_blocks, dtype=bool), every_block.shape)
  expected = library_attention(q, k, v, causal=True)
  for block_mask in (every_block, lower_triangle):
    out = _run(backend, q, k, v, from_block_mask(block_mask, case.block_q, case.block_kv))
    np.testing.assert_allclose(out, expected, **F32)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_on_permuted_tokens_with_original_positions_is_permutation_invariant(backend):
  # pi^-1(kernel(pi q, pi k, pi v, positions = pi)) == attention(q, k, v) under the mask M[pi^-1, pi^-1].
  case = GQA_CASE
  q, k, v = qkv(case)
  rng = np.random.default_rng(7)
  perm = np.stack([rng.permutation(case.seq_len) for _ in range(case.batch)])  # permuted slot -> original token
  inverse = np.argsort(perm, axis=-1)
  take = lambda x, index: np.take_along_axis(x, index[:, :, None, None], axis=1)
  block_mask = random_block_mask(case, density=0.5)  # over the permuted order
  permuted = (take(q, perm), take(k, perm), take(v, perm), from_block_mask(block_mask, case.block_q, case.block_kv))
  positions = perm.astype(np.int32)
  out_permuted = _run(backend, *permuted, q_positions=positions, kv_positions=positions)
  permuted_mask = token_mask(block_mask, case)
  rows = inverse[:, None, :, None]
  cols = inverse[:, None, None, :]
  original_mask = permuted_mask[
    np.arange(case.batch)[:, None, None, None], np.arange(case.num_q_heads)[:, None, None], rows, cols
  ]
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(original_mask))
  np.testing.assert_allclose(take(np.asarray(out_permuted), inverse), expected, **F32)
  # The positions carry the causal structure: the permuted slots' own order gives a different answer.
  out_slot_order = _run(backend, *permuted)
  assert not np.allclose(take(np.asarray(out_slot_order), inverse), expected, atol=1e-2)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_without_causal_mask_uses_layout_only_and_sm_scale(backend):
  case = CASES[0]
  q, k, v = qkv(case)
  block_mask = random_block_mask(case)
  out = _run(backend, q, k, v, from_block_mask(block_mask, case.block_q, case.block_kv), causal=False, sm_scale=0.3)
  expected = library_attention(q, k, v, causal=False, scale=0.3, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(out, expected, **F32)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_with_fewer_queries_than_keys_aligns_queries_to_the_end(backend):
  # A prefill chunk: S = 128 queries at positions 128..255 over T = 256 keys.
  case = Case(batch=1, seq_len=128, num_q_heads=4, num_kv_heads=2, head_dim=32, block_q=32, block_kv=32)
  q, k, v = qkv(case, kv_len=256)
  block_mask = random_block_mask(case, kv_len=256, density=0.6)
  out = _run(backend, q, k, v, from_block_mask(block_mask, case.block_q, case.block_kv))
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(out, expected, **F32)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_ignores_entries_past_kv_count_even_out_of_range_ones(backend):
  case = GQA_CASE
  q, k, v = qkv(case)
  layout = from_block_mask(random_block_mask(case), case.block_q, case.block_kv)
  past_count = np.arange(layout.max_blocks) >= np.asarray(layout.kv_count)[..., None]
  garbage = np.where(np.indices(past_count.shape).sum(0) % 2, 10**6, -5).astype(np.int32)
  bad_padding = BlockLayout(
    jnp.where(past_count, garbage, layout.kv_blocks), layout.kv_count, layout.block_q, layout.block_kv
  )
  np.testing.assert_array_equal(_run(backend, q, k, v, bad_padding), _run(backend, q, k, v, layout))


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_is_bitwise_deterministic(backend):
  case = GQA_CASE
  q, k, v = qkv(case, dtype=jnp.bfloat16)
  layout = from_block_mask(random_block_mask(case), case.block_q, case.block_kv)
  first = np.asarray(_run(backend, q, k, v, layout), np.float32)
  second = np.asarray(_run(backend, q, k, v, layout), np.float32)
  np.testing.assert_array_equal(first, second)


@pytest.mark.skipif(TPUInterpretParams is None, reason="this jax has no pltpu.InterpretParams")
def test_tpu_kernel_under_tpu_simulating_interpreter_matches_dense_attention():
  # The TPU interpreter simulates SMEM/VMEM and DMAs and NaN-fills uninitialised buffers
  # (`pltpu.InterpretParams`).
  case = Case(batch=1, seq_len=256, num_q_heads=2, num_kv_heads=1, head_dim=32, block_q=64, block_kv=64)
  q, k, v = qkv(case)
  block_mask = random_block_mask(case, density=0.6)
  out, lse = block_sparse_attention(
    q,
    k,
    v,
    from_block_mask(block_mask, case.block_q, case.block_kv),
    backend="pallas_tpu",
    interpret=TPUInterpretParams(),
    return_lse=True,
  )
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(token_mask(block_mask, case)))
  np.testing.assert_allclose(out, expected, **F32)
  np.testing.assert_allclose(lse, lse_oracle(q, k, causal_visible(case, block_mask), case.head_dim**-0.5), **F32)
