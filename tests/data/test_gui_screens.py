"""Rendered GUI screens: a seed fixes the pixels bit for bit, every recorded box is the tight box of the pixels drawn
for its element (read back from the image), containers paint nothing outside their children, siblings never overlap,
and the DPI scale multiplies every size."""

import numpy as np
import pytest

from jaxagents.data import gui_screens as gs

# (width, height, scale): several resolutions and every DPI scale, kept small enough for a fast CPU test.
CONFIGS = ((640, 400, 1.0), (1280, 800, 1.0), (1024, 768, 1.25), (960, 600, 1.5), (1280, 800, 2.0))


@pytest.fixture(scope="module")
def screens():
  return [gs.render_screen(seed, *CONFIGS[seed % len(CONFIGS)]) for seed in range(15)]


def _box_pixels(image, box):
  x0, y0, x1, y1 = box
  return image[y0:y1, x0:x1]


def _interior(screen, element_id):
  """(x0, y0, x1, y1) inside the border of `element_id`; the whole screen for -1."""
  if element_id < 0:
    return 0, 0, screen.width, screen.height
  element = screen.elements[element_id]
  x0, y0, x1, y1 = element.box
  w = element.border_width
  return x0 + w, y0 + w, x1 - w, y1 - w


def test_a_seed_fixes_the_pixels_and_the_elements_and_seeds_differ():
  for width, height, scale in CONFIGS[:3]:
    first, second = gs.render_screen(7, width, height, scale), gs.render_screen(7, width, height, scale)
    np.testing.assert_array_equal(first.image, second.image)
    assert first.elements == second.elements
    other = gs.render_screen(8, width, height, scale)
    assert other.image.shape == first.image.shape and not np.array_equal(other.image, first.image)


def test_images_have_the_requested_resolution(screens):
  for seed, screen in enumerate(screens):
    width, height, scale = CONFIGS[seed % len(CONFIGS)]
    assert screen.image.shape == (height, width, 3) and screen.image.dtype == np.uint8
    assert screen.scale == scale


def test_every_box_is_the_tight_box_of_the_pixels_that_differ_from_its_parent_surface(screens):
  checked = set()
  for screen in screens:
    image = screen.image
    for element in screen.elements:
      differs = (_box_pixels(image, element.box) != screen.surface(element.parent)).any(-1)
      rows, cols = np.flatnonzero(differs.any(1)), np.flatnonzero(differs.any(0))
      x0, y0, x1, y1 = element.box
      tight = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1) if rows.size else None
      assert tight == element.box, (screen.seed, element)
      checked.add(element.role)
  assert checked == set(gs.ROLES)


def test_containers_paint_nothing_outside_their_children_and_borders_are_their_colour(screens):
  for screen in screens:
    image = screen.image
    containers = [-1] + [e.id for e in screen.elements if e.role in gs.CONTAINER_ROLES]
    for container in containers:
      x0, y0, x1, y1 = _interior(screen, container)
      outside_children = np.ones((y1 - y0, x1 - x0), bool)
      for child in screen.children(container):
        cx0, cy0, cx1, cy1 = child.box
        outside_children[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = False
      pixels = image[y0:y1, x0:x1][outside_children]
      assert (pixels == screen.surface(container)).all(), (screen.seed, container)
      if container >= 0 and screen.elements[container].border is not None:
        element = screen.elements[container]
        ring = np.ones(_box_pixels(image, element.box).shape[:2], bool)
        w = element.border_width
        ring[w:-w, w:-w] = False
        assert (_box_pixels(image, element.box)[ring] == element.border).all(), (screen.seed, element)


def test_children_lie_inside_their_parent_siblings_never_overlap_and_boxes_stay_on_screen(screens):
  for screen in screens:
    for element in screen.elements:
      x0, y0, x1, y1 = element.box
      assert 0 <= x0 < x1 <= screen.width and 0 <= y0 < y1 <= screen.height, element
      px0, py0, px1, py1 = _interior(screen, element.parent)
      assert px0 <= x0 and py0 <= y0 and x1 <= px1 and y1 <= py1, element
    for parent in [-1] + [e.id for e in screen.elements]:
      boxes = np.array([child.box for child in screen.children(parent)]).reshape(-1, 4)
      overlap_x = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) > np.maximum(boxes[:, None, 0], boxes[None, :, 0])
      overlap_y = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) > np.maximum(boxes[:, None, 1], boxes[None, :, 1])
      overlaps = overlap_x & overlap_y
      np.fill_diagonal(overlaps, False)
      assert not overlaps.any(), (screen.seed, parent)


def test_elements_are_listed_parents_first_with_ids_in_order(screens):
  for screen in screens:
    for index, element in enumerate(screen.elements):
      assert element.id == index and element.parent < index and element.role in gs.ROLES
      if element.parent >= 0:
        assert screen.elements[element.parent].role in gs.CONTAINER_ROLES + ("panel",)


def test_screens_mix_every_panel_kind_and_named_texts_are_unique(screens):
  kinds = {e.state["kind"] for screen in screens for e in screen.elements if e.role == "panel"}
  assert kinds == set(gs.PANEL_KINDS)
  for screen in screens:
    for role in ("button", "text_input", "checkbox", "slider", "tab", "panel", "image"):
      texts = [e.text for e in screen.elements if e.role == role]
      assert len(texts) == len(set(texts)), (screen.seed, role, texts)


def test_widget_state_matches_the_pixels(screens):
  for screen in screens:
    for element in screen.elements:
      if element.role == "slider":
        thumb = next(child for child in screen.children(element.id) if child.role == "slider_thumb")
        low, high = element.state["track"]
        expected = low + element.state["value"] / 100 * (high - low)
        assert abs(thumb.centre[0] - expected) <= 0.5, (screen.seed, element)
      if element.role == "canvas_shape":
        colour = gs.SHAPE_COLOURS[element.state["colour"]]
        assert (_box_pixels(screen.image, element.box) == colour).all(-1).mean() > 0.4, element
      if element.role == "text_block":
        words = screen.children(element.id)
        assert " ".join(word.text for word in words) == element.text and all(w.role == "word" for w in words)


def test_the_dpi_scale_multiplies_sizes():
  heights = {}
  for scale, (width, height) in ((1.0, (800, 500)), (2.0, (1600, 1000))):
    screen = gs.render_screen(3, width, height, scale)
    heights[scale] = np.median([e.box[3] - e.box[1] for e in screen.elements if e.role in ("button", "text_input")])
    menubar = next(e for e in screen.elements if e.role == "menubar")
    heights[scale, "menubar"] = menubar.box[3]
  assert 1.8 <= heights[2.0] / heights[1.0] <= 2.2, heights
  assert 1.8 <= heights[2.0, "menubar"] / heights[1.0, "menubar"] <= 2.2, heights


def test_elements_round_trip_through_json(screens):
  for element in screens[1].elements:
    assert gs.element_from_json(element.to_json()) == element


def test_text_ink_is_binary_and_tight():
  mask, dx, dy = gs.text_ink("Save", 13)
  assert mask.dtype == bool and mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
  big, _, _ = gs.text_ink("Save", 26)
  assert 1.7 <= big.shape[1] / mask.shape[1] <= 2.3
  with pytest.raises(ValueError, match="text"):
    gs.text_ink("  ", 13)


def test_invalid_arguments_raise_naming_them():
  with pytest.raises(ValueError, match="width, height"):
    gs.render_screen(0, 640, 400, 2.0)
  with pytest.raises(ValueError, match="seed"):
    gs.render_screen(-1)
  with pytest.raises(ValueError, match="scale"):
    gs.render_screen(0, 1280, 800, 0.0)
