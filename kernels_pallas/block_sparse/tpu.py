"""Block-sparse flash-attention forward on TPU (Pallas Mosaic), splash-attention style (jax
`jax/experimental/pallas/ops/tpu/splash_attention/`: scalar-prefetched block lists, `data_next` index maps).

Grid (B, Hq, NQ, MAXN); the last axis walks the block list of query block i. `kv_blocks` and `kv_count` are
scalar-prefetched into SMEM (`PrefetchScalarGridSpec`), and the K/V `index_map`s read the block id from them,
so the pipeline DMAs exactly the listed K/V blocks. Steps j >= kv_count:
  * see the same block index as step j - 1 (padding repeats the last valid id; the wrapper enforces it), so
    the pipeline issues no new DMA (splash's `data_next` trick), and
  * skip all compute under `pl.when(j < kv_count)`.
The body is FlashAttention-2's online softmax (arXiv 2307.08691, Alg. 1) with m, l, acc in VMEM scratch:

    s = sm_scale * q k_n^T, masked to MASK where kv_pos > q_pos (causal)
    m' = max(m, rowmax s);  alpha = e^(m - m');  p = e^(s - m');  l' = alpha l + rowsum p;  acc' = alpha acc + p v_n
    out = acc / l;  lse = m + log l          (out = 0, lse = -inf where l = 0)

`m` starts at MASK / 2 so rows whose keys are all masked get p = 0 without NaN (as in `gpu_triton.py`).
GQA: K/V index maps use h // (Hq / Hkv); the layout row is per kv head or per query head. Inputs are moved to
[B, H, S, D] so the (block, head_dim) tiles are the minor dims Mosaic tiles (an extra HBM pass over q, k, v and
out; a head-major caller would avoid it). Query positions travel as [B, S, 1] and key positions as
[B, NK, 1, block_kv] (one row per key block, so the block's last two dims are the array's whatever block_kv),
so the causal test is a column compared against a row.

Hardware constraints (checked by the API when not interpreting): block_q % 8 == 0, block_kv % 8 == 0 (Mosaic's
block tiling rule on the q and K/V tiles; block_kv = 64, MInference's block, lowers). The
prefetched lists live in SMEM, B * H * NQ * (MAXN + 1) int32 words; very long sequences with many heads need
to be split over heads by the caller (splash downcasts and shrinks its lists instead; not done here).
Checked without a TPU: results in interpret mode on CPU (`interpret=True` and `pltpu.InterpretParams()`), and
that the Mosaic lowering accepts the kernel (cross-platform lowering for TPU). Not checked: Mosaic's later
compilation passes (vector layouts), running on a TPU, and speed.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.block_sparse._compat import TPUCompilerParams, pl, pltpu
from kernels_pallas.block_sparse.layout import BlockLayout

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # q @ k^T
_NN = (((1,), (0,)), ((), ()))  # p @ v


def _kernel(
  kv_blocks_ref,  # scalar prefetch, SMEM int32 [B * H * NQ * MAXN]
  kv_count_ref,  # scalar prefetch, SMEM int32 [B * H * NQ]
  q_ref,  # [bq, D]
  k_ref,  # [bkv, D]
  v_ref,  # [bkv, D]
  q_pos_ref,  # [bq, 1]
  kv_pos_ref,  # [1, bkv]
  o_ref,  # [bq, D]
  *refs,  # (lse_ref [bq, 1])?, m_ref [bq, 1], l_ref [bq, 1], acc_ref [bq, D]
  causal,
  sm_scale,
  layout_row,
):
  del kv_blocks_ref  # consumed by the index maps
  *lse_ref, m_ref, l_ref, acc_ref = refs
  b, h, i, j = (pl.program_id(axis) for axis in range(4))
  count = kv_count_ref[layout_row(b, h, i)]

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full_like(m_ref, 0.5 * MASK_VALUE)
    l_ref[...] = jnp.zeros_like(l_ref)
    acc_ref[...] = jnp.zeros_like(acc_ref)

  @pl.when(j < count)
  def _step():
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    # f32 inputs: full-precision MXU passes, so f32 results match the f32 reference.
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    s = lax.dot_general(q, k, _NT, precision=precision, preferred_element_type=jnp.float32) * sm_scale
    if causal:
      s = jnp.where(kv_pos_ref[...] <= q_pos_ref[...], s, MASK_VALUE)
    m_prev = m_ref[...]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_next)
    p = jnp.exp(s - m_next)
    l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
    pv = lax.dot_general(p.astype(v.dtype), v, _NN, precision=precision, preferred_element_type=jnp.float32)
    acc_ref[...] = alpha * acc_ref[...] + pv
    m_ref[...] = m_next

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    row_sum = l_ref[...]
    empty = row_sum == 0.0
    safe_sum = jnp.where(empty, 1.0, row_sum)
    o_ref[...] = (acc_ref[...] / safe_sum).astype(o_ref.dtype)
    if lse_ref:
      lse_ref[0][...] = jnp.where(empty, -jnp.inf, m_ref[...] + jnp.log(safe_sum))


def _repeat_last_valid(layout: BlockLayout, num_kv_blocks: int) -> jax.Array:
  """kv_blocks with every entry past kv_count replaced by the last valid id, all clipped to [0, NK).

  The kernel never computes on those entries; this makes their block index equal to the previous step's
  whatever padding the caller used, so no DMA is issued for them and none can go out of bounds.
  """
  blocks = jnp.clip(layout.kv_blocks, 0, num_kv_blocks - 1)
  last = jnp.take_along_axis(blocks, jnp.maximum(layout.kv_count - 1, 0)[..., None], axis=-1)
  return jnp.where(jnp.arange(layout.max_blocks) < layout.kv_count[..., None], blocks, last)


@functools.partial(jax.jit, static_argnames=("causal", "sm_scale", "interpret", "return_lse"))
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
):
  """Block-sparse attention forward on TPU (inputs already validated by the API).

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D].
    layout: BlockLayout, H in {Hkv, Hq}.
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv}.
    causal, sm_scale: see `block_sparse_attention`.
    interpret: False, True (Pallas HLO interpreter) or a `pltpu.InterpretParams` (TPU-simulating interpreter).
  Returns:
    out [B, S, Hq, D] (q.dtype), and lse float32 [B, Hq, S] if return_lse.
  """
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  groups = num_q_heads // num_kv_heads
  num_layout_heads, num_q_blocks, max_blocks = layout.num_heads, layout.num_q_blocks, layout.max_blocks
  per_q_head_layout = num_layout_heads == num_q_heads and groups > 1
  per_kv_head_positions = q_positions.shape[1] > 1
  num_position_heads = q_positions.shape[1]
  block_q, block_kv = layout.block_q, layout.block_kv

  def layout_row(b, h, i):
    layout_head = h if per_q_head_layout else lax.div(h, groups)
    return (b * num_layout_heads + layout_head) * num_q_blocks + i

  def q_map(b, h, i, j, kv_blocks_ref, kv_count_ref):
    return b, h, i, 0

  def kv_map(b, h, i, j, kv_blocks_ref, kv_count_ref):
    return b, lax.div(h, groups), kv_blocks_ref[layout_row(b, h, i) * max_blocks + j], 0

  def positions_row(h):
    return lax.div(h, groups) if per_kv_head_positions else 0

  def q_pos_map(b, h, i, j, kv_blocks_ref, kv_count_ref):
    return b, positions_row(h), i, 0

  def kv_pos_map(b, h, i, j, kv_blocks_ref, kv_count_ref):
    return b, positions_row(h), kv_blocks_ref[layout_row(b, h, i) * max_blocks + j], 0, 0

  def lse_map(b, h, i, j, kv_blocks_ref, kv_count_ref):
    return b, h, i, 0

  out_shape = [jax.ShapeDtypeStruct((batch, num_q_heads, q_len, head_dim), q.dtype)]
  out_specs = [pl.BlockSpec((None, None, block_q, head_dim), q_map)]
  if return_lse:
    out_shape.append(jax.ShapeDtypeStruct((batch, num_q_heads, q_len, 1), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, block_q, 1), lse_map))
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=2,
    grid=(batch, num_q_heads, num_q_blocks, max_blocks),
    in_specs=[
      pl.BlockSpec((None, None, block_q, head_dim), q_map),
      pl.BlockSpec((None, None, block_kv, head_dim), kv_map),
      pl.BlockSpec((None, None, block_kv, head_dim), kv_map),
      pl.BlockSpec((None, None, block_q, 1), q_pos_map),
      # [B, P, NK, 1, block_kv]: the block's last two dims are the array's, which Mosaic's tiling rule accepts for
      # any block_kv (a (1, block_kv) block of a [B, 1, T] array would need block_kv % 128 == 0).
      pl.BlockSpec((None, None, None, 1, block_kv), kv_pos_map),
    ],
    out_specs=out_specs,
    scratch_shapes=[
      pltpu.VMEM((block_q, 1), jnp.float32),  # m
      pltpu.VMEM((block_q, 1), jnp.float32),  # l
      pltpu.VMEM((block_q, head_dim), jnp.float32),  # acc
    ],
  )
  kernel = functools.partial(_kernel, causal=causal, sm_scale=sm_scale, layout_row=layout_row)
  results = pl.pallas_call(
    kernel,
    grid_spec=grid_spec,
    out_shape=out_shape,
    compiler_params=TPUCompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
    interpret=interpret,
    name="block_sparse_attention_fwd",
  )(
    _repeat_last_valid(layout, kv_len // block_kv).reshape(-1),
    layout.kv_count.reshape(-1),
    q.transpose(0, 2, 1, 3),
    k.transpose(0, 2, 1, 3),
    v.transpose(0, 2, 1, 3),
    q_positions[..., None],
    kv_positions.reshape(batch, num_position_heads, kv_len // block_kv, 1, block_kv),
  )
  out = results[0].transpose(0, 2, 1, 3)
  return (out, results[1][..., 0]) if return_lse else out
