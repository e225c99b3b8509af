"""Host-side (numpy) layout of the vision tower's inputs: everything that depends on the image grids.

The tower runs on N prompts at once. Prompt n holds the images and videos whose placeholders are in the rows
that read it (images first, then videos, each in placeholder order: transformers' `masked_scatter` order within a
row), padded to P patches, so rows and prompts shard together along the batch. What makes a prompt's patches
attend and rotate like transformers' per-item loops is computed here with static padded shapes, so the tower is
one `jit`:
  * `patch_hw`: (row, col) of every patch in merge-block order (`vision_utils.get_vision_position_ids`).
  * `segment_ids`: one attention segment per (item, frame group) (`get_vision_cu_seqlens`); padding is -1.
  * `window_segment_ids`: Qwen2.5-VL window attention (`get_vision_window_index`): the window of each patch,
    in item order (the tower never permutes the patches; a window need not be contiguous to be packed).
  * `pos_interp_index` / `pos_interp_weight`: Qwen3-VL's bilinear (align_corners=True) resampling of the learned
    square position table to each grid (`get_vision_interpolation_indices_and_weights`).
  * `packing` / `window_packing`: the segments (windows) of each prompt packed first-fit-decreasing into rows of
    the longest segment's length (`pack_segments`, `layers.SegmentPacking`), so that attention costs
    (segments) x (segment length)^2, linear in the number of images, where one mask over all patches is
    quadratic.
Padding patches belong to no segment: padding to a bucket costs masked compute, never a recompilation.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from jaxagents.layers.segment_packing import SegmentPacking
from jaxagents.models.qwen_vl.config import QwenVLConfig, VisionConfig

# Packed rows are this many slots longer than needed at most: a multiple of the f32 sublane count.
ROW_MULTIPLE = 8


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionInputs:
  """The patches of N prompts for `VisionTower`, each padded to P patches (a multiple of merge_size**2).

  Attributes:
    patches: [N, P, C*T*p*p] float, the processor's `pixel_values` of each prompt's items (images first, then
      videos), zero padded.
    segment_ids: [N, P] int32, the (item, frame group) each patch attends within; -1 for padding.
    patch_hw: [N, P, 2] int32 (row, col) for the 2-D rotary embedding.
    packing: `SegmentPacking` of `segment_ids` ([N, R, W] rows), used by the full-attention blocks.
    window_segment_ids: [N, P] int32 window of each patch (Qwen2.5-VL), -1 for padding, else None.
    window_packing: `SegmentPacking` of `window_segment_ids` (Qwen2.5-VL windowed blocks), else None.
    pos_interp_index: [N, P, 4] int32 taps into the learned position table (Qwen3-VL), else None.
    pos_interp_weight: [N, P, 4] float32 bilinear weights (Qwen3-VL), else None.
  """

  patches: np.ndarray
  segment_ids: np.ndarray
  patch_hw: np.ndarray
  packing: SegmentPacking
  window_segment_ids: np.ndarray | None = None
  window_packing: SegmentPacking | None = None
  pos_interp_index: np.ndarray | None = None
  pos_interp_weight: np.ndarray | None = None


def check_grids(grid_thw: np.ndarray, merge_size: int, name: str = "grid_thw") -> np.ndarray:
  """Validates [N, 3] (t, h, w) grids: positive, h and w multiples of the merge size."""
  grid = np.asarray(grid_thw, dtype=np.int64)
  if grid.ndim != 2 or grid.shape[-1] != 3:
    raise ValueError(f"{name}: expected shape [N, 3] (t, h, w), got {grid.shape}")
  for i, (t, h, w) in enumerate(grid):
    if min(t, h, w) < 1 or h % merge_size or w % merge_size:
      raise ValueError(
        f"{name}[{i}] = ({t}, {h}, {w}): t, h, w must be positive and h, w multiples of the merge size "
        f"{merge_size}; resize the image so both sides are multiples of patch_size * merge_size "
        f"(`preprocess.smart_resize` does)."
      )
  return grid


def patch_hw(grid_thw: np.ndarray, merge_size: int) -> np.ndarray:
  """[sum t*h*w, 2] (row, col) of each patch in merge-block order, repeated for each frame group."""
  out = [np.tile(_frame_hw(int(h), int(w), merge_size), (t, 1)) for t, h, w in np.asarray(grid_thw).reshape(-1, 3)]
  return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 2), np.int32)


@functools.lru_cache(maxsize=256)
def _frame_hw(h: int, w: int, merge_size: int) -> np.ndarray:
  """[h*w, 2] (row, col) of one frame's patches in merge-block order (batches repeat a few image sizes)."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  block = (h // merge_size, merge_size, w // merge_size, merge_size)
  rows = rows.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
  cols = cols.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
  hw = np.stack([rows, cols], -1)
  hw.flags.writeable = False
  return hw


def segment_ids(grid_thw: np.ndarray) -> np.ndarray:
  """[sum t*h*w] int32: patches of one frame group of one item share an id (ids count up across items)."""
  sizes = [h * w for t, h, w in np.asarray(grid_thw).reshape(-1, 3) for _ in range(t)]
  return np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)


def window_layout(grid_thw: np.ndarray, window_size: int, patch_size: int, merge_size: int):
  """Qwen2.5-VL window attention: (window_index [U] int32, window_segment_ids [U * m^2] int32).

  The merged grid (h/m, w/m) of every (item, t) is padded to multiples of the window side in merged units
  `window_size / merge_size / patch_size` and tiled row-major into windows; `window_index` lists the merged units
  window by window (a permutation of arange(U)) and `window_segment_ids` gives each patch, in that order, the
  running id of its window. Matches `vision_utils.get_vision_window_index` (cu_window_seqlens are the
  boundaries of these ids). HF pads even an exact multiple by a whole window, which only adds empty windows.
  """
  side = window_size // merge_size // patch_size
  if side < 1:
    raise ValueError(
      f"window_size: {window_size} px is smaller than one merged unit ({merge_size * patch_size} px)."
    )
  unit = merge_size**2
  index, windows, offset, window_id = [], [], 0, 0
  for t, h, w in np.asarray(grid_thw).reshape(-1, 3):
    gh, gw = h // merge_size, w // merge_size
    nh, nw = -(-gh // side), -(-gw // side)
    ids = np.full((t, nh * side, nw * side), -1, np.int64)
    ids[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
    tiles = ids.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
    for tile in tiles:
      valid = tile[tile >= 0]
      if valid.size:
        index.append(valid + offset)
        windows.append(np.full(valid.size * unit, window_id))
        window_id += 1
    offset += t * gh * gw
  if not index:
    return np.zeros((0,), np.int32), np.zeros((0,), np.int32)
  return np.concatenate(index).astype(np.int32), np.concatenate(windows).astype(np.int32)


def pos_interp(grid_thw: np.ndarray, num_position_embeddings: int, merge_size: int):
  """Qwen3-VL: (index [P, 4] int32, weight [P, 4] float32) resampling the square learned position table.

  Bilinear with align_corners=True: patch row r of an h-row grid reads source row r * (S - 1) / max(h - 1, 1) of
  the S x S table (S = sqrt(num_position_embeddings)), likewise for columns; the four taps are the outer product
  of the per-axis (floor, floor + 1) taps clamped to [0, S - 1]. Emitted in merge-block order and repeated per t.
  """
  side = math.isqrt(num_position_embeddings)
  if not np.asarray(grid_thw).size:
    return np.zeros((0, 4), np.int32), np.zeros((0, 4), np.float32)
  hw = patch_hw(grid_thw, merge_size).astype(np.float32)
  sizes = np.concatenate([np.tile([[h, w]], (t * h * w, 1)) for t, h, w in np.asarray(grid_thw).reshape(-1, 3)])
  src = hw * np.float32(side - 1) / np.maximum(sizes - 1, 1).astype(np.float32)
  floor = np.floor(src)
  taps = np.clip(floor[..., None] + np.arange(2), 0, side - 1).astype(np.int64)  # [P, 2 axes, 2 taps]
  weights = np.clip(1 - np.abs(src[..., None] - floor[..., None] - np.arange(2)), 0, None).astype(np.float32)
  index = taps[:, 0, :, None] * side + taps[:, 1, None, :]
  weight = weights[:, 0, :, None] * weights[:, 1, None, :]
  return index.reshape(-1, 4).astype(np.int32), weight.reshape(-1, 4).astype(np.float32)


def window_ids(grid_thw: np.ndarray, window_size: int, patch_size: int, merge_size: int) -> np.ndarray:
  """[sum t*h*w] int32: the window (of `window_layout`) of every patch, in item (merge-block) order."""
  index, windows = window_layout(grid_thw, window_size, patch_size, merge_size)
  unit = merge_size**2
  unit_window = np.empty(index.size, np.int32)
  unit_window[index] = windows[::unit]
  return np.repeat(unit_window, unit)


def pack_segments(segment_ids: np.ndarray, bucket: int | None = None, multiple: int = ROW_MULTIPLE) -> SegmentPacking:
  """Packs the segments of each sequence into rows of W slots, first fit in order of decreasing length.

  W is the longest segment of the batch rounded up to a multiple of `multiple`; R is the most rows any sequence
  needs, and at least ceil(bucket / W) with a `bucket` (the padded length S), so that batches padded to one
  bucket whose longest segments have one length (e.g. one image size) share one shape. First fit leaves at
  most one row per sequence less than half full.

  Args:
    segment_ids: [B, S] int, the segment of each token; -1 for tokens in no segment.
  Returns:
    `SegmentPacking` of numpy int32 arrays: token_index / segment_ids [B, R, W], slot_index [B, S].
  """
  ids = np.asarray(segment_ids)
  if ids.ndim != 2:
    raise ValueError(f"segment_ids: expected [B, S], got shape {ids.shape}")
  groups = []
  for row in ids:
    tokens = np.flatnonzero(row >= 0)
    tokens = tokens[np.argsort(row[tokens], kind="stable")]
    _, starts, counts = np.unique(row[tokens], return_index=True, return_counts=True)
    groups.append((tokens, starts, counts))
  longest = max([1, *(int(c.max()) for _, _, c in groups if c.size)])
  width = -(-longest // multiple) * multiple
  placed = []
  for _, _, counts in groups:
    free = np.full(counts.size, width, np.int64)  # remaining slots per row; at most one row per segment
    where = np.zeros((counts.size, 2), np.int64)  # (row, offset) of each segment
    used, first_open, smallest = 0, 0, counts.min(initial=width)
    for k in np.argsort(-counts, kind="stable"):
      while first_open < used and free[first_open] < smallest:  # rows no segment fits in any more
        first_open += 1
      fits = np.flatnonzero(free[first_open:used] >= counts[k])
      row = first_open + int(fits[0]) if fits.size else used
      used = max(used, row + 1)
      where[k] = row, width - free[row]
      free[row] -= counts[k]
    placed.append((where, used))
  rows = max([1, *(used for _, used in placed), *([-(-bucket // width)] if bucket else [])])
  token_index = np.zeros((ids.shape[0], rows * width), np.int32)
  slot_segments = np.full((ids.shape[0], rows * width), -1, np.int32)
  slot_index = np.full(ids.shape, -1, np.int32)
  for b, ((tokens, starts, counts), (where, _)) in enumerate(zip(groups, placed, strict=True)):
    for start, count, (row, offset) in zip(starts, counts, where, strict=True):
      members = tokens[start:start + count]
      slots = row * width + offset + np.arange(count)
      token_index[b, slots] = members
      slot_segments[b, slots] = ids[b, members[0]]
      slot_index[b, members] = slots
  shape = (ids.shape[0], rows, width)
  return SegmentPacking(token_index.reshape(shape), slot_segments.reshape(shape), slot_index)


def vision_inputs(
  pixel_values: np.ndarray,
  grid_thw: np.ndarray,
  config: QwenVLConfig | VisionConfig,
  pad_to: int | None = None,
  *,
  items_per_prompt: np.ndarray | list[int] | None = None,
) -> VisionInputs:
  """Builds the tower's inputs for the items with grids [n, 3] and patches [sum t*h*w, patch_dim], prompt by prompt.

  Args:
    pixel_values: the patches of every item, concatenated in prompt order (prompt 0's items, then prompt 1's...;
      within a prompt its images, then its videos, as the features are scattered).
    grid_thw: [n, 3] (t, h, w) of those items, in the same order.
    config: the model (or vision) config.
    pad_to: P, the patches per prompt (a multiple of merge_size**2, >= every prompt's count): a bucket that lets
      different batches reuse one compilation. Default: the largest prompt. The packings' rows follow the
      longest segment (`pack_segments`), so batches (and the hosts of a multi-host run, whose arrays are
      concatenated) share every shape when they share the bucket and the longest image size.
    items_per_prompt: [N] how many consecutive items each prompt holds (zeros allowed); default: one prompt
      holding every item.
  Returns:
    `VisionInputs` with a leading prompt axis N.
  """
  vision = config.vision if isinstance(config, QwenVLConfig) else config
  grid = check_grids(grid_thw, vision.merge_size)
  pixel_values = np.asarray(pixel_values)
  sizes = np.array([t * h * w for t, h, w in grid], np.int64)
  if pixel_values.ndim != 2 or pixel_values.shape != (int(sizes.sum()), vision.patch_dim):
    raise ValueError(
      f"pixel_values: expected [{int(sizes.sum())}, {vision.patch_dim}] (sum of t*h*w over grid_thw "
      f"{grid.tolist()}, channels*temporal_patch*patch^2), got {pixel_values.shape}"
    )
  counts = np.array([len(grid)] if items_per_prompt is None else items_per_prompt, np.int64).reshape(-1)
  if counts.size == 0 or (counts < 0).any() or counts.sum() != len(grid):
    raise ValueError(f"items_per_prompt: expected N >= 1 counts >= 0 summing to the {len(grid)} items of "
                     f"grid_thw, got {counts.tolist()}")
  item_bounds = np.concatenate([[0], np.cumsum(counts)])
  patch_bounds = np.concatenate([[0], np.cumsum(sizes)])
  prompts = [(grid[a:b], pixel_values[patch_bounds[a]:patch_bounds[b]]) for a, b in zip(item_bounds[:-1],
                                                                                         item_bounds[1:])]
  unit = vision.merge_size**2
  largest = max(len(pixels) for _, pixels in prompts)
  pad_to = max(largest, unit) if pad_to is None else int(pad_to)
  if pad_to < largest or pad_to % unit:
    raise ValueError(f"pad_to: must be a multiple of {unit} and >= the {largest} patches of the largest prompt, "
                     f"got {pad_to}")

  def stack(per_prompt, value):
    """[N, pad_to, ...] from one array per prompt, each padded with `value`."""
    return np.stack([np.concatenate([x, np.full((pad_to - len(x), *x.shape[1:]), value, x.dtype)])
                     for x in per_prompt])

  grids = [g for g, _ in prompts]
  segments = stack([segment_ids(g) for g in grids], -1)
  fields = dict(
    patches=stack([p.astype(np.float32, copy=False) for _, p in prompts], 0),
    segment_ids=segments,
    patch_hw=stack([patch_hw(g, vision.merge_size) for g in grids], 0),
    packing=pack_segments(segments, bucket=pad_to),
  )
  if vision.window_size:
    windows = stack([window_ids(g, vision.window_size, vision.patch_size, vision.merge_size) for g in grids], -1)
    fields["window_segment_ids"] = windows
    fields["window_packing"] = pack_segments(windows, bucket=pad_to)
  if vision.num_position_embeddings:
    taps = [pos_interp(g, vision.num_position_embeddings, vision.merge_size) for g in grids]
    fields["pos_interp_index"] = stack([index for index, _ in taps], 0)
    fields["pos_interp_weight"] = stack([weight for _, weight in taps], 0)
  return VisionInputs(**fields)
