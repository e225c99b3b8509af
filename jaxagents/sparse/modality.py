"""Modality-boundary heads: the Q-boundary and 2D-boundary permutations and their per-modality sub-layouts
(MMInference, arXiv 2504.16083: Q-Boundary and 2D-Boundary heads). Reconstruction: MMInference's code is not
public; the modality-wise permutations follow the paper's description, the kernel-level details below are ours.

Given per-token modality ids m[i] in [0, M) (e.g. 0 = vision, 1 = text) in an interleaved sequence:
  * mode "q" (Q-boundary): queries are stably sorted by modality (same-modality rows contiguous, original
    order inside a modality); keys stay in the original order. Each query modality a gets its own pattern,
    estimated from the last `last_q` queries of modality a, drawn with the queries at their original
    positions (`layouts.py` coordinates), and restricted to the query blocks holding modality-a rows.
  * mode "2d" (2D-boundary): queries and keys share the stable modality sort. Each (query modality a,
    key modality b) sub-block gets its own pattern, estimated from modality-a rows over modality-b keys, and
    restricted to the query blocks holding a and the key blocks holding b. Inside the (a, a) sub-block the
    tokens of modality a are contiguous, so a vision slash is no longer "cut" by text spans.
The sub-layouts are unioned, and causality is judged on the original positions (the permutation arrays).
A block that straddles two modalities gets the union of their patterns. Grid sub-patterns are not offered
(the grid has its own permutation; see `grid.py`). Ids outside [0, M) belong to no sub-block: their rows keep
only their diagonal blocks.

MAXN for mode "q": the keys stay in place, so a query block's own tokens may span several key blocks (about
block_q / block_kv plus one per modality switch inside the block); they are all forced in, and a MAXN below
that count drops some and can leave query rows without a visible key. Mode "2d" and equal block sizes need
one diagonal block per row.
"""

import functools

import jax
import jax.numpy as jnp

from jaxagents.sparse.estimate import check_qk_shapes
from jaxagents.sparse.layouts import check_blocks, finalize, permuted_frame
from jaxagents.sparse.patterns import check_pattern, pattern_blocks, pattern_budget
from jaxagents.sparse.permutation import Permutation, invert
from kernels_pallas.block_sparse import BlockLayout

MODES = ("q", "2d")


def _check_ids(fn: str, modality_ids, batch: int | None = None, seq_len: int | None = None) -> jax.Array:
  ids = jnp.asarray(modality_ids)
  expected = f"[{batch}, {seq_len}]" if batch is not None else "[B, S]"
  if (
    ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer) or (batch is not None and ids.shape != (batch, seq_len))
  ):
    raise ValueError(f"{fn}: `modality_ids` must be int {expected}, got {ids.dtype}{tuple(ids.shape)}")
  return ids.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("mode", "num_heads"))
def modality_permutation(modality_ids: jax.Array, mode: str, *, num_heads: int = 1) -> Permutation:
  """Stable sort of the tokens by modality id (MMInference's modality-wise permutation; reconstruction).

  Args:
    modality_ids: int [B, S], modality of each token.
    mode: "q" (queries sorted, keys in place) or "2d" (both sorted).
    num_heads: H of the returned arrays (the permutation is the same for every head).
  Returns:
    Permutation with q_perm, kv_perm int32 [B, H, S] (S == T).
  """
  ids = _check_ids("modality_permutation", modality_ids)
  if mode not in MODES:
    raise ValueError(f"modality_permutation: `mode` must be one of {MODES}, got {mode!r}")
  batch, seq_len = ids.shape
  sort = jnp.argsort(ids, axis=-1, stable=True).astype(jnp.int32)
  identity = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), sort.shape)
  q_perm, kv_perm = sort, (sort if mode == "2d" else identity)
  q_inverse, kv_inverse = invert(q_perm), invert(kv_perm)
  heads = lambda x: jnp.broadcast_to(x[:, None, :], (batch, num_heads, seq_len))  # noqa: E731
  return Permutation(heads(q_perm), heads(kv_perm), heads(q_inverse), heads(kv_inverse))


def boundary_layout(
  q: jax.Array,
  k: jax.Array,
  modality_ids: jax.Array,
  pattern: str,
  params: dict | None = None,
  *,
  mode: str,
  num_modalities: int = 2,
  per_modality: dict | None = None,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  sm_scale: float | None = None,
) -> tuple[Permutation, BlockLayout]:
  """Permutation and unioned per-modality layout of a Q- or 2D-boundary head (reconstruction, module docstring).

  Args:
    q: [B, S, Hq, D]; k: [B, T, Hkv, D], S == T, original token order.
    modality_ids: int [B, S], values in [0, num_modalities).
    pattern, params: the default sub-pattern (a PATTERNS entry other than 'grid') and its params.
    mode: "q" or "2d".
    num_modalities: M (static).
    per_modality: optional overrides {a: (pattern, params)} for mode "q", {(a, b): (pattern, params)} for "2d".
    block_q, block_kv: block sizes over the permuted tokens.
    max_blocks: MAXN (static), default the sub-patterns' summed budgets (at most NK); diagonal blocks, then the
      highest scores, are kept.
    causal: causal estimate and causal-valid blocks (original positions).
    sm_scale: default 1 / sqrt(D).
  Returns:
    (Permutation [B, 1, S] (the same for every head), BlockLayout kv_blocks int32 [B, Hq, S / block_q, MAXN] over
    the permuted tokens). MAXN defaults to the sum of the sub-patterns' budgets, at most NK.
  """
  fn = "boundary_layout"
  check_qk_shapes(fn, jnp.shape(q), jnp.shape(k))
  seq_len = jnp.shape(q)[1]
  if not isinstance(num_modalities, int) or num_modalities < 1:
    raise ValueError(f"{fn}: `num_modalities` must be an int >= 1, got {num_modalities!r}")
  if mode not in MODES:
    raise ValueError(f"{fn}: `mode` must be one of {MODES}, got {mode!r}")
  modalities = range(num_modalities)
  keys = list(modalities) if mode == "q" else [(a, b) for a in modalities for b in modalities]
  per_modality = dict(per_modality or {})
  if set(per_modality) - set(keys):
    raise ValueError(f"{fn}: `per_modality` keys must be among {keys} for mode {mode!r}, got {sorted(per_modality)}")
  plans = []
  for key in keys:
    sub_pattern, sub_params = per_modality.get(key, (pattern, params))
    if sub_pattern == "grid":
      raise ValueError(f"{fn}: a modality sub-block cannot use the 'grid' pattern (key {key!r})")
    checked = check_pattern(fn, sub_pattern, sub_params, seq_len)
    plans.append((key, sub_pattern, tuple(sorted(checked.items()))))
  return _boundary_layout(
    q, k, modality_ids, tuple(plans), mode, num_modalities, block_q, block_kv, max_blocks, causal, sm_scale
  )


def _slot_order(x: jax.Array, perm: jax.Array) -> jax.Array:
  """x [B, N, H, D] in the slot order of perm int [B, N] (one permutation for every head)."""
  return jnp.take_along_axis(x, perm[:, :, None, None], axis=1)


@functools.partial(jax.jit, static_argnums=tuple(range(3, 11)))
def _boundary_layout(q, k, modality_ids, plans, mode, num_modalities, block_q, block_kv, max_blocks, causal, sm_scale):
  fn = "boundary_layout"
  q, k = jnp.asarray(q), jnp.asarray(k)
  batch, seq_len, heads, head_dim = q.shape
  budget = sum(pattern_budget(pattern, dict(params), seq_len, block_q, block_kv) for _, pattern, params in plans)
  max_blocks = check_blocks(fn, seq_len, k.shape[1], block_q, block_kv, max_blocks, budget)
  ids = _check_ids(fn, modality_ids, batch, seq_len)
  perm = modality_permutation(ids, mode, num_heads=1)  # [B, 1, S]: the same for every head
  k_p = _slot_order(k, perm.kv_perm[:, 0]) if mode == "2d" else k
  frame = permuted_frame(perm, block_q, block_kv, causal, shared=mode == "2d")
  q_modality = jnp.take_along_axis(ids, perm.q_perm[:, 0], axis=-1)  # [B, S]
  kv_modality = jnp.take_along_axis(ids, perm.kv_perm[:, 0], axis=-1)
  q_blocks = q_modality.reshape(batch, -1, block_q)
  kv_blocks = kv_modality.reshape(batch, -1, block_kv)
  scale = head_dim**-0.5 if sm_scale is None else sm_scale

  mask = jnp.zeros((batch, 1, seq_len // block_q, seq_len // block_kv), bool)
  score = jnp.zeros(mask.shape, jnp.float32)
  estimates = {}  # one estimate per query modality, shared by its (a, b) sub-blocks
  key_groups = None if mode == "q" else jnp.stack([kv_modality == b for b in range(num_modalities)])  # [M, B, T]
  for key, sub_pattern, sub_params in plans:
    a, b = (key, None) if mode == "q" else key
    q_has = jnp.any(q_blocks == a, axis=-1)[:, None, :, None]  # [B, 1, NQ, 1]
    allowed = q_has if b is None else q_has & jnp.any(kv_blocks == b, axis=-1)[:, None, None, :]
    sub_mask, sub_score = pattern_blocks(
      sub_pattern,
      dict(sub_params),
      q=q,
      k=k_p,
      frame=frame,
      segment_end=jnp.sum(q_modality <= a, axis=-1),  # queries are sorted by modality in both modes
      q_ok=q_modality == a,
      key_groups=key_groups,
      key_group=b,
      allowed=jnp.broadcast_to(allowed, mask.shape),
      sm_scale=scale,
      estimates=estimates,
      rows_key=a,
      q_perm=perm.q_perm[:, 0],
    )
    mask = mask | sub_mask
    score = score + jnp.where(sub_mask, sub_score, 0.0)
  layout = finalize(frame, mask, score, max_blocks)
  if layout.num_heads != heads:  # input-independent sub-patterns only: one layout for every head
    layout = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, heads, *x.shape[2:])), layout)
  return perm, layout
