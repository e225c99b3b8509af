"""Block-sparse flash-attention forward, portable Pallas GPU path (Triton lowering), after jax's
Pallas `mha` (`jax/experimental/pallas/ops/gpu/attention.py`).

FlashAttention-2 online softmax (Dao 2023, arXiv 2307.08691, Alg. 1) over a *listed* subset of key/value blocks:
one program per (query block i, query head, batch) keeps q[i] on chip and runs a `fori_loop` over
j < kv_count[b, h, i], loading K/V block kv_blocks[b, h, i, j] with a dynamic `pl.ds` slice:

    s      = (sm_scale * log2 e) * q k_n^T, masked to MASK where kv_pos > q_pos (causal)
    m'     = max(m, rowmax s);  alpha = 2^(m - m');  p = 2^(s - m')
    l'     = alpha l + rowsum p;  acc' = alpha acc + p v_n
    out    = acc / l;  lse = (m + log2 l) * ln 2      (out = 0, lse = -inf where l = 0)

`m` starts at MASK / 2 (finite), not -inf: a row whose keys are all masked so far then gets p = 2^(MASK/2) = 0
and alpha = 0 later, with no inf - inf = NaN and no extra select. Base-2 exponentials as in jax's Pallas `mha`.

GQA: the grid is (Hq / Hkv, NQ, B * Hkv) with the group axis fastest, so the query heads that share a kv head
(and, for a per-kv-head layout, the same block list) run back to back and hit the same K/V tiles in L2.

Constraints of the Triton lowering (checked by the API): block_q, block_kv powers of two >= 16; head_dim is
zero-padded here to a power of two >= 16 when it is not one (exact: zero columns add nothing to q.k, and the
padded output columns are dropped). This is 'auto''s GPU backend, for any GPU the Triton lowering takes; the
Hopper-specific FlashAttention-3-style kernel (Mosaic GPU: wgmma, TMA, warp-specialised) is `gpu_mosaic.py`.
Only partial blocks (`layout.partial`) read key positions and apply the causal mask. Checked without a GPU:
results in interpret mode on CPU, and that the Triton lowering accepts the kernel (cross-platform lowering for
CUDA). Not checked: PTX compilation, running on a GPU, and speed (an earlier prototype of this design reached
290-350 TFLOP/s on kept blocks on an H100, an unpublished measurement; this file's kernel has not been timed).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.block_sparse._compat import TritonCompilerParams, pl
from kernels_pallas.block_sparse.layout import BlockLayout

# Finite "minus infinity" for masked scores, as in jax's Pallas attention ops.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # q @ k^T
_NN = (((1,), (0,)), ((), ()))  # p @ v


def _kernel(
  q_ref,
  k_ref,
  v_ref,
  q_pos_ref,
  kv_pos_ref,
  kv_blocks_ref,
  partial_ref,
  kv_count_ref,
  o_ref,
  *lse_ref,
  causal,
  qk_scale,
  block_kv,
):
  """q_ref [bq, D]; k_ref, v_ref [T, D]; q_pos_ref [bq]; kv_pos_ref [T]; kv_blocks_ref, partial_ref [MAXN];
  kv_count_ref [1]."""
  block_q, head_dim = q_ref.shape
  num_kv_blocks = k_ref.shape[0] // block_kv
  q = q_ref[...]
  q_pos = q_pos_ref[...] if causal else None

  def body(j, carry):
    acc, m_prev, l_prev = carry
    # Clamped so that a malformed layout reads wrong blocks instead of faulting (cf. the illegal memory
    # access in https://github.com/microsoft/MInference/issues/86).
    kv_block = jnp.clip(kv_blocks_ref[j], 0, num_kv_blocks - 1)
    start = pl.multiple_of(kv_block * block_kv, block_kv)
    kv_slice = pl.ds(start, block_kv)
    s = lax.dot_general(q, k_ref[kv_slice, :], _NT, preferred_element_type=jnp.float32) * qk_scale
    if causal:  # only partial blocks read kv positions and mask
      s = lax.cond(
        partial_ref[j] != 0,
        lambda s: jnp.where(kv_pos_ref[kv_slice][None, :] <= q_pos[:, None], s, MASK_VALUE),
        lambda s: s,
        s,
      )
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
    alpha = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(s - m_next[:, None])
    l_next = alpha * l_prev + jnp.sum(p, axis=1)
    v = v_ref[kv_slice, :]
    pv = lax.dot_general(p.astype(v.dtype), v, _NN, preferred_element_type=jnp.float32)
    return alpha[:, None] * acc + pv, m_next, l_next

  init = (
    jnp.zeros((block_q, head_dim), jnp.float32),
    jnp.full((block_q,), 0.5 * MASK_VALUE, jnp.float32),
    jnp.zeros((block_q,), jnp.float32),
  )
  count = jnp.clip(kv_count_ref[0], 0, kv_blocks_ref.shape[0])
  acc, row_max, row_sum = lax.fori_loop(0, count, body, init)
  empty = row_sum == 0.0
  safe_sum = jnp.where(empty, 1.0, row_sum)
  o_ref[...] = (acc / safe_sum[:, None]).astype(o_ref.dtype)
  if lse_ref:
    lse_ref[0][...] = jnp.where(empty, -jnp.inf, (row_max + jnp.log2(safe_sum)) * math.log(2.0))


def launch_config(block_q: int, block_kv: int, head_dim: int) -> tuple[int, int]:
  """(num_warps, num_stages) for a program's tiles: 8 warps once the score tile reaches 128 x 64 with d > 64, else 4
  (jax's Pallas `mha` and the Triton fused-attention tutorial use 4 for d <= 64, 8 above); 3 pipeline stages for
  d <= 64, where the K/V tiles are small enough to triple-buffer in shared memory, else 2."""
  big_tile = block_q * block_kv >= 128 * 64 and head_dim > 64
  return (8 if big_tile else 4), (3 if head_dim <= 64 else 2)


@functools.partial(
  jax.jit, static_argnames=("causal", "sm_scale", "interpret", "return_lse", "num_warps", "num_stages")
)
def block_sparse_attention_triton(
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
  num_warps: int | None = None,
  num_stages: int | None = None,
):
  """Block-sparse attention forward on the Triton lowering (inputs already validated by the API).

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D].
    layout: BlockLayout, H in {Hkv, Hq}.
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv}.
    causal, sm_scale: see `block_sparse_attention`; with `causal`, layout.partial must be set.
    interpret: run the Pallas interpreter (CPU tests).
    num_warps, num_stages: Triton warps per program and software-pipelining depth of the kv loop; default
      `launch_config(block_q, block_kv, padded head_dim)`.
  Returns:
    out [B, S, Hq, D] (q.dtype), and lse float32 [B, Hq, S] if return_lse.
  """
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  groups = num_q_heads // num_kv_heads
  per_q_head_layout = layout.num_heads == num_q_heads and groups > 1
  per_kv_head_positions = q_positions.shape[1] > 1
  block_q, block_kv, max_blocks = layout.block_q, layout.block_kv, layout.max_blocks

  padded_dim = max(16, pl.next_power_of_2(head_dim))
  if padded_dim != head_dim:
    pad = [(0, 0)] * 3 + [(0, padded_dim - head_dim)]
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)

  def head_ids(g, bh):
    b, kv_head = lax.div(bh, num_kv_heads), lax.rem(bh, num_kv_heads)  # lax ops: no floor-division fixups
    q_head = kv_head * groups + g
    return b, q_head, kv_head, (q_head if per_q_head_layout else kv_head)

  def q_map(g, i, bh):
    b, q_head, _, _ = head_ids(g, bh)
    return b, i, q_head, 0

  def kv_map(g, i, bh):
    b, _, kv_head, _ = head_ids(g, bh)
    return b, 0, kv_head, 0

  def layout_map(g, i, bh):
    b, _, _, layout_head = head_ids(g, bh)
    return b, layout_head, i, 0

  def positions_row(g, bh):
    b, _, kv_head, _ = head_ids(g, bh)
    return b, (kv_head if per_kv_head_positions else 0)

  def lse_map(g, i, bh):
    b, q_head, _, _ = head_ids(g, bh)
    return b, q_head, i

  in_specs = [
    pl.BlockSpec((None, block_q, None, padded_dim), q_map),
    pl.BlockSpec((None, kv_len, None, padded_dim), kv_map),
    pl.BlockSpec((None, kv_len, None, padded_dim), kv_map),
    pl.BlockSpec((None, None, block_q), lambda g, i, bh: (*positions_row(g, bh), i)),
    pl.BlockSpec((None, None, kv_len), lambda g, i, bh: (*positions_row(g, bh), 0)),
    pl.BlockSpec((None, None, None, max_blocks), layout_map),
    pl.BlockSpec((None, None, None, max_blocks), layout_map),
    pl.BlockSpec((None, None, None, 1), layout_map),
  ]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  out_specs = [pl.BlockSpec((None, block_q, None, padded_dim), q_map)]
  if return_lse:
    out_shape.append(jax.ShapeDtypeStruct((batch, num_q_heads, q_len), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, block_q), lse_map))

  partial = jnp.ones(layout.kv_blocks.shape, jnp.int32) if layout.partial is None else layout.partial.astype(jnp.int32)
  default_warps, default_stages = launch_config(block_q, block_kv, padded_dim)
  kernel = functools.partial(_kernel, causal=causal, qk_scale=sm_scale * math.log2(math.e), block_kv=block_kv)
  results = pl.pallas_call(
    kernel,
    grid=(groups, q_len // block_q, batch * num_kv_heads),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=TritonCompilerParams(num_warps=num_warps or default_warps, num_stages=num_stages or default_stages),
    interpret=interpret,
    name="block_sparse_attention_fwd",
  )(q, k, v, q_positions, kv_positions, layout.kv_blocks, partial, layout.kv_count[..., None])
  out = results[0][..., :head_dim]
  return (out, results[1]) if return_lse else out
