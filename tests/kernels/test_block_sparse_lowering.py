"""The Pallas kernels lower for their hardware from this CPU machine (cross-platform lowering): the Triton
lowering for CUDA and the Mosaic lowering for TPU accept the kernels at hardware-like shapes and dtypes, and so
do the public entry points (`block_sparse_attention`, `attention(backend='sparse')`) at a production shape, the
backend being chosen by the lowering platform. This checks the lowering rules only; compiling to PTX / a TPU
binary and running are not covered here (no device): `python -m jaxagents.bench.sparse_kernel_check` does that on a
GPU or TPU against the float32 reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention import attention
from jaxagents.sparse.config import SparseAttentionConfig
from kernels_pallas.block_sparse import BlockLayout, api, block_sparse_attention, from_block_mask
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
  positions = jnp.zeros((batch, 1, seq_len), jnp.int32)
  for return_lse in (False, True):
    fn = jax.jit(functools.partial(kernel, causal=causal, sm_scale=0.1, return_lse=return_lse))
    lowered = fn.trace(q, k, k, layout, positions, positions).lower(lowering_platforms=(platform,))
    assert custom_call in lowered.as_text()


@pytest.mark.parametrize("block_q, block_kv", [(64, 64), (128, 64), (16, 32)])
def test_tpu_kernel_lowers_with_key_blocks_narrower_than_128(block_q, block_kv):
  # Mosaic wants a block's last two dims divisible by (8, 128) or equal to the array's; the key positions'
  # block is (1, block_kv), so it must not sit in a [B, 1, T] array.
  batch, seq_len, head_dim = 1, 512, 128
  q = jnp.zeros((batch, seq_len, 4, head_dim), jnp.bfloat16)
  k = jnp.zeros((batch, seq_len, 2, head_dim), jnp.bfloat16)
  layout = from_block_mask(np.ones((batch, 2, seq_len // block_q, seq_len // block_kv), bool), block_q, block_kv)
  positions = jnp.zeros((batch, 1, seq_len), jnp.int32)
  fn = jax.jit(functools.partial(block_sparse_attention_tpu, causal=True, sm_scale=0.1, return_lse=True))
  lowered = fn.trace(q, k, k, layout, positions, positions).lower(lowering_platforms=("tpu",))
  assert "tpu_custom_call" in lowered.as_text()


# Qwen2.5-VL-7B's language model attention (28 query heads, 4 kv heads, head_dim 128) on an 8K-token prefill.
SEQ_LEN, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 8192, 28, 4, 128
CUSTOM_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _production_inputs(block):
  """Abstract bf16 q, k, v and a per-kv-head layout listing a quarter of the key blocks (nothing allocated)."""
  q = jax.ShapeDtypeStruct((1, SEQ_LEN, NUM_Q_HEADS, HEAD_DIM), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, SEQ_LEN, NUM_KV_HEADS, HEAD_DIM), jnp.bfloat16)
  num_blocks = SEQ_LEN // block
  layout = BlockLayout(
    jax.ShapeDtypeStruct((1, NUM_KV_HEADS, num_blocks, num_blocks // 4), jnp.int32),
    jax.ShapeDtypeStruct((1, NUM_KV_HEADS, num_blocks), jnp.int32),
    block,
    block,
  )
  return q, kv, kv, layout


@pytest.mark.parametrize("block", [128, 64], ids=["b128x128", "b64x64"])
@pytest.mark.parametrize(
  "platform, backend",
  [("cuda", "auto"), ("cuda", "pallas_triton"), ("tpu", "auto"), ("tpu", "pallas_tpu")],
)
def test_public_api_lowers_the_platforms_kernel_at_production_shapes(platform, backend, block):
  # block 64 on TPU: the key positions' block must pass Mosaic's (8, 128) tiling rule with block_kv = 64.
  fn = jax.jit(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout, backend=backend, return_lse=True))
  text = fn.trace(*_production_inputs(block)).lower(lowering_platforms=(platform,)).as_text()
  assert CUSTOM_CALLS[platform] in text
  other = CUSTOM_CALLS["tpu" if platform == "cuda" else "cuda"]
  assert other not in text  # only the lowering platform's branch is lowered


def test_auto_backend_lowered_for_cpu_is_the_xla_reference_without_pallas_calls():
  text = jax.jit(block_sparse_attention).trace(*_production_inputs(128)).lower(lowering_platforms=("cpu",)).as_text()
  assert all(call not in text for call in CUSTOM_CALLS.values())
  assert "dot_general" in text


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_sparse_attention_entry_point_lowers_the_platforms_kernel_at_production_shapes(platform):
  heads = [{"pattern": "vertical_slash", "params": {"v_size": 1000, "s_size": 2000}}] * (NUM_Q_HEADS // 2) + [
    {"pattern": "a_shape", "params": {"n_init": 128, "n_local": 1024}}
  ] * (NUM_Q_HEADS // 2)
  config = SparseAttentionConfig.from_layers([heads], block_q=64, block_kv=64)
  q, k, v, _ = _production_inputs(64)
  fn = jax.jit(lambda q, k, v: attention(q, k, v, causal=True, backend="sparse", sparse_config=config))
  text = fn.trace(q, k, v).lower(lowering_platforms=(platform,)).as_text()
  assert CUSTOM_CALLS[platform] in text
  assert CUSTOM_CALLS["tpu" if platform == "cuda" else "cuda"] not in text


def test_public_api_lowers_the_hopper_kernel_when_asked_and_falls_back_to_triton_where_it_cannot():
  q, k, v, layout = _production_inputs(128)
  hopper = ("pallas_mosaic_gpu", "pallas_triton")
  fn = jax.jit(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout, backend=hopper, return_lse=True))
  text = fn.trace(q, k, v, layout).lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text and CUSTOM_CALLS["cuda"] not in text
  # float32 inputs: wgmma takes bf16/f16 only, so the sequence falls back to the Triton kernel.
  f32 = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)]
  text = fn.trace(*f32, layout).lower(lowering_platforms=("cuda",)).as_text()
  assert CUSTOM_CALLS["cuda"] in text and "mosaic_gpu" not in text
  with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
    jax.jit(lambda *a: block_sparse_attention(*a, backend="pallas_mosaic_gpu")).trace(*f32, layout).lower(
      lowering_platforms=("cuda",)
    )


def test_auto_puts_the_hopper_kernel_first_on_a_hopper_gpu_and_keeps_triton_as_its_fallback(monkeypatch):
  q, k, v, layout = _production_inputs(128)

  def lower(*args):  # a new function each time: jit's trace cache would otherwise keep the first choice
    fn = jax.jit(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout, return_lse=True))
    return fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()

  assert not api.default_device_is_hopper()  # this CPU process: 'auto' lowers the Triton kernel for cuda
  assert "mosaic_gpu" not in lower(q, k, v, layout)
  monkeypatch.setattr(api, "default_device_is_hopper", lambda: True)
  text = lower(q, k, v, layout)
  assert "mosaic_gpu" in text and CUSTOM_CALLS["cuda"] not in text
  f32 = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)]  # refused by wgmma: Triton takes it
  text = lower(*f32, layout)
  assert CUSTOM_CALLS["cuda"] in text and "mosaic_gpu" not in text
