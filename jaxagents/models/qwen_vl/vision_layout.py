"""Host-side (numpy) layout of the vision tower's patch sequence: everything that depends on the image grids.

All images and videos of a batch go through the ViT as one flat sequence of patches. What
makes that sequence attend and rotate like transformers' per-item loops is computed here, once per batch, with
static padded shapes so the tower itself is one `jit`:
  * `patch_hw`: (row, col) of every patch in merge-block order (`vision_utils.get_vision_position_ids`).
  * `segment_ids`: one attention segment per (item, frame group) (`get_vision_cu_seqlens`); padding is -1.
  * `window_index` / `window_segment_ids`: Qwen2.5-VL window attention (`get_vision_window_index`): merged units
    reordered window by window; one segment per window.
  * `pos_interp_index` / `pos_interp_weight`: Qwen3-VL's bilinear (align_corners=True) resampling of the learned
    square position table to each grid (`get_vision_interpolation_indices_and_weights`).
Segment ids replace `cu_seqlens`: a block-diagonal mask instead of varlen kernels, so padding to a bucket costs
masked compute, never a recompilation.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from jaxagents.models.qwen_vl.config import QwenVLConfig, VisionConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionInputs:
  """One batch of patches for `VisionTower`, padded to P (a multiple of merge_size**2).

  Attributes:
    patches: [P, C*T*p*p] float, the processor's `pixel_values` (images first, then videos), zero padded.
    segment_ids: [P] int32, the (item, frame group) each patch attends within; -1 for padding.
    patch_hw: [P, 2] int32 (row, col) for the 2-D rotary embedding.
    window_index: [P / m^2] int32 merged-unit order for window attention (Qwen2.5-VL), else None.
    window_segment_ids: [P] int32 window of each patch *in window order* (Qwen2.5-VL), else None.
    pos_interp_index: [P, 4] int32 taps into the learned position table (Qwen3-VL), else None.
    pos_interp_weight: [P, 4] float32 bilinear weights (Qwen3-VL), else None.
  """

  patches: np.ndarray
  segment_ids: np.ndarray
  patch_hw: np.ndarray
  window_index: np.ndarray | None = None
  window_segment_ids: np.ndarray | None = None
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
  out = []
  for t, h, w in np.asarray(grid_thw).reshape(-1, 3):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // merge_size, merge_size, w // merge_size, merge_size)
    rows = rows.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
  return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 2), np.int32)


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
  hw = patch_hw(grid_thw, merge_size).astype(np.float32)
  sizes = np.concatenate([np.tile([[h, w]], (t * h * w, 1)) for t, h, w in np.asarray(grid_thw).reshape(-1, 3)])
  src = hw * np.float32(side - 1) / np.maximum(sizes - 1, 1).astype(np.float32)
  floor = np.floor(src)
  taps = np.clip(floor[..., None] + np.arange(2), 0, side - 1).astype(np.int64)  # [P, 2 axes, 2 taps]
  weights = np.clip(1 - np.abs(src[..., None] - floor[..., None] - np.arange(2)), 0, None).astype(np.float32)
  index = taps[:, 0, :, None] * side + taps[:, 1, None, :]
  weight = weights[:, 0, :, None] * weights[:, 1, None, :]
  return index.reshape(-1, 4).astype(np.int32), weight.reshape(-1, 4).astype(np.float32)


def vision_inputs(
  pixel_values: np.ndarray, grid_thw: np.ndarray, config: QwenVLConfig | VisionConfig, pad_to: int | None = None
) -> VisionInputs:
  """Builds the tower's inputs for patches [N, patch_dim] of items with grids [n, 3], padded to `pad_to` patches.

  Pass the image and video patches concatenated (images first) with their grids stacked in the same order: the
  tower treats every item independently, so one call serves both. `pad_to` (a multiple of merge_size**2, >= N)
  buckets the shape so different batches reuse one compilation.
  """
  vision = config.vision if isinstance(config, QwenVLConfig) else config
  grid = check_grids(grid_thw, vision.merge_size)
  pixel_values = np.asarray(pixel_values)
  num = int(sum(t * h * w for t, h, w in grid))
  if pixel_values.ndim != 2 or pixel_values.shape != (num, vision.patch_dim):
    raise ValueError(
      f"pixel_values: expected [{num}, {vision.patch_dim}] (sum of t*h*w over grid_thw {grid.tolist()}, "
      f"channels*temporal_patch*patch^2), got {pixel_values.shape}"
    )
  unit = vision.merge_size**2
  pad_to = num if pad_to is None else int(pad_to)
  if pad_to < num or pad_to % unit:
    raise ValueError(f"pad_to: must be a multiple of {unit} and >= the {num} patches, got {pad_to}")
  extra = pad_to - num

  def pad(x, value):
    return np.concatenate([x, np.full((extra, *x.shape[1:]), value, x.dtype)]) if extra else x

  fields = dict(
    patches=pad(pixel_values.astype(np.float32), 0),
    segment_ids=pad(segment_ids(grid), -1),
    patch_hw=pad(patch_hw(grid, vision.merge_size), 0),
  )
  if vision.window_size:
    index, windows = window_layout(grid, vision.window_size, vision.patch_size, vision.merge_size)
    units = num // unit
    fields["window_index"] = np.concatenate([index, np.arange(units, units + extra // unit, dtype=np.int32)])
    fields["window_segment_ids"] = pad(windows, -1)
  if vision.num_position_embeddings:
    index, weight = pos_interp(grid, vision.num_position_embeddings, vision.merge_size)
    fields["pos_interp_index"] = pad(index, 0)
    fields["pos_interp_weight"] = pad(weight, 0)
  return VisionInputs(**fields)
