"""GUI scoring on constructed cases: CUActSpot's polygon rule (edges inside, Banned regions, ranked and unranked
targets) and its macro report, point-in-box hits for clicks (centre hits, just outside misses), typed text, drag ends
and drawn traces (right path passes; wrong, partial, reversed or shifted paths fail), and per-role/per-action
accuracy."""

import numpy as np
import pytest

from jaxagents.data import gui_scoring as gs


def _square(x0, y0, x1, y1):
  return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _item(*polygons):
  return {"image_id": "GUI-test", "polygons": [
    {"id": f"R{i}", "type": kind, "points": points, "rank": rank} for i, (kind, points, rank) in enumerate(polygons)]}


def test_point_in_polygon_counts_edges_as_inside():
  square = _square(0, 0, 10, 10)
  assert gs.point_in_polygon((10, 5), square) and gs.point_in_polygon((0, 0), square)
  assert gs.point_in_polygon((5, 5), square) and not gs.point_in_polygon((10.0001, 5), square)
  triangle = [[0, 0], [10, 0], [0, 10]]
  assert gs.point_in_polygon((2, 2), triangle) and gs.point_in_polygon((5, 5), triangle)  # on the hypotenuse
  assert not gs.point_in_polygon((6, 6), triangle)
  assert not gs.point_in_polygon((1, 1), [[0, 0], [5, 5]])


def test_cuactspot_ranked_targets_need_points_in_rank_order():
  item = _item(("Target", _square(0, 0, 10, 10), "1"), ("Target", _square(20, 0, 30, 10), "2"))
  assert gs.cuactspot_score([(5, 5), (25, 5)], item) == (True, "")
  assert not gs.cuactspot_score([(25, 5), (5, 5)], item)[0]
  assert not gs.cuactspot_score([(5, 5)], item)[0]
  assert gs.cuactspot_score([(5, 5), (25, 5), (100, 100)], item)[0]  # extras only face Banned regions


def test_cuactspot_unranked_targets_and_banned_regions():
  item = _item(("Target", _square(0, 0, 10, 10), ""), ("Target", _square(20, 0, 30, 10), ""),
               ("Banned", _square(40, 0, 50, 10), ""))
  assert gs.cuactspot_score([(25, 5), (5, 5)], item)[0]
  passed, reason = gs.cuactspot_score([(25, 5), (5, 5), (45, 5)], item)
  assert not passed and "Banned" in reason
  assert not gs.cuactspot_score([(5, 5)], item)[0]
  assert not gs.cuactspot_score([(5, 5), (25, 5)], _item(("Target", _square(0, 0, 10, 10), "1"),
                                                          ("Target", _square(20, 0, 30, 10), "")))[0]
  assert gs.cuactspot_score([], _item(("Banned", _square(0, 0, 1, 1), "")))[0]
  assert not gs.cuactspot_score([(5, 5), (5, 5), (5, 5)], _item(("Target", _square(0, 0, 10, 10), "1"),
                                                                 ("Target", _square(0, 0, 10, 10), "3")))[0]
  assert not gs.cuactspot_score([(5, 5)], {"image_id": "GUI-empty", "polygons": []})[0]


def test_cuactspot_report_is_the_unweighted_mean_over_five_modalities():
  counts = {"Canvas": 20, "GUI": 10, "Image": 5, "Table": 10, "Text": 20}
  hits = {"Canvas": 10, "GUI": 6, "Image": 2, "Table": 3, "Text": 4}  # accuracies .5, .6, .4, .3, .2
  items, passed = [], []
  for modality, count in counts.items():
    items += [{"image_id": f"{modality}-{i:04x}"} for i in range(count)]
    passed += [True] * hits[modality] + [False] * (count - hits[modality])
  items[0] = {"image_id": "x-0", "modality": "Canvas"}  # an explicit modality field wins over the id prefix
  report = gs.cuactspot_report(items, passed)
  assert report["overall"] == pytest.approx(0.4) and report["GUI"] == pytest.approx(0.6)
  assert report["micro"] == pytest.approx(25 / 65)
  canvas_only = gs.cuactspot_report(items[:20], passed[:20])
  assert canvas_only["GUI"] == 0.0 and canvas_only["overall"] == pytest.approx(0.5 / 5)  # missing modalities: 0


def test_click_hits_the_centre_and_edges_and_misses_just_outside():
  record = {"action": "click", "target_box": [10, 20, 30, 40], "role": "button", "modality": "GUI"}
  for point in ((20, 30), (10, 20), (30, 40), (30, 30)):
    assert gs.score_action(record, [point])["passed"], point
  for point in ((30.01, 30), (9.99, 30), (20, 40.5), (20, 19)):
    assert not gs.score_action(record, [point])["passed"], point
  assert not gs.score_action(record, [])["passed"]
  assert not gs.score_action(record, {"points": [(20, 30)], "action": "double_click"})["passed"]
  assert gs.score_action(record, (20, 30))["passed"]  # a bare point


def test_type_needs_the_point_and_the_exact_text():
  record = {"action": "type", "target_box": [0, 0, 100, 20], "text": "Oslo", "role": "text_input"}
  assert gs.score_action(record, {"points": [(50, 10)], "text": "Oslo"})["passed"]
  assert not gs.score_action(record, {"points": [(50, 10)], "text": "oslo"})["passed"]
  assert not gs.score_action(record, {"points": [(50, 30)], "text": "Oslo"})["passed"]
  assert not gs.score_action(record, {"points": [(50, 10)]})["passed"]


def test_drag_needs_both_ends_in_their_boxes():
  record = {"action": "drag", "target_box": [0, 0, 10, 10], "end_box": [90, 0, 100, 10], "role": "slider"}
  assert gs.score_action(record, [(5, 5), (50, 5), (95, 5)])["passed"]
  assert not gs.score_action(record, [(5, 5), (80, 5)])["passed"]
  assert not gs.score_action(record, [(95, 5), (5, 5)])["passed"]
  assert not gs.score_action(record, [(5, 5)])["passed"]


def test_draw_scores_a_line_by_its_ends_and_its_distance_to_the_path():
  record = {"action": "draw", "trace": [(0, 0), (100, 100)], "closed": False, "tolerance": 5.0, "role": "canvas"}
  line = np.stack([np.linspace(0, 100, 20)] * 2, -1)
  assert gs.score_action(record, line)["passed"]
  assert gs.score_action(record, line + [2.0, -2.0])["passed"]  # within tolerance everywhere
  assert not gs.score_action(record, line + [6.0, -6.0])["passed"]  # 8.5 px off: too far
  assert not gs.score_action(record, line[::-1])["passed"]  # wrong direction
  assert not gs.score_action(record, line[:10])["passed"]  # half the line
  wiggle = line.copy()
  wiggle[5:15, 0] += 30  # a detour far from the path between correct ends
  result = gs.score_action(record, wiggle)
  assert not result["passed"] and result["start_hit"] and result["end_hit"] and not result["trace_hit"]


def test_draw_scores_a_closed_shape_from_any_start():
  angles = np.linspace(0, 2 * np.pi, 13)
  circle = np.stack([50 + 30 * np.cos(angles), 50 + 30 * np.sin(angles)], -1)
  record = {"action": "draw", "trace": circle.tolist(), "closed": True, "tolerance": 4.0, "role": "canvas"}
  dense = np.linspace(0, 2 * np.pi, 200) + 1.0
  drawn = np.stack([50 + 31 * np.cos(dense), 50 + 31 * np.sin(dense)], -1)
  assert gs.score_action(record, drawn)["passed"]
  assert not gs.score_action(record, drawn[:120])["passed"]  # not closed and only 60% of it
  assert not gs.score_action(record, drawn * 0.5 + 25)["passed"]  # a smaller circle


def test_trace_distances_match_hand_computed_values():
  assert gs.trace_distances([(0, 1), (10, 1)], [(0, 0), (10, 0)]) == pytest.approx((1.0, 1.0))
  np.testing.assert_allclose(gs.resample_polyline([(0, 0), (10, 0), (10, 10)], 5),
                             [(0, 0), (5, 0), (10, 0), (10, 5), (10, 10)])
  np.testing.assert_allclose(gs.distance_to_polyline([(5, 3), (-4, 0), (13, 4)], [(0, 0), (10, 0)]), [3, 4, 5])


def test_accuracy_report_breaks_down_by_action_role_and_modality():
  click = {"action": "click", "target_box": [0, 0, 10, 10], "role": "button", "modality": "GUI"}
  cell = {"action": "double_click", "target_box": [0, 0, 10, 10], "role": "table_cell", "modality": "Table"}
  records = [click, click, cell, cell]
  predictions = [[(5, 5)], [(50, 5)], [(5, 5)], [(5, 5)]]
  report = gs.accuracy_report(records, predictions)
  assert report["accuracy"] == 0.75 and report["count"] == 4
  assert report["by_action"] == {"click": 0.5, "double_click": 1.0}
  assert report["by_role"] == {"button": 0.5, "table_cell": 1.0}
  assert report["by_modality"] == {"GUI": 0.5, "Table": 1.0} and report["modality_macro"] == 0.75
  with pytest.raises(ValueError, match="predictions"):
    gs.accuracy_report(records, predictions[:2])
  with pytest.raises(ValueError, match="prediction"):
    gs.score_action(click, {"points": [[1, 2, 3]]})
