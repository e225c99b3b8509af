"""Scoring GUI actions: CUActSpot's polygon rules, point-in-box hits and trace scores for drag and draw.

Two scorers, one per annotation format:

* `cuactspot_score(coords, item)` is CUActSpot's rule (microsoft/Phi-Ground, `benchmark/CUActSpot/eval_utils.py`,
  `evaluate_coordinates`), in order: no polygons -> fail; any coordinate inside a `Banned` polygon -> fail; no `Target`
  polygon -> pass; target ranks must be all "" or all numeric, else fail; unranked: every target holds at least one
  coordinate (in any order, extras allowed); ranked with K = the largest rank: at least K coordinates and coordinate i
  (1-based) inside some rank-i polygon, a missing rank fails. Points on a polygon's edge are inside (`point_in_polygon`,
  even-odd ray casting with a 1e-9 collinearity test, as `point_in_polygon` there). `cuactspot_report` is that
  benchmark's summary (`cuactspot/reporting.py`, `build_overall_metrics`): accuracy per modality (Canvas, GUI, Image,
  Table, Text; 0 for a modality without items) and "overall", their unweighted mean; we add the item-weighted "micro".

* `score_action(record, prediction)` scores the action records of `jaxagents.data.gui_tasks` (ours): the first point
  must hit `target_box` for click, double-click and type (boxes are closed, as ScreenSpot's hit test
  x0 <= x <= x1, y0 <= y <= y1, in pixels), type also needs the exact `text`; a drag's first point must hit
  `target_box` and its last `end_box`; a drawn trace must start and end within `tolerance` pixels of the reference
  path's ends (a closed path: end within `tolerance` of its own start, which lies within `tolerance` of the path), and
  the mean distance both ways between the two polylines (each resampled at `samples` points evenly spaced by arc
  length; a symmetric mean Chamfer distance) must be at most `tolerance`, so a trace that draws only part of the path
  fails. `accuracy_report` gives the mean pass rate overall, per action kind, per element role and per modality.

A prediction is a mapping {"points": [[x, y], ...], "text": str (type only), "action": str (optional; when given it
must equal the record's action)} or just the list of points; coordinates are pixels of the original image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CUACTSPOT_MODALITIES = ("Canvas", "GUI", "Image", "Table", "Text")
_COLLINEAR_EPS = 1e-9


def point_on_segment(point, start, end) -> bool:
  """True when `point` lies on the segment start-end (cross product within 1e-9, inside its bounds +- 1e-9)."""
  x, y = point
  (x1, y1), (x2, y2) = start, end
  if abs((y - y1) * (x2 - x1) - (x - x1) * (y2 - y1)) > _COLLINEAR_EPS:
    return False
  return (min(x1, x2) - _COLLINEAR_EPS <= x <= max(x1, x2) + _COLLINEAR_EPS
          and min(y1, y2) - _COLLINEAR_EPS <= y <= max(y1, y2) + _COLLINEAR_EPS)


def point_in_polygon(point, polygon: Sequence) -> bool:
  """CUActSpot's test: even-odd ray casting, points on an edge inside; fewer than 3 vertices -> False."""
  if len(polygon) < 3:
    return False
  x, y = (float(v) for v in point)
  inside = False
  p1x, p1y = (float(v) for v in polygon[0])
  for i in range(1, len(polygon) + 1):
    p2x, p2y = (float(v) for v in polygon[i % len(polygon)])
    if point_on_segment((x, y), (p1x, p1y), (p2x, p2y)):
      return True
    if min(p1y, p2y) < y <= max(p1y, p2y) and x <= max(p1x, p2x):
      x_cross = (y - p1y) * (p2x - p1x) / (p2y - p1y) + p1x if p1y != p2y else None
      if p1x == p2x or x <= x_cross:
        inside = not inside
    p1x, p1y = p2x, p2y
  return inside


def point_in_box(point, box) -> bool:
  """Closed test x0 <= x <= x1 and y0 <= y <= y1 (`box` = (x0, y0, x1, y1))."""
  x, y = point
  x0, y0, x1, y1 = box
  return x0 <= x <= x1 and y0 <= y <= y1


def cuactspot_score(coords: Sequence, item: Mapping) -> tuple[bool, str]:
  """(passed, reason) of CUActSpot's rule for `coords` ([[x, y], ...] in the image's pixels) against an item holding
  `polygons` [{"id", "type": "Target" | "Banned", "points", "rank": "" | "1".."K"}]; the reason is "" on a pass."""
  name = item.get("image_id", item.get("id", "item"))
  polygons = [p for p in item.get("polygons") or [] if p.get("points")]
  if not polygons:
    return False, f"no polygons in {name}"
  coords = [tuple(float(v) for v in point) for point in coords]
  for coord in coords:
    for polygon in polygons:
      if polygon.get("type") == "Banned" and point_in_polygon(coord, polygon["points"]):
        return False, f"coordinate {coord} is inside Banned polygon {polygon.get('id')} of {name}"
  targets = [p for p in polygons if p.get("type") == "Target"]
  if not targets:
    return True, ""
  ranks = [str(p.get("rank", "")) for p in targets]
  if all(rank == "" for rank in ranks):
    for polygon in targets:
      if not any(point_in_polygon(coord, polygon["points"]) for coord in coords):
        return False, f"Target polygon {polygon.get('id')} holds no coordinate in {name}"
    return True, ""
  if any(rank == "" for rank in ranks):
    return False, f"Target ranks of {name} mix empty and numeric values"
  num_ranks = max(int(rank) for rank in ranks if rank.isdigit()) if any(r.isdigit() for r in ranks) else 0
  if len(coords) < num_ranks:
    return False, f"{name} needs at least {num_ranks} coordinates, got {len(coords)}"
  for rank in range(1, num_ranks + 1):
    ranked = [p for p in targets if str(p.get("rank")) == str(rank)]
    if not ranked:
      return False, f"no Target polygon of rank {rank} in {name}"
    if not any(point_in_polygon(coords[rank - 1], p["points"]) for p in ranked):
      return False, f"coordinate {rank} at {coords[rank - 1]} is in no rank-{rank} polygon of {name}"
  return True, ""


def item_modality(item: Mapping) -> str:
  """An item's modality: its `modality` field, else the prefix of `image_id` before the first "-"."""
  return str(item.get("modality") or str(item.get("image_id", "")).split("-", 1)[0])


def cuactspot_report(items: Sequence[Mapping], passed: Sequence[bool]) -> dict[str, float]:
  """Accuracy per CUActSpot modality (0.0 for a modality without items, as the reference), "overall" = their
  unweighted mean, and "micro" = the pass rate over all items."""
  if len(items) != len(passed):
    raise ValueError(f"passed: expected one result per item ({len(items)}), got {len(passed)}")
  report = {}
  for modality in CUACTSPOT_MODALITIES:
    results = [bool(p) for item, p in zip(items, passed) if item_modality(item) == modality]
    report[modality] = float(np.mean(results)) if results else 0.0
  report["overall"] = float(np.mean([report[m] for m in CUACTSPOT_MODALITIES]))
  report["micro"] = float(np.mean([bool(p) for p in passed])) if len(passed) else 0.0
  return report


# ------------------------------------------------------------------------------------------------------------------
# Traces.


def resample_polyline(points, samples: int) -> np.ndarray:
  """float64 [samples, 2]: points evenly spaced by arc length along the polyline (its ends included)."""
  points = np.asarray(points, np.float64).reshape(-1, 2)
  if samples < 2:
    raise ValueError(f"samples: expected at least 2, got {samples}")
  if len(points) == 1:
    return np.repeat(points, samples, 0)
  lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
  cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
  if cumulative[-1] == 0:
    return np.repeat(points[:1], samples, 0)
  at = np.linspace(0, cumulative[-1], samples)
  return np.stack([np.interp(at, cumulative, points[:, 0]), np.interp(at, cumulative, points[:, 1])], -1)


def distance_to_polyline(queries, points) -> np.ndarray:
  """float64 [Q]: the distance from each query point to the nearest point of the polyline `points` [P, 2]."""
  queries = np.asarray(queries, np.float64).reshape(-1, 2)
  points = np.asarray(points, np.float64).reshape(-1, 2)
  if len(points) == 1:
    return np.linalg.norm(queries - points[0], axis=-1)
  start, direction = points[:-1], np.diff(points, axis=0)
  squared = np.maximum((direction ** 2).sum(-1), 1e-12)
  t = np.clip(((queries[:, None] - start[None]) * direction[None]).sum(-1) / squared, 0, 1)
  nearest = start[None] + t[..., None] * direction[None]
  return np.linalg.norm(queries[:, None] - nearest, axis=-1).min(1)


def trace_distances(trace, path, samples: int = 64) -> tuple[float, float]:
  """(mean distance of the trace to the path, mean distance of the path to the trace), both resampled at `samples`
  points by arc length."""
  return (float(distance_to_polyline(resample_polyline(trace, samples), path).mean()),
          float(distance_to_polyline(resample_polyline(path, samples), trace).mean()))


# ------------------------------------------------------------------------------------------------------------------
# Action records.


def _prediction(prediction: Any) -> tuple[np.ndarray, str | None, str | None]:
  if isinstance(prediction, Mapping):
    points, text, action = prediction.get("points", []), prediction.get("text"), prediction.get("action")
  else:
    points, text, action = prediction, None, None
  points = np.asarray(points if points is not None else [], np.float64)
  if points.size == 0:
    return np.zeros((0, 2)), text, action
  if points.ndim == 1 and points.shape == (2,):
    points = points[None]
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"prediction: expected points [[x, y], ...], got shape {points.shape}")
  return points, text, action


def score_action(record: Mapping, prediction: Any, samples: int = 64) -> dict[str, Any]:
  """Scores one prediction against one action record (see the module docstring). Returns {"passed": bool, ...}
  with the checks that decided it: "action_match", "start_hit", "end_hit", "text_match", "start_distance",
  "end_distance", "trace_to_path", "path_to_trace" (those that apply to the record's action)."""
  points, text, predicted_action = _prediction(prediction)
  action = record["action"]
  result: dict[str, Any] = {"action_match": predicted_action is None or predicted_action == action}
  if action in ("click", "double_click", "type"):
    result["start_hit"] = bool(len(points)) and point_in_box(points[0], record["target_box"])
    if action == "type":
      result["text_match"] = text == record["text"]
  elif action == "drag":
    result["start_hit"] = len(points) >= 2 and point_in_box(points[0], record["target_box"])
    result["end_hit"] = len(points) >= 2 and point_in_box(points[-1], record["end_box"])
  elif action == "draw":
    path, tolerance = np.asarray(record["trace"], np.float64), float(record["tolerance"])
    if len(points) < 2:
      result["start_hit"] = result["end_hit"] = False
    else:
      if record.get("closed"):
        result["start_distance"] = float(distance_to_polyline(points[:1], path)[0])
        result["end_distance"] = float(np.linalg.norm(points[-1] - points[0]))
      else:
        result["start_distance"] = float(np.linalg.norm(points[0] - path[0]))
        result["end_distance"] = float(np.linalg.norm(points[-1] - path[-1]))
      result["trace_to_path"], result["path_to_trace"] = trace_distances(points, path, samples)
      result["start_hit"] = result["start_distance"] <= tolerance
      result["end_hit"] = result["end_distance"] <= tolerance
      result["trace_hit"] = max(result["trace_to_path"], result["path_to_trace"]) <= tolerance
  else:
    raise ValueError(f"record: unknown action {action!r}")
  result["passed"] = all(value for key, value in result.items() if key in (
    "action_match", "start_hit", "end_hit", "text_match", "trace_hit"))
  return result


def accuracy_report(records: Sequence[Mapping], predictions: Sequence[Any]) -> dict[str, Any]:
  """Pass rates of `score_action`: "accuracy" over all records, "count", and {"by_action", "by_role",
  "by_modality"}: {name: accuracy}; "modality_macro" is the unweighted mean over the modalities present."""
  if len(records) != len(predictions):
    raise ValueError(f"predictions: expected one per record ({len(records)}), got {len(predictions)}")
  passed = [score_action(record, prediction)["passed"] for record, prediction in zip(records, predictions)]
  report: dict[str, Any] = {"accuracy": float(np.mean(passed)) if passed else 0.0, "count": len(passed)}
  for key, field in (("by_action", "action"), ("by_role", "role"), ("by_modality", "modality")):
    groups: dict[str, list[bool]] = {}
    for record, hit in zip(records, passed):
      groups.setdefault(str(record.get(field)), []).append(hit)
    report[key] = {name: float(np.mean(hits)) for name, hits in sorted(groups.items())}
  report["modality_macro"] = float(np.mean(list(report["by_modality"].values()))) if passed else 0.0
  return report
