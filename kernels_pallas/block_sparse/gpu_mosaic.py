"""Block-sparse flash-attention forward for Hopper (sm90) on Pallas Mosaic GPU, FlashAttention-3 style.

After jax's FA3 kernel `jax/experimental/pallas/ops/gpu/attention_mgpu.py` (`_attention_forward`), itself after
FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608, Sec. 3.1): warp specialisation (one memory warpgroup
issuing TMA copies into a `max_concurrent_steps`-deep shared-memory ring guarded by barriers, compute warpgroups
of 64 query rows each running wgmma for q k^T and p v) and pingpong scheduling of two compute warpgroups (a
schedule barrier lets one warpgroup's softmax overlap the other's matmuls). The dense kv loop of that kernel is
replaced by a walk over a *listed* subset of key/value blocks (MMInference, arXiv 2504.16083; `layout.py`).
Online softmax in base 2 (FlashAttention-2, arXiv 2307.08691, Alg. 1):

    s = (sm_scale * log2 e) q k_n^T, set to -inf where kv_pos > q_pos (partial blocks only)
    m' = max(m, rowmax s);  alpha = 2^(m - m');  p = 2^(s - m');  l' = alpha l + rowsum p;  acc' = alpha acc + p v_n
    out = acc / l;  lse = (m + log2 l) ln 2;    rows with l = 0: out = 0, lse = -inf

`m` starts finite (MASK_VALUE / 2), so masked (-inf) scores give p = 0 and alpha stays finite: no NaN on rows
whose keys are all masked so far, or on empty rows.

Program and warpgroup mapping. The grid is (Hq, S / (64 W), B), W = `compute_wgs` compute warpgroups plus one
memory warpgroup; query head hq reads kv head hkv = hq // (Hq / Hkv) (K/V keep Hkv heads), layout head h = hq for
a per-query-head layout (H = Hq), else hkv, positions row hkv for [B, Hkv, N] positions, else 0. Program t's
warpgroup w owns query rows [64 (W t + w), 64 (W t + w + 1)), i.e. layout row i_w = 64 (W t + w) // layout.block_q:
  * layout.block_q a multiple of 64 W: the W warpgroups share one layout row (jax's mapping: one K/V stream,
    each slot consumed by all W warpgroups);
  * layout.block_q = 64 with W = 2: each warpgroup runs its own row (rows 2t and 2t + 1) with its own K/V ring
    ("split" streams; the same K/V block may then be loaded twice); the warpgroup with fewer steps keeps taking
    part in the pingpong barrier until the other is done (as jax's causal epilogue loop does).
A listed block of layout.block_kv tokens is loaded as layout.block_kv / block_kv kernel steps (block_kv divides
it). Block lists reach shared memory once per program: the wrapper packs row (b, h, i) as int32
[kv_count, 2 id_0 + partial_0, 2 id_1 + partial_1, ...] (ids clamped to [0, T / block_kv), counts to
[0, MAXN]), one TMA copy per stream, and every warpgroup reads it with scalar loads. A step's block is partial
(masked by positions) when `causal` and the layout marks it so (all blocks when `layout.partial` is None); full
blocks take the unmasked branch of a `lax.cond` and neither load nor read positions: the memory warpgroup
copies a block's key positions only for partial blocks, the compute warpgroups wait for them only there.

Tuning (`choose_config`, or a `MosaicConfig` given): W = 2 (FA3's pingpong pair), except W = 1 for
layout.block_q = 64 with head_dim > 128 (two split K/V rings of 256-wide rows do not fit in shared memory) or an
odd number of layout rows; block_kv = 128 when head_dim <= 128, layout.block_kv % 128 == 0 and the warpgroups
share one stream, else 64; max_concurrent_steps = the deepest ring in (4, 3, 2) whose buffers fit in 200 KiB of
shared memory (Hopper has 227 KiB per block). head_dim is zero-padded to a multiple of 64 (exact: zero columns
add nothing to q k^T, and the padded output columns are dropped). Inputs bfloat16 or float16.

`interpret=True` (or a GPU `InterpretGPUParams`) runs the kernel in jax's Mosaic GPU interpreter
(`jax/_src/pallas/mosaic_gpu/interpret/`), which simulates shared memory, TMA copies, barriers and warpgroups on
the CPU. It lacks features used here, so interpret mode swaps them for equivalents: layout hints
(`plgpu.layout_cast`, `plgpu.load(..., layout=...)`) become plain reads, and the two wgmmas become dots of the
same shared-memory tiles (the interpreter's wgmma takes no transposed operand, no register operand and no
`pl.run_state` accumulator). Everything else (block-list walk, TMA ring, barriers and their phases, masks,
ping-pong, head mapping, empty rows) is the compiled code.
Not checked here: PTX compilation, running on an H100/H200, speed.
"""

import dataclasses
import functools
import math

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from kernels_pallas.block_sparse._compat import MosaicGPUInterpretParams as InterpretGPUParams
from kernels_pallas.block_sparse.gpu_mosaic_config import (
  _SCHED_COLS,
  SMEM_BUDGET,
  SMEM_LIMIT,
  WG_ROWS,
  MosaicConfig,
  _num_streams,
  _padded_dim,
  check_supported,
  choose_config,
  smem_bytes,
)
from kernels_pallas.block_sparse.layout import BlockLayout

__all__ = [
  "SMEM_BUDGET",
  "SMEM_LIMIT",
  "InterpretGPUParams",
  "MosaicConfig",
  "block_sparse_attention_mosaic_gpu",
  "check_supported",
  "choose_config",
  "smem_bytes",
]

# Finite "minus infinity" start of the running max, as in jax's Pallas attention ops.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # q @ k^T
_NN = (((1,), (0,)), ((), ()))  # p @ v


def _pack_schedule(layout: BlockLayout, num_kv_blocks: int, causal: bool) -> jax.Array:
  """int32 [B, H, NQ, R, 64]: per layout row [kv_count, 2 id_j + partial_j for j < MAXN, 0 padding]."""
  count = jnp.clip(layout.kv_count, 0, layout.max_blocks)
  ids = jnp.clip(layout.kv_blocks, 0, num_kv_blocks - 1)
  if not causal:
    partial = jnp.zeros_like(ids)
  elif layout.partial is None:
    partial = jnp.ones_like(ids)
  else:
    partial = layout.partial.astype(jnp.int32)
  row = jnp.concatenate([count[..., None], 2 * ids + partial], axis=-1)
  width = -(-row.shape[-1] // _SCHED_COLS) * _SCHED_COLS
  row = jnp.pad(row, [(0, 0)] * 3 + [(0, width - row.shape[-1])])
  return row.reshape(*row.shape[:3], width // _SCHED_COLS, _SCHED_COLS)


@dataclasses.dataclass(frozen=True)
class _Ops:
  """The operations the Mosaic GPU interpreter lacks, with their interpret-mode equivalents."""

  interpret: bool

  def cast(self, x, layout):
    return x if self.interpret else plgpu.layout_cast(x, layout)

  def load(self, ref, layout):
    return ref[...] if self.interpret else plgpu.load(ref, (), layout=layout)

  def qk(self, q_ref, k_ref, after_issue):
    """q_ref @ k_ref^T in float32; `after_issue()` runs while the wgmma is in flight (compiled)."""
    if self.interpret:
      out = lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=jnp.float32)
      after_issue()
      return out

    def compute(acc_ref):
      plgpu.wgmma(acc_ref, q_ref, plgpu.transpose_ref(k_ref, (1, 0)))
      after_issue()
      return acc_ref[...]

    return pl.run_scoped(compute, plgpu.ACC((q_ref.shape[0], k_ref.shape[0]), jnp.float32))

  def pv(self, acc, p, v_ref, after_issue):
    """acc + p @ v_ref; `after_issue()` runs while the wgmma is in flight (compiled)."""
    if self.interpret:
      out = acc + lax.dot_general(p, v_ref[...], _NN, preferred_element_type=jnp.float32)
      after_issue()
      return out

    def compute(acc_ref):
      plgpu.wgmma(acc_ref, p, v_ref)
      after_issue()

    return pl.run_state(compute)(plgpu.ACC.init(acc))


def _kernel(
  q_ref,
  k_ref,
  v_ref,
  q_pos_ref,
  kv_pos_ref,
  sched_ref,
  out_ref,
  lse_ref,
  scoped,
  *,
  ops,
  causal,
  qk_scale,
  config,
  streams,
  layout_block_q,
  sub_steps,
  groups,
  per_q_head_layout,
  per_kv_head_positions,
):
  (qo_smem, k_smem, v_smem, sched_smem, q_pos_smem, kv_pos_smem, lse_smem), barriers = scoped
  sched_barriers, q_barriers, q_pos_barriers, k_barriers, v_barriers, pos_barriers = barriers[:6]
  k_consumed, v_consumed, schedule_barrier = barriers[6:]
  wgs, block_kv, depth = config.compute_wgs, config.block_kv, config.max_concurrent_steps
  dtype = qo_smem.dtype
  head_dim = qo_smem.shape[-1]
  batch, q_head, tile = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_seq")
  wg = lax.axis_index("wg")
  kv_head = lax.div(q_head, jnp.int32(groups))
  layout_head = q_head if per_q_head_layout else kv_head
  pos_head = kv_head if per_kv_head_positions else 0
  tile_rows = WG_ROWS * wgs

  def layout_row(stream):
    return lax.div(tile * tile_rows + stream * WG_ROWS, jnp.int32(layout_block_q))

  def sched_at(stream, index):
    return sched_smem[stream, lax.div(index, _SCHED_COLS), lax.rem(index, _SCHED_COLS)]

  def entry(stream, step):
    return sched_at(stream, 1 + (step if sub_steps == 1 else lax.div(step, jnp.int32(sub_steps))))

  def num_steps(stream):
    return sched_at(stream, 0) * sub_steps

  def schedule_sync():
    if wgs > 1:
      plgpu.barrier_arrive(schedule_barrier)
      plgpu.barrier_wait(schedule_barrier)

  @pl.when(wg < wgs)
  def _compute_wg():
    if wgs > 1:
      plgpu.set_max_registers(232, action="increase")
    stream = wg if streams > 1 else 0
    qo = qo_smem.at[wg]
    row0 = tile * tile_rows + wg * WG_ROWS
    plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(row0, WG_ROWS), q_head], qo, q_barriers.at[wg])
    if causal:
      plgpu.copy_gmem_to_smem(
        q_pos_ref.at[batch, pos_head, pl.ds(row0, WG_ROWS)], q_pos_smem.at[wg], q_pos_barriers.at[wg]
      )
    for s in range(streams):
      plgpu.barrier_wait(sched_barriers.at[s])
    steps = num_steps(stream)
    most_steps = steps
    for s in range(streams):
      most_steps = jnp.maximum(most_steps, num_steps(s))
    plgpu.barrier_wait(q_barriers.at[wg])
    q_pos = None
    if causal:
      plgpu.barrier_wait(q_pos_barriers.at[wg])
      q_pos = ops.load(q_pos_smem.at[wg], plgpu.Layout.WGMMA.reduce(1))

    m_i = ops.cast(jnp.full((WG_ROWS,), 0.5 * MASK_VALUE, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    l_i = ops.cast(jnp.full((WG_ROWS,), 0.0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    acc = ops.cast(jnp.full((WG_ROWS, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA)

    @pl.when(steps > 0)
    def _():
      plgpu.barrier_wait(k_barriers.at[stream * depth])

    pl.when(wg == 1)(schedule_sync)

    def mask(slot, s):
      plgpu.barrier_wait(pos_barriers.at[slot])
      kv_pos = ops.load(kv_pos_smem.at[slot], plgpu.Layout.WGMMA.reduce(0))
      shape = (WG_ROWS, block_kv)
      visible = lax.broadcast_in_dim(kv_pos, shape, [1]) <= lax.broadcast_in_dim(q_pos, shape, [0])
      return jnp.where(visible, s, -jnp.inf)

    def kv_step(step, carry):
      acc, m_i, l_i = carry
      slot = stream * depth + lax.rem(step, jnp.int32(depth))

      qk = ops.qk(qo, k_smem.at[slot], schedule_sync)
      plgpu.barrier_arrive(k_consumed.at[slot])
      s = qk * qk_scale
      if causal:
        partial = lax.rem(entry(stream, step), 2) != 0
        s = lax.cond(partial, functools.partial(mask, slot), lambda s: s, s)
      m_ij = jnp.maximum(m_i, s.max(axis=1))
      alpha = jnp.exp2(m_i - m_ij)
      m_i = m_ij
      p = jnp.exp2(s - lax.broadcast_in_dim(m_ij, s.shape, [0]))
      acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
      l_i *= alpha
      p16 = p.astype(dtype)

      def end_softmax_barriers():
        if wgs > 1:
          plgpu.barrier_arrive(schedule_barrier)  # done with the softmax
        plgpu.barrier_wait(v_barriers.at[slot])
        if wgs > 1:
          plgpu.barrier_wait(schedule_barrier)  # the tensor cores are free

      # The order of these two jax found to matter for speed (attention_mgpu.py).
      if head_dim <= 128:
        l_i += p.sum(axis=1)
        acc, l_i, m_i, p16 = lax.optimization_barrier((acc, l_i, m_i, p16))
        end_softmax_barriers()
      else:
        end_softmax_barriers()
        l_i += p.sum(axis=1)

      def wait_next_k():
        next_slot = stream * depth + lax.rem(step + 1, jnp.int32(depth))

        @pl.when(step + 1 < steps)
        def _():
          plgpu.barrier_wait(k_barriers.at[next_slot])

      acc = ops.pv(acc, p16, v_smem.at[slot], wait_next_k)
      plgpu.barrier_arrive(v_consumed.at[slot])
      return acc, m_i, l_i

    acc, m_i, l_i = lax.fori_loop(0, steps, kv_step, (acc, m_i, l_i))
    if streams > 1:  # keep the ping-pong barrier in step with the warpgroup that has more blocks

      def idle_step(_, carry):
        schedule_sync()
        schedule_sync()
        return carry

      lax.fori_loop(steps, most_steps, idle_step, 0)
    pl.when(wg == 0)(schedule_sync)

    empty = l_i == 0.0
    safe_l = jnp.where(empty, 1.0, l_i)
    acc /= lax.broadcast_in_dim(safe_l, acc.shape, [0])
    qo[...] = acc.astype(dtype)
    if lse_smem is not None:
      lse_smem.at[wg][...] = jnp.where(empty, -jnp.inf, (m_i + jnp.log2(safe_l)) * math.log(2.0))
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qo, out_ref.at[batch, pl.ds(row0, WG_ROWS), q_head])
    if lse_smem is not None:
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[batch, q_head, pl.ds(row0, WG_ROWS)])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == wgs)
  def _memory_wg():
    if wgs > 1:
      plgpu.set_max_registers(40, action="decrease")
    for s in range(streams):
      plgpu.copy_gmem_to_smem(sched_ref.at[batch, layout_head, layout_row(s)], sched_smem.at[s], sched_barriers.at[s])
    for s in range(streams):
      plgpu.barrier_wait(sched_barriers.at[s])
    counts = [num_steps(s) for s in range(streams)]

    def issue(stream, step):
      code = entry(stream, step)
      start = lax.div(code, 2) * (block_kv * sub_steps)
      if sub_steps > 1:
        start += lax.rem(step, jnp.int32(sub_steps)) * block_kv
      kv_slice = (batch, pl.ds(start, block_kv), kv_head)
      slot = stream * depth + lax.rem(step, jnp.int32(depth))
      refill = step >= depth
      pl.when(refill)(lambda: plgpu.barrier_wait(k_consumed.at[slot]))
      plgpu.copy_gmem_to_smem(k_ref.at[kv_slice], k_smem.at[slot], k_barriers.at[slot])
      pl.when(refill)(lambda: plgpu.barrier_wait(v_consumed.at[slot]))
      plgpu.copy_gmem_to_smem(v_ref.at[kv_slice], v_smem.at[slot], v_barriers.at[slot])
      if causal:  # key positions only for partial blocks

        @pl.when(lax.rem(code, 2) != 0)
        def _():
          positions = kv_pos_ref.at[batch, pos_head, pl.ds(start, block_kv)]
          plgpu.copy_gmem_to_smem(positions, kv_pos_smem.at[slot], pos_barriers.at[slot])

    def drain(stream, step):
      slot = stream * depth + lax.rem(step, jnp.int32(depth))
      plgpu.barrier_wait(k_consumed.at[slot])
      plgpu.barrier_wait(v_consumed.at[slot])

    @pl.loop(0, functools.reduce(jnp.maximum, counts))
    def _issue(step):
      for s in range(streams):
        pl.when(step < counts[s])(functools.partial(issue, s, step))

    # Wait for the last `depth` steps to be consumed too, so that every barrier this warpgroup waits on is seen
    # through all its phases before the block exits (the interpreter checks it; on a GPU it only idles here).
    for s in range(streams):
      pl.loop(jnp.maximum(counts[s] - depth, 0), counts[s])(functools.partial(drain, s))


def _interpret_params(interpret):
  if interpret is True:
    if InterpretGPUParams is None:  # pragma: no cover - older jax
      raise NotImplementedError("block_sparse_attention_mosaic_gpu: this jax has no Mosaic GPU interpreter")
    return InterpretGPUParams()
  if interpret is False or interpret is None:
    return None
  if InterpretGPUParams is not None and isinstance(interpret, InterpretGPUParams):
    return interpret
  raise NotImplementedError(
    f"block_sparse_attention_mosaic_gpu: `interpret` must be a bool or a Mosaic GPU InterpretGPUParams, "
    f"got {type(interpret).__name__}"
  )


def _validate(q, k, v, layout, q_positions, kv_positions) -> None:
  where = "block_sparse_attention_mosaic_gpu"
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
    raise ValueError(
      f"{where}: `q` must be [B, S, Hq, D] and `k`, `v` [B, T, Hkv, D] of one shape, got q{tuple(q.shape)}, "
      f"k{tuple(k.shape)}, v{tuple(v.shape)}"
    )
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  if k.shape[0] != batch or k.shape[3] != head_dim or num_q_heads % num_kv_heads:
    raise ValueError(
      f"{where}: `k` must be [B={batch}, T, Hkv, D={head_dim}] with Hq={num_q_heads} a multiple of Hkv, "
      f"got {tuple(k.shape)}"
    )
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"{where}: `q`, `k`, `v` must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
  if layout.kv_blocks.shape[:3] != (batch, layout.num_heads, q_len // layout.block_q) or q_len % layout.block_q:
    raise ValueError(
      f"{where}: `layout.kv_blocks` must be [B={batch}, H, S / block_q, MAXN] with S={q_len}, "
      f"block_q={layout.block_q}, got {tuple(layout.kv_blocks.shape)}"
    )
  if layout.num_heads not in (num_q_heads, num_kv_heads):
    raise ValueError(f"{where}: layout heads must be Hkv={num_kv_heads} or Hq={num_q_heads}, got {layout.num_heads}")
  if kv_len % layout.block_kv:
    raise ValueError(f"{where}: T={kv_len} must be a multiple of `layout.block_kv`={layout.block_kv}")
  for name, pos, length in (("q_positions", q_positions, q_len), ("kv_positions", kv_positions, kv_len)):
    if pos.ndim != 3 or pos.shape[0] != batch or pos.shape[1] not in (1, num_kv_heads) or pos.shape[2] != length:
      raise ValueError(
        f"{where}: `{name}` must be int32 [B={batch}, 1 or Hkv={num_kv_heads}, {length}], got {tuple(pos.shape)}"
      )
  if q_positions.shape[1] != kv_positions.shape[1]:
    raise ValueError(
      f"{where}: `q_positions` and `kv_positions` must have the same P (1 or Hkv), got "
      f"{q_positions.shape[1]} and {kv_positions.shape[1]}"
    )


@functools.partial(jax.jit, static_argnames=("causal", "sm_scale", "interpret", "return_lse", "config"))
def block_sparse_attention_mosaic_gpu(
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
  config: MosaicConfig | None = None,
):
  """Block-sparse attention forward on Mosaic GPU (sm90; see the module docstring).

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D]; bfloat16 or float16.
    layout: BlockLayout, H in {Hkv, Hq}; block_q a multiple of 64 x compute warpgroups, or 64; block_kv a
      multiple of the kernel's block_kv (64 or 128).
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv}.
    causal, sm_scale: as `block_sparse_attention`; with `causal`, blocks whose `layout.partial` is False are not
      masked (all are when it is None).
    interpret: True (or an `InterpretGPUParams`) runs jax's Mosaic GPU interpreter on the CPU.
    return_lse: also return the log-sum-exp.
    config: MosaicConfig; default `choose_config(layout.block_q, layout.block_kv, D, S)`.
  Returns:
    out [B, S, Hq, D] (q.dtype), and lse float32 [B, Hq, S] if return_lse.
  Raises:
    NotImplementedError for a dtype, block size or config the kernel cannot take (`check_supported`).
  """
  _validate(q, k, v, layout, q_positions, kv_positions)
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  config = config or choose_config(layout.block_q, layout.block_kv, head_dim, q_len, jnp.dtype(q.dtype).itemsize)
  check_supported(layout, q_len, head_dim, q.dtype, config)
  params = _interpret_params(interpret)
  wgs, block_kv, depth = config.compute_wgs, config.block_kv, config.max_concurrent_steps
  streams = _num_streams(layout.block_q, wgs)
  groups = num_q_heads // num_kv_heads

  dim = _padded_dim(head_dim)
  if dim != head_dim:
    pad = [(0, 0)] * 3 + [(0, dim - head_dim)]
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
  sched = _pack_schedule(layout, kv_len // layout.block_kv, causal)
  q_positions, kv_positions = q_positions.astype(jnp.int32), kv_positions.astype(jnp.int32)

  tiled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
  smem = [
    plgpu.SMEM((wgs, WG_ROWS, dim), q.dtype, transforms=tiled),
    plgpu.SMEM((streams * depth, block_kv, dim), q.dtype, transforms=tiled),
    plgpu.SMEM((streams * depth, block_kv, dim), q.dtype, transforms=tiled),
    plgpu.SMEM((streams, *sched.shape[-2:]), jnp.int32),
    plgpu.SMEM((wgs, WG_ROWS), jnp.int32) if causal else None,
    plgpu.SMEM((streams * depth, block_kv), jnp.int32) if causal else None,
    plgpu.SMEM((wgs, WG_ROWS), jnp.float32) if return_lse else None,
  ]
  ring = streams * depth
  consumers = wgs // streams
  barriers = [
    plgpu.Barrier(num_barriers=streams),  # block lists
    plgpu.Barrier(num_barriers=wgs),  # q
    plgpu.Barrier(num_barriers=wgs) if causal else None,  # q positions
    plgpu.Barrier(num_barriers=ring),  # k
    plgpu.Barrier(num_barriers=ring),  # v
    plgpu.Barrier(num_barriers=ring) if causal else None,  # kv positions of partial blocks
    plgpu.Barrier(num_arrivals=consumers, num_barriers=ring),  # k slot consumed
    plgpu.Barrier(num_arrivals=consumers, num_barriers=ring),  # v slot consumed
    plgpu.Barrier(num_arrivals=wgs) if wgs > 1 else None,  # ping-pong schedule
  ]
  kernel = functools.partial(
    _kernel,
    ops=_Ops(params is not None),
    causal=causal,
    qk_scale=float(sm_scale) * math.log2(math.e),
    config=config,
    streams=streams,
    layout_block_q=layout.block_q,
    sub_steps=layout.block_kv // block_kv,
    groups=groups,
    per_q_head_layout=layout.num_heads == num_q_heads and groups > 1,
    per_kv_head_positions=q_positions.shape[1] > 1,
  )

  def entry(*refs):
    pl.run_scoped(lambda *scoped: kernel(*refs, scoped), tuple(smem), tuple(barriers), collective_axes="wg")

  out_type = [jax.ShapeDtypeStruct(q.shape, q.dtype), None]
  if return_lse:
    out_type[1] = jax.ShapeDtypeStruct((batch, num_q_heads, q_len), jnp.float32)
  out, lse = plgpu.kernel(
    entry,
    out_type=out_type,
    grid=(num_q_heads, q_len // (WG_ROWS * wgs), batch),
    grid_names=("heads", "q_seq", "batch"),
    num_threads=wgs + 1,
    thread_name="wg",
    compiler_params=plgpu.CompilerParams(approx_math=True),
    interpret=params,
  )(q, k, v, q_positions, kv_positions, sched)
  out = out[..., :head_dim]
  return (out, lse) if return_lse else out
