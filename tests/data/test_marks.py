"""Set-of-Mark and Trace-of-Mark transforms: the drawn pixels, the mappings, the numbering and the texts."""

import re

import numpy as np
import pytest

from jaxagents.data import gui_screens, marks, motion_render
from jaxagents.data.gui_screens import text_ink

WIDTH, HEIGHT = 128, 96


def _noise_image(seed: int, height: int = 240, width: int = 320) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _fill(mask: np.ndarray, box) -> None:
  x0, y0, x1, y1 = box
  mask[y0:y1, x0:x1] = True


def _ring(box, width: int, shape) -> np.ndarray:
  mask = np.zeros(shape, bool)
  _fill(mask, box)
  x0, y0, x1, y1 = box
  mask[y0 + width:y1 - width, x0 + width:x1 - width] = False
  return mask


def _read_number(ink: np.ndarray) -> np.ndarray:
  """The tight box of an ink mask: the digits as drawn."""
  rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
  return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _overlap(a, b) -> bool:
  return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _check_labels_read_back(marked, image, mark_list, disc=False):
  """Every label not covered by a later one holds only its fill and digit colours (a disc: outside it the image is
  unchanged) and its digit pixels spell its number."""
  for i, mark in enumerate(mark_list):
    if any(_overlap(mark.label_box, later.label_box) for later in mark_list[i + 1:]):
      continue
    x0, y0, x1, y1 = mark.label_box
    region, before = marked[y0:y1, x0:x1], image[y0:y1, x0:x1]
    is_fill, is_ink = np.all(region == mark.fill, -1), np.all(region == mark.ink, -1)
    if disc:  # the digits' colour where the image had it already is not ink (none of the frames' pixels is)
      assert not np.any(np.all(before == mark.ink, -1))
      assert np.all(is_fill | is_ink | np.all(region == before, -1)), mark.number
    else:
      assert np.all(is_fill | is_ink), mark.number
    np.testing.assert_array_equal(_read_number(is_ink), text_ink(str(mark.number), mark.font_size)[0])
    assert np.mean(np.any(region != before, -1)) > 0.5


# ------------------------------------------------------------------------------------------------------------------
# Set-of-Mark.


def test_som_changes_only_labels_and_outlines_and_each_label_reads_its_number():
  image = _noise_image(0)
  boxes = np.array([[40, 40, 90, 70], [200, 40, 260, 80], [40, 150, 100, 190], [190, 140, 280, 200],
                    [130, 100, 160, 120]])
  marked, mapping = marks.draw_set_of_marks(image, boxes, seed=3, font_size=14, outline_width=2)
  assert marked.shape == image.shape and marked.dtype == np.uint8
  assert sorted(mapping) == [1, 2, 3, 4, 5]
  allowed = np.zeros(image.shape[:2], bool)
  mark_list = sorted(mapping.values(), key=lambda m: m.index)
  for mark in mark_list:
    assert mark.box == tuple(boxes[mark.index]) and mark.centre == ((mark.box[0] + mark.box[2]) / 2,
                                                                    (mark.box[1] + mark.box[3]) / 2)
    _fill(allowed, mark.label_box)
    allowed |= _ring(mark.box, 2, allowed.shape)
    # Magma's slots: the label sits on one of the 8 places around its box
    width, height = mark.label_box[2] - mark.label_box[0], mark.label_box[3] - mark.label_box[1]
    assert mark.label_box[:2] in marks._slots(mark.box, width, height)
  changed = np.any(marked != image, -1)
  assert changed.any() and not np.any(changed & ~allowed)
  for i, a in enumerate(mark_list):
    assert not any(_overlap(a.label_box, b.label_box) for b in mark_list[i + 1:])
    ring = _ring(a.box, 2, allowed.shape)
    assert np.all(marked[ring] == a.fill)
  _check_labels_read_back(marked, image, mark_list)


def test_som_label_colour_contrasts_with_a_red_background():
  image = np.zeros((120, 160, 3), np.uint8)
  image[..., 0] = 250
  marked, mapping = marks.draw_set_of_marks(image, [[50, 50, 100, 80]], font_size=12)
  (mark,) = mapping.values()
  assert mark.fill != (255, 0, 0)
  _check_labels_read_back(marked, image, [mark])


def test_som_on_a_rendered_screen_keeps_labels_apart_and_readable():
  screen = gui_screens.render_screen(3)
  candidates = marks.select_candidates(screen, max_count=30, seed=0)
  marked, mapping = marks.draw_set_of_marks(screen.image, candidates, seed=1)
  assert len(mapping) == 30 and {m.element_id for m in mapping.values()} == {e.id for e in candidates}
  assert marks.som_font_size(screen.height, screen.width) == 30  # min(30, 0.04 * 800) reached
  mark_list = sorted(mapping.values(), key=lambda m: m.index)
  labels = [m.label_box for m in mark_list]
  assert not any(_overlap(a, b) for i, a in enumerate(labels) for b in labels[i + 1:])
  allowed = np.zeros(screen.image.shape[:2], bool)
  for mark in mark_list:
    _fill(allowed, mark.label_box)
    allowed |= _ring(mark.box, 2, allowed.shape)
  assert not np.any(np.any(marked != screen.image, -1) & ~allowed)
  _check_labels_read_back(marked, screen.image, mark_list)


def test_centre_placement_centres_labels_on_boxes():
  image = _noise_image(1)
  boxes = [[20, 20, 120, 80], [150, 100, 300, 200]]
  _, mapping = marks.draw_set_of_marks(image, boxes, placement="centre", font_size=12)
  for mark in mapping.values():
    label_centre = ((mark.label_box[0] + mark.label_box[2]) / 2, (mark.label_box[1] + mark.label_box[3]) / 2)
    assert np.allclose(label_centre, mark.centre, atol=1.0)


def test_numbering_is_a_seeded_permutation():
  numbers = marks.mark_numbers(20, seed=5)
  assert sorted(numbers.tolist()) == list(range(1, 21))
  np.testing.assert_array_equal(numbers, marks.mark_numbers(20, seed=5))
  assert any(not np.array_equal(numbers, marks.mark_numbers(20, seed=s)) for s in (6, 7, 8))
  assert marks.mark_numbers(4).tolist() == [1, 2, 3, 4]
  assert sorted(marks.mark_numbers(4, seed=0, first_number=0).tolist()) == [0, 1, 2, 3]
  image = _noise_image(2)
  boxes = [[10 + 60 * i, 20, 50 + 60 * i, 60] for i in range(5)]
  first = marks.draw_set_of_marks(image, boxes, seed=9, font_size=12)
  second = marks.draw_set_of_marks(image, boxes, seed=9, font_size=12)
  np.testing.assert_array_equal(first[0], second[0])
  assert first[1] == second[1]
  assert [first[1][n].index for n in sorted(first[1])] == np.argsort(marks.mark_numbers(5, seed=9)).tolist()


def test_candidates_are_interactive_deterministic_and_hold_the_target():
  screen = gui_screens.render_screen(11)
  pool = marks.select_candidates(screen)
  assert pool and all(e.role in marks.INTERACTIVE_ROLES for e in pool)
  assert [e.id for e in pool] == sorted(e.id for e in pool)
  target = pool[len(pool) // 2]
  picked = marks.select_candidates(screen, max_count=5, seed=4, include=[target.id])
  assert len(picked) == 5 and target in picked
  assert picked == marks.select_candidates(screen, max_count=5, seed=4, include=[target.id])
  buttons = marks.select_candidates(screen, roles=("button",))
  assert all(e.role == "button" for e in buttons)


def test_answer_round_trip_lands_inside_the_target_box():
  screen = gui_screens.render_screen(11)
  pool = marks.select_candidates(screen)
  for target in pool[::3]:
    candidates = marks.select_candidates(screen, max_count=8, seed=target.id, include=[target.id])
    _, mapping = marks.draw_set_of_marks(screen.image, candidates, seed=target.id)
    answer = marks.mark_answer(mapping, target)
    assert re.fullmatch(r"Mark \d+", answer)
    x, y = marks.mark_click_point(mapping, answer)
    x0, y0, x1, y1 = target.box
    assert x0 <= x <= x1 and y0 <= y <= y1 and (x, y) == target.centre
    assert marks.parse_mark(answer.lower().replace("mark ", "mark: ")) == marks.parse_mark(answer)
  boxes = np.array([[5, 5, 25, 25], [40, 40, 70, 60]])
  _, mapping = marks.draw_set_of_marks(_noise_image(3), boxes, seed=0, font_size=10)
  assert marks.mark_click_point(mapping, marks.mark_answer(mapping, 1)) == (55.0, 50.0)


def test_som_answer_follows_magmas_format():
  points = {3: (0.0, 0.0), 1: (159.9, 119.9)}
  text = marks.som_answer(points, 320, 240)
  assert text == "Mark 1 at [127,127]. Mark 3 at [0,0]"
  assert marks.SOM_QUESTION.format(grid=256).startswith("The image is split into 256x256 grids")


# ------------------------------------------------------------------------------------------------------------------
# Trace-of-Mark.


@pytest.fixture(scope="module")
def clips():
  config = motion_render.MotionConfig(height=HEIGHT, width=WIDTH, num_frames=10, num_shapes=(2, 3),
                                      num_figures=(0, 0))
  return {motion: motion_render.render_clip(config, seed=2, camera_motion=motion) for motion in ("static", "pan")}


def _frame0(clip) -> np.ndarray:
  return np.round(clip.frames[0] * 255).astype(np.uint8)


def _expected_positions(clip, points: np.ndarray) -> np.ndarray:
  """[T, N, 2] from the layers' maps, independently of the flow field."""
  layers = clip.layer_ids[0][points[:, 1], points[:, 0]]
  out = np.empty((clip.flow.shape[0], len(points), 2))
  for n, (point, layer) in enumerate(zip(points, layers)):
    matrices = clip.layer_matrices[layer] @ np.linalg.inv(clip.layer_matrices[layer][0])
    mapped = matrices @ np.array([point[0], point[1], 1.0])
    out[:, n] = mapped[:, :2] / mapped[:, 2:]
  return out


def test_traces_follow_the_exact_flow_and_record_occlusion(clips):
  clip = clips["static"]
  points = marks.grid_points(HEIGHT, WIDTH, 15)
  tracks, visible = marks.tracks_from_flow(clip.flow, clip.occlusion, points)
  np.testing.assert_array_equal(tracks, points[None] + clip.flow[:, points[:, 1], points[:, 0]].astype(np.float64))
  np.testing.assert_allclose(tracks, _expected_positions(clip, points), atol=1e-3)
  np.testing.assert_array_equal(visible, ~clip.occlusion[:, points[:, 1], points[:, 0]])
  marked, mapping, chosen = marks.trace_of_marks(_frame0(clip), tracks, visible, seed=0, positive_clusters=3,
                                                 negative_clusters=4)
  assert not chosen.camera_motion
  assert sorted(mapping) == list(range(1, len(chosen.positive) + len(chosen.negative) + 1))
  assert sorted(m.index for m in mapping.values() if m.positive) == chosen.positive.tolist()
  for mark in mapping.values():
    np.testing.assert_array_equal(mark.raw, tracks[:, mark.index])
    np.testing.assert_array_equal(mark.trace, tracks[:, mark.index])
    np.testing.assert_array_equal(mark.visible, visible[:, mark.index])
    assert mark.start == tuple(points[mark.index].astype(float))
  # an occluded step stays in the record, and skip_occluded breaks the drawn polyline there
  kept = visible.sum(0) > len(visible) / 2
  hidden = np.flatnonzero(kept & ~visible.all(0) & (chosen.lengths > 2))
  assert len(hidden)
  skipped, _ = marks.draw_trace_of_marks(_frame0(clip), tracks, visible, hidden[:1], skip_occluded=True, seed=0)
  drawn, record = marks.draw_trace_of_marks(_frame0(clip), tracks, visible, hidden[:1], seed=0)
  assert not record[1].visible.all()
  assert np.any(skipped != _frame0(clip)) and np.sum(np.any(skipped != drawn, -1)) > 0
  assert np.sum(np.any(skipped != _frame0(clip), -1)) < np.sum(np.any(drawn != _frame0(clip), -1))


def test_static_and_camera_only_points_are_not_moving(clips):
  points = marks.grid_points(HEIGHT, WIDTH, 15)
  for motion, clip in clips.items():
    tracks, visible = marks.tracks_from_flow(clip.flow, clip.occlusion, points)
    chosen = marks.select_trace_marks(tracks, visible, seed=1, positive_clusters=3, negative_clusters=3)
    layers = clip.layer_ids[0][points[:, 1], points[:, 0]]
    kept = visible.sum(0) > len(visible) / 2
    assert chosen.camera_motion == (motion == "pan")
    assert not np.any(chosen.moving & (layers == 0))  # background points: static, or moving with the camera only
    assert np.all(chosen.moving[kept & (layers > 0)])  # the shapes move
    assert np.all(chosen.lengths[kept & (layers == 0)] < 0.5)
    assert np.all(layers[chosen.positive] > 0) and np.all(layers[chosen.negative] == 0)
    assert len(chosen.positive) >= 2 and len(chosen.negative) == 3
    assert not np.any(chosen.moving[~kept])  # points seen in at most half the frames are dropped
    if motion == "pan":
      raw = marks.trace_lengths(tracks)
      assert np.all(raw[kept & (layers == 0)] > 1)  # before compensation the camera moves every point


def test_trace_of_mark_changes_only_marks_and_reads_back(clips):
  clip = clips["static"]
  image = _frame0(clip)
  points = marks.grid_points(HEIGHT, WIDTH, 15)
  tracks, visible = marks.tracks_from_flow(clip.flow, clip.occlusion, points)
  marked, mapping, _ = marks.trace_of_marks(image, tracks, visible, seed=2, draw_traces=False, positive_clusters=2,
                                            negative_clusters=3)
  allowed = np.zeros(image.shape[:2], bool)
  for mark in mapping.values():
    _fill(allowed, mark.label_box)
    x0, y0, x1, y1 = mark.label_box
    assert x0 <= mark.start[0] < x1 and y0 <= mark.start[1] < y1
  assert not np.any(np.any(marked != image, -1) & ~allowed)
  _check_labels_read_back(marked, image, list(mapping.values()), disc=True)
  with_traces, _, _ = marks.trace_of_marks(image, tracks, visible, seed=2, positive_clusters=2, negative_clusters=3)
  assert np.sum(np.any(with_traces != image, -1)) > np.sum(np.any(marked != image, -1))


def test_trace_text_round_trips_within_half_a_cell(clips):
  clip = clips["pan"]
  points = marks.grid_points(HEIGHT, WIDTH, 15)
  tracks, visible = marks.tracks_from_flow(clip.flow, clip.occlusion, points)
  _, mapping, _ = marks.trace_of_marks(_frame0(clip), tracks, visible, seed=0, positive_clusters=3,
                                       negative_clusters=2)
  half_cell = np.array([WIDTH, HEIGHT]) / marks.GRID / 2
  positives = {k: m for k, m in mapping.items() if m.positive}
  assert positives
  for number, mark in positives.items():
    text = marks.trace_target(mark.trace, WIDTH, HEIGHT)
    assert re.fullmatch(r"\[(\[\d+,\d+\],?)+\]", text)
    decoded = marks.parse_trace(text, WIDTH, HEIGHT)
    future = mark.trace[1:]
    assert decoded.shape == future.shape
    inside = np.all((future >= 0) & (future < [WIDTH, HEIGHT]), -1)
    assert inside.any()
    assert np.all(np.abs(decoded[inside] - future[inside]) <= half_cell + 1e-9)
    question = marks.TRACE_QUESTION.format(grid=marks.GRID, number=number, steps=len(future))
    assert f"Mark {number}" in question
  answer = marks.tom_answer(mapping, WIDTH, HEIGHT)
  assert "should be moved, and their future positions are:" in answer
  parsed = marks.parse_tom_answer(answer, WIDTH, HEIGHT)
  assert parsed and set(parsed) <= set(positives)
  for number, future in parsed.items():
    np.testing.assert_array_equal(future, marks.parse_trace(marks.trace_target(mapping[number].trace, WIDTH, HEIGHT),
                                                            WIDTH, HEIGHT))
  assert marks.tom_answer({k: m for k, m in mapping.items() if not m.positive}, WIDTH, HEIGHT) == ""
  assert marks.tom_question([5, 2], 9, "pick up the cup") == (
    "The image is split into 256x256 grids, and labeled with numeric marks [2, 5].\nThe person is doing: pick up the "
    "cup. To finish the task, how to move the numerical marks in the image for the next 9 steps?\n")


def test_ransac_homography_recovers_the_camera_despite_outliers():
  rng = np.random.default_rng(0)
  matrix = np.array([[1.1, 0.05, 3.0], [-0.04, 0.95, -2.0], [1e-4, -2e-4, 1.0]])
  source = rng.uniform(0, 100, (60, 2))
  target = marks._apply_homography(matrix, source)
  target[:15] += rng.uniform(10, 20, (15, 2))
  fitted = marks.fit_homography(source, target, seed=0)
  np.testing.assert_allclose(fitted, matrix, atol=1e-6)
  assert marks.fit_homography(source[:3], target[:3]) is None


def test_start_frame_and_quantisation():
  tracks = np.cumsum(np.ones((8, 3, 2)), axis=0)
  starts = {marks.sample_start_frame(tracks, seed=s) for s in range(30)}
  assert starts <= set(range(7)) and len(starts) > 1
  cells = marks.quantise([[0.0, 0.0], [319.9, 239.9], [-5.0, 400.0]], 320, 240)
  assert cells.tolist() == [[0, 0], [255, 255], [0, 255]]
  np.testing.assert_allclose(marks.dequantise([[0, 0]], 320, 240), [[0.625, 0.46875]])


def test_bad_inputs_raise_naming_the_argument():
  image = _noise_image(0, 40, 50)
  with pytest.raises(ValueError, match="image"):
    marks.draw_set_of_marks(image.astype(np.float32), [[0, 0, 5, 5]])
  with pytest.raises(ValueError, match="candidates"):
    marks.draw_set_of_marks(image, [[0, 0, 60, 5]])
  with pytest.raises(ValueError, match="candidates"):
    marks.draw_set_of_marks(image, [[4, 0, 4, 5]])
  with pytest.raises(ValueError, match="candidates"):
    marks.draw_set_of_marks(image, [1, 2, 3])
  with pytest.raises(ValueError, match="numbers"):
    marks.draw_set_of_marks(image, [[0, 0, 5, 5], [10, 10, 20, 20]], numbers=[3, 3])
  with pytest.raises(ValueError, match="placement"):
    marks.draw_set_of_marks(image, [[0, 0, 5, 5]], placement="middle")
  with pytest.raises(ValueError, match="font_size"):
    marks.draw_set_of_marks(image, [[0, 0, 5, 5]], font_size=60)
  _, mapping = marks.draw_set_of_marks(image, [[0, 0, 5, 5]], font_size=8)
  with pytest.raises(ValueError, match="answer"):
    marks.mark_click_point(mapping, "Mark 9")
  with pytest.raises(ValueError, match="answer"):
    marks.parse_mark("the second one")
  with pytest.raises(ValueError, match="target"):
    marks.mark_answer(mapping, 4)
  screen = gui_screens.render_screen(11)
  with pytest.raises(ValueError, match="include"):
    marks.select_candidates(screen, include=[0])  # the menubar is not interactive
  tracks, visible = np.zeros((5, 3, 2)), np.ones((5, 3), bool)
  with pytest.raises(ValueError, match="tracks"):
    marks.select_trace_marks(np.zeros((5, 3)), visible)
  with pytest.raises(ValueError, match="visible"):
    marks.select_trace_marks(tracks, np.ones((5, 4), bool))
  with pytest.raises(ValueError, match="positive"):
    marks.draw_trace_of_marks(image, tracks, visible, [3])
  with pytest.raises(ValueError, match="font_size"):
    marks.draw_trace_of_marks(image, tracks, visible, [0], font_size=80)
  with pytest.raises(ValueError, match="positive_clusters"):
    marks.select_trace_marks(tracks, visible, positive_clusters=(3, 2))
  with pytest.raises(ValueError, match="points"):
    marks.tracks_from_flow(np.zeros((2, 4, 4, 2)), np.zeros((2, 4, 4), bool), [[0.5, 1.0]])
  with pytest.raises(ValueError, match="occlusion"):
    marks.tracks_from_flow(np.zeros((2, 4, 4, 2)), np.zeros((2, 4, 5), bool), [[0, 1]])
  with pytest.raises(ValueError, match="trace"):
    marks.trace_target(np.zeros(4), 10, 10)
