"""M-RoPE position ids of the Qwen-VL family (transformers' `get_rope_index`), computed on the host in numpy.

M-RoPE of Qwen2-VL (arXiv 2409.12191, Sec. 2.1) for Qwen2-VL, Qwen2.5-VL and Qwen3-VL. Each row keeps only its valid
(attention mask 1) tokens, which split into maximal runs of one token type (0 text, 1 image pad, 2 video pad,
as transformers' `ProcessorMixin.create_mm_token_type_ids` marks them). A run starts at position `start`:

* text run of n tokens: all three axes get start, ..., start + n - 1;
* vision run of grid (t, h, w), h' = h / m, w' = w / m (m = `vision.merge_size`), tokens in (t, h', w') row-major
  order: T = start + floor(i_t * Δ), H = start + i_h, W = start + i_w. Δ = 1, except for Qwen2.5-VL video where
  Δ = tokens_per_second * second_per_grid_t, multiplied in float32 before the floor as transformers 5.23 does
  with the float32 `second_per_grid_ts` its processor returns (PR #48669).
* Qwen3-VL first splits each video grid (t, h, w) into t frame grids (1, h, w): its prompts put a timestamp and
  vision start/end tokens around every frame, so each frame is a run of its own.

Where the next run starts is the difference between the two modes (the default, "qwen", is our choice):

* `"hf"` (transformers 5.23): after a text run start += n, after a vision run start += max(h', w').
* `"qwen"` (original Qwen code, vLLM, transformers <= 5.2): every run starts at max(all previous positions) + 1.

They agree for text, images (t = 1, as processors make them) and every Qwen3-VL input, and differ for Qwen2/2.5-VL
video (and t > 1 image grids) whenever the temporal positions outrun the spatial extent
(`test_oracle_b_qwen2_5_vl_video_modes_differ_after_the_block` in `tests/models/qwen_vl/test_positions.py`).
Pads (mask 0) get position 0, as in transformers.

Decoding continues from `decode_base` [3, B] (a layout of our choosing): step s of row b gets
`decode_base[:, b] + 1 + s`. In "qwen" mode all three axes of `decode_base` equal the row's largest prompt position
(vLLM's `delta + context_len`); in "hf" mode they are the last valid prompt token's own positions, per axis, which is
what `generate` in 5.23 does (`generation/utils.py` `_update_model_kwargs_for_generation` extends `position_ids`
by `position_ids[..., -1:] + 1`; with left padding the last column is the last valid token; with right padding HF
would continue from a pad, we continue from the last valid token). Keeping the base per row in the decode state,
rather than a `rope_deltas` cached on a module, is what makes it batch-safe (transformers #44873, mlx-vlm #1143).

Unlike transformers, placeholder counts are checked here: each image (video, Qwen3-VL frame) run must hold exactly
its grid's t*h*w/merge_size**2 pads, so a wrong grid, a missing item, or a vision span cut by truncation (trl #5785,
EasyR1 #110) raises ValueError naming the item instead of producing shifted positions. Pad tokens under mask 0 also
raise (transformers' `masked_scatter` of the features would still fill them). `mm_token_type_ids` is derived from
`input_ids` when not given: the only information it carries is where the pad tokens are, so there is nothing to
fall back from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2
_KIND = {IMAGE: "image", VIDEO: "video"}
_GRID_ARG = {IMAGE: "image_grid_thw", VIDEO: "video_grid_thw"}
MODES = ("qwen", "hf")


def mm_token_type_ids(input_ids: Any, cfg) -> np.ndarray:
  """Token types as transformers' `create_mm_token_type_ids`: 1 at image pads, 2 at video pads, 0 elsewhere.

  Only the pad tokens are marked; vision start/end and Qwen3-VL timestamp tokens are text.
  input_ids: integer array of any shape. Returns an int32 array of the same shape.
  """
  ids = np.asarray(input_ids)
  if ids.dtype.kind not in "iu":
    raise ValueError(f"input_ids: expected an integer array, got dtype {ids.dtype}.")
  types = np.zeros(ids.shape, np.int32)
  types[ids == cfg.image_token_id] = IMAGE
  types[ids == cfg.video_token_id] = VIDEO
  return types


@dataclasses.dataclass(frozen=True)
class _Item:
  """One vision run's expected content: its grid, temporal step (None: integer steps of 1) and a name for errors."""

  grid: tuple[int, int, int]
  time_step: np.float32 | None
  label: str


@dataclasses.dataclass(frozen=True)
class _Run:
  kind: int
  row: int
  column: int  # column of the run's first token in the padded row (for error messages)
  start: int  # index into the row's valid tokens
  length: int


def rope_index(
  input_ids: Any,
  attention_mask: Any,
  cfg,
  *,
  mm_token_type_ids: Any = None,
  image_grid_thw: Any = None,
  video_grid_thw: Any = None,
  second_per_grid_ts: Any = None,
  mode: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE positions of a prompt batch and the base its decode steps continue from.

  Args:
    input_ids: [B, L] integer token ids, left- or right-padded.
    attention_mask: [B, L], 1 for valid tokens, 0 for pads; None means all valid.
    cfg: `QwenVLConfig` (family, image/video token ids, `vision.merge_size`, `vision.tokens_per_second`).
    mm_token_type_ids: [B, L] token types (0 text, 1 image, 2 video). Derived from `input_ids` when None; when
      given it must agree with the pad tokens on the valid positions.
    image_grid_thw: [N_images, 3] (t, h, w) patch grids, consumed in row-major (batch, sequence) order.
    video_grid_thw: [N_videos, 3], likewise (Qwen3-VL: one grid per video, split into its t frames here).
    second_per_grid_ts: [N_videos] seconds per temporal grid step, Qwen2.5-VL only (default 1.0 each, as HF).
    mode: "qwen" or "hf" (module docstring); defaults to `cfg.mrope_mode`.

  Returns:
    positions: [3, B, L] int32 (T, H, W); pads hold 0.
    decode_base: [3, B] int32; decode step s of row b uses `decode_base[:, b] + 1 + s` (see `decode_positions`).
      A row without valid tokens gets -1, so that its first decoded token sits at position 0.
  """
  mode = cfg.mrope_mode if mode is None else mode
  if mode not in MODES:
    raise ValueError(f"mode: expected one of {MODES}, got {mode!r}.")
  ids = np.asarray(input_ids)
  if ids.ndim != 2 or ids.dtype.kind not in "iu":
    raise ValueError(f"input_ids: expected an integer array [B, L], got shape {ids.shape} and dtype {ids.dtype}.")
  mask = _mask(attention_mask, ids.shape)
  types = _types(ids, mask, cfg, mm_token_type_ids)
  merge = cfg.vision.merge_size
  items = {
    IMAGE: _image_items(image_grid_thw, merge),
    VIDEO: _video_items(video_grid_thw, second_per_grid_ts, cfg),
  }
  runs = [_row_runs(types[b], mask[b], b) for b in range(ids.shape[0])]
  assigned = _assign_items(runs, items, cfg)

  positions = np.zeros((3, *ids.shape), np.int64)
  decode_base = np.full((3, ids.shape[0]), -1, np.int64)
  for b, row_runs in enumerate(runs):
    valid = np.flatnonzero(mask[b])
    if not valid.size:
      continue
    row = _row_positions(row_runs, assigned, valid.size, merge, mode)
    positions[:, b, valid] = row
    decode_base[:, b] = row.max() if mode == "qwen" else row[:, -1]
  return positions.astype(np.int32), decode_base.astype(np.int32)


def rope_deltas(positions: Any, attention_mask: Any) -> np.ndarray:
  """transformers' `mrope_position_deltas`: max(P[:, b] on valid tokens) + 1 - n_valid[b] (0 for an empty row).

  positions: [3, B, L]; attention_mask: [B, L] or None. Returns int32 [B] (HF returns it as [B, 1]).
  In "qwen" mode `n_valid + delta + s` is vLLM's decode position of step s, equal to `decode_positions`.
  """
  p = np.asarray(positions)
  if p.ndim != 3 or p.shape[0] != 3:
    raise ValueError(f"positions: expected [3, B, L], got shape {p.shape}.")
  mask = _mask(attention_mask, p.shape[1:])
  n_valid = mask.sum(-1)
  top = np.where(mask[None], p, np.iinfo(np.int64).min).max(axis=(0, 2))
  return np.where(n_valid > 0, top + 1 - n_valid, 0).astype(np.int32)


def decode_positions(decode_base: Any, step: Any, num_new: int = 1):
  """Positions of decode step `step` (0 for the first generated token): base + 1 + step + arange(num_new).

  decode_base: [3, B] from `rope_index`; step: an int or [B] (per-row steps); returns int32 [3, B, num_new].
  Uses only indexing and broadcasting arithmetic, so jax arrays (also traced, inside `jax.jit`) work as well.
  """
  if not hasattr(decode_base, "ndim"):
    decode_base = np.asarray(decode_base)
  if decode_base.ndim != 2 or decode_base.shape[0] != 3:
    raise ValueError(f"decode_base: expected [3, B], got shape {tuple(decode_base.shape)}.")
  if num_new < 1:
    raise ValueError(f"num_new: expected >= 1, got {num_new}.")
  step_ndim = getattr(step, "ndim", 0)
  if step_ndim == 1:
    if step.shape[0] != decode_base.shape[1]:
      raise ValueError(f"step: expected a scalar or [B={decode_base.shape[1]}], got shape {tuple(step.shape)}.")
    step = step[None, :, None]
  elif step_ndim != 0:
    raise ValueError(f"step: expected a scalar or [B={decode_base.shape[1]}], got shape {tuple(step.shape)}.")
  return (decode_base[:, :, None] + 1 + step + np.arange(num_new, dtype=np.int32)).astype(np.int32)


def _mask(attention_mask: Any, shape: tuple[int, ...]) -> np.ndarray:
  if attention_mask is None:
    return np.ones(shape, bool)
  mask = np.asarray(attention_mask)
  if mask.shape != tuple(shape):
    raise ValueError(f"attention_mask: expected shape {tuple(shape)} (as input_ids), got {mask.shape}.")
  if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
    raise ValueError(f"attention_mask: expected 0/1 values, got {np.unique(mask)[:8].tolist()}.")
  return mask.astype(bool)


def _types(ids: np.ndarray, mask: np.ndarray, cfg, given: Any) -> np.ndarray:
  types = mm_token_type_ids(ids, cfg)
  hidden = (types != TEXT) & ~mask
  if hidden.any():
    b, col = np.argwhere(hidden)[0]
    raise ValueError(
      f"attention_mask: {int(hidden.sum())} image/video placeholder tokens are masked out (first at row {b}, column "
      f"{col}); the feature scatter would still fill them, so their positions would be inconsistent. Remove "
      f"the item (and its grid) instead of masking it."
    )
  if given is None:
    return types
  given = np.asarray(given)
  if given.shape != ids.shape:
    raise ValueError(f"mm_token_type_ids: expected shape {ids.shape} (as input_ids), got {given.shape}.")
  wrong = (given != types) & mask
  if wrong.any():
    b, col = np.argwhere(wrong)[0]
    raise ValueError(
      f"mm_token_type_ids: disagree with the image/video pad tokens of input_ids at {int(wrong.sum())} valid "
      f"positions (first at row {b}, column {col}: token {ids[b, col]}, type {given[b, col]}, expected "
      f"{types[b, col]}; only pad tokens {cfg.image_token_id} (image, 1) and {cfg.video_token_id} (video, 2) are "
      f"marked)."
    )
  return types


def _grids(grid_thw: Any, name: str, merge: int) -> np.ndarray:
  if grid_thw is None:
    return np.zeros((0, 3), np.int64)
  grids = np.asarray(grid_thw)
  if grids.size == 0:  # [] or an empty [0, 3] array: no items
    return np.zeros((0, 3), np.int64)
  if grids.ndim != 2 or grids.shape[1] != 3 or grids.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected integers [N, 3] (t, h, w), got shape {grids.shape} and dtype {grids.dtype}.")
  grids = grids.astype(np.int64)
  for i, (t, h, w) in enumerate(grids.tolist()):
    if min(t, h, w) < 1:
      raise ValueError(f"{name}[{i}]: expected positive (t, h, w), got ({t}, {h}, {w}).")
    if h % merge or w % merge:
      raise ValueError(
        f"{name}[{i}]: h and w must be divisible by the merge size {merge}, got (t, h, w) = ({t}, {h}, {w})."
      )
  return grids


def _image_items(image_grid_thw: Any, merge: int) -> list[_Item]:
  return [_Item(tuple(g), None, f"image {i} (image_grid_thw[{i}] = {tuple(g)})")
          for i, g in enumerate(_grids(image_grid_thw, "image_grid_thw", merge).tolist())]


def _video_items(video_grid_thw: Any, second_per_grid_ts: Any, cfg) -> list[_Item]:
  grids = _grids(video_grid_thw, "video_grid_thw", cfg.vision.merge_size).tolist()
  steps = _time_steps(second_per_grid_ts, len(grids), cfg)
  if cfg.family != "qwen3_vl":
    return [_Item(tuple(g), s, f"video {i} (video_grid_thw[{i}] = {tuple(g)})")
            for i, (g, s) in enumerate(zip(grids, steps))]
  # Qwen3-VL: one run per frame; the (t, h, w) grid becomes t grids (1, h, w) (transformers `repeat_interleave`).
  return [_Item((1, h, w), None, f"video {i} frame {f} of {t} (video_grid_thw[{i}] = {(t, h, w)}; Qwen3-VL "
                f"expects one run of {h * w // cfg.vision.merge_size**2} pads per frame, between timestamps)")
          for i, (t, h, w) in enumerate(grids) for f in range(t)]


def _time_steps(second_per_grid_ts: Any, n_videos: int, cfg) -> list[np.float32 | None]:
  if cfg.family != "qwen2_5_vl":
    if second_per_grid_ts is not None:
      raise ValueError(
        f"second_per_grid_ts: only Qwen2.5-VL scales video time positions; got it for family {cfg.family!r}."
      )
    return [None] * n_videos
  if second_per_grid_ts is None:
    seconds = np.ones(n_videos, np.float32)  # transformers' default: 1 second per grid step
  else:
    seconds = np.asarray(second_per_grid_ts, np.float32)
    if seconds.shape != (n_videos,):
      raise ValueError(
        f"second_per_grid_ts: expected one value per video, shape ({n_videos},), got shape {seconds.shape}."
      )
    if not (np.isfinite(seconds) & (seconds >= 0)).all():
      raise ValueError(f"second_per_grid_ts: expected finite values >= 0, got {seconds.tolist()}.")
  # float32 like torch: `tokens_per_second * second_per_grid_ts[i]` on a float32 tensor.
  return [np.float32(cfg.vision.tokens_per_second) * s for s in seconds]


def _row_runs(types: np.ndarray, mask: np.ndarray, row: int) -> list[_Run]:
  valid = np.flatnonzero(mask)
  kinds = types[valid]
  starts = np.flatnonzero(np.diff(kinds, prepend=-1))
  ends = np.append(starts[1:], kinds.size)
  return [_Run(int(kinds[s]), row, int(valid[s]), int(s), int(e - s)) for s, e in zip(starts, ends)]


def _tokens(item: _Item, merge: int) -> int:
  t, h, w = item.grid
  return t * h * w // merge**2


def _assign_items(runs: Sequence[Sequence[_Run]], items: dict[int, list[_Item]], cfg) -> dict[_Run, _Item]:
  """Pairs the k-th image (video) run of the batch, row-major, with the k-th image (video) grid, checking counts."""
  merge = cfg.vision.merge_size
  assigned = {}
  for kind, kind_items in items.items():
    kind_runs = [r for row_runs in runs for r in row_runs if r.kind == kind]
    arg, name = _GRID_ARG[kind], _KIND[kind]
    unit = "frame grids" if kind == VIDEO and cfg.family == "qwen3_vl" else "grids"
    totals = (f"{len(kind_runs)} {name} runs with {sum(r.length for r in kind_runs)} pad tokens in input_ids, "
              f"{len(kind_items)} {unit} with {sum(_tokens(i, merge) for i in kind_items)} tokens in {arg}")
    if len(kind_runs) > len(kind_items):
      extra = kind_runs[len(kind_items)]
      raise ValueError(
        f"{arg}: has fewer items than input_ids have {name} runs ({totals}); the first run without a grid is at "
        f"row {extra.row}, column {extra.column} ({extra.length} tokens)."
      )
    for run, item in zip(kind_runs, kind_items):
      expected = _tokens(item, merge)
      if run.length < expected:
        raise ValueError(
          f"{arg}: {item.label} expects {expected} {name} pad tokens (t*h*w/merge_size**2), but its run at row "
          f"{run.row}, column {run.column} has {run.length}. The {name} span is split or cut short, typically by "
          f"truncating the prompt after expanding placeholders (the 'truncation splits an image span' bug, trl "
          f"#5785, EasyR1 #110): truncate before expansion or drop the whole item. ({totals}.)"
        )
      if run.length > expected:
        raise ValueError(
          f"{arg}: {item.label} expects {expected} {name} pad tokens (t*h*w/merge_size**2), but its run at row "
          f"{run.row}, column {run.column} has {run.length}: the grid is wrong, or two items follow each other "
          f"without a separator token. ({totals}.)"
        )
      assigned[run] = item
    if len(kind_runs) < len(kind_items):
      missing = kind_items[len(kind_runs)]
      raise ValueError(
        f"{arg}: has more items than input_ids have {name} runs ({totals}); {missing.label} has no placeholder "
        f"run (was it truncated away, or its placeholder not expanded?)."
      )
  return assigned


def _vision_offsets(item: _Item, merge: int) -> np.ndarray:
  """[3, t*h'*w'] positions of one vision run relative to its start, (t, h', w') row-major."""
  t, h, w = item.grid
  hm, wm = h // merge, w // merge
  if item.time_step is None:
    times = np.arange(t)
  else:  # truncation == floor here (non-negative); float32 as transformers
    times = (np.arange(t, dtype=np.float32) * item.time_step).astype(np.int64)
  grid_t, grid_h, grid_w = np.meshgrid(times, np.arange(hm), np.arange(wm), indexing="ij")
  return np.stack([grid_t.ravel(), grid_h.ravel(), grid_w.ravel()])


def _row_positions(row_runs: Sequence[_Run], assigned: dict[_Run, _Item], n: int, merge: int,
                   mode: str) -> np.ndarray:
  """[3, n] positions of one row's n valid tokens."""
  row = np.empty((3, n), np.int64)
  start = 0
  for run in row_runs:
    span = slice(run.start, run.start + run.length)
    if run.kind == TEXT:
      row[:, span] = start + np.arange(run.length)
      start += run.length
      continue
    item = assigned[run]
    row[:, span] = start + _vision_offsets(item, merge)
    if mode == "hf":
      start += max(item.grid[1], item.grid[2]) // merge
    else:
      start = int(row[:, span].max()) + 1
  return row
