"""`block_sparse_attention`: one entry point, backend picked by platform (MMInference spec §5.2).

Backends (`BACKENDS`), all with the same masking semantics (see `reference.py`):
  * 'pallas_triton' -- Pallas, Triton lowering (`gpu_triton.py`); the GPU backend. Runs on a GPU, or anywhere
                       with `interpret=True`.
  * 'pallas_tpu'    -- Pallas Mosaic TPU (`tpu.py`), scalar-prefetched block lists. Runs on a TPU, or anywhere
                       with `interpret=True` / `pltpu.InterpretParams()`.
  * 'xla'           -- the dense masked reference (`reference.py`), O(S * T) memory; the CPU fallback.
  * 'auto'          -- by `jax.default_backend()`: gpu -> 'pallas_triton', tpu -> 'pallas_tpu', else 'xla'.
`backend` may also be a sequence, tried in order: a backend that cannot run here (wrong platform, a shape its
lowering cannot take) raises NotImplementedError and the next one is tried (tokamax's `implementation=` idiom).
No Hopper-specific (Mosaic GPU / wgmma) backend exists yet. Forward only: no VJP is defined (prefill use, spec
§5.5 leaves gradients out of scope).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.block_sparse._compat import is_tpu_interpret_params
from kernels_pallas.block_sparse.gpu_triton import block_sparse_attention_triton
from kernels_pallas.block_sparse.layout import BlockLayout, validate_layout
from kernels_pallas.block_sparse.reference import block_sparse_attention_reference
from kernels_pallas.block_sparse.tpu import block_sparse_attention_tpu

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_AUTO = {"gpu": "pallas_triton", "tpu": "pallas_tpu"}


def _is_pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


_reference_jit = jax.jit(block_sparse_attention_reference, static_argnames=("causal", "sm_scale"))


def _run_xla(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  del interpret
  out, lse = _reference_jit(
    q, k, v, layout, causal=causal, q_positions=q_positions, kv_positions=kv_positions, sm_scale=sm_scale
  )
  return (out, lse) if return_lse else out


def _run_triton(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  if not interpret and jax.default_backend() != "gpu":
    raise NotImplementedError(
      f"block_sparse_attention: backend 'pallas_triton' needs a GPU (JAX's default backend is "
      f"'{jax.default_backend()}'); pass interpret=True to run it in the Pallas interpreter"
    )
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


def _run_tpu(q, k, v, layout, q_positions, kv_positions, *, causal, sm_scale, interpret, return_lse):
  if not interpret:
    if jax.default_backend() != "tpu":
      raise NotImplementedError(
        f"block_sparse_attention: backend 'pallas_tpu' needs a TPU (JAX's default backend is "
        f"'{jax.default_backend()}'); pass interpret=True or pltpu.InterpretParams() to run it in the interpreter"
      )
    if layout.block_q % 8 or layout.block_kv % 128:
      raise NotImplementedError(
        f"block_sparse_attention: backend 'pallas_tpu' needs layout.block_q % 8 == 0 and layout.block_kv % 128 == 0 "
        f"on a TPU, got block_q={layout.block_q}, block_kv={layout.block_kv}"
      )
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
# raises NotImplementedError when it cannot run the call here.
BACKENDS: dict[str, Callable] = {"pallas_triton": _run_triton, "pallas_tpu": _run_tpu, "xla": _run_xla}


def _positions(positions, name: str, batch: int, length: int, default_offset: int) -> jax.Array:
  if positions is None:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + default_offset, (batch, length))
  positions = jnp.asarray(positions)
  if not jnp.issubdtype(positions.dtype, jnp.integer) or positions.shape not in ((length,), (batch, length)):
    raise ValueError(
      f"block_sparse_attention: `{name}` must be int of shape [{length}] or [B, {length}] with B={batch}, "
      f"got {positions.dtype}{tuple(positions.shape)}"
    )
  return jnp.broadcast_to(positions.astype(jnp.int32), (batch, length))


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
  kv_positions[t] <= q_positions[s]. Positions are the tokens' *original* positions, so permuted inputs
  (MMInference's grid/modality permutations) stay causal. Rows with no visible key return out = 0 and
  lse = -inf. Jit-able (all checks are on shapes); layout values are checked by `check_layout`.

  Args:
    q: [B, S, Hq, D] queries, float32/bfloat16/float16.
    k, v: [B, T, Hkv, D] keys/values, Hq % Hkv == 0 (GQA/MQA when Hkv < Hq).
    layout: BlockLayout with kv_blocks [B, H, S / block_q, MAXN], H = Hkv (per GQA group) or Hq.
    causal: apply the position mask on top of the layout.
    q_positions: int [S] or [B, S]; default arange(S) + T - S (queries aligned to the end of the keys).
    kv_positions: int [T] or [B, T]; default arange(T).
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
  for name, given in (("block_q", block_q), ("block_kv", block_kv)):
    if given is not None and given != getattr(layout, name):
      raise ValueError(f"block_sparse_attention: `{name}`={given} does not match layout.{name}={getattr(layout, name)}")
  q_positions = _positions(q_positions, "q_positions", batch, q_len, kv_len - q_len)
  kv_positions = _positions(kv_positions, "kv_positions", batch, kv_len, 0)
  sm_scale = float(1.0 / np.sqrt(head_dim)) if sm_scale is None else float(sm_scale)

  if backend == "auto":
    backend = _AUTO.get(jax.default_backend(), "xla")
  names = (backend,) if isinstance(backend, str) else tuple(backend)
  unknown = [name for name in names if name not in BACKENDS]
  if not names or unknown:
    raise ValueError(
      f"block_sparse_attention: `backend` must be 'auto', one of {sorted(BACKENDS)}, or a non-empty sequence of "
      f"those, got {backend!r}"
    )
  errors = []
  for name in names:
    try:
      return BACKENDS[name](
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
    except NotImplementedError as error:
      errors.append(f"{name}: {error}")
  raise NotImplementedError("block_sparse_attention: no backend could run this call:\n  " + "\n  ".join(errors))
