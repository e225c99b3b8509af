"""Block-sparse flash-attention forward on TPU (Pallas Mosaic) whose grid runs over the kept blocks only.

Modelled on jax's splash attention (`jax/experimental/pallas/ops/tpu/splash_attention/splash_attention_kernel.py`,
`flash_attention_kernel`, and `splash_attention_mask_info.py`, `MaskInfo`: scalar-prefetched `data_next` block
ids, `block_mask` kinds 1 = partial / 2 = full), with the block lists flattened instead of kept as a
[heads, NQ, NK] grid:

Steps. A layout row is (b, h, i) (batch, layout head, query block), R = B * H * NQ rows in that order. Row r
gets n_r = max(kv_count_r, 1) steps: one per listed block, or one "empty" step for a row with no block (it only
writes out = 0, lse = -inf). `step_words` builds, on device with jnp (a cumsum of n gives each row's first step),
one int32 word per step:

    word = kv_id | row_in_chunk << id_bits | flags << (id_bits + row_bits)
    flags: COMPUTE (a listed block) | FIRST (init m, l, acc) | LAST (write out, lse) | MASK (partial block)

A step without MASK is a full block (or the kernel is not causal): the body that neither loads positions nor
applies the causal mask runs. Steps that do not compute (empty rows, padding) repeat the previous computing step's
kv id, so the pipeline sees an unchanged K/V block index and issues no DMA (splash's `data_next` trick).

Chunks (SMEM). The words are scalar-prefetched into the core's scalar memory, which holds little (1 MiB per core on
TPU v4 and later, 16 KiB on v2/v3: jax's `pallas/mosaic/tpu_info.py`); `SMEM_WORD_BUDGET` = 128K int32 words (half
of it, leaving room for Mosaic's own scalars) bounds what one pallas_call prefetches. Rows are cut into static groups of
`rows_per_chunk` consecutive rows (`StepPlan`), so no row straddles two calls (its m, l, acc live in VMEM scratch
for one call) and a chunk's step count is bounded by rows_per_chunk * MAXN, the static length of its word array;
rows_per_chunk = (budget - 2) // MAXN (the 2: the chunk's first row and the grid bound). Static row groups keep the
row field small (it is relative to the chunk) and the number of calls static; they are run by a `lax.fori_loop`
(one pallas_call in the program whatever the chunk count), each call writing its rows into the same out / lse
buffers through `input_output_aliases`. The grid of a call is 1-D: by default its length is the chunk's actual step
count (a dynamic grid bound, so no padded steps run); with `dynamic_grid=False` it is the static bound and the
tail repeats the last step's block indices with no flags (no DMA, no compute, no write).

GQA. A per-kv-head layout (H = Hkv) processes the G query heads of a group in one program: the q tile holds the G
heads, the K/V block is loaded once per step and the body loops over the G heads (G matmuls of [block_q, D]).
A per-query-head layout (H = Hq) has one head per program. Positions are [B, P, N], P in {1, Hkv}.

HBM passes. With head_dim % 128 == 0 (the production case) q, k, v and out keep their [B, N, heads, D] order
(reshaped, for free, to [B, N, heads * D]; a tile is (block, G * D) lanes): no transposes. Otherwise the tile's
lane dim would break Mosaic's (8, 128) rule, so q, k, v are moved to [B, H, N, D] and out back (four extra HBM
passes). lse is written as [B, Hq, S, 1] and squeezed. The step words take R * MAXN int32 in HBM.

Body: FlashAttention-2's online softmax (arXiv 2307.08691, Alg. 1), m starting at MASK / 2 so fully masked rows
get p = 0 without NaN. Hardware constraints (checked by the API when not interpreting): block_q % 8 == 0,
block_kv % 8 == 0. Not done: a parallel grid axis for the two TensorCores of a megacore chip (the 1-D grid is
"arbitrary"); the key-position block is still DMA'd on full steps (it is not read). Checked without a TPU: results
in interpret mode (`interpret=True`, `pltpu.InterpretParams()`) and the Mosaic lowering for TPU from CPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.block_sparse._compat import TPUCompilerParams, pl, pltpu
from kernels_pallas.block_sparse.layout import BlockLayout

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Scalar-prefetch words (int32) one pallas_call may use: 512 KiB, half the scalar memory of a TPU v4+ core.
SMEM_WORD_BUDGET = 128 * 1024
_COMPUTE, _FIRST, _LAST, _MASK = 1, 2, 4, 8
_NUM_FLAGS = 4
_NT = (((1,), (1,)), ((), ()))  # q @ k^T
_NN = (((1,), (0,)), ((), ()))  # p @ v


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """Static sizes of the flattened step lists (see the module docstring).

  Attributes:
    num_rows: R = B * H * NQ layout rows.
    max_blocks: MAXN.
    rows_per_chunk: consecutive rows per pallas_call.
    num_chunks: pallas_calls, ceil(R / rows_per_chunk).
    id_bits, row_bits: widths of the kv id and row-in-chunk fields of a step word.
  """

  num_rows: int
  max_blocks: int
  rows_per_chunk: int
  num_chunks: int
  id_bits: int
  row_bits: int

  @property
  def steps_per_chunk(self) -> int:
    """Static length of a chunk's word array: its rows' worst case (every row lists MAXN blocks)."""
    return self.rows_per_chunk * self.max_blocks

  @property
  def smem_words_per_call(self) -> int:
    """Scalar-prefetched int32 words of one pallas_call: the step words, the chunk's first row, the grid bound."""
    return self.steps_per_chunk + 2


def step_plan(num_rows: int, max_blocks: int, num_kv_blocks: int, smem_budget: int = SMEM_WORD_BUDGET) -> StepPlan:
  """The chunking of R rows of at most MAXN steps into pallas_calls of at most `smem_budget` prefetched words."""
  if smem_budget < max_blocks + 2:
    raise ValueError(
      f"block_sparse_attention_tpu: `smem_budget` must hold one row's steps plus 2 words, >= MAXN + 2 = "
      f"{max_blocks + 2}, got {smem_budget}"
    )
  id_bits = max(1, (num_kv_blocks - 1).bit_length())
  max_row_bits = 31 - _NUM_FLAGS - id_bits  # the word stays a non-negative int32
  if max_row_bits < 1:
    raise ValueError(
      f"block_sparse_attention_tpu: NK = T / block_kv = {num_kv_blocks} key blocks need {id_bits} bits, more than "
      f"a step word can hold with its row and flags (at most {29 - _NUM_FLAGS})"
    )
  rows_per_chunk = min(num_rows, (smem_budget - 2) // max_blocks, 2**max_row_bits)
  return StepPlan(
    num_rows=num_rows,
    max_blocks=max_blocks,
    rows_per_chunk=rows_per_chunk,
    num_chunks=-(-num_rows // rows_per_chunk),
    id_bits=id_bits,
    row_bits=max(1, (rows_per_chunk - 1).bit_length()),
  )


def step_words(layout: BlockLayout, plan: StepPlan, num_kv_blocks: int, causal: bool) -> tuple[jax.Array, jax.Array]:
  """Per chunk, the packed step words and the number of real steps (jit-able; see the module docstring).

  Returns:
    words int32 [num_chunks, steps_per_chunk] and steps int32 [num_chunks]; entries past `steps` repeat the last
    real step's kv id and row with no flags.
  """
  rows, chunk_rows, chunks, width, max_blocks = (
    plan.num_rows,
    plan.rows_per_chunk,
    plan.num_chunks,
    plan.steps_per_chunk,
    plan.max_blocks,
  )
  blocks = jnp.clip(layout.kv_blocks.reshape(rows, max_blocks), 0, num_kv_blocks - 1)
  padded = chunks * chunk_rows
  count = jnp.pad(jnp.clip(layout.kv_count.reshape(rows), 0, max_blocks), (0, padded - rows))
  real = jnp.arange(padded) < rows
  count = count.reshape(chunks, chunk_rows)
  num_steps = jnp.where(real, jnp.maximum(count.reshape(padded), 1), 0).reshape(chunks, chunk_rows)
  ends = jnp.cumsum(num_steps, axis=1)
  starts = ends - num_steps
  totals = ends[:, -1]
  # Step p of a chunk belongs to row #{rows ending at or before p}; padding rows (no steps) end at the total.
  marks = jnp.zeros((chunks, width + 1), jnp.int32).at[jnp.arange(chunks)[:, None], ends].add(1)
  num_real = jnp.sum(real.reshape(chunks, chunk_rows), axis=1, dtype=jnp.int32)
  row = jnp.minimum(jnp.cumsum(marks, axis=1)[:, :width], num_real[:, None] - 1)
  position = jnp.arange(width)[None, :]
  j = position - jnp.take_along_axis(starts, row, axis=1)
  row_steps = jnp.take_along_axis(num_steps, row, axis=1)
  in_range = position < totals[:, None]
  global_row = jnp.arange(chunks)[:, None] * chunk_rows + row
  j_clamped = jnp.clip(j, 0, max_blocks - 1)
  compute = j < jnp.take_along_axis(count, row, axis=1)  # false on empty rows and the tail (j >= n >= count)
  ids = blocks[global_row, j_clamped]
  # Steps without compute take the last computing step's id: an unchanged block index, no DMA.
  last_compute = lax.cummax(jnp.where(compute, position, -1), axis=1)
  ids = jnp.where(compute | (last_compute < 0), ids, jnp.take_along_axis(ids, jnp.maximum(last_compute, 0), axis=1))
  flags = compute * _COMPUTE + (in_range & (j == 0)) * _FIRST + (in_range & (j == row_steps - 1)) * _LAST
  if causal:
    partial = (
      compute if layout.partial is None else compute & layout.partial.reshape(rows, max_blocks)[global_row, j_clamped]
    )
    flags = flags + partial * _MASK
  words = ids | (row << plan.id_bits) | (flags.astype(jnp.int32) << (plan.id_bits + plan.row_bits))
  return words.astype(jnp.int32), totals.astype(jnp.int32)


def _kernel(
  row0_ref,  # scalar prefetch, SMEM int32 [1]: the chunk's first global row
  words_ref,  # scalar prefetch, SMEM int32 [steps_per_chunk]
  q_ref,  # [G, bq, D] (head-major) or [bq, G * D] (token-major)
  k_ref,  # [bkv, D]
  v_ref,  # [bkv, D]
  q_pos_ref,  # [bq, 1]
  kv_pos_ref,  # [1, bkv]
  *refs,  # (aliased out, lse inputs)?, o_ref, (lse_ref [G, bq, 1])?, m_ref [G, bq, 1], l_ref [G, bq, 1], acc_ref
  causal,
  sm_scale,
  flag_shift,
  group,
  head_dim,
  token_major,
  num_aliased,
  has_lse,
):
  del row0_ref  # consumed by the index maps
  refs = refs[num_aliased:]  # the aliased out / lse inputs are only there to be written in place
  o_ref, *lse_ref = refs[: 2 if has_lse else 1]
  m_ref, l_ref, acc_ref = refs[2 if has_lse else 1 :]
  flags = words_ref[pl.program_id(0)] >> flag_shift
  heads = range(group)

  def q_tile(g):
    return q_ref[:, g * head_dim : (g + 1) * head_dim] if token_major else q_ref[g]

  @pl.when((flags & _FIRST) != 0)
  def _init():
    m_ref[...] = jnp.full_like(m_ref, 0.5 * MASK_VALUE)
    l_ref[...] = jnp.zeros_like(l_ref)
    acc_ref[...] = jnp.zeros_like(acc_ref)

  def step(masked):
    k, v = k_ref[...], v_ref[...]
    # f32 inputs: full-precision MXU passes, so f32 results match the f32 reference.
    precision = lax.Precision.HIGHEST if k.dtype == jnp.float32 else None
    visible = kv_pos_ref[...] <= q_pos_ref[...] if masked else None  # [bq, bkv]
    for g in heads:
      s = lax.dot_general(q_tile(g), k, _NT, precision=precision, preferred_element_type=jnp.float32) * sm_scale
      if masked:
        s = jnp.where(visible, s, MASK_VALUE)
      m_prev = m_ref[g]
      m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
      alpha = jnp.exp(m_prev - m_next)
      p = jnp.exp(s - m_next)
      l_ref[g] = alpha * l_ref[g] + jnp.sum(p, axis=1, keepdims=True)
      pv = lax.dot_general(p.astype(v.dtype), v, _NN, precision=precision, preferred_element_type=jnp.float32)
      acc_ref[g] = alpha * acc_ref[g] + pv
      m_ref[g] = m_next

  compute = (flags & _COMPUTE) != 0
  if causal:
    masked = (flags & _MASK) != 0
    pl.when(compute & masked)(functools.partial(step, True))
    pl.when(compute & jnp.logical_not(masked))(functools.partial(step, False))
  else:
    pl.when(compute)(functools.partial(step, False))

  @pl.when((flags & _LAST) != 0)
  def _finish():
    for g in heads:
      row_sum = l_ref[g]
      empty = row_sum == 0.0
      safe_sum = jnp.where(empty, 1.0, row_sum)
      out = (acc_ref[g] / safe_sum).astype(o_ref.dtype)
      if token_major:
        o_ref[:, g * head_dim : (g + 1) * head_dim] = out
      else:
        o_ref[g] = out
      if lse_ref:
        lse_ref[0][g] = jnp.where(empty, -jnp.inf, m_ref[g] + jnp.log(safe_sum))


@functools.partial(
  jax.jit, static_argnames=("causal", "sm_scale", "interpret", "return_lse", "smem_budget", "dynamic_grid")
)
def block_sparse_attention_tpu(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  layout: BlockLayout,
  q_positions: jax.Array,
  kv_positions: jax.Array,
  *,
  causal: bool,
  sm_scale: float,
  interpret=False,
  return_lse: bool = False,
  smem_budget: int = SMEM_WORD_BUDGET,
  dynamic_grid: bool = True,
):
  """Block-sparse attention forward on TPU (inputs already validated by the API).

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D].
    layout: BlockLayout, H in {Hkv, Hq}; `partial` None means every block is partial.
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv}.
    causal, sm_scale: see `block_sparse_attention`.
    interpret: False, True (Pallas HLO interpreter) or a `pltpu.InterpretParams` (TPU-simulating interpreter).
    smem_budget: scalar-prefetch int32 words per pallas_call (`step_plan`); smaller values mean more calls.
    dynamic_grid: grid length = the chunk's real step count (True) or its static bound (False, padded tail).
  Returns:
    out [B, S, Hq, D] (q.dtype), and lse float32 [B, Hq, S] if return_lse.
  """
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  num_layout_heads, num_q_blocks, max_blocks = layout.num_heads, layout.num_q_blocks, layout.max_blocks
  block_q, block_kv = layout.block_q, layout.block_kv
  num_kv_blocks = kv_len // block_kv
  group = num_q_heads // num_layout_heads  # query heads per program: G (per-kv-head layout) or 1
  heads_per_kv_head = num_layout_heads // num_kv_heads  # 1 (per-kv-head layout) or G (per-query-head)
  num_position_heads = q_positions.shape[1]
  token_major = head_dim % 128 == 0
  plan = step_plan(batch * num_layout_heads * num_q_blocks, max_blocks, num_kv_blocks, smem_budget)
  words, totals = step_words(layout, plan, num_kv_blocks, causal)
  id_mask, row_mask = (1 << plan.id_bits) - 1, (1 << plan.row_bits) - 1

  def decode(s, row0_ref, words_ref):
    """(b, layout head, query block, kv head, kv id, positions row) of step s."""
    word = words_ref[s]
    row = row0_ref[0] + ((word >> plan.id_bits) & row_mask)
    b = lax.div(row, num_layout_heads * num_q_blocks)
    h = lax.rem(lax.div(row, num_q_blocks), num_layout_heads)
    kv_head = lax.div(h, heads_per_kv_head)
    return b, h, lax.rem(row, num_q_blocks), kv_head, word & id_mask, kv_head if num_position_heads > 1 else 0

  def q_map(s, *refs):
    b, h, i, *_ = decode(s, *refs)
    return (b, i, h) if token_major else (b, h, i, 0)

  def kv_map(s, *refs):
    b, _, _, kv_head, kv_id, _ = decode(s, *refs)
    return (b, kv_id, kv_head) if token_major else (b, kv_head, kv_id, 0)

  def q_pos_map(s, *refs):
    b, _, i, _, _, position_row = decode(s, *refs)
    return b, position_row, i, 0

  def kv_pos_map(s, *refs):
    b, _, _, _, kv_id, position_row = decode(s, *refs)
    return b, position_row, kv_id, 0, 0

  def lse_map(s, *refs):
    b, h, i, *_ = decode(s, *refs)
    return b, h, i, 0

  if token_major:
    q_in = q.reshape(batch, q_len, num_q_heads * head_dim)
    k_in, v_in = (x.reshape(batch, kv_len, num_kv_heads * head_dim) for x in (k, v))
    tile_spec = pl.BlockSpec((None, block_q, group * head_dim), q_map)
    kv_spec = pl.BlockSpec((None, block_kv, head_dim), kv_map)
  else:
    q_in, k_in, v_in = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    tile_spec = pl.BlockSpec((None, group, block_q, head_dim), q_map)
    kv_spec = pl.BlockSpec((None, None, block_kv, head_dim), kv_map)
  out_shape = [jax.ShapeDtypeStruct(q_in.shape, q.dtype)]
  out_specs = [tile_spec]
  if return_lse:
    out_shape.append(jax.ShapeDtypeStruct((batch, num_q_heads, q_len, 1), jnp.float32))
    out_specs.append(pl.BlockSpec((None, group, block_q, 1), lse_map))
  in_specs = [
    tile_spec,
    kv_spec,
    kv_spec,
    pl.BlockSpec((None, None, block_q, 1), q_pos_map),
    # [B, P, NK, 1, block_kv]: the block's last two dims are the array's, which Mosaic's tiling rule accepts for
    # any block_kv (a (1, block_kv) block of a [B, 1, T] array would need block_kv % 128 == 0).
    pl.BlockSpec((None, None, None, 1, block_kv), kv_pos_map),
  ]
  inputs = (
    q_in,
    k_in,
    v_in,
    q_positions[..., None],
    kv_positions.reshape(batch, num_position_heads, num_kv_blocks, 1, block_kv),
  )

  def call(chunk, aliased):
    """One pallas_call over chunk `chunk`'s steps, writing into `aliased` (the out / lse so far) if given."""
    num_aliased = len(aliased)
    kernel = functools.partial(
      _kernel,
      causal=causal,
      sm_scale=sm_scale,
      flag_shift=plan.id_bits + plan.row_bits,
      group=group,
      head_dim=head_dim,
      token_major=token_major,
      num_aliased=num_aliased,
      has_lse=return_lse,
    )
    grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(totals[chunk] if dynamic_grid else plan.steps_per_chunk,),
      in_specs=in_specs + [pl.BlockSpec(memory_space=pl.ANY)] * num_aliased,
      out_specs=out_specs,
      scratch_shapes=[
        pltpu.VMEM((group, block_q, 1), jnp.float32),  # m
        pltpu.VMEM((group, block_q, 1), jnp.float32),  # l
        pltpu.VMEM((group, block_q, head_dim), jnp.float32),  # acc
      ],
    )
    first_aliased = 2 + len(inputs)  # operand index, scalar-prefetch operands included
    return pl.pallas_call(
      kernel,
      grid_spec=grid_spec,
      out_shape=out_shape,
      input_output_aliases={first_aliased + n: n for n in range(num_aliased)},
      compiler_params=TPUCompilerParams(dimension_semantics=("arbitrary",)),
      interpret=interpret,
      name="block_sparse_attention_fwd",
    )(
      (chunk * plan.rows_per_chunk).astype(jnp.int32).reshape(1),
      lax.dynamic_index_in_dim(words, chunk, keepdims=False),
      *inputs,
      *aliased,
    )

  results = tuple(call(jnp.int32(0), ()))
  if plan.num_chunks > 1:
    results = lax.fori_loop(1, plan.num_chunks, lambda c, acc: tuple(call(c, acc)), results)
  out = results[0].reshape(q.shape) if token_major else results[0].transpose(0, 2, 1, 3)
  return (out, results[1][..., 0]) if return_lse else out
