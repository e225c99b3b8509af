"""Magma's Set-of-Mark and Trace-of-Mark (arXiv 2502.13130, Sec. 3) as data transforms on numpy images.

Set-of-Mark (SoM) draws a numbered label on each candidate region so that a model can answer with a mark ("Mark 7")
instead of raw coordinates; Trace-of-Mark (ToM) marks points of a video's first (or current) frame and asks for their
future positions. Both keep the mapping from mark numbers back to what was marked.

What follows microsoft/Magma:
* SoM on boxes, `agents/ui_agent/util/som.py` `plot_boxes_with_marks`: outline every box, then give box i a filled
  label box with its number at the best of 8 slots around the box (`_find_least_overlapping_corner`: top-left,
  top-right, right-top, right-bottom, bottom-right, bottom-left, left-bottom, left-top; slots leaving the image are
  skipped), the one minimising the worst, over the other boxes and the labels already drawn, of [intersection area
  - 1e-4 * nearest-corner distance]. Font size (`MarkHelper._setup_new_font`): grow from 20 until the smaller side of
  "555"'s text box reaches min(30, 0.04 * min(H, W)). White digits on red.
* ToM selection, `tools/som_tom/demo.py` `som_tom` and `data/conversations.py` `Constructor._construct_conv` (the
  paper's Algorithm 2): keep points visible in more than half the frames; trace length = mean step length in pixels,
  visibility ignored (`data/utils/visual_trace.py` `visual_trace_length`); camera motion when more than 80% of the
  points have length > 1, then every frame k is mapped onto frame 0 by a RANSAC homography (reprojection threshold 4);
  points whose compensated length exceeds a threshold are positive (moving), the rest negative; k-means on the
  flattened traces with K_pos ~ U{2..5} and K_neg ~ U{6..14} and one random trace kept per cluster
  (`cluster_traces_kmeans`); marks 1..P+N shuffled over positives and negatives (`data/utils/som_tom.py`
  `som_prompting`), each drawn at its start point as a red disc of diameter max(text size) + 2 holding its number,
  the font grown until the smaller side of "55"'s text box reaches 0.03 * W.
* Texts (`Constructor._construct_conv_som`, `_construct_conv`): positions quantised to a 256 grid,
  q = int(256 * x / W); SoM answer "Mark k at [x,y]" joined by ". "; ToM answer "Mark a at [x,y], ... should be moved,
  and their future positions are:" then one line `"Mark k": "[[x,y],...]"` per moving mark (future points exclude the
  start); a mark is left out of the answer when its copy with near-duplicate (closer than 2 grid units to the last
  kept) and non-positive points removed has <= T // 4 points or its mean step is below a speed threshold.

Ours [reconstruction]:
* Drawing is exact and binary: labels are rectangles (SoM) or discs (ToM) of one fill colour holding the number as
  un-antialiased ink (`gui_screens.text_ink`, Pillow's bundled font rather than Magma's arial.ttf), kept inside the
  image, so every changed pixel lies in a recorded label box, outline ring or trace polyline and a reader of the pixels
  recovers each number at its recorded place. Label size = the ink of "5" repeated to the number's length plus a
  padding (Magma sizes labels by the digit count the same way).
* The fill is Magma's red unless the pixels under the label are close to red; then the first contrasting colour of
  `LABEL_COLOURS`; digits are white or black, whichever reads on the fill. When every slot leaves the image the label
  goes inside the box's top-left corner (Magma falls back to the top-left slot even off-image). `placement="centre"`
  centres labels on the boxes instead.
* Numbering: 1-based by default (Magma's UI code uses 0-based `str(idx)`, its video code `mark_id + 1`;
  `first_number` chooses), shuffled by a seed so numbers carry no position bias.
* ToM: homographies are fitted in numpy (Magma uses `cv2.findHomography`) on the points visible in both frames; a frame
  whose fit fails keeps its raw positions (Magma silently drops it). k-means is seeded k-means++ + Lloyd (Magma:
  `kmeans_pytorch`). Traces can be drawn as polylines (as the demo visualises them with CoTracker's `Visualizer`;
  Magma's training images carry the marks only: `draw_traces=False`). Tracks come from exact flow
  (`tracks_from_flow`, e.g. `motion_render` clips) instead of CoTracker3 on a grid (Magma: grid 15 = 225 points).
* `trace_target` / `parse_trace` give one mark's future positions on the grid and back (to cell centres, so the error
  is at most half a cell); `parse_mark` and `mark_click_point` turn "Mark k" into the box centre.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxagents.data.gui_screens import Element, Screen, font, text_ink

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

INTERACTIVE_ROLES = ("button", "menu_button", "menu_item", "text_input", "checkbox", "slider_thumb", "tab")
LABEL_COLOURS: tuple[RGB, ...] = ((255, 0, 0), (0, 64, 255), (255, 220, 0), (0, 160, 0), (0, 0, 0), (255, 255, 255))
SLOTS = ("top-left", "top-right", "right-top", "right-bottom", "bottom-right", "bottom-left", "left-bottom", "left-top")
GRID = 256  # Magma's spatial_quant_size
SOM_QUESTION = ("The image is split into {grid}x{grid} grids, and labeled with numeric marks.\n"
                "Please locate all the numerical marks in the image.\n")
TOM_QUESTION = ("The image is split into {grid}x{grid} grids, and labeled with numeric marks {mark_ids}.\n"
                "The person is doing: {task}. To finish the task, how to move the numerical marks in the image for "
                "the next {steps} steps?\n")
TRACE_QUESTION = ("The image is split into {grid}x{grid} grids, and labeled with numeric marks.\n"
                  "Predict the positions of Mark {number} for the next {steps} steps.\n")  # ours: one mark
_MIN_CONTRAST = 120.0  # mean RGB distance between a label's fill and the pixels it covers
_MARK_PATTERN = re.compile(r"mark\s*:?\s*(\d+)", re.IGNORECASE)
_POINT_PATTERN = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


@dataclasses.dataclass(frozen=True)
class Mark:
  """A Set-of-Mark label: `number` drawn in `label_box` for candidate `index` (its `box`, `centre` and, for elements,
  `element_id`). Boxes are (x0, y0, x1, y1) covering columns x0..x1-1 and rows y0..y1-1."""

  number: int
  index: int
  box: Box
  centre: tuple[float, float]
  label_box: Box
  fill: RGB
  ink: RGB
  font_size: int
  element_id: int | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class TraceMark:
  """A Trace-of-Mark label: `number` for track `index`, drawn as a disc in `label_box` near `start`. `trace` [T, 2]
  is the track in the start frame's coordinates (camera motion removed when detected), `raw` [T, 2] as given and
  `visible` [T] its visibility; `positive` says whether it moves (negatives are distractor marks without a trace)."""

  number: int
  index: int
  positive: bool
  start: tuple[float, float]
  trace: np.ndarray
  raw: np.ndarray
  visible: np.ndarray
  label_box: Box
  fill: RGB
  ink: RGB
  font_size: int


@dataclasses.dataclass(frozen=True, eq=False)
class TraceSelection:
  """`select_trace_marks`' result: `tracks` [T, N, 2], the kept points' with camera motion removed when
  `camera_motion` (the dropped points' as given); `lengths` [N]
  mean step lengths after compensation; `moving` [N] points kept (visible in > T/2 frames) and longer than the
  threshold; `positive` and `negative` the track indices kept, one per k-means cluster."""

  tracks: np.ndarray
  lengths: np.ndarray
  moving: np.ndarray
  positive: np.ndarray
  negative: np.ndarray
  camera_motion: bool


# ------------------------------------------------------------------------------------------------------------------
# Checks and drawing primitives.


def _check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
    raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
  return image


def _rng(seed) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _text_box_size(text: str, size: int) -> tuple[int, int]:
  """(width, height) of PIL's text box of `text` drawn at (0, 0), as Magma measures marks (`textbbox`)."""
  _, _, right, bottom = font(size).getbbox(text)
  return right, bottom


@functools.lru_cache(maxsize=64)
def som_font_size(height: int, width: int, start: int = 20, max_size: int = 30, proportion: float = 0.04) -> int:
  """Magma's SoM font size (`MarkHelper._setup_new_font`): from `start`, grow until min side of "555" >= min(30,
  0.04 * min(H, W))."""
  size, target = start, min(max_size, proportion * min(height, width))
  while min(_text_box_size("555", size)) < target:
    size += 1
  return size


@functools.lru_cache(maxsize=64)
def tom_font_size(width: int, proportion: float = 0.03, min_size: int = 8) -> int:
  """Magma's ToM font size (`som_prompting`): grow until min side of "55" >= 0.03 * W; ours: never below
  `min_size`, where Pillow's digits stop being legible."""
  size = min_size
  while min(_text_box_size("55", size)) < proportion * width:
    size += 1
  return size


def _label_size(number: int, size: int) -> tuple[int, int, int]:
  """(width, height, padding) of a rectangular label holding `number`: the ink of "5" * digits, padded."""
  text = str(number)
  pad = max(1, round(size / 10))
  template, _, _ = text_ink("5" * len(text), size)
  ink, _, _ = text_ink(text, size)
  height, width = max(template.shape[0], ink.shape[0]), max(template.shape[1], ink.shape[1])
  return width + 2 * pad, height + 2 * pad, pad


def _contrasting(region: np.ndarray) -> tuple[RGB, RGB]:
  """(fill, ink): the first of `LABEL_COLOURS` far enough from the pixels of `region` [h, w, 3] (else the farthest),
  and white or black digits, whichever reads on it."""
  pixels = region.reshape(-1, 3).astype(np.float64)
  distances = [np.linalg.norm(pixels - np.array(colour), axis=1).mean() for colour in LABEL_COLOURS]
  ok = [i for i, d in enumerate(distances) if d >= _MIN_CONTRAST]
  fill = LABEL_COLOURS[ok[0] if ok else int(np.argmax(distances))]
  luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
  return fill, ((0, 0, 0) if luma > 150 else (255, 255, 255))


def _paint_ink(image: np.ndarray, text: str, size: int, centre_x: int, centre_y: int, colour: RGB) -> None:
  """Paints `text`'s binary ink centred on (centre_x, centre_y) (the ink box's centre, rounded down)."""
  ink, _, _ = text_ink(text, size)
  y0, x0 = centre_y - ink.shape[0] // 2, centre_x - ink.shape[1] // 2
  image[y0:y0 + ink.shape[0], x0:x0 + ink.shape[1]][ink] = colour


def _slots(box: Box, width: int, height: int) -> list[tuple[int, int]]:
  """Top-left corners of a (width, height) label at Magma's 8 slots around `box`, in `SLOTS` order."""
  x0, y0, x1, y1 = box
  return [(x0, y0 - height), (x1 - width, y0 - height), (x1, y0), (x1, y1 - height), (x1 - width, y1), (x0, y1),
          (x0 - width, y1 - height), (x0 - width, y0)]


def _slot_scores(label: np.ndarray, others: np.ndarray, image_size: tuple[int, int]) -> float:
  """Magma's slot score: the worst over `others` [M, 4] of intersection area - 1e-4 * nearest-corner distance."""
  if len(others) == 0:
    return -float(sum(image_size))
  ix = np.clip(np.minimum(label[2], others[:, 2]) - np.maximum(label[0], others[:, 0]), 0, None)
  iy = np.clip(np.minimum(label[3], others[:, 3]) - np.maximum(label[1], others[:, 1]), 0, None)
  corners = lambda b: np.stack([b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], -2)
  gaps = np.linalg.norm(corners(label)[None, :, None] - corners(others)[:, None, :], axis=-1).min((1, 2))
  return float(np.max(ix * iy - 1e-4 * gaps))


# ------------------------------------------------------------------------------------------------------------------
# Set-of-Mark.


def mark_numbers(count: int, seed=None, first_number: int = 1) -> np.ndarray:
  """int [count]: the number of each candidate, first_number.. in order, or a permutation of them drawn by `seed`."""
  if count < 0:
    raise ValueError(f"count: expected >= 0, got {count}")
  numbers = np.arange(first_number, first_number + count)
  return numbers if seed is None else _rng(seed).permutation(numbers)


def _candidate_boxes(candidates, height: int, width: int) -> tuple[np.ndarray, list[int | None]]:
  if len(candidates) and all(isinstance(c, Element) for c in candidates):
    boxes, element_ids = np.array([c.box for c in candidates], np.int64), [c.id for c in candidates]
  else:
    try:
      boxes = np.asarray(candidates, np.float64)
    except (TypeError, ValueError) as error:
      raise ValueError(f"candidates: expected Elements or boxes [N, 4], got {type(candidates).__name__}") from error
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise ValueError(f"candidates: expected Elements or boxes [N, 4], got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
      raise ValueError("candidates: boxes must be finite")
    boxes, element_ids = np.rint(boxes).astype(np.int64), [None] * len(boxes)
  bad = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
         | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
  if np.any(bad):
    index = int(np.flatnonzero(bad)[0])
    raise ValueError(f"candidates: box {index} = {boxes[index].tolist()} is empty or leaves the {width}x{height} "
                     "image (expected 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H)")
  return boxes, element_ids


def draw_set_of_marks(image, candidates: Sequence[Element] | np.ndarray, *, seed=None, first_number: int = 1,
                      numbers: Sequence[int] | None = None, placement: str = "corner", outline_width: int = 2,
                      font_size: int | None = None) -> tuple[np.ndarray, dict[int, Mark]]:
  """Draws numbered marks on `candidates` (`Element`s or boxes [N, 4] (x0, y0, x1, y1), exclusive ends) of `image`
  (uint8 [H, W, 3]); returns (marked copy, {number: Mark}). Numbers are `numbers`, else `mark_numbers(N, seed,
  first_number)`. `placement`: "corner" (Magma's least-overlapping slot) or "centre"; `outline_width` 0 draws no
  outlines; `font_size` None uses Magma's `som_font_size`."""
  image = _check_image(image)
  height, width = image.shape[:2]
  boxes, element_ids = _candidate_boxes(candidates, height, width)
  if numbers is None:
    numbers = mark_numbers(len(boxes), seed, first_number)
  numbers = [int(n) for n in numbers]
  if len(numbers) != len(boxes) or len(set(numbers)) != len(numbers) or any(n < 0 for n in numbers):
    raise ValueError(f"numbers: expected {len(boxes)} distinct non-negative ints, got {numbers}")
  if placement not in ("corner", "centre"):
    raise ValueError(f"placement: expected 'corner' or 'centre', got {placement!r}")
  if outline_width < 0:
    raise ValueError(f"outline_width: expected >= 0, got {outline_width}")
  size = som_font_size(height, width) if font_size is None else int(font_size)
  if size < 1:
    raise ValueError(f"font_size: expected >= 1, got {font_size}")

  labels = []
  for box, number in zip(boxes, numbers):
    label_w, label_h, _ = _label_size(number, size)
    if label_w > width or label_h > height:
      raise ValueError(f"font_size: the label of mark {number} ({label_w}x{label_h} px at size {size}) does not fit "
                       f"the {width}x{height} image")
    x0, y0, x1, y1 = (int(v) for v in box)
    if placement == "centre":
      corner = ((x0 + x1 - label_w) // 2, (y0 + y1 - label_h) // 2)
    else:
      others = np.concatenate([boxes[np.any(boxes != box, axis=1)], np.array(labels, np.int64).reshape(-1, 4)])
      best, corner = np.inf, (x0, y0)  # inside the box's top-left corner when every slot leaves the image
      for lx, ly in _slots((x0, y0, x1, y1), label_w, label_h):
        if lx < 0 or ly < 0 or lx + label_w > width or ly + label_h > height:
          continue
        score = _slot_scores(np.array([lx, ly, lx + label_w, ly + label_h]), others, (height, width))
        if score < best:
          best, corner = score, (lx, ly)
    lx = int(np.clip(corner[0], 0, width - label_w))
    ly = int(np.clip(corner[1], 0, height - label_h))
    labels.append((lx, ly, lx + label_w, ly + label_h))

  marked = image.copy()
  fills = []
  for (lx0, ly0, lx1, ly1) in labels:  # colours judged on the unmarked image
    fills.append(_contrasting(image[ly0:ly1, lx0:lx1]))
  if outline_width:
    for (x0, y0, x1, y1), (fill, _) in zip(boxes, fills):
      ring = min(outline_width, (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2)
      marked[y0:y0 + ring, x0:x1] = marked[y1 - ring:y1, x0:x1] = fill
      marked[y0:y1, x0:x0 + ring] = marked[y0:y1, x1 - ring:x1] = fill
  marks = {}
  for index, ((lx0, ly0, lx1, ly1), (fill, ink), number) in enumerate(zip(labels, fills, numbers)):
    marked[ly0:ly1, lx0:lx1] = fill
    _paint_ink(marked, str(number), size, (lx0 + lx1) // 2, (ly0 + ly1) // 2, ink)
    x0, y0, x1, y1 = (int(v) for v in boxes[index])
    marks[number] = Mark(number, index, (x0, y0, x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2), (lx0, ly0, lx1, ly1),
                         fill, ink, size, element_ids[index])
  return marked, marks


def select_candidates(screen: Screen, *, roles: Sequence[str] = INTERACTIVE_ROLES, max_count: int | None = None,
                      seed=0, include: Sequence[int] = ()) -> list[Element]:
  """The elements of `screen` whose role is in `roles`, in id order; with `max_count`, a subset of that size drawn by
  `seed` that always holds the element ids in `include` (e.g. a task's target)."""
  pool = [element for element in screen.elements if element.role in roles]
  pool_ids = {element.id for element in pool}
  missing = [i for i in include if i not in pool_ids]
  if missing:
    raise ValueError(f"include: element ids {missing} are not candidates (roles {tuple(roles)})")
  if max_count is None or len(pool) <= max_count:
    return pool
  if max_count < max(1, len(set(include))):
    raise ValueError(f"max_count: expected >= max(1, len(include)) = {max(1, len(set(include)))}, got {max_count}")
  keep = set(include)
  rest = [element.id for element in pool if element.id not in keep]
  keep.update(int(i) for i in _rng(seed).choice(rest, max_count - len(keep), replace=False))
  return [element for element in pool if element.id in keep]


def mark_answer(marks: Mapping[int, Mark], target: Element | int) -> str:
  """"Mark k" for `target`: an `Element` (matched by id, else by box) or a candidate index."""
  for mark in marks.values():
    if isinstance(target, Element):
      if (mark.element_id == target.id) if mark.element_id is not None else (mark.box == tuple(target.box)):
        return f"Mark {mark.number}"
    elif mark.index == int(target):
      return f"Mark {mark.number}"
  raise ValueError(f"target: {target!r} is not among the marked candidates")


def parse_mark(answer: str | int) -> int:
  """The mark number of an answer ("Mark 7", "mark: 7", 7)."""
  if isinstance(answer, (int, np.integer)):
    return int(answer)
  found = _MARK_PATTERN.search(str(answer))
  if found is None:
    raise ValueError(f"answer: expected 'Mark <number>', got {answer!r}")
  return int(found.group(1))


def mark_click_point(marks: Mapping[int, Mark], answer: str | int) -> tuple[float, float]:
  """The click point of a mark answer: the centre of the marked box."""
  number = parse_mark(answer)
  if number not in marks:
    raise ValueError(f"answer: mark {number} is not among the marks {sorted(marks)}")
  return marks[number].centre


def quantise(points, width: int, height: int, grid: int = GRID) -> np.ndarray:
  """int [..., 2]: Magma's grid cells q = int(grid * x / W), clamped to [0, grid - 1]."""
  if width <= 0 or height <= 0 or grid <= 0:
    raise ValueError(f"width, height, grid: expected > 0, got {width}, {height}, {grid}")
  points = np.asarray(points, np.float64)
  cells = np.floor(grid * points / np.array([width, height])).astype(np.int64)
  return np.clip(cells, 0, grid - 1)


def dequantise(cells, width: int, height: int, grid: int = GRID) -> np.ndarray:
  """float [..., 2]: the pixel centres of grid cells, so |dequantise(quantise(p)) - p| <= half a cell inside."""
  if width <= 0 or height <= 0 or grid <= 0:
    raise ValueError(f"width, height, grid: expected > 0, got {width}, {height}, {grid}")
  return (np.asarray(cells, np.float64) + 0.5) * np.array([width, height]) / grid


def som_answer(points: Mapping[int, Sequence[float]], width: int, height: int, grid: int = GRID) -> str:
  """Magma's SoM answer to `SOM_QUESTION`: "Mark k at [x,y]" on the grid, by number, joined by ". "; `points` maps
  numbers to (x, y) pixels (`{k: m.centre for k, m in marks.items()}` or a ToM mark's `start`)."""
  parts = []
  for number in sorted(points):
    x, y = quantise(points[number], width, height, grid)
    parts.append(f"Mark {number} at [{x},{y}]")
  return ". ".join(parts)


# ------------------------------------------------------------------------------------------------------------------
# Trace-of-Mark: tracks.


def grid_points(height: int, width: int, grid_size: int = 15, margin: int | None = None) -> np.ndarray:
  """int [grid_size**2, 2]: (x, y) pixel centres on a regular grid (as CoTracker queries a grid; Magma's demo uses
  15), `margin` pixels (default 1/16 of the smaller side) from the border."""
  if grid_size < 1:
    raise ValueError(f"grid_size: expected >= 1, got {grid_size}")
  margin = min(height, width) // 16 if margin is None else margin
  if not 0 <= margin < min(height, width) / 2:
    raise ValueError(f"margin: expected in [0, {min(height, width) / 2}), got {margin}")
  xs = np.rint(np.linspace(margin, width - 1 - margin, grid_size)).astype(np.int64)
  ys = np.rint(np.linspace(margin, height - 1 - margin, grid_size)).astype(np.int64)
  gx, gy = np.meshgrid(xs, ys)
  return np.stack([gx.ravel(), gy.ravel()], -1)


def tracks_from_flow(flow, occlusion, points) -> tuple[np.ndarray, np.ndarray]:
  """(tracks float64 [T, N, 2], visible bool [T, N]) of frame-0 pixel centres `points` [N, 2] (integer (x, y)) under
  exact forward flow [T, H, W, 2] (frame 0 -> t) and its occlusion mask [T, H, W] (`motion_render.MotionClip`):
  tracks[t, n] = points[n] + flow[t, y_n, x_n]."""
  flow, occlusion = np.asarray(flow), np.asarray(occlusion, bool)
  if flow.ndim != 4 or flow.shape[-1] != 2:
    raise ValueError(f"flow: expected [T, H, W, 2], got {flow.shape}")
  if occlusion.shape != flow.shape[:3]:
    raise ValueError(f"occlusion: expected {flow.shape[:3]}, got {occlusion.shape}")
  points = np.asarray(points)
  height, width = flow.shape[1:3]
  if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.equal(np.mod(points, 1), 0)):
    raise ValueError(f"points: expected integer pixel centres [N, 2], got {points.dtype} {points.shape}")
  xs, ys = points[:, 0].astype(np.int64), points[:, 1].astype(np.int64)
  if np.any((xs < 0) | (xs >= width) | (ys < 0) | (ys >= height)):
    raise ValueError(f"points: expected inside the {width}x{height} frame")
  tracks = points[None].astype(np.float64) + flow[:, ys, xs].astype(np.float64)
  return tracks, ~occlusion[:, ys, xs]


def _check_tracks(tracks, visible) -> tuple[np.ndarray, np.ndarray]:
  tracks, visible = np.asarray(tracks, np.float64), np.asarray(visible)
  if tracks.ndim != 3 or tracks.shape[-1] != 2 or tracks.shape[0] < 2:
    raise ValueError(f"tracks: expected [T, N, 2] with T >= 2, got {tracks.shape}")
  if not np.all(np.isfinite(tracks)):
    raise ValueError("tracks: expected finite positions")
  if visible.shape != tracks.shape[:2] or visible.dtype != bool:
    raise ValueError(f"visible: expected bool {tracks.shape[:2]}, got {visible.dtype} {visible.shape}")
  return tracks, visible


def trace_lengths(tracks) -> np.ndarray:
  """float [N]: mean step length of each track [T, N, 2] in pixels, visibility ignored (`visual_trace_length`)."""
  tracks = np.asarray(tracks, np.float64)
  return np.linalg.norm(np.diff(tracks, axis=0), axis=-1).mean(0)


def _apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  mapped = points @ matrix[:, :2].T + matrix[:, 2]
  return mapped[:, :2] / mapped[:, 2:]


def _dlt(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
  """The homography source -> target of >= 4 point pairs (Hartley-normalised direct linear transform)."""

  def normaliser(points):
    mean = points.mean(0)
    scale = np.sqrt(2) / max(np.linalg.norm(points - mean, axis=1).mean(), 1e-12)
    return np.array([[scale, 0, -scale * mean[0]], [0, scale, -scale * mean[1]], [0, 0, 1]])

  ts, tt = normaliser(source), normaliser(target)
  s, t = _apply_homography(ts, source), _apply_homography(tt, target)
  zeros, ones = np.zeros(len(s)), np.ones(len(s))
  rows_x = np.stack([-s[:, 0], -s[:, 1], -ones, zeros, zeros, zeros, t[:, 0] * s[:, 0], t[:, 0] * s[:, 1], t[:, 0]], 1)
  rows_y = np.stack([zeros, zeros, zeros, -s[:, 0], -s[:, 1], -ones, t[:, 1] * s[:, 0], t[:, 1] * s[:, 1], t[:, 1]], 1)
  _, singular, vt = np.linalg.svd(np.concatenate([rows_x, rows_y]))
  matrix = np.linalg.inv(tt) @ vt[-1].reshape(3, 3) @ ts
  if abs(matrix[2, 2]) < 1e-12 or not np.all(np.isfinite(matrix)):
    return None
  return matrix / matrix[2, 2]


def fit_homography(source, target, seed=0, threshold: float = 4.0, iterations: int = 200) -> np.ndarray | None:
  """RANSAC homography [3, 3] mapping `source` [N, 2] onto `target` [N, 2] (reprojection `threshold` in pixels, as
  Magma's `cv2.findHomography(..., cv2.RANSAC, 4.0)`), at most `iterations` samples, refitted on the inliers; None
  with fewer than 4 points or no model."""
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if len(source) < 4:
    return None
  rng = _rng(seed)
  best, best_count, needed, done = None, -1, iterations, 0
  while done < min(needed, iterations):
    done += 1
    sample = rng.choice(len(source), 4, replace=False)
    matrix = _dlt(source[sample], target[sample])
    if matrix is None:
      continue
    with np.errstate(all="ignore"):
      errors = np.linalg.norm(_apply_homography(matrix, source) - target, axis=1)
    inliers = np.nan_to_num(errors, nan=np.inf) < threshold
    if inliers.sum() > best_count:
      best, best_count = inliers, int(inliers.sum())
      # adaptive stop, as OpenCV's RANSAC: enough samples to draw one all-inlier quadruple with 99.5% confidence
      all_inliers = (best_count / len(source)) ** 4
      needed = 0 if all_inliers >= 1 else int(np.ceil(np.log(0.005) / np.log1p(-max(all_inliers, 1e-12))))
  if best is None or best_count < 4:
    return None
  return _dlt(source[best], target[best])


def compensate_camera_motion(tracks, visible, seed=0, threshold: float = 4.0) -> np.ndarray:
  """tracks [T, N, 2] mapped onto frame 0 by one homography per frame (fitted on the points visible in frames 0 and
  k), removing camera motion; frame 0 and frames whose fit fails are kept as they are."""
  tracks, visible = _check_tracks(tracks, visible)
  rng = _rng(seed)
  out = tracks.copy()
  for k in range(1, len(tracks)):
    both = visible[0] & visible[k]
    matrix = fit_homography(tracks[k, both], tracks[0, both], rng, threshold)
    if matrix is not None:
      out[k] = _apply_homography(matrix, tracks[k])
  return out


def _kmeans(points: np.ndarray, clusters: int, rng: np.random.Generator, iterations: int = 50) -> np.ndarray:
  """int [N]: cluster labels by k-means++ seeding and Lloyd iterations."""
  clusters = min(clusters, len(points))
  centres = [points[rng.integers(len(points))]]
  for _ in range(1, clusters):
    distance = ((points[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
    total = distance.sum()
    centres.append(points[rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))])
  centres = np.array(centres)
  labels = np.zeros(len(points), np.int64)
  for _ in range(iterations):
    labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    updated = np.array([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(clusters)])
    if np.allclose(updated, centres):
      break
    centres = updated
  return labels


def _one_per_cluster(tracks: np.ndarray, indices: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
  """One random index of `indices` per k-means cluster of their flattened traces (Magma's `cluster_traces_kmeans`)."""
  if len(indices) <= 1 or clusters <= 0:
    return indices[:max(0, min(len(indices), clusters))]
  flat = tracks[:, indices].transpose(1, 0, 2).reshape(len(indices), -1)
  labels = _kmeans(flat, clusters, rng)
  return np.sort([rng.choice(indices[labels == j]) for j in np.unique(labels)])


def _draw_count(value, rng: np.random.Generator, name: str) -> int:
  low, high = (value, value) if np.isscalar(value) else value
  if not 0 <= low <= high:
    raise ValueError(f"{name}: expected a count >= 0 or a range (low, high) with 0 <= low <= high, got {value}")
  return int(rng.integers(low, high + 1))


def select_trace_marks(tracks, visible, *, seed=0, motion_threshold: float = 2.0, camera_motion: bool | None = None,
                       camera_step: float = 1.0, camera_fraction: float = 0.8, positive_clusters=(2, 5),
                       negative_clusters=(6, 14)) -> TraceSelection:
  """Magma's ToM point selection (Algorithm 2; `som_tom` in `tools/som_tom/demo.py`). `tracks` [T, N, 2] (x, y)
  pixels and `visible` bool [T, N]. Points visible in <= T/2 frames are dropped; camera motion is detected when more
  than `camera_fraction` of the points have mean step > `camera_step` (or forced by `camera_motion`) and removed;
  points whose mean step then exceeds `motion_threshold` (demo 2, `Constructor._construct_conv` 3) move; the camera
  test's step is 1 there (0.5 in the demo). One trace per k-means cluster is kept among the moving
  (`positive_clusters`, a count or an inclusive range drawn per call) and the static ones (`negative_clusters`).
  Magma asks the SoM question instead when at most one point moves; the caller decides from `moving`."""
  tracks, visible = _check_tracks(tracks, visible)
  rng = _rng(seed)
  kept = visible.sum(0) > 0.5 * len(tracks)
  lengths = trace_lengths(tracks)
  if camera_motion is None:
    camera_motion = bool(np.sum(lengths[kept] > camera_step) > camera_fraction * kept.sum()) if kept.any() else False
  compensated = tracks.copy()
  if camera_motion and kept.any():
    compensated[:, kept] = compensate_camera_motion(tracks[:, kept], visible[:, kept], rng)
  lengths = trace_lengths(compensated)
  moving = kept & (lengths > motion_threshold)
  positive = _one_per_cluster(compensated, np.flatnonzero(moving), _draw_count(positive_clusters, rng,
                                                                               "positive_clusters"), rng)
  negative = _one_per_cluster(compensated, np.flatnonzero(kept & ~moving), _draw_count(negative_clusters, rng,
                                                                                        "negative_clusters"), rng)
  return TraceSelection(compensated, lengths, moving, np.asarray(positive, np.int64), np.asarray(negative, np.int64),
                        bool(camera_motion))


def sample_start_frame(tracks, seed=0, step_rightmost_ratio: float = 1.0) -> int:
  """Magma's ToM start frame (`Constructor._construct_conv`): uniform in [0, r) where r is the number of steps whose
  cumulative share of the mean motion stays below `step_rightmost_ratio`, clamped to [1, T - 1]; slice the tracks
  and take that frame's image to predict from there."""
  tracks = np.asarray(tracks, np.float64)
  if tracks.ndim != 3 or tracks.shape[0] < 2:
    raise ValueError(f"tracks: expected [T, N, 2] with T >= 2, got {tracks.shape}")
  steps = np.linalg.norm(np.diff(tracks, axis=0), axis=-1).mean(1)
  share = np.cumsum(steps) / (1e-5 + steps.sum())
  rightmost = min(max(1, int(np.sum(share < step_rightmost_ratio))), len(tracks) - 1)
  return int(_rng(seed).integers(0, rightmost))


# ------------------------------------------------------------------------------------------------------------------
# Trace-of-Mark: drawing and texts.


def _trace_colour(position: float) -> RGB:
  """A rainbow colour for position in [0, 1] (CoTracker's visualiser colours tracks by their start height)."""
  r, g, b = colorsys.hsv_to_rgb(0.8 * float(np.clip(position, 0, 1)), 1.0, 1.0)
  return round(255 * r), round(255 * g), round(255 * b)


def draw_trace_of_marks(image, tracks, visible, positive: Sequence[int], negative: Sequence[int] = (), *, seed=None,
                        first_number: int = 1, raw_tracks=None, draw_traces: bool = True, line_width: int = 2,
                        skip_occluded: bool = False, font_size: int | None = None
                        ) -> tuple[np.ndarray, dict[int, TraceMark]]:
  """Marks tracks `positive` and `negative` of `tracks` [T, N, 2] on `image` (uint8 [H, W, 3], the tracks' frame 0)
  and returns (marked copy, {number: TraceMark}). Numbers first_number.. are shuffled over positives and negatives
  by `seed` (Magma's `som_prompting`); with `draw_traces`, each positive's future trace is a polyline under the marks
  (`skip_occluded` breaks it at invisible steps). `raw_tracks` (default `tracks`) are recorded beside them, e.g. the
  tracks before camera compensation."""
  image = _check_image(image)
  tracks, visible = _check_tracks(tracks, visible)
  raw = tracks if raw_tracks is None else np.asarray(raw_tracks, np.float64)
  if raw.shape != tracks.shape:
    raise ValueError(f"raw_tracks: expected {tracks.shape}, got {raw.shape}")
  height, width = image.shape[:2]
  positive, negative = [int(i) for i in positive], [int(i) for i in negative]
  chosen = [(i, True) for i in positive] + [(i, False) for i in negative]
  indices = [i for i, _ in chosen]
  if len(set(indices)) != len(indices) or any(not 0 <= i < tracks.shape[1] for i in indices):
    raise ValueError(f"positive, negative: expected distinct track indices in [0, {tracks.shape[1]}), got "
                     f"{list(positive)}, {list(negative)}")
  if line_width < 1:
    raise ValueError(f"line_width: expected >= 1, got {line_width}")
  size = tom_font_size(width) if font_size is None else int(font_size)
  numbers = mark_numbers(len(chosen), seed, first_number)

  marked = image.copy()
  if draw_traces and positive:
    starts_y = tracks[0, positive, 1]
    span = max(float(np.ptp(starts_y)), 1e-9)
    for i in positive:
      canvas = Image.new("L", (width, height))
      draw = ImageDraw.Draw(canvas)
      points, seen = tracks[:, i], visible[:, i]
      for t in range(1, len(points)):
        if skip_occluded and not (seen[t - 1] and seen[t]):
          continue
        draw.line([tuple(points[t - 1]), tuple(points[t])], fill=255, width=line_width)
      colour = _trace_colour((tracks[0, i, 1] - starts_y.min()) / span)
      marked[np.asarray(canvas) > 0] = colour

  ys, xs = np.mgrid[:height, :width]
  marks = {}
  for (index, is_positive), number in zip(chosen, numbers):
    text = str(int(number))
    ink, _, _ = text_ink(text, size)
    pad = max(1, round(size / 10))
    radius = (max(ink.shape) + 2 * pad) / 2 + 1  # Magma: diameter max(text size) + 2
    half = int(np.ceil(radius))
    if 2 * half >= min(width, height):
      raise ValueError(f"font_size: the disc of mark {number} (radius {radius} px at size {size}) does not fit the "
                       f"{width}x{height} image")
    start = tracks[0, index]
    cx = int(np.clip(np.rint(start[0]), half, width - 1 - half))
    cy = int(np.clip(np.rint(start[1]), half, height - 1 - half))
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
    rows, cols = np.flatnonzero(disc.any(1)), np.flatnonzero(disc.any(0))
    label_box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    fill, ink_colour = _contrasting(image[label_box[1]:label_box[3], label_box[0]:label_box[2]])
    marked[disc] = fill
    _paint_ink(marked, text, size, cx, cy, ink_colour)
    marks[int(number)] = TraceMark(int(number), index, is_positive, (float(start[0]), float(start[1])),
                                   tracks[:, index].copy(), raw[:, index].copy(), visible[:, index].copy(), label_box,
                                   fill, ink_colour, size)
  return marked, marks


def trace_of_marks(image, tracks, visible, *, seed=0, draw_traces: bool = True,
                   **selection) -> tuple[np.ndarray, dict[int, TraceMark], TraceSelection]:
  """`select_trace_marks` then `draw_trace_of_marks` with one seed: (marked image, marks, selection)."""
  rng = _rng(seed)
  chosen = select_trace_marks(tracks, visible, seed=rng, **selection)
  marked, marks = draw_trace_of_marks(image, chosen.tracks, visible, chosen.positive, chosen.negative, seed=rng,
                                      raw_tracks=tracks, draw_traces=draw_traces)
  return marked, marks, chosen


def _format_points(cells: np.ndarray) -> str:
  return "[" + ",".join(f"[{x},{y}]" for x, y in cells.tolist()) + "]"


def trace_target(trace, width: int, height: int, grid: int = GRID, include_start: bool = False) -> str:
  """One mark's trace [T, 2] as Magma writes it: "[[x,y],...]" on the grid, future steps only (t >= 1) unless
  `include_start`. Positions outside the image clamp to the border cells."""
  trace = np.asarray(trace, np.float64)
  if trace.ndim != 2 or trace.shape[1] != 2:
    raise ValueError(f"trace: expected [T, 2], got {trace.shape}")
  return _format_points(quantise(trace if include_start else trace[1:], width, height, grid))


def parse_trace(text: str, width: int, height: int, grid: int = GRID) -> np.ndarray:
  """float [K, 2]: the pixel positions (cell centres) of a "[[x,y],...]" trace text."""
  if not isinstance(text, str):
    raise ValueError(f"text: expected a str, got {type(text).__name__}")
  cells = np.array([[int(x), int(y)] for x, y in _POINT_PATTERN.findall(text)], np.int64).reshape(-1, 2)
  return dequantise(cells, width, height, grid)


def _remove_close_points(cells: np.ndarray, min_distance: float = 2.0) -> np.ndarray:
  """Magma's `remove_close_points_tensor`: drop points closer than `min_distance` to the last kept one."""
  kept = [cells[0]]
  for point in cells[1:]:
    if np.linalg.norm(point - kept[-1]) >= min_distance:
      kept.append(point)
  return np.array(kept)


def tom_answer(marks: Mapping[int, TraceMark], width: int, height: int, grid: int = GRID, min_speed: float = 0.0,
               remove_static_points: bool = False) -> str:
  """Magma's ToM answer for the positive marks, by number; "" when none qualifies (Magma then asks the SoM question).
  A mark is left out when its copy without near-duplicate and non-positive grid points has <= T // 4 points or a
  mean step (grid units) below `min_speed` (Magma's unpublished `postive_speed_threshold`)."""
  heads, lines = [], []
  for number in sorted(marks):
    mark = marks[number]
    if not mark.positive:
      continue
    cells = quantise(mark.trace, width, height, grid)
    filtered = _remove_close_points(cells.astype(np.float64))
    filtered = filtered[(filtered > 0).sum(1) == 2]
    if len(filtered) <= len(cells) // 4 or len(filtered) < 2:
      continue
    if np.linalg.norm(np.diff(filtered, axis=0), axis=1).mean() < min_speed:
      continue
    emitted = filtered.astype(np.int64) if remove_static_points else cells
    heads.append(f"Mark {number} at [{emitted[0, 0]},{emitted[0, 1]}]")
    lines.append(f'"Mark {number}": "{_format_points(emitted[1:])}"\n\n')
  if not heads:
    return ""
  return f"{', '.join(heads)} should be moved, and their future positions are:\n\n" + "".join(lines)


def parse_tom_answer(text: str, width: int, height: int, grid: int = GRID) -> dict[int, np.ndarray]:
  """{mark: float [K, 2] future pixel positions} of a `tom_answer` text."""
  if not isinstance(text, str):
    raise ValueError(f"text: expected a str, got {type(text).__name__}")
  return {int(number): parse_trace(points, width, height, grid)
          for number, points in re.findall(r'"Mark (\d+)":\s*"(\[[^"]*\])"', text)}


def tom_question(mark_ids: Sequence[int], steps: int, task: str, grid: int = GRID) -> str:
  """Magma's ToM question (`Constructor._construct_conv`, without the image placeholder)."""
  return TOM_QUESTION.format(grid=grid, mark_ids=sorted(int(k) for k in mark_ids), task=task, steps=steps)
