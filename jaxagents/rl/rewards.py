"""Verifiable rewards on decoded responses: the scorers of an Argos-style verifier (Argos, arXiv 2512.03438).

Rewards run on the host, on strings: plain Python and numpy. Every scorer returns a float in [0, 1].

Scorers:
  exact_match        1 if the normalised answer equals a normalised target (any of several targets).
  choice             1 if the parsed multiple-choice letter equals the target letter.
  numeric            1 if the parsed number is within rel_tol / abs_tol of the target.
  relative_accuracy  VSI-Bench mean relative accuracy, MRA = 1/10 sum_{theta in .50,.55,..,.95} 1[|y'-y|/|y| < 1-theta]
                     (VSI-Bench, arXiv 2412.14171; our reading of Argos' "relative accuracy", a reconstruction).
  box_iou            IoU of predicted and ground-truth boxes [x1, y1, x2, y2]; several boxes are matched greedily by
                     IoU and the matched IoUs summed over max(#pred, #gt), so extra and missing boxes both cost.
  point_in_box       the fraction of predicted points inside the referred box(es) (Argos' pointing metric).
  point_in_mask      the fraction of predicted points inside the referred mask [H, W] (Argos' pointing metric).
  temporal_iou       1-D IoU of predicted and ground-truth [start, end] segments, matched like boxes.

Parsing rules (documented once, used by every scorer; none raises on any response, the empty one included):
  * `strip_thinking`: reasoning is never the final answer. Complete `<think>...</think>` blocks are removed; then a
    stray `</think>` (the chat template opened the block in the prompt) drops everything before it, and a stray
    `<think>` (generation cut off mid-thought) drops everything after it. Every parser below sees the response
    without its reasoning, so an answer that appears only inside `<think>` scores 0.
  * `extract_answer`: the content of the last complete `\\boxed{...}` (balanced braces, so `\\boxed{\\frac{1}{2}}`
    works; of two boxed answers the last counts); else the last `<answer>...</answer>`; else the rest of the line
    after the last "answer:" / "answer is" (any case); else the whole response. Surrounding whitespace is stripped.
  * markup, removed before matching: `\\text{x}`, `\\mathrm{x}`, `\\textbf{x}`, `\\mathbf{x}` -> x, `$`, `\\(`,
    `\\)`, `\\[`, `\\]` and markdown `**` removed.
  * `normalize_answer`: markup removed, lower case, runs of whitespace -> one space, leading/trailing punctuation
    `.,;:!?"'*` and backticks removed, a leading article (a, an, the) removed. An empty answer matches nothing.
  * `parse_number`: the last number of the extracted answer. `\\frac{a}{b}`, `\\dfrac{a}{b}` and `a/b` are
    fractions (1/2 == 0.5); `1,234.5` and LaTeX's `1{,}234` / `1\\,234` use thousands separators (groups of exactly
    three digits; "3,14" reads as 3 and 14); `3e-4` and `3 \\times 10^{-4}` are scientific; `2^{10}` is evaluated
    and any other exponent (`12 m^2`) dropped; a `%` sign is dropped and the value kept (50% -> 50); units and
    currency around the number are ignored ("12 cm", "$1,000"); the Unicode minus counts as a minus ("-3" != "3");
    a sign right after a digit or letter is an operator, not a sign.
  * `parse_choice`: after markup removal, the extracted answer's letter when it is alone or opens it as "(B) ..",
    "[B]", "B.", "B:", "B)", "B]"; else the letter after "option" ("option B"). Upper-cased. "B because" and
    "I think B" give None.
  * `parse_boxes`: every bracketed 4-tuple of numbers, `[x1, y1, x2, y2]` or `(x1, y1, x2, y2)` (also inside JSON
    such as Qwen2.5-VL's `{"bbox_2d": [...]}`), and Qwen-VL's `(x1,y1),(x2,y2)` corner pairs.
  * `parse_points`: every bracketed 2-tuple `(x, y)` / `[x, y]` and Molmo's `<point x=".." y="..">` /
    `<points x1=".." y1=".." ...>` tags.
  * `parse_segments`: every bracketed 2-tuple of non-negative numbers, then "a to b" / "a - b" ranges (an optional
    "s"/"sec"/"seconds" after a is allowed).
  Coordinates are returned as written: the sample's ground truth must use the same frame (absolute pixels for
  Qwen2.5-VL, 0-1000 for Qwen2-VL, percent for Molmo).

The Argos-style verifier that selects and gates these scorers per sample is in `argos.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------------

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_SIGN = r"(?:(?<![\w)\]])[-+])?"
_NUMBER_RE = re.compile(rf"(?P<fraction>{_SIGN}\d+\s*/\s*\d+)|(?P<number>{_SIGN}{_UNSIGNED})")
_PLAIN = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"[\[(]\s*({_PLAIN})\s*,\s*({_PLAIN})\s*,\s*({_PLAIN})\s*,\s*({_PLAIN})\s*[\])]")
_CORNER_BOX_RE = re.compile(rf"\(\s*({_PLAIN})\s*,\s*({_PLAIN})\s*\)\s*,\s*\(\s*({_PLAIN})\s*,\s*({_PLAIN})\s*\)")
_PAIR_RE = re.compile(rf"[\[(]\s*({_PLAIN})\s*,\s*({_PLAIN})\s*[\])]")
_TIME = r"(?:\d+(?:\.\d+)?|\.\d+)"
_SEGMENT_PAIR_RE = re.compile(rf"[\[(]\s*({_TIME})\s*,\s*({_TIME})\s*[\])]")
_SEGMENT_RANGE_RE = re.compile(rf"({_TIME})\s*(?:s|sec|seconds)?\s*(?:to|-|–|—)\s*({_TIME})", re.IGNORECASE)
_MOLMO_POINT_RE = re.compile(r"<point\s+x\s*=\s*\"([^\"]+)\"\s+y\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
_MOLMO_POINTS_RE = re.compile(r"<points\s+([^>]*)>", re.IGNORECASE)
_MOLMO_COORD_RE = re.compile(r"([xy])(\d+)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_MARKUP_RE = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_TIMES_TEN_RE = re.compile(rf"({_PLAIN})\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*\{{?\s*([-+]?\d+)\s*\}}?")
_POWER_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*\^\s*\{?\s*([-+]?\d+)\s*\}?")
_EXPONENT_RE = re.compile(r"\^\s*(?:\{[^{}]*\}|[-+]?\d+(?:\.\d+)?)")


def _last_braced(text: str, command: str) -> str | None:
  """The content of the last complete `command{...}` in `text`, braces balanced."""
  found = None
  start = text.find(command)
  while start != -1:
    depth, begin = 0, start + len(command) - 1
    for index in range(begin, len(text)):
      if text[index] == "{":
        depth += 1
      elif text[index] == "}":
        depth -= 1
        if depth == 0:
          found = text[begin + 1 : index]
          break
    start = text.find(command, start + 1)
  return found


def strip_thinking(text: str) -> str:
  """The response without its `<think>` reasoning (rules in the module docstring)."""
  text = _THINK_BLOCK_RE.sub(" ", text)
  lowered = text.lower()
  if "</think>" in lowered:
    text = text[lowered.rindex("</think>") + len("</think>") :]
    lowered = text.lower()
  if "<think>" in lowered:
    text = text[: lowered.index("<think>")]
  return text


def _strip_markup(text: str) -> str:
  text = _MARKUP_RE.sub(r"\1", text)
  for mark in ("$", "\\(", "\\)", "\\[", "\\]", "**"):
    text = text.replace(mark, "")
  return text


def extract_answer(text: str) -> str:
  """The final answer of a response, by the rules in the module docstring."""
  text = strip_thinking(text)
  boxed = _last_braced(text, "\\boxed{")
  if boxed is not None:
    return boxed.strip()
  tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.IGNORECASE | re.DOTALL)
  if tagged:
    return tagged[-1].strip()
  markers = list(re.finditer(r"answer\s*(?:is\s*:?|:)", text, flags=re.IGNORECASE))
  if markers:
    rest = text[markers[-1].end() :].strip()
    return rest.splitlines()[0].strip() if rest else ""
  return text.strip()


def normalize_answer(text: str) -> str:
  """Canonical form for exact match (rules in the module docstring)."""
  text = _strip_markup(text).lower()
  text = re.sub(r"\s+", " ", text).strip(" .,;:!?\"'`*")
  return re.sub(r"^(?:a|an|the) ", "", text)


def _evaluate_power(match: re.Match) -> str:
  try:
    return repr(float(match.group(1)) ** int(match.group(2)))
  except (OverflowError, ZeroDivisionError):
    return " "


def parse_number(text: str, *, extract: bool = True) -> float | None:
  """The last number in the (extracted) answer, or None."""
  answer = extract_answer(text) if extract else text
  answer = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", answer).replace("\u2212", "-")
  answer = re.sub(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})", ",", answer)
  answer = _TIMES_TEN_RE.sub(r"\1e\2", answer)
  answer = _EXPONENT_RE.sub("", _POWER_RE.sub(_evaluate_power, answer))
  matches = list(_NUMBER_RE.finditer(answer))
  if not matches:
    return None
  last = matches[-1]
  if last.group("fraction"):
    numerator, denominator = (float(part) for part in last.group("fraction").split("/"))
    return numerator / denominator if denominator != 0 else None
  return float(last.group("number").replace(",", ""))


def parse_choice(text: str) -> str | None:
  """The multiple-choice letter of the (extracted) answer, upper-cased, or None."""
  answer = _strip_markup(extract_answer(text)).strip()
  match = (
    re.match(r"^[(\[]([A-Za-z])[)\]]", answer)
    or re.match(r"^([A-Za-z])(?:[.:)\]]|$)", answer)
    or re.search(r"\boption\s*\(?([A-Za-z])\)?(?:\W|$)", answer, flags=re.IGNORECASE)
  )
  return match.group(1).upper() if match else None


def parse_boxes(text: str) -> np.ndarray:
  """Boxes `[N, 4]` (x1, y1, x2, y2) found in the response outside `<think>`, in order; `[0, 4]` if none."""
  text = strip_thinking(text)
  found = [(m.start(), m.groups()) for m in _BOX_RE.finditer(text)]
  found += [(m.start(), m.groups()) for m in _CORNER_BOX_RE.finditer(text)]
  values = [[float(v) for v in groups] for _, groups in sorted(found, key=lambda item: item[0])]
  return np.asarray(values, np.float64).reshape(-1, 4)


def parse_points(text: str) -> np.ndarray:
  """Points `[N, 2]` (x, y) found in the response outside `<think>`, in order; `[0, 2]` if none."""
  text = strip_thinking(text)
  found = [(m.start(), (m.group(1), m.group(2))) for m in _PAIR_RE.finditer(text)]
  found += [(m.start(), (m.group(1), m.group(2))) for m in _MOLMO_POINT_RE.finditer(text)]
  for tag in _MOLMO_POINTS_RE.finditer(text):
    coords: dict[tuple[str, str], str] = {}
    for axis, index, value in _MOLMO_COORD_RE.findall(tag.group(1)):
      coords[(axis.lower(), index)] = value
    for index in sorted({index for _, index in coords}, key=int):
      if ("x", index) in coords and ("y", index) in coords:
        found.append((tag.start() + int(index), (coords[("x", index)], coords[("y", index)])))
  points = []
  for _, (x, y) in sorted(found, key=lambda item: item[0]):
    try:
      points.append([float(x), float(y)])
    except ValueError:  # a malformed Molmo attribute: not a point
      continue
  return np.asarray(points, np.float64).reshape(-1, 2)


def parse_segments(text: str) -> np.ndarray:
  """Temporal segments `[N, 2]` (start, end) found in the response outside `<think>`; `[0, 2]` if none."""
  text = strip_thinking(text)
  pairs = [m.groups() for m in _SEGMENT_PAIR_RE.finditer(text)]
  if not pairs:
    pairs = [m.groups() for m in _SEGMENT_RANGE_RE.finditer(text)]
  return np.asarray([[float(a), float(b)] for a, b in pairs], np.float64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Scorers on parsed values
# ---------------------------------------------------------------------------------------------------------------------


def _targets(target: str | Sequence[str]) -> list[str]:
  return [target] if isinstance(target, str) else list(target)


def exact_match(response: str, target: str | Sequence[str], *, extract: bool = True) -> float:
  """1.0 if the normalised (extracted) answer equals any normalised target, else 0.0; an empty answer scores 0."""
  answer = normalize_answer(extract_answer(response) if extract else response)
  return float(bool(answer) and any(answer == normalize_answer(t) for t in _targets(target)))


def choice_match(response: str, target: str) -> float:
  """1.0 if the parsed choice letter equals the target letter (case-insensitive), else 0.0."""
  target_letter = parse_choice(target)
  if target_letter is None:
    raise ValueError(f"target: expected a choice letter such as 'B' or '(B)', got {target!r}.")
  return float(parse_choice(response) == target_letter)


def _target_number(target: float | str) -> float:
  value = float(target) if not isinstance(target, str) else parse_number(target, extract=False)
  if value is None or not math.isfinite(value):
    raise ValueError(f"target: expected a finite number, got {target!r}.")
  return value


def numeric_match(response: str, target: float | str, *, rel_tol: float = 1e-4, abs_tol: float = 1e-8) -> float:
  """1.0 if the parsed number is within `rel_tol` (relative) or `abs_tol` (absolute) of the target, else 0.0."""
  predicted = parse_number(response)
  if predicted is None:
    return 0.0
  return float(math.isclose(predicted, _target_number(target), rel_tol=rel_tol, abs_tol=abs_tol))


MRA_THRESHOLDS = tuple(0.5 + 0.05 * k for k in range(10))


def mean_relative_accuracy(predicted: float, target: float) -> float:
  """VSI-Bench MRA: 1/10 sum_{theta in .50..95} 1[|predicted - target| / |target| < 1 - theta].

  A target of 0 has no relative error: the score is 1 for an exact 0 and 0 otherwise (our choice).
  """
  if not math.isfinite(predicted):
    return 0.0
  if target == 0:
    return float(predicted == 0)
  relative_error = abs(predicted - target) / abs(target)
  return sum(relative_error < 1.0 - theta for theta in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def relative_accuracy(response: str, target: float | str) -> float:
  """MRA of the parsed number against the target; 0.0 when no number is found."""
  predicted = parse_number(response)
  return 0.0 if predicted is None else mean_relative_accuracy(predicted, _target_number(target))


def _as_boxes(boxes: Any, name: str) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim == 1:
    boxes = boxes[None]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{name}: expected boxes [4] or [N, 4] as (x1, y1, x2, y2), got shape {boxes.shape}.")
  return boxes


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
  """Pairwise IoU `[N, M]` of boxes `[N, 4]` and `[M, 4]` (x1, y1, x2, y2, continuous coordinates).

  A box with x2 < x1 or y2 < y1 has zero area; a pair with zero union has IoU 0.
  """
  a, b = _as_boxes(boxes_a, "boxes_a")[:, None, :], _as_boxes(boxes_b, "boxes_b")[None, :, :]
  inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = inter_w * inter_h

  def area(box):
    return np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)

  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_matched_iou(iou: np.ndarray) -> float:
  """One-to-one greedy matching on an IoU matrix `[N_pred, N_gt]`: sum of matched IoUs / max(N_pred, N_gt)."""
  iou = np.array(iou, np.float64)
  if iou.size == 0:
    return 0.0
  denominator = max(iou.shape)
  total = 0.0
  while iou.size and iou.max() > 0:
    row, col = np.unravel_index(np.argmax(iou), iou.shape)
    total += iou[row, col]
    iou = np.delete(np.delete(iou, row, axis=0), col, axis=1)
  return float(total / denominator)


def box_iou_reward(response: str, target_boxes: Any) -> float:
  """Matched IoU of the boxes parsed from the response against `target_boxes: [4] | [K, 4]`; 0 if none parsed."""
  target_boxes = _as_boxes(target_boxes, "target_boxes")
  predicted = parse_boxes(response)
  return greedy_matched_iou(box_iou(predicted, target_boxes)) if len(predicted) else 0.0


def points_in_box(points: Any, boxes: Any) -> float:
  """Fraction of `points: [N, 2]` inside any of `boxes: [4] | [K, 4]` (borders included); 0 for no points."""
  points = np.asarray(points, np.float64).reshape(-1, 2)
  boxes = _as_boxes(boxes, "boxes")
  if not len(points):
    return 0.0
  x, y = points[:, 0:1], points[:, 1:2]
  inside = (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
  return float(inside.any(axis=1).mean())


def points_in_mask(points: Any, mask: Any) -> float:
  """Fraction of `points: [N, 2]` (x, y in pixels) on True pixels of `mask: [H, W]`; pixel (floor(y), floor(x)).

  Points outside the image count as misses; 0 for no points.
  """
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask: expected a [H, W] mask, got shape {mask.shape}.")
  points = np.asarray(points, np.float64).reshape(-1, 2)
  if not len(points):
    return 0.0
  cols, rows = np.floor(points[:, 0]), np.floor(points[:, 1])
  inside = (cols >= 0) & (cols < mask.shape[1]) & (rows >= 0) & (rows < mask.shape[0])
  hits = np.zeros(len(points), bool)
  hits[inside] = mask[rows[inside].astype(int), cols[inside].astype(int)]
  return float(hits.mean())


def _as_segments(segments: Any, name: str) -> np.ndarray:
  segments = np.asarray(segments, np.float64)
  if segments.ndim == 1:
    segments = segments[None]
  if segments.ndim != 2 or segments.shape[1] != 2:
    raise ValueError(f"{name}: expected segments [2] or [N, 2] as (start, end), got shape {segments.shape}.")
  return segments


def temporal_iou(segments_a: Any, segments_b: Any) -> np.ndarray:
  """Pairwise 1-D IoU `[N, M]` of segments `[N, 2]` and `[M, 2]` (start, end); end < start has zero length."""
  a, b = _as_segments(segments_a, "segments_a")[:, None, :], _as_segments(segments_b, "segments_b")[None, :, :]
  inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  union = np.clip(a[..., 1] - a[..., 0], 0, None) + np.clip(b[..., 1] - b[..., 0], 0, None) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def temporal_iou_reward(response: str, target_segments: Any) -> float:
  """Matched temporal IoU of the parsed segments against `target_segments: [2] | [K, 2]`; 0 if none parsed."""
  target_segments = _as_segments(target_segments, "target_segments")
  predicted = parse_segments(response)
  return greedy_matched_iou(temporal_iou(predicted, target_segments)) if len(predicted) else 0.0
