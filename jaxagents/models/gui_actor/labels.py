"""GUI-Actor's multi-patch labels: which visual tokens a ground-truth box covers (Wu et al. 2025, arXiv 2506.03143,
Fig. 2b: every patch partly or fully covered by the box is positive), following microsoft/GUI-Actor
`src/gui_actor/dataset.py`, `get_multi_patch_labels` and `get_token_index`.

Qwen2-VL and Qwen2.5-VL see the image resized to multiples of patch 14 × merge 2 = 28 pixels, and one LLM visual token
covers one 28×28 block of the resized image, indexed row-major: index = row · n_w + col, (n_h, n_w) =
(H, W) / 28 = `image_grid_thw[1:] / merge_size`. A box (x0, y0, x1, y1), normalised to [0, 1], is scaled to the
resized image and clipped to [0, W] × [0, H]; token (row, col) is labelled 1 iff its block overlaps the box's
interior: NOT(p_x1 ≤ x0 or p_x0 ≥ x1 or p_y1 ≤ y0 or p_y0 ≥ y1), so a box edge lying on a block edge does not take
the neighbouring block. Every pointer of an assistant turn gets the same row (a drag's two points share the box).

Ours: the double loop is written as one broadcast comparison (the same float comparisons), and the sizes are passed
as numbers instead of read from the processed PIL image.
"""

import math

import numpy as np

# Qwen2-VL / Qwen2.5-VL: patch_size 14 × merge_size 2.
MERGE_PATCH_SIZE = 28


def _check_size(width: int, height: int, merge_patch_size: int) -> tuple[int, int]:
  if width <= 0 or height <= 0 or width % merge_patch_size or height % merge_patch_size:
    raise ValueError(f"image width x height: expected positive multiples of merge_patch_size = {merge_patch_size} "
                     f"(the processor's resized size), got {width} x {height}")
  return height // merge_patch_size, width // merge_patch_size


def multi_patch_labels(
  bbox: tuple[float, float, float, float] | np.ndarray,
  width: int,
  height: int,
  merge_patch_size: int = MERGE_PATCH_SIZE,
) -> np.ndarray:
  """Binary labels [n_h · n_w] float32 of the visual tokens the box overlaps (module docstring).

  Args:
    bbox: (x_min, y_min, x_max, y_max) normalised to [0, 1] of the image.
    width, height: the resized image size in pixels (multiples of `merge_patch_size`).
    merge_patch_size: pixels per visual token side (patch_size · merge_size).
  Returns:
    [n_h · n_w] float32, row-major over the token grid; all zeros when the box is empty or off the image.
  """
  bbox = np.asarray(bbox, dtype=np.float64)
  if bbox.shape != (4,):
    raise ValueError(f"bbox: expected (x_min, y_min, x_max, y_max), got shape {bbox.shape}")
  grid_h, grid_w = _check_size(width, height, merge_patch_size)
  x_min = max(0.0, bbox[0] * width)
  y_min = max(0.0, bbox[1] * height)
  x_max = min(float(width), bbox[2] * width)
  y_max = min(float(height), bbox[3] * height)
  patch_x_min = np.arange(grid_w) * merge_patch_size
  patch_y_min = np.arange(grid_h) * merge_patch_size
  inside_x = ~((patch_x_min + merge_patch_size <= x_min) | (patch_x_min >= x_max))
  inside_y = ~((patch_y_min + merge_patch_size <= y_min) | (patch_y_min >= y_max))
  return (inside_y[:, None] & inside_x[None, :]).reshape(-1).astype(np.float32)


def point_token_index(
  point: tuple[float, float], width: int, height: int, merge_patch_size: int = MERGE_PATCH_SIZE
) -> int:
  """`get_token_index`: the visual token holding the normalised point (x, y): floor(y·H/28) · n_w + floor(x·W/28).

  Their single-patch target (kept in their batch as `visual_token_indices_of_coordinates`); no clipping, so x = 1
  would step past the row, which their coordinate clamp to [0.001, 0.999] prevents.
  """
  _, grid_w = _check_size(width, height, merge_patch_size)
  x_index = math.floor(width * point[0] / merge_patch_size)
  y_index = math.floor(height * point[1] / merge_patch_size)
  return y_index * grid_w + x_index
