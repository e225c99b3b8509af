"""Grid heads: online stride/phase search, phase-major permutation, block layout (MMInference, arXiv
2504.16083, grid heads). Reconstruction: MMInference's code is not public and the paper does not spell out the
stride/phase search or the permutation; steps 2-3 rebuild them from its overview figure and text. For s = tokens
per frame, step 3 is the frame-major -> patch-major reorder of Sparse-VideoGen (svg-project/Sparse-VideoGen
`token_reorder_to_token_major`).

1. *Estimate.* A_hat = softmax(Q[-last_q:] K^T * sm_scale + causal)  [R, T]  (`estimate.py`).
2. *Search* (reconstruction). For a candidate stride s and phase p, the grid of query i is the union of
   the vertical lines {j : j = p (mod s)} and the slash lines {j : i - j = 0 (mod s)}. With per-row residue
   sums M[r, c] = sum_{j = c (mod s)} A_hat[r, j] and the query's own residue c_r = i_r mod s,

       mass(s, p) = mean_r ( M[r, p] + [p != c_r] M[r, c_r] )

   and excess(s, p) = mass(s, p) - mass_U(s, p), where U is uniform attention over the visible keys (the mass
   the grid would catch by chance, about 2 / s). The argmax of the excess over (s, p) is kept. Subtracting the
   chance level is our choice: raw mass always prefers the smallest stride (s = 1 covers everything), and the
   excess is invariant to refining a planted stride s0 into 2 s0 only up to the halved coverage, so s0 wins
   over its multiples and divisors.
3. *Permute* (reconstruction). Phase-major order with the found phase first: slot order sorts tokens by
   ((i - p) mod s, i). Group g holds the tokens i = p + g (mod s) in their original order, so the vertical
   lines become group 0 (a dense band of key slots at the start, "Vlines after shuffle") and the slash lines
   become same-group attention (a staircase of causal triangles along the diagonal).
4. *Layout.* Query block i lists key block n when their group ranges overlap (the staircase) or when n holds
   group-0 slots (the band), plus the diagonal block; causality is judged on original positions (`layouts.py`).
   The kernel then runs on the permuted tokens with positions = the permutation (`permuted.py`).

Grid patterns come from video tokens; here the grid covers the whole sequence (a video-only input).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.estimate import LAST_Q, Estimate, check_last_q, check_qk_shapes, estimate_logits, residue_sums
from jaxagents.sparse.layouts import Frame, budget_blocks, check_blocks, finalize, permuted_frame
from jaxagents.sparse.permutation import Permutation, invert
from kernels_pallas.block_sparse import BlockLayout


def check_strides(fn: str, strides, seq_len: int) -> tuple[int, ...]:
  strides = tuple(strides) if isinstance(strides, list | tuple) else strides
  if (
    not isinstance(strides, tuple)
    or not strides
    or not all(isinstance(s, int) and 2 <= s <= seq_len for s in strides)
    or len(set(strides)) != len(strides)
  ):
    raise ValueError(
      f"{fn}: `strides` must be a non-empty sequence of distinct ints in [2, S={seq_len}], got {strides!r}"
    )
  return strides


def _hashable(strides):
  """Lists become tuples so the strides can be a static (hashed) jit argument."""
  return tuple(strides) if isinstance(strides, list | tuple) else strides


def _residue_sums(x: jax.Array, stride: int) -> jax.Array:
  """[..., T] -> [..., stride]: out[..., c] = sum_{j = c (mod stride)} x[..., j]."""
  kv_len = x.shape[-1]
  padded = -(-kv_len // stride) * stride
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded - kv_len)])
  return x.reshape(*x.shape[:-1], padded // stride, stride).sum(axis=-2)


def _grid_mass(residues: jax.Array, own: jax.Array) -> jax.Array:
  """residues [..., R, s], own residue per row int [R] -> mean over rows of the union mass per phase [..., s]."""
  stride = residues.shape[-1]
  own_mass = jnp.take_along_axis(residues, jnp.broadcast_to(own[:, None], residues.shape[:-1] + (1,)), axis=-1)
  union = residues + jnp.where(jnp.arange(stride) != own[:, None], own_mass, 0.0)
  return union.mean(axis=-2)


def _search(q, k, strides, last_q, causal, sm_scale, head_weight=None):
  """Stride/phase per kv head from the per-query-head estimates (their excesses averaged over the group)."""
  batch, seq_len, num_q_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  row_positions = np.arange(seq_len - last_q, seq_len)
  visible = (jnp.arange(seq_len) <= row_positions[:, None])[None, None] if causal else jnp.bool_(True)
  logits = estimate_logits(q, k, seq_len - last_q, last_q)
  estimate = Estimate(logits, visible, head_dim**-0.5 if sm_scale is None else sm_scale)
  # Per-row residue sums M[r, c] for every candidate stride from ONE pass over A_hat: the sums modulo the strides'
  # least common multiple L fold into those of each stride (L = 1024 for strides 16, 256, 1024).
  common = int(np.lcm.reduce(np.array(strides, np.int64)))
  folded = residue_sums(estimate, common) if common <= seq_len else None
  probs = estimate.probabilities() if folded is None else None  # [B, Hq, R, T], only without a common modulus
  uniform_visible = jnp.arange(seq_len) <= row_positions[:, None] if causal else jnp.ones((last_q, seq_len), bool)
  uniform = uniform_visible / jnp.sum(uniform_visible, axis=-1, keepdims=True)
  widest = max(strides)
  excess = []
  for stride in strides:
    own = row_positions % stride
    residues = _residue_sums(probs, stride) if folded is None else _residue_sums(folded, stride)  # [B, Hq, R, s]
    found = _grid_mass(residues, own) - _grid_mass(_residue_sums(uniform, stride), own)
    excess.append(jnp.pad(found, [(0, 0), (0, 0), (0, widest - stride)], constant_values=-jnp.inf))
  excess = jnp.stack(excess, axis=2)  # [B, Hq, n, widest]
  groups = num_q_heads // num_kv_heads
  weight = jnp.ones((num_q_heads,)) if head_weight is None else jnp.asarray(head_weight, jnp.float32)
  grouped = excess.reshape(batch, num_kv_heads, groups, *excess.shape[2:])
  group_weight = weight.reshape(num_kv_heads, groups)[None, :, :, None, None]
  finite = jnp.isfinite(grouped)
  kv_excess = jnp.sum(jnp.where(finite, grouped, 0.0) * group_weight, axis=2) / jnp.maximum(
    jnp.sum(group_weight, axis=2), 1e-9
  )
  kv_excess = jnp.where(finite[:, :, 0], kv_excess, -jnp.inf)  # [B, Hkv, n, widest]
  best = jnp.argmax(kv_excess.reshape(batch, num_kv_heads, -1), axis=-1)
  stride = jnp.asarray(np.array(strides, np.int32))[best // widest]
  return stride, (best % widest).astype(jnp.int32), kv_excess


def _checked(fn, q, k, strides, last_q, block_q=1, block_kv=1, max_blocks=None):
  q, k = jnp.asarray(q), jnp.asarray(k)
  check_qk_shapes(fn, q.shape, k.shape)
  strides = check_strides(fn, strides, q.shape[1])
  budget = grid_budget(q.shape[1], strides, block_q, block_kv)
  max_blocks = check_blocks(fn, q.shape[1], k.shape[1], block_q, block_kv, max_blocks, budget)
  check_last_q(fn, last_q, q.shape[1])
  return q, k, strides, max_blocks


def grid_budget(seq_len: int, strides, block_q: int, block_kv: int) -> int:
  """Default MAXN: the band (phase-0 group) and the query block's own group(s), each up to S / min(strides)
  tokens, plus the block's own key blocks."""
  group = -(-seq_len // min(strides))
  return budget_blocks(2 * group + 2 * block_kv, block_q, block_kv)


def grid_search(
  q: jax.Array,
  k: jax.Array,
  strides,
  *,
  last_q: int = LAST_Q,
  causal: bool = True,
  sm_scale: float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-head stride/phase search on the last-queries estimate (step 2 above, a reconstruction).

  Args:
    q: [B, S, Hq, D]; k: [B, T, Hkv, D], S == T, original token order.
    strides: static candidate strides (distinct ints in [2, S]), e.g. tokens per frame or per patch row.
    last_q: estimation rows.
    causal: causal estimate.
    sm_scale: default 1 / sqrt(D).
  Returns:
    stride int32 [B, Hkv], phase int32 [B, Hkv] (in [0, stride)), excess float32 [B, Hkv, len(strides),
    max(strides)] (-inf past each stride's phases), one search per kv head: the excesses of its query heads are
    averaged, so the query heads of a GQA group share one permutation and their K/V are permuted once. Ties go
    to the earlier stride, then the lower phase.
  """
  return _grid_search(q, k, _hashable(strides), last_q, causal, sm_scale)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _grid_search(q, k, strides, last_q, causal, sm_scale):
  q, k, strides, _ = _checked("grid_search", q, k, strides, last_q)
  return _search(q, k, strides, last_q, causal, sm_scale)


@functools.partial(jax.jit, static_argnames=("seq_len",))
def grid_permutation(stride: jax.Array, phase: jax.Array, seq_len: int) -> Permutation:
  """Phase-major permutation (step 3) for stride, phase int [B, H]; q and kv share it."""
  tokens = jnp.arange(seq_len, dtype=jnp.int32)
  group = (tokens - phase[..., None]) % stride[..., None]  # [B, H, S]
  perm = jnp.argsort(group * seq_len + tokens, axis=-1).astype(jnp.int32)
  inverse = invert(perm)
  return Permutation(perm, perm, inverse, inverse)


def grid_blocks(frame: Frame, stride: jax.Array, phase: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Candidate blocks of the permuted grid (step 4) and scores (band 2, staircase in (1, 2), nearer = higher)."""
  num_kv_blocks = frame.shape[-1]
  q_group = (frame.q_positions - phase[..., None]) % stride[..., None]  # nondecreasing along slots
  kv_group = (frame.kv_positions - phase[..., None]) % stride[..., None]
  q_lo, q_hi = q_group[..., :: frame.block_q], q_group[..., frame.block_q - 1 :: frame.block_q]
  kv_lo, kv_hi = kv_group[..., :: frame.block_kv], kv_group[..., frame.block_kv - 1 :: frame.block_kv]
  staircase = (q_lo[..., :, None] <= kv_hi[..., None, :]) & (kv_lo[..., None, :] <= q_hi[..., :, None])
  band = jnp.broadcast_to((kv_lo == 0)[..., None, :], staircase.shape)
  nearness = 1.0 + (jnp.arange(num_kv_blocks) + 1) / (num_kv_blocks + 1)
  return staircase | band, jnp.where(band, 2.0, jnp.where(staircase, nearness, 0.0))


def grid(
  q: jax.Array,
  k: jax.Array,
  strides,
  *,
  last_q: int = LAST_Q,
  block_q: int = 64,
  block_kv: int = 64,
  max_blocks: int | None = None,
  causal: bool = True,
  sm_scale: float | None = None,
  head_weight: jax.Array | None = None,
) -> tuple[Permutation, BlockLayout]:
  """Grid head: search, permutation and layout (steps 1-4 above; steps 2-3 are reconstructions).

  Args:
    q: [B, S, Hq, D]; k: [B, T, Hkv, D], S == T, original token order.
    strides: static candidate strides.
    last_q: estimation rows.
    block_q, block_kv: block sizes of the layout over the permuted tokens.
    max_blocks: MAXN (static), default `grid_budget` (band + own group at the smallest stride), at most NK; the
      diagonal block, the band, then the staircase blocks nearest the diagonal are kept.
    head_weight: optional float [Hq], 0 drops a query head from its group's search (heads of another pattern).
  Returns:
    (Permutation with q_perm = kv_perm int32 [B, Hkv, S], BlockLayout kv_blocks int32 [B, Hkv, S / block_q, MAXN]
    over the permuted tokens), one per kv head: the query heads of a group share them. Run it with
    `permuted_sparse_attention`.
  """
  return _grid(q, k, _hashable(strides), last_q, block_q, block_kv, max_blocks, causal, sm_scale, head_weight)


@functools.partial(jax.jit, static_argnums=tuple(range(2, 9)))
def _grid(q, k, strides, last_q, block_q, block_kv, max_blocks, causal, sm_scale, head_weight=None):
  q, k, strides, max_blocks = _checked("grid", q, k, strides, last_q, block_q, block_kv, max_blocks)
  stride, phase, _ = _search(q, k, strides, last_q, causal, sm_scale, head_weight)
  return grid_layout(stride, phase, q.shape[1], block_q=block_q, block_kv=block_kv, max_blocks=max_blocks,
                     causal=causal)


@functools.partial(jax.jit, static_argnames=("seq_len", "block_q", "block_kv", "max_blocks", "causal"))
def grid_layout(
  stride: jax.Array, phase: jax.Array, seq_len: int, *, block_q: int = 64, block_kv: int = 64, max_blocks: int,
  causal: bool = True,
) -> tuple[Permutation, BlockLayout]:
  """The layout stage of `grid` (steps 3-4) from `grid_search`'s stride, phase int [B, H]."""
  perm = grid_permutation(stride, phase, seq_len)
  frame = permuted_frame(perm, block_q, block_kv, causal, shared=True)
  mask, score = grid_blocks(frame, stride, phase)
  return perm, finalize(frame, mask, score, max_blocks)
