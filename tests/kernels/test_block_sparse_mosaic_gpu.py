"""The Hopper block-sparse kernel (`gpu_mosaic.py`, Pallas Mosaic GPU) on this CPU machine.

* Results: jax's Mosaic GPU interpreter runs the kernel's warpgroups, TMA ring and barriers on the CPU (with
  wgmma and layout hints replaced by their plain equivalents, see the module docstring) under its data-race
  detector; outputs are compared with `block_sparse_attention_reference` computed from the same bf16/f16 inputs.
* Lowering: the kernel lowers for CUDA (the `mosaic_gpu` custom call) at a production shape from abstract inputs.
Not covered: PTX compilation and running on an H100/H200.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse.gpu_mosaic import (
  SMEM_BUDGET,
  InterpretGPUParams,
  MosaicConfig,
  block_sparse_attention_mosaic_gpu,
  check_supported,
  choose_config,
  smem_bytes,
)
from kernels_pallas.block_sparse.layout import BlockLayout, from_block_mask, with_block_kinds
from kernels_pallas.block_sparse.reference import block_sparse_attention_reference

needs_interpreter = pytest.mark.skipif(InterpretGPUParams is None, reason="this jax has no Mosaic GPU interpreter")


@pytest.fixture(autouse=True)
def _fresh_interpreter_state():
  yield
  if InterpretGPUParams is not None:  # an exception inside the interpreter leaves its global state behind
    from jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call import reset_gpu_interpret_mode_state

    reset_gpu_interpret_mode_state()


def _interpret(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, config=None):
  """(out, lse) of the kernel in the interpreter; fails if the race detector saw a data race."""
  from jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call import get_races

  out, lse = block_sparse_attention_mosaic_gpu(
    q,
    k,
    v,
    layout,
    q_positions,
    kv_positions,
    causal=causal,
    sm_scale=sm_scale,
    interpret=InterpretGPUParams(detect_races=True),
    return_lse=True,
    config=config,
  )
  out, lse = jax.block_until_ready((out, lse))
  assert not get_races().races_found, "the interpreter's race detector reported a data race"
  return out, lse


def _check_against_reference(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, config=None):
  out, lse = _interpret(q, k, v, layout, q_positions, kv_positions, causal=causal, sm_scale=sm_scale, config=config)
  ref_out, ref_lse = block_sparse_attention_reference(
    q, k, v, layout, causal=causal, q_positions=q_positions, kv_positions=kv_positions, sm_scale=sm_scale
  )
  assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == ref_lse.shape
  out, lse = np.asarray(out, np.float32), np.asarray(lse)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, np.asarray(ref_out, np.float32), atol=2e-2, rtol=0)
  empty = ~np.isfinite(np.asarray(ref_lse))
  assert empty.any() and (~empty).any()  # every case mixes rows with and without visible keys
  np.testing.assert_array_equal(lse[empty], -np.inf)
  np.testing.assert_allclose(lse[~empty], np.asarray(ref_lse)[~empty], atol=2e-3, rtol=0)
  np.testing.assert_array_equal(np.moveaxis(out, 1, 2)[empty], 0.0)  # [B, Hq, S, D] rows with nothing visible
  return out


def _inputs(batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(batch, q_len, num_q_heads, head_dim)] + [(batch, kv_len, num_kv_heads, head_dim)] * 2
  return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes)


def _capped_mask(rng, shape, max_blocks, density=0.6):
  """bool [B, H, NQ, NK], at most `max_blocks` blocks a row, row 1 of every (b, h) empty."""
  mask = rng.random(shape) < density
  for index in np.ndindex(*shape[:3]):
    listed = np.flatnonzero(mask[index])
    mask[index][listed[max_blocks:]] = False
  mask[:, :, 1] = False
  return mask


@pytest.mark.slow  # in CI after the suite (.ci/run): ~30 s in the Mosaic GPU interpreter on 2 cores
@needs_interpreter
def test_gqa_per_kv_head_layout_with_permuted_per_kv_head_positions():
  # Block 128 x 128 (both compute warpgroups on one layout row, one K/V stream), MAXN = 3 (odd counts),
  # positions a random permutation per kv head (partial blocks anywhere), empty rows.
  batch, seq_len, num_q_heads, num_kv_heads, block = 1, 512, 4, 2, 128
  rng = np.random.default_rng(1)
  q, k, v = _inputs(batch, seq_len, seq_len, num_q_heads, num_kv_heads, 64, jnp.bfloat16)
  perms = np.stack([rng.permutation(seq_len) for _ in range(num_kv_heads)])[None].astype(np.int32)
  positions = jnp.asarray(perms)  # [B, Hkv, S], shared by queries and keys of a kv head
  mask = _capped_mask(rng, (batch, num_kv_heads, seq_len // block, seq_len // block), max_blocks=3)
  layout = with_block_kinds(from_block_mask(mask, block, block, max_blocks=3), positions, positions, num_q_heads)
  assert np.asarray(layout.partial)[np.asarray(layout.kv_count)[..., None] > np.arange(3)].any()
  _check_against_reference(q, k, v, layout, positions, positions, causal=True, sm_scale=0.125)


@pytest.mark.slow  # in CI after the suite (.ci/run): ~30 s in the Mosaic GPU interpreter on 2 cores
@needs_interpreter
def test_per_query_head_layout_one_row_per_warpgroup_honours_a_block_marked_full():
  # layout.block_q = 64: each of the two compute warpgroups walks its own row (own K/V ring). A diagonal block
  # marked full on purpose must be attended whole (no causal mask), as the reference does with that marking.
  batch, seq_len, num_q_heads, num_kv_heads, block = 1, 256, 4, 2, 64
  rng = np.random.default_rng(2)
  q, k, v = _inputs(batch, seq_len, seq_len, num_q_heads, num_kv_heads, 64, jnp.bfloat16, seed=3)
  positions = jnp.arange(seq_len, dtype=jnp.int32)[None, None]
  num_blocks = seq_len // block
  mask = np.tril(np.ones((num_blocks, num_blocks), bool)) & (
    rng.random((batch, num_q_heads, num_blocks, num_blocks)) < 0.7
  )
  mask[..., np.arange(num_blocks), np.arange(num_blocks)] = True
  mask[:, 0, 1] = False  # an empty row next to a full one: the two warpgroups of a program have unequal counts
  layout = with_block_kinds(from_block_mask(mask, block, block), positions, positions, num_q_heads)
  # Query head 2, row 2: its diagonal block (id 2, listed last) is partial; mark it full.
  count = int(layout.kv_count[0, 2, 2])
  assert int(layout.kv_blocks[0, 2, 2, count - 1]) == 2 and bool(layout.partial[0, 2, 2, count - 1])
  marked = dataclasses.replace(layout, partial=layout.partial.at[0, 2, 2, count - 1].set(False))
  out = _check_against_reference(q, k, v, marked, positions, positions, causal=True, sm_scale=0.125)
  masked_out, _ = block_sparse_attention_reference(
    q, k, v, layout, causal=True, q_positions=positions, kv_positions=positions, sm_scale=0.125
  )
  # The marked block changes exactly the rows of head 2, block 2 (their later keys become visible).
  differs = np.abs(out - np.asarray(masked_out, np.float32)).max(axis=-1) > 0.05  # [B, S, Hq]
  rows = np.zeros_like(differs)
  rows[0, 2 * block : 3 * block - 1, 2] = True  # the block's last query already sees every key of the block
  assert not (differs & ~rows).any() and differs[rows].mean() > 0.5


@pytest.mark.slow  # in CI after the suite (.ci/run): ~15 s in the Mosaic GPU interpreter
@needs_interpreter
def test_float16_padded_head_dim_unkinded_layout_and_split_key_blocks():
  # f16, head_dim 80 (zero-padded to 128), T != S with queries at the end of the keys, layout.partial None
  # (every block masked), one compute warpgroup, kernel block_kv 64 walking 128-wide layout blocks.
  batch, q_len, kv_len, num_heads, block = 1, 256, 384, 2, 128
  rng = np.random.default_rng(4)
  q, k, v = _inputs(batch, q_len, kv_len, num_heads, num_heads, 80, jnp.float16, seed=5)
  q_positions = jnp.arange(q_len, dtype=jnp.int32)[None, None] + (kv_len - q_len)
  kv_positions = jnp.arange(kv_len, dtype=jnp.int32)[None, None]
  mask = _capped_mask(rng, (batch, num_heads, q_len // block, kv_len // block), max_blocks=3, density=0.8)
  mask[:, :, 1] = False
  mask[:, :, 0, 1] = True  # keys 128..255: partly after queries 0..127 (positions 128..255)
  layout = from_block_mask(mask, block, block, max_blocks=3)
  assert layout.partial is None
  config = MosaicConfig(compute_wgs=1, block_kv=64, max_concurrent_steps=2)
  _check_against_reference(q, k, v, layout, q_positions, kv_positions, causal=True, sm_scale=0.1, config=config)


@pytest.mark.slow  # in CI after the suite (.ci/run): ~15 s in the Mosaic GPU interpreter
@needs_interpreter
def test_non_causal_mha_one_row_per_warpgroup_default_config():
  batch, seq_len, num_heads, block_q, block_kv = 1, 256, 2, 64, 128
  rng = np.random.default_rng(6)
  q, k, v = _inputs(batch, seq_len, seq_len, num_heads, num_heads, 64, jnp.bfloat16, seed=7)
  positions = jnp.zeros((batch, 1, seq_len), jnp.int32)  # unused when not causal
  mask = _capped_mask(rng, (batch, num_heads, seq_len // block_q, seq_len // block_kv), max_blocks=2)
  layout = from_block_mask(mask, block_q, block_kv, max_blocks=2)
  assert choose_config(block_q, block_kv, 64, seq_len) == MosaicConfig(2, 64, 4)
  _check_against_reference(q, k, v, layout, positions, positions, causal=False, sm_scale=0.2)


def _abstract_layout(batch, heads, num_q_blocks, max_blocks, block_q, block_kv):
  spec = functools.partial(jax.ShapeDtypeStruct, (batch, heads, num_q_blocks, max_blocks))
  count = jax.ShapeDtypeStruct((batch, heads, num_q_blocks), jnp.int32)
  return BlockLayout(spec(jnp.int32), count, block_q, block_kv, spec(jnp.bool_))


@pytest.mark.parametrize(
  "head_dim, per_q_head_layout, block_q, block_kv, per_kv_head_positions",
  [(128, False, 128, 128, False), (64, True, 64, 64, True), (128, False, 64, 128, True)],
  ids=["d128-perkvhead-128x128", "d64-perqhead-64x64-poskv", "d128-perkvhead-64x128-poskv"],
)
def test_lowers_for_cuda_at_a_production_shape(head_dim, per_q_head_layout, block_q, block_kv, per_kv_head_positions):
  batch, seq_len, num_q_heads, num_kv_heads, max_blocks = 1, 131072, 28, 4, 208
  q = jax.ShapeDtypeStruct((batch, seq_len, num_q_heads, head_dim), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((batch, seq_len, num_kv_heads, head_dim), jnp.bfloat16)
  heads = num_q_heads if per_q_head_layout else num_kv_heads
  layout = _abstract_layout(batch, heads, seq_len // block_q, max_blocks, block_q, block_kv)
  positions = jax.ShapeDtypeStruct((batch, num_kv_heads if per_kv_head_positions else 1, seq_len), jnp.int32)
  for return_lse in (False, True):
    fn = jax.jit(
      functools.partial(block_sparse_attention_mosaic_gpu, causal=True, sm_scale=head_dim**-0.5, return_lse=return_lse)
    )
    text = fn.trace(q, k, k, layout, positions, positions).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text


def test_lowers_for_cuda_non_causal_head_dim_256_float16():
  q = jax.ShapeDtypeStruct((2, 4096, 8, 256), jnp.float16)
  k = jax.ShapeDtypeStruct((2, 4096, 2, 256), jnp.float16)
  layout = _abstract_layout(2, 2, 4096 // 64, 17, 64, 128)
  positions = jax.ShapeDtypeStruct((2, 1, 4096), jnp.int32)
  fn = jax.jit(functools.partial(block_sparse_attention_mosaic_gpu, causal=False, sm_scale=0.0625))
  assert "mosaic_gpu" in fn.trace(q, k, k, layout, positions, positions).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("block_q", [64, 128, 256])
@pytest.mark.parametrize("block_kv", [64, 128, 256])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 192, 256])
@pytest.mark.parametrize("num_q_blocks", [3, 8])
def test_default_config_is_supported_and_fits_the_budget(block_q, block_kv, head_dim, num_q_blocks):
  q_len = block_q * num_q_blocks
  config = choose_config(block_q, block_kv, head_dim, q_len)
  layout = _abstract_layout(1, 1, num_q_blocks, 4, block_q, block_kv)
  check_supported(layout, q_len, head_dim, jnp.bfloat16, config)
  assert smem_bytes(config, block_q, head_dim) <= SMEM_BUDGET


@pytest.mark.parametrize(
  "dtype, block_q, block_kv, head_dim, config, field",
  [
    (jnp.float32, 128, 128, 64, None, "q.dtype"),
    (jnp.bfloat16, 32, 128, 64, None, "layout.block_q"),
    (jnp.bfloat16, 128, 96, 64, MosaicConfig(2, 64, 2), "layout.block_kv"),
    (jnp.bfloat16, 128, 128, 256, MosaicConfig(2, 128, 4), "shared memory"),
  ],
  ids=["f32", "block_q32", "block_kv96", "smem"],
)
def test_refuses_what_it_cannot_take_with_not_implemented(dtype, block_q, block_kv, head_dim, config, field):
  seq_len = 384
  q = jax.ShapeDtypeStruct((1, seq_len, 2, head_dim), dtype)
  layout = _abstract_layout(1, 2, seq_len // block_q, 3, block_q, block_kv)
  positions = jax.ShapeDtypeStruct((1, 1, seq_len), jnp.int32)
  fn = functools.partial(block_sparse_attention_mosaic_gpu, causal=True, sm_scale=0.1, config=config)
  with pytest.raises(NotImplementedError, match=field):
    jax.eval_shape(fn, q, q, q, layout, positions, positions)


def test_rejects_bad_config_and_mismatched_positions():
  with pytest.raises(ValueError, match="compute_wgs"):
    MosaicConfig(compute_wgs=3)
  with pytest.raises(ValueError, match="max_concurrent_steps"):
    MosaicConfig(max_concurrent_steps=1)
  q = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
  layout = _abstract_layout(1, 2, 2, 2, 128, 128)
  with pytest.raises(ValueError, match="q_positions"):
    jax.eval_shape(
      functools.partial(block_sparse_attention_mosaic_gpu, causal=True, sm_scale=0.1),
      q,
      k,
      k,
      layout,
      jax.ShapeDtypeStruct((1, 3, 256), jnp.int32),
      jax.ShapeDtypeStruct((1, 3, 256), jnp.int32),
    )
