"""The Pallas kernels lower for their hardware from this CPU machine (cross-platform lowering): the Triton
lowering for CUDA and the Mosaic lowering for TPU accept the kernels at hardware-like shapes and dtypes. This
checks the lowering rules only; compiling to PTX / a TPU binary and running are not covered (no device here)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import from_block_mask
from kernels_pallas.block_sparse.gpu_triton import block_sparse_attention_triton
from kernels_pallas.block_sparse.tpu import block_sparse_attention_tpu


@pytest.mark.parametrize(
  "kernel, platform, custom_call",
  [(block_sparse_attention_triton, "cuda", "triton"), (block_sparse_attention_tpu, "tpu", "tpu_custom_call")],
  ids=["triton-cuda", "mosaic-tpu"],
)
@pytest.mark.parametrize(
  "dtype, head_dim, per_q_head_layout, causal",
  [(jnp.bfloat16, 128, False, True), (jnp.float32, 80, True, False)],
  ids=["bf16-d128-gqa-causal", "f32-d80-perqhead"],
)
def test_kernel_lowers_for_its_hardware_platform(
  kernel, platform, custom_call, dtype, head_dim, per_q_head_layout, causal
):
  batch, seq_len, num_q_heads, num_kv_heads, block = 2, 512, 4, 2, 128
  q = jnp.zeros((batch, seq_len, num_q_heads, head_dim), dtype)
  k = jnp.zeros((batch, seq_len, num_kv_heads, head_dim), dtype)
  layout_heads = num_q_heads if per_q_head_layout else num_kv_heads
  block_mask = np.random.default_rng(0).random((batch, layout_heads, seq_len // block, seq_len // block)) < 0.5
  block_mask[..., -1] = False  # at most 3 blocks per row: MAXN = 3 is not a power of two
  layout = from_block_mask(block_mask, block, block, max_blocks=3)
  positions = jnp.zeros((batch, seq_len), jnp.int32)
  for return_lse in (False, True):
    fn = jax.jit(functools.partial(kernel, causal=causal, sm_scale=0.1, return_lse=return_lse))
    lowered = fn.trace(q, k, k, layout, positions, positions).lower(lowering_platforms=(platform,))
    assert custom_call in lowered.as_text()
