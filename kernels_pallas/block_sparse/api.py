"""`block_sparse_attention`: one entry point, backend picked by platform (the kernel of MMInference, arXiv 2504.16083).

Backends (`BACKENDS`), all with the same masking semantics (see `reference.py`):
  * 'pallas_mosaic_gpu' -- Pallas Mosaic GPU, FlashAttention-3 style for Hopper (`gpu_mosaic.py`: warp-specialised,
                       TMA, wgmma); bf16/f16, compute capability 9.x only. 'auto' tries it first when JAX's default
                       device is a Hopper GPU (on an H200: 550 TFLOP/s dense-layout at 128k, cuDNN's 570;
                       `jaxagents.bench.sparse_attention`); elsewhere it is opt-in. Runs in jax's Mosaic GPU
                       interpreter with `interpret=True`.
  * 'pallas_triton' -- Pallas, Triton lowering (`gpu_triton.py`); the GPU backend of 'auto' on any GPU but a Hopper,
                       and its fallback there (shapes or dtypes the Hopper kernel refuses). Runs on a GPU, or
                       anywhere with `interpret=True`.
  * 'pallas_tpu'    -- Pallas Mosaic TPU (`tpu.py`), scalar-prefetched block lists. Runs on a TPU, or anywhere
                       with `interpret=True` / `pltpu.InterpretParams()`.
  * 'xla'           -- the dense masked reference (`reference.py`), O(S * T) memory; the CPU fallback.
  * 'auto'          -- ('pallas_triton', 'pallas_tpu', 'xla'), with 'pallas_mosaic_gpu' in front when the default
                       device is a Hopper GPU: cuda -> the Hopper kernel there, else 'pallas_triton'; rocm ->
                       'pallas_triton', tpu -> 'pallas_tpu', any other platform -> 'xla' (also with `interpret`,
                       which then applies to the choice).
`backend` may also be a sequence, tried in order (tokamax's `implementation=` idiom): a backend whose lowering
cannot take the block sizes (or `interpret`) is skipped, and so is one that does not lower for the platform the
call runs on. An eager call runs on `jax.default_backend()`. A traced call (under jit, or lowered ahead of time
with `jax.jit(f).trace(...).lower(lowering_platforms=...)` / `jax.export`) is decided by the *lowering* platform:
the candidates are staged out with `jax.lax.platform_dependent`, so a CPU process can lower the GPU and TPU paths.
A single platform-specific backend under tracing is taken as given (lowering it elsewhere fails in Pallas).
Forward only: no VJP is defined (MMInference
accelerates the prefill of inference).
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.block_sparse import gpu_mosaic
from kernels_pallas.block_sparse._compat import is_tpu_interpret_params
from kernels_pallas.block_sparse.gpu_triton import block_sparse_attention_triton
from kernels_pallas.block_sparse.layout import (
  BlockLayout,
  check_block_kinds,
  check_layout_values,
  is_concrete,
  validate_layout,
  with_block_kinds,
)
from kernels_pallas.block_sparse.reference import block_sparse_attention_reference
from kernels_pallas.block_sparse.tpu import block_sparse_attention_tpu

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_AUTO = ("pallas_triton", "pallas_tpu", "xla")

# The lowering platforms each Pallas backend compiles for without `interpret`; 'xla', and a Pallas backend run
# in the interpreter, lower for every platform.
PLATFORMS: dict[str, tuple[str, ...]] = {
  "pallas_mosaic_gpu": ("cuda",),
  "pallas_triton": ("cuda", "rocm"),
  "pallas_tpu": ("tpu",),
}


def default_device_is_hopper() -> bool:
  """True when JAX's default device is an NVIDIA GPU of compute capability 9.x (H100, H200, GH200): wgmma, which
  the Hopper kernel is built on, exists there only."""
  if jax.default_backend() != "gpu":
    return False
  return str(getattr(jax.devices()[0], "compute_capability", "")).split(".")[0] == "9"


def _auto_backends() -> tuple[str, ...]:
  return (("pallas_mosaic_gpu",) if default_device_is_hopper() else ()) + _AUTO


def _is_pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def _check_xla(layout: BlockLayout, interpret, q) -> None:
  del layout, interpret, q


def _check_mosaic_gpu(layout: BlockLayout, interpret, q) -> None:
  if is_tpu_interpret_params(interpret):
    raise NotImplementedError(
      "block_sparse_attention: backend 'pallas_mosaic_gpu' takes interpret=True, not a pltpu.InterpretParams"
    )
  _, q_len, _, head_dim = q.shape
  config = gpu_mosaic.choose_config(layout.block_q, layout.block_kv, head_dim, q_len, jnp.dtype(q.dtype).itemsize)
  gpu_mosaic.check_supported(layout, q_len, head_dim, q.dtype, config)


def _check_triton(layout: BlockLayout, interpret, q=None) -> None:
  if is_tpu_interpret_params(interpret):
    raise NotImplementedError(
      "block_sparse_attention: backend 'pallas_triton' takes interpret=True, not a pltpu.InterpretParams"
    )
  for name in ("block_q", "block_kv"):
    size = getattr(layout, name)
    if not _is_pow2(size) or size < 16:
      raise NotImplementedError(
        f"block_sparse_attention: backend 'pallas_triton' needs layout.{name} a power of two >= 16, got {size}"
      )


def _check_tpu(layout: BlockLayout, interpret, q=None) -> None:
  if not interpret and (layout.block_q % 8 or layout.block_kv % 8):
    raise NotImplementedError(
      f"block_sparse_attention: backend 'pallas_tpu' needs layout.block_q and layout.block_kv multiples of 8 "
      f"(Mosaic's block tiling), got block_q={layout.block_q}, block_kv={layout.block_kv}"
    )


_reference_jit = jax.jit(block_sparse_attention_reference, static_argnames=("causal", "sm_scale"))


def _run_xla(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  del interpret
  out, lse = _reference_jit(
    q, k, v, layout, causal=causal, q_positions=q_positions, kv_positions=kv_positions, sm_scale=sm_scale
  )
  return (out, lse) if return_lse else out


def _run_triton(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  _check_triton(layout, interpret)
  return block_sparse_attention_triton(
    q,
    k,
    v,
    layout,
    q_positions,
    kv_positions,
    causal=causal,
    sm_scale=sm_scale,
    interpret=interpret,
    return_lse=return_lse,
  )


def _run_mosaic_gpu(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  _check_mosaic_gpu(layout, interpret, q)
  return gpu_mosaic.block_sparse_attention_mosaic_gpu(
    q, k, v, layout, q_positions, kv_positions, causal=causal, sm_scale=sm_scale, interpret=interpret,
    return_lse=return_lse,
  )


def _run_tpu(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  _check_tpu(layout, interpret)
  return block_sparse_attention_tpu(
    q,
    k,
    v,
    layout,
    q_positions,
    kv_positions,
    causal=causal,
    sm_scale=sm_scale,
    interpret=interpret,
    return_lse=return_lse,
  )


# name -> fn(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse); a backend
# raises NotImplementedError when its lowering cannot take the call's block sizes or `interpret` (the platforms
# it lowers for are in PLATFORMS).
BACKENDS: dict[str, Callable] = {
  "pallas_mosaic_gpu": _run_mosaic_gpu,
  "pallas_triton": _run_triton,
  "pallas_tpu": _run_tpu,
  "xla": _run_xla,
}
_CHECKS: dict[str, Callable] = {
  "pallas_mosaic_gpu": _check_mosaic_gpu,
  "pallas_triton": _check_triton,
  "pallas_tpu": _check_tpu,
  "xla": _check_xla,
}


def _lowering_platforms(name: str, interpret, auto: bool) -> tuple[str, ...] | None:
  """The platforms backend `name` lowers for; None for every platform.

  'auto' keeps each Pallas backend on its own platform even with `interpret` (which then applies to the chosen
  one), so 'auto' on a CPU stays the XLA reference.
  """
  return None if interpret and not auto else PLATFORMS.get(name)


def _runs_on_default_backend(platforms: tuple[str, ...] | None) -> bool:
  default = jax.default_backend()  # 'gpu' stands for both cuda and rocm
  return platforms is None or default in platforms or (default == "gpu" and bool({"cuda", "rocm"} & set(platforms)))


def _positions(positions, name: str, batch: int, length: int, num_kv_heads: int, default_offset: int) -> jax.Array:
  """int32 [B, P, length] with P = 1, or P = Hkv for per-kv-head positions."""
  if positions is None:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + default_offset, (batch, 1, length))
  positions = jnp.asarray(positions)
  shapes = ((length,), (batch, length), (batch, num_kv_heads, length), (batch, 1, length))
  if not jnp.issubdtype(positions.dtype, jnp.integer) or positions.shape not in shapes:
    raise ValueError(
      f"block_sparse_attention: `{name}` must be int of shape [{length}], [B, {length}] or [B, Hkv, {length}] "
      f"with B={batch}, Hkv={num_kv_heads}, got {positions.dtype}{tuple(positions.shape)}"
    )
  positions = positions.astype(jnp.int32)
  return positions if positions.ndim == 3 else jnp.broadcast_to(positions.reshape(-1, 1, length), (batch, 1, length))


def _validate_inputs(q, k, v) -> None:
  for name, x, layout in (("q", q, "[B, S, Hq, D]"), ("k", k, "[B, T, Hkv, D]"), ("v", v, "[B, T, Hkv, D]")):
    if x.ndim != 4:
      raise ValueError(f"block_sparse_attention: `{name}` must be rank 4 {layout}, got shape {tuple(x.shape)}")
  if v.shape != k.shape:
    raise ValueError(f"block_sparse_attention: `v` must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
  if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
    raise ValueError(
      f"block_sparse_attention: `k` must be [B, T, Hkv, D] with B={q.shape[0]}, D={q.shape[3]} (from q), "
      f"got {tuple(k.shape)}"
    )
  if q.shape[2] % k.shape[2]:
    raise ValueError(
      f"block_sparse_attention: query heads Hq={q.shape[2]} must be a multiple of kv heads Hkv={k.shape[2]}"
    )
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOAT_DTYPES:
    raise ValueError(
      f"block_sparse_attention: `q`, `k`, `v` must share one dtype among float32/bfloat16/float16, got "
      f"{q.dtype}, {k.dtype}, {v.dtype}"
    )


def block_sparse_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  layout: BlockLayout,
  *,
  causal: bool = True,
  q_positions: jax.Array | None = None,
  kv_positions: jax.Array | None = None,
  sm_scale: float | None = None,
  block_q: int | None = None,
  block_kv: int | None = None,
  backend: str | Sequence[str] = "auto",
  interpret=False,
  return_lse: bool = False,
):
  """softmax(sm_scale * q k^T) v over the key/value blocks listed in `layout` (and causal by positions).

  Key t is visible to query s iff its block is listed for s's block (see `layout.py`) and, when `causal`,
  kv_positions[t] <= q_positions[s] or the layout marks the block full (`layout.partial`; computed here from the
  positions when the layout carries no kinds, so that the kernels mask only the partial blocks). Positions are the
  tokens' *original* positions, so permuted inputs (MMInference's grid/modality permutations) stay causal. Rows
  with no visible key return out = 0 and lse = -inf. Jit-able: the layout's values (listed ids in [0, T / block_kv),
  no id twice in a row, counts in [0, MAXN], no crossing block marked full) are checked when its arrays are
  concrete, and skipped when they are traced (`check_layout_values`, `check_block_kinds`).

  Args:
    q: [B, S, Hq, D] queries, float32/bfloat16/float16.
    k, v: [B, T, Hkv, D] keys/values, Hq % Hkv == 0 (GQA/MQA when Hkv < Hq).
    layout: BlockLayout with kv_blocks [B, H, S / block_q, MAXN], H = Hkv (per GQA group) or Hq.
    causal: apply the position mask on top of the layout.
    q_positions: int [S], [B, S] or [B, Hkv, S] (an order per kv head, e.g. a permuted head group); default
      arange(S) + T - S (queries aligned to the end of the keys).
    kv_positions: int [T], [B, T] or [B, Hkv, T]; default arange(T).
    sm_scale: score scale; default 1 / sqrt(D).
    block_q, block_kv: optional assertions; the block sizes are the layout's, and a different value here
      raises ValueError.
    backend: 'auto', a name in BACKENDS, or a sequence of names tried in order (see the module docstring).
    interpret: run a Pallas backend in the interpreter (True, or a `pltpu.InterpretParams` for 'pallas_tpu').
    return_lse: also return the log-sum-exp.
  Returns:
    out [B, S, Hq, D] in q.dtype; with return_lse, (out, lse float32 [B, Hq, S]).
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  _validate_inputs(q, k, v)
  (batch, q_len, num_q_heads, head_dim), (kv_len, num_kv_heads) = q.shape, k.shape[1:3]
  validate_layout(layout, batch=batch, q_len=q_len, kv_len=kv_len, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads)
  if is_concrete(layout):
    check_layout_values(layout, kv_len, where="block_sparse_attention")
  for name, given in (("block_q", block_q), ("block_kv", block_kv)):
    if given is not None and given != getattr(layout, name):
      raise ValueError(f"block_sparse_attention: `{name}`={given} does not match layout.{name}={getattr(layout, name)}")
  q_positions = _positions(q_positions, "q_positions", batch, q_len, num_kv_heads, kv_len - q_len)
  kv_positions = _positions(kv_positions, "kv_positions", batch, kv_len, num_kv_heads, 0)
  if q_positions.shape[1] != kv_positions.shape[1]:
    q_positions, kv_positions = (
      jnp.broadcast_to(x, (batch, num_kv_heads, x.shape[-1])) for x in (q_positions, kv_positions)
    )
  if causal and layout.partial is None:
    layout = with_block_kinds(layout, q_positions, kv_positions, num_q_heads)
  elif causal and is_concrete(layout) and not isinstance(q_positions, jax.core.Tracer):
    check_block_kinds(layout, q_positions, kv_positions, num_q_heads, where="block_sparse_attention")
  sm_scale = float(1.0 / np.sqrt(head_dim)) if sm_scale is None else float(sm_scale)

  auto = isinstance(backend, str) and backend == "auto"
  names = _auto_backends() if auto else (backend,) if isinstance(backend, str) else tuple(backend)
  unknown = [name for name in names if name not in BACKENDS]
  if not names or unknown:
    raise ValueError(
      f"block_sparse_attention: `backend` must be 'auto', one of {sorted(BACKENDS)}, or a non-empty sequence of "
      f"those, got {backend!r}"
    )
  # Eager calls run on JAX's default backend; a traced call runs wherever it is lowered, which is only known at
  # lowering time, so there the choice among platform-specific backends is staged out with platform_dependent.
  eager = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((q, k, v, layout, q_positions, kv_positions)))
  errors, candidates, platforms = [], [], {}
  for name in names:
    try:
      _CHECKS[name](layout, interpret, q)
    except NotImplementedError as error:
      errors.append(f"{name}: {error}")
      continue
    platforms[name] = _lowering_platforms(name, interpret, auto)
    if eager and not _runs_on_default_backend(platforms[name]):
      errors.append(
        f"{name}: block_sparse_attention: backend {name!r} lowers for {' / '.join(PLATFORMS[name])} only and JAX's "
        f"default backend is '{jax.default_backend()}'; pass interpret=True (or a pltpu.InterpretParams for "
        "'pallas_tpu') to run it in the Pallas interpreter, or trace and lower it for its platform"
      )
      continue
    candidates.append(name)
    if eager or platforms[name] is None:
      break  # this one runs wherever the call does: later names are never reached
  if not candidates:
    raise NotImplementedError("block_sparse_attention: no backend could run this call:\n  " + "\n  ".join(errors))
  kwargs = {"causal": causal, "sm_scale": sm_scale, "interpret": interpret, "return_lse": return_lse}
  run = {name: functools.partial(BACKENDS[name], **kwargs) for name in candidates}
  args = (q, k, v, layout, q_positions, kv_positions)
  if len(candidates) == 1:
    return run[candidates[0]](*args)
  per_platform = {}
  for name in candidates:
    for platform in platforms[name] or ():
      per_platform.setdefault(platform, run[name])
  default = run[candidates[-1]] if platforms[candidates[-1]] is None else None
  return jax.lax.platform_dependent(*args, default=default, **per_platform)
