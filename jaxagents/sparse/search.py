"""Offline per-head sparse-pattern search (MMInference, arXiv 2504.16083; MInference `search_pattern` (v1) and
`search_pattern_v2`, `minference/modules/minference_forward.py`): score candidate patterns per query head on calibration
inputs and keep, per head, the cheapest candidate that recalls enough attention mass. Model-agnostic: it reads
captured q/k/v; a model's calibration CLI captures them (Qwen-VL: `models/qwen_vl/sparse_search.py`).

For one decoder layer, with the dense causal softmax P = softmax(q k^T * sm_scale + causal) and a candidate's
layout (built and run as `mminference_attention` runs one group of heads: `dispatch.build_head_layout`, then the
block-sparse kernel, directly or through the permutation) mapped back to the original token order as the key set
K_c(i) of query row i:

    recall_c  = mean over samples and sampled rows i of  sum_{j in K_c(i)} P[i, j]          (MInference v1)
    error_c   = || O_c - O_dense ||_F / || O_dense ||_F   per (sample, head), over [S, D]     (MInference v2, relative)
    density_c = kept blocks / blocks of the dense causal layout   (kernel work; > 1 is possible for permuted heads)

Rows are sampled evenly from the last (1 - row_start) of the sequence: the first rows see few keys and any pattern
recalls them (MInference v1 scores rows past 2500 only). Per head the candidate with the lowest mean density among
those with recall >= threshold (and error <= max_error when given) wins, ties going to the earlier candidate;
no eligible candidate means dense. The written config promises `min_recall`, the lowest recall of the chosen
entries (dense counts as 1.0), and stores each head's recall as its `score`.

Candidates (`default_candidates`) come in equal-cost buckets: for a budget fraction f of the causal attention
area, each pattern gets about f * S / 2 keys per query row (the mean row of a causal triangle has S / 2 keys):
A-shape (1/8 sinks, 7/8 window), vertical-slash (slash-heavy, balanced, vertical-heavy splits of the budget,
like MInference's (30, 800) ... (3500, 100) ladder), block top-k, and Q-/2D-boundary variants of the balanced
vertical-slash; plus a grid candidate over the given strides and dense. MMInference's own search space is
unpublished, so this one is a reconstruction; per-modality overrides (`per_modality`) are not searched.
Parameters are in tokens of the calibration length: a config is meant for inputs of about that length.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.config import SparseAttentionConfig, canonical_entry
from jaxagents.sparse.dispatch import build_head_layout, parse_head_config
from jaxagents.sparse.permuted import permuted_sparse_attention
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention

DENSE = {"pattern": "dense"}
DEFAULT_BUDGETS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
PATTERNS = ("a_shape", "vertical_slash", "block_topk", "grid")  # searched besides dense
THRESHOLD = 0.95  # MMInference (arXiv 2504.16083): 5.78 % of the weights recall 95 % of the mass


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One head pattern to score: a dispatcher entry (canonical JSON) and its nominal budget fraction (None:
  dense, grid, or hand-made)."""

  entry_json: str
  budget: float | None = None

  @classmethod
  def make(cls, entry: dict, budget: float | None = None) -> Candidate:
    if not isinstance(entry, dict) or "pattern" not in entry:
      raise ValueError(f"Candidate: `entry` must be a head config dict with a 'pattern', got {entry!r}")
    return cls(canonical_entry(entry), budget)

  @property
  def entry(self) -> dict:
    return json.loads(self.entry_json)

  @property
  def name(self) -> str:
    entry = self.entry
    params = ",".join(f"{k}={v}" for k, v in sorted((entry.get("params") or {}).items()))
    boundary = entry.get("boundary", "none")
    return f"{entry['pattern']}({params})" + ("" if boundary == "none" else f"/{boundary}")


def default_candidates(
  seq_len: int,
  *,
  block: int = 64,
  budgets: Sequence[float] = DEFAULT_BUDGETS,
  strides: Sequence[int] = (),
  boundary: bool = True,
  patterns: Sequence[str] = PATTERNS,
) -> list[Candidate]:
  """Equal-cost candidate buckets (module docstring) for sequences of `seq_len` tokens.

  Args:
    seq_len: S of the calibration inputs.
    block: block_kv of the layouts (block top-k counts blocks).
    budgets: fractions f in (0, 1] of the causal attention area, one bucket each.
    strides: grid strides (e.g. tokens per frame and per row of merged patches); () = no grid candidate.
    boundary: add Q- and 2D-boundary variants of the balanced vertical-slash (inputs with several modalities).
    patterns: the patterns to offer besides dense, a subset of PATTERNS.
  Returns:
    Dense first, then the buckets in the given order, then the grid candidate; duplicates removed.
  """
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"default_candidates: `seq_len` must be a positive int, got {seq_len!r}")
  if not budgets or any(not 0 < f <= 1 for f in budgets):
    raise ValueError(f"default_candidates: `budgets` must be fractions in (0, 1], got {list(budgets)}")
  if not set(patterns) <= set(PATTERNS):
    raise ValueError(f"default_candidates: `patterns` must be among {PATTERNS}, got {list(patterns)}")
  out = [Candidate.make(DENSE)]
  for f in budgets:
    keys = max(2, round(f * seq_len / 2))  # keys per query row
    sinks = max(1, keys // 8)
    entries = []
    if "a_shape" in patterns:
      entries.append({"pattern": "a_shape", "params": {"n_init": sinks, "n_local": keys - sinks}})
    if "vertical_slash" in patterns:
      for v_size in (keys // 8, keys // 2, keys - keys // 8):
        entries.append({"pattern": "vertical_slash", "params": {"v_size": v_size, "s_size": keys - v_size}})
      if boundary:
        balanced = {"v_size": keys // 2, "s_size": keys - keys // 2}
        entries += [{"pattern": "vertical_slash", "params": balanced, "boundary": mode} for mode in ("q", "2d")]
    if "block_topk" in patterns:
      entries.append({"pattern": "block_topk", "params": {"topk": max(1, round(keys / block))}})
    out += [Candidate.make(e, f) for e in entries]
  strides = sorted({int(s) for s in strides if 2 <= s <= seq_len})
  if strides and "grid" in patterns:
    out.append(Candidate.make({"pattern": "grid", "params": {"strides": strides}}))
  seen = set()
  return [c for c in out if not (c.entry_json in seen or seen.add(c.entry_json))]


@dataclasses.dataclass(frozen=True)
class LayerScores:
  """Scores of every candidate on every head of one layer, per calibration sample.

  Attributes:
    candidates: C candidates.
    rows: int [R] sampled query rows (original positions).
    recall: float [C, N, Hq], per sample, the mean over sampled rows of the recalled attention mass.
    min_row_recall: float [C, N, Hq], per sample, the lowest recall of a sampled row.
    error: float [C, N, Hq], relative output error.
    density: float [C, N, Hq], kept blocks / dense causal blocks.
  """

  candidates: tuple[Candidate, ...]
  rows: np.ndarray
  recall: np.ndarray
  min_row_recall: np.ndarray
  error: np.ndarray
  density: np.ndarray

  def merge(self, other: LayerScores) -> LayerScores:
    """Both scores' samples (same candidates and heads) on one sample axis."""
    if other.candidates != self.candidates or other.recall.shape[2] != self.recall.shape[2]:
      raise ValueError("LayerScores.merge: `other` must score the same candidates on the same heads")
    cat = functools.partial(np.concatenate, axis=1)
    return LayerScores(self.candidates, self.rows, cat([self.recall, other.recall]),
                       cat([self.min_row_recall, other.min_row_recall]), cat([self.error, other.error]),
                       cat([self.density, other.density]))


def sample_rows(seq_len: int, num_rows: int, row_start: float) -> np.ndarray:
  """int [R]: up to `num_rows` evenly spaced query rows in [row_start * S, S), the last row included."""
  if not isinstance(num_rows, int) or num_rows < 1 or not 0 <= row_start < 1:
    raise ValueError(f"sample_rows: need an int `num_rows` >= 1 and `row_start` in [0, 1), got {num_rows!r}, "
                     f"{row_start!r}")
  first = int(row_start * seq_len)
  return np.unique(np.round(np.linspace(first, seq_len - 1, min(num_rows, seq_len - first))).astype(np.int32))


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def _dense_rows(q, k, rows, sm_scale):
  """Causal softmax rows float32 [B, Hq, R, T] of q [B, S, Hq, D] against k [B, T, Hkv, D]."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2).astype(jnp.float32)
  logits = jnp.einsum("brhd,bthd->bhrt", q[:, rows].astype(jnp.float32), k,
                      precision=jax.lax.Precision.HIGHEST) * sm_scale
  logits = jnp.where(jnp.arange(k.shape[1]) <= rows[:, None], logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


@jax.jit
def _layout_recall(probs, rows, layout: BlockLayout, q_inverse, kv_inverse):
  """Recalled mass per sampled row, float32 [B, H, R].

  probs [B, H, R, T] (original order); layout [B, H, NQ, MAXN] over slots; q_inverse, kv_inverse int [B, H, N]
  (slot of each original token).
  """
  batch, heads, num_rows, kv_len = probs.shape
  num_kv_blocks = kv_len // layout.block_kv
  row_block = q_inverse[..., rows] // layout.block_q  # [B, H, R]
  blocks = jnp.take_along_axis(layout.kv_blocks, row_block[..., None], axis=2)  # [B, H, R, MAXN]
  count = jnp.take_along_axis(layout.kv_count, row_block, axis=2)
  ids = jnp.where(jnp.arange(blocks.shape[-1]) < count[..., None], blocks, num_kv_blocks)
  b, h, r = (x[..., None] for x in jnp.ogrid[:batch, :heads, :num_rows])
  kept = jnp.zeros((batch, heads, num_rows, num_kv_blocks + 1), bool).at[b, h, r, ids].set(True)
  key_block = jnp.broadcast_to((kv_inverse // layout.block_kv)[:, :, None, :], probs.shape)
  return jnp.sum(jnp.where(jnp.take_along_axis(kept, key_block, axis=-1), probs, 0.0), axis=-1)


@jax.jit
def _relative_error(out, dense):
  """|| out - dense || / || dense || over [S, D], float32 [B, H]; out, dense [B, S, H, D]."""
  out, dense = out.astype(jnp.float32), dense.astype(jnp.float32)
  return jnp.sqrt(jnp.sum((out - dense) ** 2, axis=(1, 3)) / jnp.maximum(jnp.sum(dense**2, axis=(1, 3)), 1e-30))


def _dense_causal_blocks(seq_len: int, block_q: int, block_kv: int) -> int:
  last_query = (np.arange(seq_len // block_q) + 1) * block_q - 1
  return int(np.sum(last_query // block_kv + 1))


def score_layer(
  q,
  k,
  v,
  modality_ids=None,
  candidates: Sequence[Candidate] | None = None,
  *,
  num_rows: int = 256,
  row_start: float = 0.125,
  block_q: int = 64,
  block_kv: int = 64,
  num_modalities: int = 2,
  sm_scale: float | None = None,
  backend: str | Sequence[str] = "auto",
  interpret=False,
) -> LayerScores:
  """Scores candidates on one layer's attention inputs (module docstring); deterministic.

  Args:
    q: [N, S, Hq, D] post-RoPE queries of N calibration samples; k, v: [N, S, Hkv, D].
    modality_ids: int [N, S] (0 text, 1 vision), needed by boundary candidates.
    candidates: default `default_candidates(S, block=block_kv, boundary=modality_ids is not None)`.
    num_rows, row_start: sampled query rows (`sample_rows`).
    block_q, block_kv, num_modalities, sm_scale, backend, interpret: as in `mminference_attention`.
  Returns:
    `LayerScores`.
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or q.shape[2] % k.shape[2]:
    raise ValueError(f"score_layer: `q` must be [N, S, Hq, D] and `k`, `v` [N, S, Hkv, D], got {tuple(q.shape)}, "
                     f"{tuple(k.shape)}, {tuple(v.shape)}")
  batch, seq_len, heads, head_dim = q.shape
  if candidates is None:
    candidates = default_candidates(seq_len, block=block_kv, boundary=modality_ids is not None)
  candidates = tuple(candidates)
  if not candidates:
    raise ValueError("score_layer: `candidates` must be non-empty")
  scale = head_dim**-0.5 if sm_scale is None else float(sm_scale)
  rows = sample_rows(seq_len, num_rows, row_start)
  probs = _dense_rows(q, k, jnp.asarray(rows), scale)
  # One layout (and grid permutation) per query head: K/V repeated per head, so that every head is scored on its
  # own (the dispatcher searches a grid permutation per kv head, over the group's query heads that choose it).
  k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
  layout_kw = dict(num_modalities=num_modalities, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale)
  kernel_kw = dict(sm_scale=sm_scale, backend=backend, interpret=interpret)

  def run(entry):
    perm, layout = build_head_layout(q, k, parse_head_config(entry, seq_len), modality_ids, **layout_kw)
    if perm is None:
      return perm, layout, block_sparse_attention(q, k, v, layout, **kernel_kw)
    return perm, layout, permuted_sparse_attention(q, k, v, perm, layout, **kernel_kw)

  dense_out = run(DENSE)[2]
  identity = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, heads, seq_len))
  dense_blocks = _dense_causal_blocks(seq_len, block_q, block_kv)
  recall, min_row, error, density = [], [], [], []
  for candidate in candidates:
    perm, layout, out = run(candidate.entry)
    row_recall = _layout_recall(probs, jnp.asarray(rows), layout,
                                identity if perm is None else jnp.broadcast_to(perm.q_inverse, identity.shape),
                                identity if perm is None else jnp.broadcast_to(perm.kv_inverse, identity.shape))
    recall.append(np.asarray(jnp.mean(row_recall, axis=-1)))  # [N, Hq]
    min_row.append(np.asarray(jnp.min(row_recall, axis=-1)))
    error.append(np.asarray(_relative_error(out, dense_out)))
    density.append(np.asarray(jnp.sum(layout.kv_count, axis=-1)) / dense_blocks)
  return LayerScores(candidates, rows, *(np.stack(x).astype(np.float64) for x in (recall, min_row, error, density)))


def choose(scores: LayerScores, threshold: float = THRESHOLD, max_error: float | None = None) -> list[dict]:
  """Per query head, the cheapest candidate meeting the thresholds (module docstring), as an entry with its
  mean recall as `score` (dense: 1.0)."""
  recall = scores.recall.mean(axis=1)  # [C, Hq]
  density = scores.density.mean(axis=1)
  eligible = recall >= threshold
  if max_error is not None:
    eligible &= scores.error.mean(axis=1) <= max_error
  entries = []
  for head in range(recall.shape[1]):
    options = [c for c in range(len(scores.candidates)) if eligible[c, head]]
    if not options:
      entries.append({**DENSE, "score": 1.0})
      continue
    best = min(options, key=lambda c: (density[c, head], c))  # ties: the earlier candidate
    entry = scores.candidates[best].entry
    dense = entry["pattern"] == "dense" and entry.get("boundary", "none") == "none"
    entries.append({**entry, "score": 1.0 if dense else round(float(recall[best, head]), 6)})
  return entries


def build_config(layer_entries: Sequence[Sequence[dict]], **fields) -> SparseAttentionConfig:
  """`SparseAttentionConfig` of chosen entries with `min_recall` = the lowest `score` and this jax version."""
  min_recall = min(float(entry["score"]) for heads in layer_entries for entry in heads)
  fields.setdefault("jax_version", jax.__version__)
  return SparseAttentionConfig.from_layers(layer_entries, min_recall=min_recall, **fields)


def _hash_array(digest, array) -> None:
  array = np.ascontiguousarray(np.asarray(array))
  digest.update(f"{array.dtype.str}{array.shape}".encode())
  digest.update(array.tobytes())


def calibration_hash(arrays: Iterable) -> str:
  """sha256 of the arrays' dtypes, shapes and bytes, in order."""
  digest = hashlib.sha256()
  for array in arrays:
    _hash_array(digest, array)
  return digest.hexdigest()


def search(
  layers: Iterable[tuple],
  modality_ids=None,
  candidates: Sequence[Candidate] | None = None,
  *,
  threshold: float = THRESHOLD,
  max_error: float | None = None,
  model: str = "",
  calib_hash: str | None = None,
  **score_kwargs,
) -> tuple[SparseAttentionConfig, list[LayerScores]]:
  """Searches every layer: `layers` yields (q [N, S, Hq, D], k, v [N, S, Hkv, D]) per decoder layer.

  `calib_hash` defaults to `calibration_hash` of every layer's q, k, v, then the modality ids; `score_kwargs` go
  to `score_layer` (block sizes and num_modalities are also stored in the config).
  Returns (config, per-layer scores).
  """
  all_scores, digest = [], hashlib.sha256()
  for q, k, v in layers:
    all_scores.append(score_layer(q, k, v, modality_ids, candidates, **score_kwargs))
    for array in (q, k, v) if calib_hash is None else ():
      _hash_array(digest, array)  # incrementally: `layers` may be a generator of large captures
  if not all_scores:
    raise ValueError("search: `layers` yielded no layer")
  if calib_hash is None:
    if modality_ids is not None:
      _hash_array(digest, modality_ids)
    calib_hash = digest.hexdigest()
  config = build_config([choose(s, threshold, max_error) for s in all_scores], model=model, calib_hash=calib_hash,
                        block_q=score_kwargs.get("block_q", 64), block_kv=score_kwargs.get("block_kv", 64),
                        num_modalities=score_kwargs.get("num_modalities", 2))
  return config, all_scores


def layer_summary(entries: Sequence[dict], scores: LayerScores) -> dict:
  """Pattern counts, mean density and min recall of a layer's chosen entries (for the CLI table)."""
  index = {c.entry_json: i for i, c in enumerate(scores.candidates)}
  densities, errors = [], []
  for head, entry in enumerate(entries):
    c = index.get(canonical_entry({key: value for key, value in entry.items() if key != "score"}))
    densities.append(1.0 if c is None else float(scores.density[c, :, head].mean()))
    errors.append(0.0 if c is None else float(scores.error[c, :, head].mean()))
  names = [e["pattern"] + ("" if e.get("boundary", "none") == "none" else f"/{e['boundary']}") for e in entries]
  return {"patterns": dict(sorted(collections.Counter(names).items())), "density": float(np.mean(densities)),
          "min_recall": min(float(e["score"]) for e in entries), "error": float(np.mean(errors))}
