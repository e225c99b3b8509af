"""Offline per-head sparse-pattern search (MMInference, arXiv 2504.16083; MInference `search_pattern` (v1) and
`search_pattern_v2`, `minference/modules/minference_forward.py`): score candidate patterns per query head on calibration
inputs and keep, per head, the cheapest candidate that recalls enough attention mass.

    python -m jaxagents.sparse.search --checkpoint DIR --out config.json --frames 16 --height 448 --width 448

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

The CLI (`main`) loads a Qwen-VL checkpoint, renders synthetic calibration videos (moving coloured squares) with a
text prompt, captures every decoder layer's post-RoPE q/k/v (`models.qwen_vl.sparse_prefill.attention_inputs`),
scores each layer sample by sample (one sample's capture in memory at a time), and writes the config atomically.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import os
import sys
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
  # One layout per query head, as the dispatcher builds them for a group of all heads (K/V repeated per head).
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
    row_recall = _layout_recall(probs, jnp.asarray(rows), layout, identity if perm is None else perm.q_inverse,
                                identity if perm is None else perm.kv_inverse)
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


# --------------------------------------------------------------------------------------------------------------
# CLI: calibration inputs from a Qwen-VL checkpoint.


def synthetic_video(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
  """uint8 [T, H, W, 3]: 2-4 coloured squares moving at constant speeds (bouncing) over a shaded background."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0.0, 1.0, height)[:, None, None]
  background = np.broadcast_to(rng.uniform(20, 90, 3) + 40 * ramp * rng.uniform(0, 1, 3), (height, width, 3))
  squares = []
  for _ in range(rng.integers(2, 5)):
    side = int(rng.integers(max(2, min(height, width) // 8), max(3, min(height, width) // 3)))
    start = rng.uniform(0, [height - side, width - side])
    velocity = rng.uniform(-0.08, 0.08, 2) * np.array([height, width])
    squares.append((side, start, velocity, rng.uniform(120, 255, 3)))
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    frame = background.copy()
    for side, start, velocity, colour in squares:
      span = np.array([height - side, width - side], float)
      pos = (start + t * velocity) % (2 * np.maximum(span, 1))
      top, left = np.minimum(pos, 2 * span - pos).astype(int)  # bounce off the borders
      frame[top : top + side, left : left + side] = colour
    frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
  return frames


def _text_encoder(checkpoint: str | None, config):
  """str -> token ids: the checkpoint's `tokenizer.json` if any, else bytes mapped below the special ids."""
  path = os.path.join(checkpoint, "tokenizer.json") if checkpoint else None
  if path and os.path.exists(path):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(path)
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
  special = min(config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id, config.text.vocab_size)
  return lambda text: [byte % special for byte in text.encode()]


PROMPT = ("Describe the video: how many coloured squares are there, what colour is each one, and in which "
          "direction and how fast does each square move?")


def calibration_sample(config, encode, frames: np.ndarray, block: int, video_fps: float = 2.0) -> dict:
  """One calibration input: a video and a prompt, the text padded so that S is a multiple of `block`.

  Returns the `prepare_inputs` keyword arguments (input_ids [1, S], pixel_values_videos, video_grid_thw and,
  for Qwen2.5-VL, second_per_grid_ts) plus 'strides': tokens per frame group and per row of merged patches.
  """
  from jaxagents.models.qwen_vl.preprocess import VideoOptions, preprocess_video

  family, merge = config.family, config.vision.merge_size
  options = VideoOptions.for_family(family)
  factor = options.factor
  num_frames, height, width = frames.shape[:3]
  # Room for rounding each side to a multiple of the factor, so frames keep about their size.
  max_pixels = (height + factor) * (width + factor) * (num_frames if family == "qwen3_vl" else 1)
  options = dataclasses.replace(options, min_pixels=factor * factor, max_pixels=max_pixels,
                                cap_pixels_per_frame=False, do_sample_frames=False)
  pixels, grid, timing = preprocess_video(frames, options, family, video_fps=video_fps, sample=False)
  groups, rows, cols = (int(x) for x in grid[0])
  per_group = (rows // merge) * (cols // merge)
  pads = [config.video_token_id] * per_group
  if family == "qwen3_vl":  # one "<t seconds>" VS pads VE block per frame group (transformers
    # `Qwen3VLProcessor.replace_video_token`)
    group_ids = [encode(f"<{t:.1f} seconds>") + [config.vision_start_token_id, *pads, config.vision_end_token_id]
                 for t in timing]
    video = [i for ids in group_ids for i in ids]
    frame_stride = len(group_ids[0])
  else:
    video, frame_stride = pads * groups, per_group
  ids = [*encode("Watch this video. "), config.vision_start_token_id, *video, config.vision_end_token_id,
         *encode(PROMPT)]
  filler = encode(" Answer briefly.") or [0]
  ids += [filler[i % len(filler)] for i in range(-len(ids) % block)]
  sample = {"input_ids": np.array([ids], np.int32), "pixel_values_videos": pixels, "video_grid_thw": grid,
            "strides": (frame_stride, cols // merge)}
  if family == "qwen2_5_vl":
    sample["second_per_grid_ts"] = np.array([timing], np.float32)
  return sample


def _load_model(args):
  from jaxagents.models.qwen_vl import QwenVL, QwenVLConfig, load_params
  from jaxagents.models.qwen_vl.presets import PRESETS

  dtype = jnp.dtype(args.dtype)
  config = None
  if args.preset:
    if args.preset not in PRESETS:
      raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {args.preset!r}")
    config = QwenVLConfig.from_hf(PRESETS[args.preset])
  elif args.config_json:
    with open(args.config_json) as f:
      config = QwenVLConfig.from_hf(json.load(f))
  if args.checkpoint:
    config, params = load_params(args.checkpoint, config, dtype)
  elif config is None:
    raise ValueError("search: give --checkpoint DIR, or --preset / --config-json for random weights")
  else:
    params = random_params(config, args.seed, dtype)
  name = args.model or (os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint else "")
  name = name or args.preset or config.family
  return QwenVL(config, dtype=dtype), config, params, name


def random_params(config, seed: int = 0, dtype=np.float32) -> dict:
  """Random Qwen-VL weights without running the model: kernels N(0, 1 / fan_in), embeddings N(0, 1), norm scales
  1, biases N(0, 0.1^2) (shapes from `convert.param_shapes`)."""
  import flax

  from jaxagents.models.qwen_vl.convert import param_shapes

  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in sorted(param_shapes(config).items()):
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "scale":
      value = np.ones(shape)
    elif leaf == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif leaf == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(shape[-2])
    else:
      value = rng.standard_normal(shape)
    flat[path] = value.astype(dtype)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m jaxagents.sparse.search", description=__doc__.split("\n\n")[0])
  source = parser.add_argument_group("model (a checkpoint, or a preset / config for random weights)")
  source.add_argument("--checkpoint", help="HF safetensors directory (config.json + *.safetensors)")
  which = source.add_mutually_exclusive_group()
  which.add_argument("--preset", help="a jaxagents.models.qwen_vl.presets name (overrides the checkpoint config)")
  which.add_argument("--config-json", help="a transformers config.json (overrides the checkpoint config)")
  parser.add_argument("--out", required=True, help="output config JSON (written atomically)")
  parser.add_argument("--model", default="", help="model name stored in the config (default: the directory name)")
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--height", type=int, default=448)
  parser.add_argument("--width", type=int, default=448)
  parser.add_argument("--samples", type=int, default=4, help="calibration videos (4 or more recommended)")
  parser.add_argument("--threshold", type=float, default=THRESHOLD, help="recall a chosen pattern must reach")
  parser.add_argument("--max-error", type=float, default=None, help="optional bound on the relative output error")
  parser.add_argument("--block", type=int, default=64, help="block_q = block_kv of the layouts")
  parser.add_argument("--budgets", default=",".join(str(f) for f in DEFAULT_BUDGETS),
                      help="comma-separated budget fractions of the candidate buckets")
  parser.add_argument("--patterns", default=",".join(PATTERNS), help="comma-separated patterns to search")
  parser.add_argument("--no-boundary", action="store_true", help="no Q-/2D-boundary candidates")
  parser.add_argument("--rows", type=int, default=256, help="sampled query rows per sample for the recall")
  parser.add_argument("--dtype", default="float32", help="compute / parameter dtype (e.g. bfloat16 on GPU)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--backend", default="auto", help="block-sparse kernel backend (see block_sparse_attention)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> SparseAttentionConfig:
  from tqdm import tqdm

  from jaxagents.models.qwen_vl import prepare_inputs
  from jaxagents.models.qwen_vl.sparse_prefill import attention_inputs, modality_ids

  args = _parse_args(argv)
  for name in ("frames", "height", "width", "samples", "block", "rows"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}: must be >= 1, got {getattr(args, name)}")
  budgets = tuple(float(f) for f in args.budgets.split(",") if f.strip())
  patterns = tuple(p.strip() for p in args.patterns.split(",") if p.strip())
  if not budgets or any(not 0 < f <= 1 for f in budgets) or not set(patterns) <= set(PATTERNS):
    raise ValueError(f"--budgets must be fractions in (0, 1] and --patterns among {PATTERNS}, got {args.budgets!r}, "
                     f"{args.patterns!r}")
  if not 0 < args.threshold <= 1:
    raise ValueError(f"--threshold: must be in (0, 1], got {args.threshold}")
  model, config, params, name = _load_model(args)
  encode = _text_encoder(args.checkpoint, config)
  all_scores, hashed, candidates, seq_len = None, [], None, None
  for index in tqdm(range(args.samples), desc="calibration samples", file=sys.stderr):
    frames = synthetic_video(args.frames, args.height, args.width, seed=args.seed * 1000 + index)
    sample = calibration_sample(config, encode, frames, args.block)
    strides = sample.pop("strides")
    inputs = prepare_inputs(config, sample["input_ids"], **{k: v for k, v in sample.items() if k != "input_ids"})
    hashed += [inputs.input_ids, sample["pixel_values_videos"], sample["video_grid_thw"]]
    q, k, v = attention_inputs(model, params, inputs)
    ids = modality_ids(inputs.input_ids, config)
    if candidates is None:
      seq_len = q.shape[2]
      candidates = default_candidates(seq_len, block=args.block, budgets=budgets, strides=strides,
                                      boundary=not args.no_boundary, patterns=patterns)
    elif q.shape[2] != seq_len:
      raise ValueError(f"search: calibration samples must share one length, got {q.shape[2]} and {seq_len}")
    layer_scores = [
      score_layer(q[layer], k[layer], v[layer], ids, candidates, num_rows=args.rows, block_q=args.block,
                  block_kv=args.block, backend=args.backend)
      for layer in tqdm(range(q.shape[0]), desc=f"sample {index}: layers", leave=False, file=sys.stderr)
    ]
    all_scores = layer_scores if all_scores is None else [a.merge(b) for a, b in zip(all_scores, layer_scores)]
    del q, k, v
  layer_entries = [choose(s, args.threshold, args.max_error) for s in all_scores]
  result = build_config(layer_entries, model=name, calib_hash=calibration_hash(hashed), block_q=args.block,
                        block_kv=args.block, num_modalities=2)
  result.save(args.out)
  print(f"{name}: S={seq_len}, {len(candidates)} candidates, {args.samples} samples, threshold "
        f"{args.threshold}; min_recall {result.min_recall:.4f}")
  print(f"{'layer':>5}  {'density':>7}  {'min rec':>7}  {'error':>7}  patterns")
  for layer, (entries, scores) in enumerate(zip(layer_entries, all_scores)):
    row = layer_summary(entries, scores)
    counts = " ".join(f"{p}:{n}" for p, n in row["patterns"].items())
    print(f"{layer:>5}  {row['density']:7.3f}  {row['min_recall']:7.4f}  {row['error']:7.4f}  {counts}")
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
