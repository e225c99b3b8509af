"""The TPU kernel's flattened grid over kept blocks (`kernels_pallas/block_sparse/tpu.py`): the packed step words
against a plain Python walk of the layout, results in interpret mode against `block_sparse_attention_reference`
(per-query-head and per-kv-head layouts, GQA and MHA, empty rows, full-marked blocks, permuted per-kv-head
positions, several chunks, dynamic and static grids), and the Mosaic lowering at 128k tokens within the
scalar-memory budget."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import BlockLayout, from_block_mask
from kernels_pallas.block_sparse._compat import TPUInterpretParams
from kernels_pallas.block_sparse.layout import with_block_kinds
from kernels_pallas.block_sparse.reference import block_sparse_attention_reference
from kernels_pallas.block_sparse.tpu import SMEM_WORD_BUDGET, block_sparse_attention_tpu, step_plan, step_words

F32 = {"atol": 1e-5, "rtol": 1e-5}


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 1
  seq_len: int = 256
  num_q_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  block: int = 32
  per_q_head_layout: bool = False

  @property
  def layout_heads(self) -> int:
    return self.num_q_heads if self.per_q_head_layout else self.num_kv_heads

  @property
  def num_blocks(self) -> int:
    return self.seq_len // self.block


def _inputs(shape: Shape, seed: int = 0, density: float = 0.4):
  """f32 q, k, v and a random layout (one empty row per (b, h)) without kinds."""
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((shape.batch, shape.seq_len, shape.num_q_heads, shape.head_dim))
  k, v = rng.standard_normal((2, shape.batch, shape.seq_len, shape.num_kv_heads, shape.head_dim))
  mask = rng.random((shape.batch, shape.layout_heads, shape.num_blocks, shape.num_blocks)) < density
  mask[:, :, rng.integers(shape.num_blocks)] = False
  layout = from_block_mask(mask, shape.block, shape.block)
  return (*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), layout)


def _positions(shape: Shape, heads: int = 1, seed: int = 0) -> jax.Array:
  """int32 [B, heads, S]: arange for heads == 1, else per (b, kv head) a random order of the blocks with the tokens
  shuffled inside each block (so listed blocks are full, partial or invisible)."""
  if heads == 1:
    return jnp.broadcast_to(jnp.arange(shape.seq_len, dtype=jnp.int32), (shape.batch, 1, shape.seq_len))
  rng = np.random.default_rng(seed)

  def order():
    blocks = rng.permutation(shape.num_blocks)[:, None] * shape.block
    return (blocks + rng.permuted(np.tile(np.arange(shape.block), (shape.num_blocks, 1)), axis=1)).reshape(-1)

  return jnp.asarray([[order() for _ in range(heads)] for _ in range(shape.batch)], jnp.int32)


def _check(shape, q, k, v, layout, positions, *, causal=True, interpret=True, empty_rows=True, **kwargs):
  out, lse = block_sparse_attention_tpu(
    q, k, v, layout, positions, positions, causal=causal, sm_scale=0.3, interpret=interpret, return_lse=True, **kwargs
  )
  expected_out, expected_lse = block_sparse_attention_reference(
    q, k, v, layout, causal=causal, q_positions=positions, kv_positions=positions, sm_scale=0.3
  )
  assert np.isneginf(expected_lse).any() == empty_rows and np.isfinite(expected_lse).any()
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
  np.testing.assert_allclose(lse, expected_lse, **F32)
  np.testing.assert_allclose(out, expected_out, **F32)
  assert not np.isnan(np.asarray(out)).any()
  return out


SHAPES = [
  Shape(num_q_heads=2, num_kv_heads=2),  # MHA
  Shape(batch=2),  # GQA 4/2, per-kv-head layout
  Shape(per_q_head_layout=True),  # GQA 4/2, per-query-head layout
  Shape(head_dim=128, seq_len=128, block=16),  # token-major path (no transposes), GQA 4/2
  Shape(head_dim=128, seq_len=128, block=16, per_q_head_layout=True),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_reference_with_block_kinds(shape):
  q, k, v, layout = _inputs(shape)
  positions = _positions(shape)
  _check(shape, q, k, v, with_block_kinds(layout, positions, positions, shape.num_q_heads), positions)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=str)
def test_kernel_matches_reference_without_causal_mask_and_without_kinds(shape):
  q, k, v, layout = _inputs(shape, seed=1)
  positions = _positions(shape)
  _check(shape, q, k, v, layout, positions, causal=False)
  _check(shape, q, k, v, layout, positions, causal=True)  # partial None: every block is masked


def test_block_marked_full_skips_the_causal_mask():
  shape = Shape()
  q, k, v, _ = _inputs(shape)
  mask = np.tril(np.ones((shape.num_blocks, shape.num_blocks), bool))
  layout = from_block_mask(np.broadcast_to(mask, (1, shape.layout_heads, *mask.shape)), shape.block, shape.block)
  positions = _positions(shape)
  kinds = with_block_kinds(layout, positions, positions, shape.num_q_heads).partial
  assert np.asarray(kinds).any()
  # Row 3 lists blocks 0..3; its diagonal block 3 (entry 3) is deliberately marked full: every key is attended.
  full_diagonal = dataclasses.replace(layout, partial=kinds.at[:, :, 3, 3].set(False))
  masked = _check(shape, q, k, v, dataclasses.replace(layout, partial=kinds), positions, empty_rows=False)
  skipped = _check(shape, q, k, v, full_diagonal, positions, empty_rows=False)
  rows = np.arange(3 * shape.block, 4 * shape.block)
  change = np.abs(np.asarray(skipped - masked)[:, rows]).max(axis=(0, 2, 3))  # [block_q]
  assert (change[:-1] > 1e-3).all() and change[-1] < 1e-6  # every query but the last sees more keys
  np.testing.assert_array_equal(
    np.delete(np.asarray(skipped), rows, axis=1), np.delete(np.asarray(masked), rows, axis=1)
  )


@pytest.mark.parametrize("per_q_head_layout", [False, True], ids=["perkvhead", "perqhead"])
def test_per_kv_head_permuted_positions(per_q_head_layout):
  shape = Shape(batch=2, per_q_head_layout=per_q_head_layout)
  q, k, v, layout = _inputs(shape, seed=2, density=0.6)
  positions = _positions(shape, heads=shape.num_kv_heads, seed=3)
  layout = with_block_kinds(layout, positions, positions, shape.num_q_heads)
  partial = np.asarray(layout.partial)
  valid = np.arange(layout.max_blocks) < np.asarray(layout.kv_count)[..., None]
  assert (partial & valid).any() and (~partial & valid).any()  # both kinds are exercised
  _check(shape, q, k, v, layout, positions)


@pytest.mark.parametrize("dynamic_grid", [True, False], ids=["dynamic-grid", "static-grid"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4]], ids=str)
def test_several_chunks_write_their_rows_into_one_output(shape, dynamic_grid):
  q, k, v, layout = _inputs(shape, seed=4)
  positions = _positions(shape)
  layout = with_block_kinds(layout, positions, positions, shape.num_q_heads)
  budget = 3 * layout.max_blocks + 2  # three rows per call
  plan = step_plan(shape.batch * shape.layout_heads * shape.num_blocks, layout.max_blocks, shape.num_blocks, budget)
  assert plan.num_chunks >= 3 and plan.smem_words_per_call <= budget
  _check(shape, q, k, v, layout, positions, smem_budget=budget, dynamic_grid=dynamic_grid)


@pytest.mark.skipif(TPUInterpretParams is None, reason="this jax has no pltpu.InterpretParams")
def test_tpu_simulating_interpreter_with_several_chunks():
  shape = Shape(batch=1, seq_len=128, block=16)
  q, k, v, layout = _inputs(shape, seed=5)
  positions = _positions(shape, heads=shape.num_kv_heads, seed=6)
  layout = with_block_kinds(layout, positions, positions, shape.num_q_heads)
  _check(shape, q, k, v, layout, positions, interpret=TPUInterpretParams(), smem_budget=4 * layout.max_blocks + 2)


def _walk(layout: BlockLayout, causal: bool, rows_per_chunk: int):
  """The expected steps, in order, by a plain loop: (row, kv id, compute, first, last, mask). An empty row's step
  repeats the kv id of the chunk's previous computing step (its own padding id if there is none)."""
  blocks, count = np.asarray(layout.kv_blocks), np.asarray(layout.kv_count)
  partial = None if layout.partial is None else np.asarray(layout.partial)
  steps, last_id = [], None
  for row, (b, h, i) in enumerate(np.ndindex(count.shape)):
    if row % rows_per_chunk == 0:
      last_id = None
    if count[b, h, i] == 0:
      steps.append((row, int(blocks[b, h, i, 0]) if last_id is None else last_id, False, True, True, False))
    for j in range(count[b, h, i]):
      last_id = int(blocks[b, h, i, j])
      mask = causal and (partial is None or bool(partial[b, h, i, j]))
      steps.append((row, last_id, True, j == 0, j == count[b, h, i] - 1, mask))
  return steps


@pytest.mark.parametrize("causal", [True, False])
def test_step_words_list_kept_blocks_row_by_row(causal):
  shape = Shape(batch=2)
  _, _, _, layout = _inputs(shape, seed=7, density=0.3)
  positions = _positions(shape)
  layout = with_block_kinds(layout, positions, positions, shape.num_q_heads)
  plan = step_plan(shape.batch * shape.layout_heads * shape.num_blocks, layout.max_blocks, shape.num_blocks, 30)
  assert plan.num_chunks > 1
  words, totals = (np.asarray(x) for x in step_words(layout, plan, shape.num_blocks, causal))
  got = []
  for chunk in range(plan.num_chunks):
    decoded = []
    for word in words[chunk].tolist():
      flags = word >> (plan.id_bits + plan.row_bits)
      row = chunk * plan.rows_per_chunk + ((word >> plan.id_bits) & ((1 << plan.row_bits) - 1))
      decoded.append((row, word & ((1 << plan.id_bits) - 1), *(bool(flags & bit) for bit in (1, 2, 4, 8))))
    real, tail = decoded[: totals[chunk]], decoded[totals[chunk] :]
    assert all(step == (*real[-1][:2], False, False, False, False) for step in tail)  # repeats, does nothing
    got += real
  assert got == _walk(layout, causal, plan.rows_per_chunk)
  assert totals.sum() == np.maximum(np.asarray(layout.kv_count), 1).sum()


def test_step_plan_rejects_a_budget_below_one_row():
  with pytest.raises(ValueError, match=r"smem_budget.*>= MAXN \+ 2 = 12, got 11"):
    step_plan(num_rows=8, max_blocks=10, num_kv_blocks=10, smem_budget=11)


# Qwen2.5-VL-7B's attention (Hq=28, Hkv=4, d=128), block 128, per-kv-head layouts.
@pytest.mark.parametrize("seq_len", [131072, 1048576], ids=["128k", "1M"])
@pytest.mark.parametrize("max_fraction", [0.1, 1.0], ids=["maxn-nk/10", "maxn-nk"])
def test_scalar_prefetch_fits_the_budget_at_long_context(seq_len, max_fraction):
  num_blocks = seq_len // 128
  max_blocks = max(1, int(num_blocks * max_fraction))
  plan = step_plan(4 * num_blocks, max_blocks, num_blocks)
  assert plan.smem_words_per_call <= SMEM_WORD_BUDGET
  assert plan.num_chunks * plan.rows_per_chunk >= 4 * num_blocks > (plan.num_chunks - 1) * plan.rows_per_chunk
  assert plan.id_bits + plan.row_bits + 4 <= 31


def test_tpu_lowering_at_128k_tokens_prefetches_within_the_budget():
  seq_len, num_q_heads, num_kv_heads, head_dim, block, max_blocks = 131072, 28, 4, 128, 128, 103
  num_blocks = seq_len // block
  q = jax.ShapeDtypeStruct((1, seq_len, num_q_heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, seq_len, num_kv_heads, head_dim), jnp.bfloat16)
  lists = (1, num_kv_heads, num_blocks, max_blocks)
  layout = BlockLayout(
    jax.ShapeDtypeStruct(lists, jnp.int32),
    jax.ShapeDtypeStruct(lists[:3], jnp.int32),
    block,
    block,
    jax.ShapeDtypeStruct(lists, jnp.bool_),
  )
  positions = jax.ShapeDtypeStruct((1, num_kv_heads, seq_len), jnp.int32)
  fn = jax.jit(functools.partial(block_sparse_attention_tpu, causal=True, sm_scale=0.1, return_lse=True))
  text = fn.trace(q, kv, kv, layout, positions, positions).lower(lowering_platforms=("tpu",)).as_text()
  calls = [line for line in text.splitlines() if "tpu_custom_call(" in line]
  assert calls
  plan = step_plan(num_kv_heads * num_blocks, max_blocks, num_blocks)
  for call in calls:
    operand_types = re.search(r":\s*\((.*?)\)\s*->", call).group(1)
    # Operands before q: the dynamic grid bound, the chunk's first row, the step words (all scalar-prefetched).
    prefetched = operand_types.split(", tensor<1x131072x")[0].split(", ")
    words = sum(int(np.prod([int(d) for d in re.findall(r"(\d+)x", t)] or [1])) for t in prefetched)
    assert words == plan.smem_words_per_call <= SMEM_WORD_BUDGET
    assert f"tensor<{plan.steps_per_chunk}xi32>" in prefetched
