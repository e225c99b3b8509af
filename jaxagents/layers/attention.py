"""Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) with GQA (Ainslie et al. 2023, arXiv 2305.13245),
position-based causal masking, segment (packing) masks and key padding -- one function, several backends.

`attention(q, k, v, ...)` validates its inputs, resolves `backend` and calls `ATTENTION_BACKENDS[backend]`:
  * 'xla'   -- the einsum reference below; every other backend is tested against it.
  * 'cudnn' -- `jax.nn.dot_product_attention(implementation='cudnn')` (GPU only, bf16/fp16).
  * 'auto'  -- 'cudnn' on a GPU for bf16/fp16 inputs with no mask that cuDNN cannot express natively,
               else 'xla'.
  * 'sparse' -- MMInference sparse attention (arXiv 2504.16083),
               `jaxagents.sparse.mminference_attention` under `sparse_config` (one layer's head entries and
               block sizes) with `modality_ids`. Causal self-attention prefill only (S == T, default
               positions); of the masks it honours `kv_mask` and `kv_lengths` (padding keys), nothing else.
               S is padded at the front to a multiple of the block sizes with masked keys. Its output is
               dense attention under the layout's token mask (and the masks above); padding query rows are
               finite (zeros when no real key precedes them). Inputs shorter than the config's length-bound
               parameters (`sparse_min_length`: last_q, v_size, s_size, strides) run the dense 'auto'
               backend, as MInference runs short prompts dense. Never chosen by 'auto'.

Masking semantics (shared by all backends): key t is visible to query s iff every given condition holds:
  * causal:   kv_positions[t] <= q_positions[s]. Default positions are `arange`, with the queries aligned to
              the *end* of the keys (q_positions = arange(S) + T - S), so S < T decode-style calls are
              correct. Per-row positions [B, S] / [B, T] keep permuted or cached tokens correct.
  * segments: q_segment_ids[s] == kv_segment_ids[t] (packed sequences, per-image ViT blocks).
  * kv_mask[t] (padding, bool) and t < kv_lengths (right padding, int).
  * mask[b, h, s, t] (explicit bool, broadcastable to [B, Hq, S, T]).
Scores are computed in `softmax_dtype` (float32) and masked with `finfo(softmax_dtype).min`, not -inf; a
query row with no visible key outputs zeros (never NaN). Probabilities are cast to v.dtype before the product
with V, as HF's eager attention does.

Packed segments (`packing`, a `jaxagents.layers.segment_packing.SegmentPacking`): attention within segments
on packed rows, without an [S, S] score matrix (see that module).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.segment_packing import SegmentPacking, pack_tokens, unpack_tokens, validate_packing

if TYPE_CHECKING:
  from jaxagents.sparse.config import SparseAttentionConfig

Dtype = Any

# A backend takes (q, k, v) and, as keywords, exactly the masking arguments of `attention` plus `scale` (a
# float, already resolved) and `softmax_dtype`; inputs arrive validated. 'sparse' also takes `sparse_config`
# and `modality_ids`.
AttentionBackend = Callable[..., jax.Array]
ATTENTION_BACKENDS: dict[str, AttentionBackend] = {}

_MASK_ARGS = (
  "q_segment_ids",
  "kv_segment_ids",
  "kv_mask",
  "kv_lengths",
  "mask",
  "q_positions",
  "kv_positions",
)
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _shape_error(name: str, expected: str, actual: Any) -> ValueError:
  return ValueError(f"attention: `{name}` must be {expected}, got {actual}")


def _validate(
  q,
  k,
  v,
  *,
  q_segment_ids,
  kv_segment_ids,
  kv_mask,
  kv_lengths,
  mask,
  q_positions,
  kv_positions,
  softmax_dtype,
) -> None:
  for name, x, layout in (("q", q, "[B, S, Hq, D]"), ("k", k, "[B, T, Hk, D]"), ("v", v, "[B, T, Hk, Dv]")):
    if x.ndim != 4:
      raise _shape_error(name, f"rank 4 {layout}", f"rank {x.ndim} with shape {x.shape}")
  if v.shape[:3] != k.shape[:3]:
    raise _shape_error("v", f"shape [B, T, Hk, Dv] = {k.shape[:3]} + [Dv] to match k {k.shape}", v.shape)
  if q.shape[0] != k.shape[0]:
    raise _shape_error("k", f"batch size {q.shape[0]} (from q {q.shape})", f"{k.shape[0]} (k {k.shape})")
  if q.shape[-1] != k.shape[-1]:
    raise _shape_error("k", f"head_dim {q.shape[-1]} (from q {q.shape})", f"{k.shape[-1]} (k {k.shape})")
  if q.shape[2] % k.shape[2]:
    raise ValueError(
      f"attention: mismatched heads: `q` heads Hq={q.shape[2]} must be a multiple of `k`/`v` heads "
      f"Hk={k.shape[2]} (q {q.shape}, k {k.shape})"
    )
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise _shape_error(name, "a floating dtype (float32, bfloat16, float16, ...)", x.dtype)
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(
      f"attention: `q`, `k`, `v` must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
    )
  if not jnp.issubdtype(softmax_dtype, jnp.floating):
    raise _shape_error("softmax_dtype", "a floating dtype", softmax_dtype)

  (batch, q_len, num_heads, _), kv_len = q.shape, k.shape[1]
  for name, x, length in (
    ("q_segment_ids", q_segment_ids, q_len),
    ("kv_segment_ids", kv_segment_ids, kv_len),
  ):
    if x is not None and x.shape != (batch, length):
      raise _shape_error(name, f"shape [B, {'S' if name[0] == 'q' else 'T'}] = {(batch, length)}", x.shape)
  if (q_segment_ids is None) != (kv_segment_ids is None) and q_len != kv_len:
    missing = "kv_segment_ids" if kv_segment_ids is None else "q_segment_ids"
    raise _shape_error(missing, f"given when S != T (S={q_len}, T={kv_len}) and the other one is", None)
  for name, x, length in (("q_positions", q_positions, q_len), ("kv_positions", kv_positions, kv_len)):
    if x is not None and x.shape not in ((length,), (batch, length)):
      raise _shape_error(name, f"shape [{length}] or [B, {length}] with B={batch}", x.shape)
  if kv_mask is not None and (kv_mask.shape != (batch, kv_len) or kv_mask.dtype != jnp.bool_):
    raise _shape_error(
      "kv_mask", f"bool of shape [B, T] = {(batch, kv_len)}", f"{kv_mask.dtype}{kv_mask.shape}"
    )
  if kv_lengths is not None and (
    kv_lengths.shape != (batch,) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer)
  ):
    raise _shape_error(
      "kv_lengths", f"int of shape [B] = ({batch},)", f"{kv_lengths.dtype}{kv_lengths.shape}"
    )
  if mask is not None:
    full = (batch, num_heads, q_len, kv_len)
    if mask.ndim != 4 or mask.dtype != jnp.bool_ or any(m not in (1, f) for m, f in zip(mask.shape, full)):
      raise _shape_error("mask", f"bool broadcastable to [B, Hq, S, T] = {full}", f"{mask.dtype}{mask.shape}")


def make_attention_mask(
  q_len: int,
  kv_len: int,
  *,
  causal: bool = False,
  q_segment_ids=None,
  kv_segment_ids=None,
  kv_mask=None,
  kv_lengths=None,
  mask=None,
  q_positions=None,
  kv_positions=None,
) -> jax.Array | None:
  """Combines the masking arguments of `attention` into one bool mask [B|1, Hq|1, S, T] (True = visible).

  Size-1 batch/head axes are kept (callers broadcast); returns None when nothing is masked. Inputs are assumed
  validated (see `attention`).
  """
  parts = []
  if causal:
    if q_positions is None:
      q_positions = jnp.arange(q_len) + (kv_len - q_len)
    if kv_positions is None:
      kv_positions = jnp.arange(kv_len)
    q_pos = jnp.asarray(q_positions).reshape(-1, q_len)
    kv_pos = jnp.asarray(kv_positions).reshape(-1, kv_len)
    parts.append((kv_pos[:, None, :] <= q_pos[:, :, None])[:, None])
  if q_segment_ids is not None or kv_segment_ids is not None:
    q_seg = q_segment_ids if q_segment_ids is not None else kv_segment_ids
    kv_seg = kv_segment_ids if kv_segment_ids is not None else q_segment_ids
    parts.append((q_seg[:, :, None] == kv_seg[:, None, :])[:, None])
  if kv_mask is not None:
    parts.append(kv_mask[:, None, None, :])
  if kv_lengths is not None:
    parts.append((jnp.arange(kv_len)[None, :] < kv_lengths[:, None])[:, None, None, :])
  if mask is not None:
    parts.append(mask)
  if not parts:
    return None
  combined = parts[0]
  for part in parts[1:]:
    combined = jnp.logical_and(combined, part)
  return combined


def _attention_xla(q, k, v, *, causal, scale, softmax_dtype, **mask_kwargs) -> jax.Array:
  """Reference einsum attention; GQA groups query heads onto kv heads without repeating K/V."""
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads, v_dim = k.shape[1], k.shape[2], v.shape[-1]
  groups = num_heads // num_kv_heads
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=softmax_dtype) * scale
  visible = make_attention_mask(q_len, kv_len, causal=causal, **mask_kwargs)
  if visible is not None:
    if visible.shape[1] == num_heads:  # per-query-head mask: split heads as q was
      visible = visible.reshape(visible.shape[0], num_kv_heads, groups, q_len, kv_len)
    else:
      visible = visible[:, :, None]
    scores = jnp.where(visible, scores, jnp.finfo(softmax_dtype).min)
  probs = jax.nn.softmax(scores, axis=-1)
  if visible is not None:
    # Masked entries are already exactly 0 except in rows with no visible key (uniform); those become 0.
    probs = jnp.where(visible, probs, 0)
  out = jnp.einsum("bkgst,btkv->bskgv", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, num_heads, v_dim).astype(v.dtype)


def _attention_cudnn(q, k, v, *, causal, scale, softmax_dtype, **mask_kwargs) -> jax.Array:
  """cuDNN flash attention via `jax.nn.dot_product_attention`.

  Native cuDNN masks are used where they mean the same thing as ours: `is_causal` only when S == T with
  default positions (cuDNN's causal mask is top-left aligned), and `key_value_seq_lengths` for `kv_lengths`.
  Everything else is passed as an explicit bool mask (turned into a bias by JAX). Softmax runs in float32
  inside cuDNN.
  """
  del softmax_dtype
  if jax.default_backend() != "gpu":
    raise RuntimeError(
      f"attention: backend='cudnn' needs a GPU (cuDNN), but JAX's default backend is "
      f"'{jax.default_backend()}'; use backend='xla' or backend='auto'"
    )
  if v.shape != k.shape:
    raise _shape_error("v", f"the shape of k {k.shape} for backend='cudnn'", v.shape)
  q_len, kv_len = q.shape[1], k.shape[1]
  kv_lengths = mask_kwargs.pop("kv_lengths")
  default_positions = mask_kwargs["q_positions"] is None and mask_kwargs["kv_positions"] is None
  native_causal = causal and q_len == kv_len and default_positions
  explicit = make_attention_mask(q_len, kv_len, causal=causal and not native_causal, **mask_kwargs)
  out = jax.nn.dot_product_attention(
    q,
    k,
    v,
    mask=explicit,
    scale=scale,
    is_causal=native_causal,
    key_value_seq_lengths=None if kv_lengths is None else kv_lengths.astype(jnp.int32),
    implementation="cudnn",
  )
  # Rows with no visible key: cuDNN gives a uniform average (mask is a finite bias); we define them as zeros.
  if explicit is not None:
    row_visible = make_attention_mask(q_len, kv_len, causal=causal, kv_lengths=kv_lengths, **mask_kwargs)
    row_visible = jnp.any(row_visible, axis=-1).transpose(0, 2, 1)[..., None]  # [B|1, S, Hq|1, 1]
    out = jnp.where(row_visible, out, 0)
  elif kv_lengths is not None:
    out = jnp.where((kv_lengths > 0)[:, None, None, None], out, 0)
  return out


def _validate_sparse(q, k, *, causal, sparse_config, modality_ids, mask_kwargs) -> None:
  from jaxagents.sparse.config import SparseAttentionConfig  # lazy: pulls in the Pallas kernels

  if not isinstance(sparse_config, SparseAttentionConfig):
    raise _shape_error("sparse_config", "a one-layer SparseAttentionConfig for backend='sparse'", sparse_config)
  if sparse_config.num_layers != 1 or sparse_config.num_heads != q.shape[2]:
    raise _shape_error(
      "sparse_config",
      f"one layer of Hq={q.shape[2]} head entries",
      f"{sparse_config.num_layers} layers x {sparse_config.num_heads} heads",
    )
  if not causal:
    raise _shape_error("causal", "True for backend='sparse' (causal prefill only)", causal)
  if q.shape[1] != k.shape[1]:
    raise _shape_error("k", f"length S={q.shape[1]} like q for backend='sparse' (self-attention prefill)", k.shape)
  for name in ("q_segment_ids", "kv_segment_ids", "mask", "q_positions", "kv_positions"):
    if mask_kwargs[name] is not None:
      raise _shape_error(name, "None for backend='sparse' (it honours only kv_mask and kv_lengths)", "an array")
  if modality_ids is not None and (
    jnp.shape(modality_ids) != q.shape[:2] or not jnp.issubdtype(jnp.asarray(modality_ids).dtype, jnp.integer)
  ):
    raise _shape_error("modality_ids", f"int of shape [B, S] = {q.shape[:2]}", jnp.shape(modality_ids))


@functools.cache
def sparse_min_length(sparse_config: SparseAttentionConfig) -> int:
  """The shortest (block-padded) length every head entry of `sparse_config` is valid for: its estimates need
  last_q <= S, and v_size <= S, s_size <= 2 S - 1, strides <= S (defaults filled in by the pattern table)."""
  from jaxagents.sparse.patterns import check_pattern  # lazy: pulls in the Pallas kernels

  unbounded = 2**30
  need = 1
  for layer in range(sparse_config.num_layers):
    for entry in sparse_config.layer_heads(layer):
      subs = [entry, *(entry.get("per_modality") or {}).values()]
      for sub in subs:
        params = check_pattern("attention: `sparse_config`", sub["pattern"], sub.get("params"), unbounded)
        need = max(need, params.get("last_q", 1), params.get("v_size", 1), (params.get("s_size", 0) + 2) // 2,
                   *params.get("strides", (1,)))
  return need


def _attention_sparse(
  q, k, v, *, causal, scale, softmax_dtype, sparse_config: SparseAttentionConfig, modality_ids, **mask_kwargs
) -> jax.Array:
  """`mminference_attention` with padding keys as `kv_mask` and S front-padded to a multiple of the blocks.

  The kernels compute the softmax in float32 whatever `softmax_dtype` says.
  """
  from jaxagents.sparse.dispatch import mminference_attention  # lazy: pulls in the Pallas kernels

  batch, seq_len = q.shape[:2]
  block = math.lcm(sparse_config.block_q, sparse_config.block_kv)
  pad = -seq_len % block
  if seq_len + pad < sparse_min_length(sparse_config):
    dense = _auto_backend(q, k, v, causal=causal, mask_kwargs=mask_kwargs)
    return ATTENTION_BACKENDS[dense](q, k, v, causal=causal, scale=scale, softmax_dtype=softmax_dtype, **mask_kwargs)
  kv_mask, kv_lengths = mask_kwargs["kv_mask"], mask_kwargs["kv_lengths"]
  if kv_lengths is not None:
    by_length = jnp.arange(seq_len)[None, :] < kv_lengths[:, None]
    kv_mask = by_length if kv_mask is None else kv_mask & by_length
  if modality_ids is None:
    modality_ids = jnp.zeros((batch, seq_len), jnp.int32)
  # Front padding keeps the real tokens at the end, where the last-queries estimates look.
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0))) for x in (q, k, v))
    kv_mask = jnp.ones((batch, seq_len), bool) if kv_mask is None else kv_mask
    kv_mask = jnp.pad(kv_mask, ((0, 0), (pad, 0)), constant_values=False)
    modality_ids = jnp.pad(jnp.asarray(modality_ids), ((0, 0), (pad, 0)))
  out = mminference_attention(
    q,
    k,
    v,
    sparse_config.layer_heads(0),
    jnp.asarray(modality_ids, jnp.int32),
    num_modalities=sparse_config.num_modalities,
    block_q=sparse_config.block_q,
    block_kv=sparse_config.block_kv,
    causal=True,
    sm_scale=scale,
    kv_mask=kv_mask,
  )
  return out[:, pad:]


ATTENTION_BACKENDS["xla"] = _attention_xla
ATTENTION_BACKENDS["cudnn"] = _attention_cudnn
ATTENTION_BACKENDS["sparse"] = _attention_sparse


def _auto_backend(q, k, v, *, causal, mask_kwargs) -> str:
  plain = all(mask_kwargs[name] is None for name in _MASK_ARGS if name != "kv_lengths")
  return (
    "cudnn"
    if (
      jax.default_backend() == "gpu"
      and q.dtype in _CUDNN_DTYPES
      and plain
      and (not causal or q.shape[1] == k.shape[1])
      and v.shape == k.shape
      and q.shape[-1] % 8 == 0
      and q.shape[-1] <= 128
    )
    else "xla"
  )


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  causal: bool = False,
  q_segment_ids: jax.Array | None = None,
  kv_segment_ids: jax.Array | None = None,
  kv_mask: jax.Array | None = None,
  kv_lengths: jax.Array | None = None,
  mask: jax.Array | None = None,
  q_positions: jax.Array | None = None,
  kv_positions: jax.Array | None = None,
  scale: float | None = None,
  backend: str = "xla",
  softmax_dtype: Dtype = jnp.float32,
  sparse_config: SparseAttentionConfig | None = None,
  modality_ids: jax.Array | None = None,
  packing: SegmentPacking | None = None,
) -> jax.Array:
  """softmax(q k^T * scale + mask) v, see the module docstring for the masking rules.

  Args:
    q: [B, S, Hq, D] queries.
    k: [B, T, Hk, D] keys; Hq % Hk == 0 (GQA / MQA when Hk < Hq).
    v: [B, T, Hk, Dv] values.
    causal: mask keys at later positions than the query.
    q_segment_ids, kv_segment_ids: [B, S] / [B, T] int; attend only within equal ids. If only one is given and
      S == T it is used for both.
    kv_mask: [B, T] bool, False = padding key.
    kv_lengths: [B] int, keys t >= kv_lengths[b] are padding (cuDNN handles this natively).
    mask: bool broadcastable to [B, Hq, S, T] (4-D, e.g. [B, 1, S, T]).
    q_positions, kv_positions: [S] or [B, S] / [T] or [B, T] int positions, used by `causal` (ignored
      otherwise).
    scale: score scale; default 1 / sqrt(D).
    backend: 'xla', 'cudnn', 'auto', 'sparse', or any name registered in `ATTENTION_BACKENDS`.
    softmax_dtype: dtype of scores and softmax.
    sparse_config: backend='sparse' only: a one-layer `jaxagents.sparse.SparseAttentionConfig` with Hq head
      entries (e.g. `dataclasses.replace(config, layers=(config.layers[l],))`).
    modality_ids: backend='sparse' only: [B, S] int modality of each token (0 text, 1 vision); default all 0.
    packing: a `SegmentPacking` of the sequence (module docstring): attention within its segments, computed on
      packed rows; self-attention without other masks. Any backend but 'sparse' runs the packed rows.
  Returns:
    [B, S, Hq, Dv] in v.dtype.
  """
  if packing is not None:
    given = (q_segment_ids, kv_segment_ids, kv_mask, kv_lengths, mask, q_positions, kv_positions)
    mask_kwargs = dict(zip(_MASK_ARGS, given, strict=True))
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    _validate(q, k, v, softmax_dtype=softmax_dtype, **dict.fromkeys(_MASK_ARGS))
    validate_packing(q, k, packing, causal=causal, mask_kwargs=mask_kwargs)
    if backend == "sparse":
      raise _shape_error("backend", "not 'sparse' with `packing`", backend)
    token_index, segment_ids = jnp.asarray(packing.token_index), jnp.asarray(packing.segment_ids)
    rows = segment_ids.reshape(-1, segment_ids.shape[-1])
    packed = (pack_tokens(x, token_index) for x in (q, k, v))
    out = attention(
      *packed, q_segment_ids=rows, kv_segment_ids=rows, scale=scale, backend=backend, softmax_dtype=softmax_dtype
    )
    return unpack_tokens(out, jnp.asarray(packing.slot_index))
  given = (q_segment_ids, kv_segment_ids, kv_mask, kv_lengths, mask, q_positions, kv_positions)  # _MASK_ARGS order
  mask_kwargs = {name: None if x is None else jnp.asarray(x) for name, x in zip(_MASK_ARGS, given, strict=True)}
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  _validate(q, k, v, softmax_dtype=softmax_dtype, **mask_kwargs)
  if backend == "auto":
    backend = _auto_backend(q, k, v, causal=causal, mask_kwargs=mask_kwargs)
  if backend not in ATTENTION_BACKENDS:
    raise ValueError(
      f"attention: `backend` must be one of {sorted([*ATTENTION_BACKENDS, 'auto'])}, got {backend!r}"
    )
  scale = float(1.0 / np.sqrt(q.shape[-1])) if scale is None else scale
  if backend == "sparse":
    _validate_sparse(q, k, causal=causal, sparse_config=sparse_config, modality_ids=modality_ids,
                     mask_kwargs=mask_kwargs)
    return ATTENTION_BACKENDS[backend](
      q, k, v, causal=causal, scale=scale, softmax_dtype=softmax_dtype, sparse_config=sparse_config,
      modality_ids=modality_ids, **mask_kwargs
    )
  for name, value in (("sparse_config", sparse_config), ("modality_ids", modality_ids)):
    if value is not None:
      raise _shape_error(name, f"None unless backend='sparse' (backend={backend!r})", type(value).__name__)
  return ATTENTION_BACKENDS[backend](
    q, k, v, causal=causal, scale=scale, softmax_dtype=softmax_dtype, **mask_kwargs
  )
