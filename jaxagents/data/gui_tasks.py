"""GUI action tasks on rendered screens: template instructions, reference action traces, an on-disk format and a
grain source.

Phi-Ground-Any (arXiv 2605.12501, abstract) pairs rendered screens with instructions and action traces written by an
LLM; CUActSpot (microsoft/Phi-Ground, `benchmark/CUActSpot`) scores them with ranked target polygons (drag start and
end, draw waypoints). The templates here are ours and fill the same families from a `gui_screens.Screen`:

    click         buttons, menubar and drop-down buttons, open-menu items, checkboxes, tabs, text inputs, table cells,
                  canvas shapes, captioned images, words
    double_click  words ("to select it"), table cells ("to edit it"), canvas shapes, images ("to open it")
    type          text inputs: "Type 'Oslo' into the 'City' field."
    drag          a slider's thumb to a value, a canvas shape to a corner or onto another shape, a text selection
                  from one word to another
    draw          on the canvas: corner-to-corner and across-the-middle lines, a line between two shapes, a rectangle
                  around a shape, a circle or triangle in the centre; under text: underline a word

Every instruction names its element by a text that is unique on the screen (role and text; a menu item with its
menu; a table cell by table title, column and row; a word that occurs once). A `Task` records the instruction, the
action, the element (`element_id`, `role`, `element_text`), `target_box` (where the first point must land: the
element's box; a drag's start), `end_box` (a drag's end region), `text` (what to type), the reference `trace`
(click/type: the box centre; drag: start and end; draw: the path's waypoints, a closed path repeating its first
point) and `tolerance` (pixels, draw only); `Task.polygons()` gives the CUActSpot polygons of the same targets
(unranked box for a click, ranks 1 and 2 for a drag's ends, one rank per draw waypoint, a square of side
2 * tolerance around it), so `gui_scoring.cuactspot_score(task.trace, {"polygons": ...})` passes.

On disk (ours), one directory:

    records.jsonl     one task per line (below)
    screens.jsonl     one screen per line: {"image", "width", "height", "scale", "seed", "theme", "background",
                      "elements": [Element.to_json(), ...]} (the full scene graph, for marks and baselines)
    images/screen_00000.png   one lossless PNG per screen, shared by its tasks

A record line:

    {"id": "gui-<seed>-<screen>-<task>", "image": "images/screen_00000.png", "width": 1280, "height": 800,
     "scale": 1.0, "screen": 0, "instruction": "Click the 'Save' button.", "action": "click", "text": "",
     "element_id": 17, "role": "button", "element_text": "Save", "modality": "GUI",
     "target_box": [x0, y0, x1, y1], "end_box": null | [x0, y0, x1, y1], "trace": [[x, y], ...], "closed": false,
     "tolerance": 0.0, "polygons": [{"id": "R1", "type": "Target", "points": [[x, y], ...], "rank": "",
     "visible": true}], "image_id": "GUI-gui-<seed>-<screen>-<task>", "prompt": <instruction>,
     "images": [<image>], "answer": "pyautogui.click(x=0.1234, y=0.5678)"}

Coordinates are pixels of the PNG (boxes closed, [x0, x1] x [y0, y1]); `modality` is CUActSpot's (GUI, Text, Table,
Canvas, Image) and `image_id` carries it as CUActSpot ids do, so a record is also a CUActSpot item for
`gui_scoring.cuactspot_score`. `prompt`, `images` and `answer` make the file readable by
`jaxagents.data.vlm_records.open_dataset` as a supervised set: the answer is the reference action as pyautogui calls on
coordinates normalised to [0, 1] by width and height, 4 decimals, the target layout of GUI-Actor's training data
(microsoft/GUI-Actor, `src/gui_actor/dataset.py`).

`write_dataset` renders screen k of stream `seed` with `screen_seed(seed, k)` at `screens[k % len(screens)]`
((width, height, scale)) and keeps `tasks_per_screen` tasks; `SyntheticGuiSource` serves the same records on the fly
(record i = task i % tasks_per_screen of screen i // tasks_per_screen) and `GuiTaskSource` reads a written directory;
both yield {"image": uint8 [H, W, 3], fields of the record, "trace": float64 [K, 2], boxes float64 [4]}, and
`gui_dataset` wraps either in a `grain.MapDataset`.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from jaxagents.data import gui_screens
from jaxagents.data.gui_screens import Element, Screen

ACTIONS = ("click", "double_click", "type", "drag", "draw")
ROLE_MODALITY = {"word": "Text", "text_block": "Text", "table_cell": "Table", "table": "Table", "canvas": "Canvas",
                 "canvas_shape": "Canvas", "image": "Image"}  # every other role: "GUI"
DEFAULT_SCREENS = ((1280, 800, 1.0), (1920, 1080, 1.5), (1440, 900, 1.0), (2560, 1600, 2.0), (1366, 768, 1.25))
TYPE_VALUES = {"Search": ("weather today", "blue shoes", "invoice 2024"),
               "Email": ("ana@example.com", "ops@example.org"), "Username": ("jdoe", "mara_k", "user42"),
               "Password": ("hunter2!", "S3cure#pass"),
               "First name": ("Alice", "Omar", "Kira"), "Last name": ("Smith", "Garcia", "Okafor", "Tanaka"),
               "City": ("Oslo", "Lima", "Kyoto"), "Phone": ("+1 555 0100", "020 7946 0018"),
               "Zip code": ("94110", "10115"), "Country": ("Norway", "Peru", "Ghana"), "Amount": ("250", "19.99"),
               "Website": ("example.com", "docs.example.org")}
DEFAULT_TYPE_VALUES = ("hello world", "Project Orion", "next Monday", "draft v2", "see you soon")
CORNERS = {"top-left": (0, 0), "top-right": (2, 0), "bottom-left": (0, 2), "bottom-right": (2, 2)}
RECORDS_FILE, SCREENS_FILE, IMAGES_DIR = "records.jsonl", "screens.jsonl", "images"

Point = tuple[float, float]
FloatBox = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Task:
  """One instruction and its reference action on one screen (fields as in the module docstring)."""

  instruction: str
  action: str
  element_id: int
  role: str
  element_text: str
  target_box: FloatBox
  trace: tuple[Point, ...]
  end_box: FloatBox | None = None
  text: str = ""
  closed: bool = False
  tolerance: float = 0.0

  @property
  def modality(self) -> str:
    return ROLE_MODALITY.get(self.role, "GUI")

  def polygons(self) -> list[dict]:
    """CUActSpot polygons of the targets: the box (unranked) for click, double-click and type; ranks 1 and 2 for a
    drag's start and end boxes; ranks 1..K for squares of side 2 * tolerance around a draw path's waypoints."""
    if self.action in ("click", "double_click", "type"):
      return [_polygon("R1", self.target_box, "")]
    if self.action == "drag":
      return [_polygon("R1", self.target_box, "1"), _polygon("R2", self.end_box, "2")]
    half = self.tolerance
    return [_polygon(f"R{i + 1}", (x - half, y - half, x + half, y + half), str(i + 1))
            for i, (x, y) in enumerate(self.trace)]


def _polygon(polygon_id: str, box: FloatBox, rank: str) -> dict:
  x0, y0, x1, y1 = (float(v) for v in box)
  return {"id": polygon_id, "type": "Target", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "rank": rank,
          "visible": True}


def _centre(box) -> Point:
  return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _fbox(box) -> FloatBox:
  return tuple(float(v) for v in box)


# ------------------------------------------------------------------------------------------------------------------
# Which elements an instruction can name without ambiguity.


def _unique(screen: Screen, roles: Sequence[str]) -> list[Element]:
  """Elements of `roles` whose (role, text) occurs once on the screen."""
  counts: dict[tuple[str, str], int] = {}
  for element in screen.elements:
    counts[element.role, element.text] = counts.get((element.role, element.text), 0) + 1
  return [e for e in screen.elements if e.role in roles and e.text and counts[e.role, e.text] == 1]


def _word_key(text: str) -> str:
  return text.rstrip(".").lower()


def _unique_words(screen: Screen) -> list[Element]:
  """Words (at least 3 letters) that occur once on the screen, case and final period ignored."""
  words = [e for e in screen.elements if e.role == "word"]
  counts: dict[str, int] = {}
  for word in words:
    counts[_word_key(word.text)] = counts.get(_word_key(word.text), 0) + 1
  return [w for w in words if counts[_word_key(w.text)] == 1 and len(_word_key(w.text)) >= 3]


def _choice(rng: np.random.Generator, options: Sequence):
  return options[int(rng.integers(len(options)))] if len(options) else None


def _canvas_inner(canvas: Element) -> FloatBox:
  x0, y0, x1, y1 = canvas.box
  w = canvas.border_width
  return float(x0 + w), float(y0 + w), float(x1 - w), float(y1 - w)


def _table_title(screen: Screen, cell: Element) -> str:
  return screen.elements[screen.elements[cell.parent].parent].text


# ------------------------------------------------------------------------------------------------------------------
# Templates, one function per action: (screen, rng) -> Task or None when the screen has no element for it.


def _click_task(screen: Screen, rng: np.random.Generator, double: bool = False) -> Task | None:
  action = "double_click" if double else "click"
  named = _unique(screen, ("button", "menu_button", "checkbox", "tab", "text_input", "canvas_shape", "image"))
  named = [e for e in named if e.role != "image" or e.state["captioned"]]  # an uncaptioned image has no name
  options: list[tuple[Element, str]] = []
  for e in named:
    if double:
      phrase = {"canvas_shape": f"Double-click the {e.text} to edit it.",
                "image": f"Double-click the '{e.text}' image to open it."}.get(e.role)
    elif e.role == "button":
      phrase = _choice(rng, (f"Click the '{e.text}' button.", f"Press the {e.text} button."))
    elif e.role == "menu_button":
      phrase = (f"Click the '{e.text}' drop-down button." if e.state.get("expanded")
                else f"Open the '{e.text}' menu in the menu bar.")
    elif e.role == "checkbox":
      phrase = (_choice(rng, (f"Uncheck '{e.text}'.", f"Turn off the '{e.text}' checkbox.")) if e.state["checked"]
                else _choice(rng, (f"Check '{e.text}'.", f"Turn on the '{e.text}' checkbox.")))
    elif e.role == "tab":
      phrase = f"Switch to the '{e.text}' tab."
    elif e.role == "text_input":
      phrase = _choice(rng, (f"Click the '{e.text}' field.", f"Put the cursor in the {e.text} box."))
    elif e.role == "canvas_shape":
      phrase = _choice(rng, (f"Click the {e.text}.", f"Select the {e.text} on the canvas."))
    else:
      phrase = _choice(rng, (f"Click the '{e.text}' image.", f"Click the picture captioned '{e.text}'."))
    if phrase:
      options.append((e, phrase))
  menus = {e.id: e for e in _unique(screen, ("menu",))}
  for e in screen.elements:
    if e.role == "menu_item" and e.parent in menus and not double:
      siblings = [s.text for s in screen.children(e.parent)]
      if siblings.count(e.text) == 1:
        options.append((e, f"Choose '{e.text}' in the open '{menus[e.parent].text}' menu."))
  titles = {e.text for e in _unique(screen, ("panel",))}
  for e in screen.elements:
    if e.role == "table_cell" and _table_title(screen, e) in titles:
      title = _table_title(screen, e)
      if e.state["header"]:
        phrase = None if double else f"Click the '{e.text}' column header of the '{title}' table."
      elif double:
        phrase = f"Double-click the {e.state['column']} cell in row {e.state['row']} of the '{title}' table to edit it."
      else:
        phrase = f"In the '{title}' table, click the {e.state['column']} cell of row {e.state['row']}."
      if phrase:
        options.append((e, phrase))
  for e in _unique_words(screen):
    word = _word_key(e.text) if e.text[0].islower() else e.text.rstrip(".")
    options.append((e, f"Double-click the word '{word}' to select it." if double else f"Click the word '{word}'."))
  if not options:
    return None
  # Draw the role first, then the element, so that frequent roles (words, cells) do not crowd out the rest.
  roles = sorted({e.role for e, _ in options})
  role = _choice(rng, roles)
  element, phrase = _choice(rng, [option for option in options if option[0].role == role])
  return Task(phrase, action, element.id, element.role, element.text, _fbox(element.box), (_centre(element.box),))


def _type_task(screen: Screen, rng: np.random.Generator) -> Task | None:
  element = _choice(rng, _unique(screen, ("text_input",)))
  if element is None:
    return None
  value = _choice(rng, TYPE_VALUES.get(element.text, DEFAULT_TYPE_VALUES))
  phrase = _choice(rng, (f"Type '{value}' into the '{element.text}' field.",
                         f"Enter '{value}' in the {element.text} box.", f"Fill in '{element.text}' with '{value}'."))
  return Task(phrase, "type", element.id, element.role, element.text, _fbox(element.box), (_centre(element.box),),
              text=value)


def _slider_drag(screen: Screen, rng: np.random.Generator) -> Task | None:
  slider = _choice(rng, _unique(screen, ("slider",)))
  if slider is None:
    return None
  thumb = next(child for child in screen.children(slider.id) if child.role == "slider_thumb")
  current, low, high = slider.state["value"], slider.state["minimum"], slider.state["maximum"]
  values = [v for v in range(low, high + 1, 5) if abs(v - current) >= 20]
  value = _choice(rng, values)
  (x_low, x_high), half_step = slider.state["track"], 2.5  # +-2.5 rounds to the value at the slider's step of 5
  x = x_low + (value - low) / (high - low) * (x_high - x_low)
  dx = half_step / (high - low) * (x_high - x_low)
  end_box = (x - dx, float(slider.box[1]), x + dx, float(slider.box[3]))
  phrase = _choice(rng, (f"Drag the '{slider.text}' slider to {value}.", f"Set {slider.text} to {value} by dragging "
                         "its handle."))
  return Task(phrase, "drag", slider.id, slider.role, slider.text, _fbox(thumb.box),
              (_centre(thumb.box), (x, _centre(slider.box)[1])), end_box=end_box)


def _shape_drag(screen: Screen, rng: np.random.Generator) -> Task | None:
  shape = _choice(rng, _unique(screen, ("canvas_shape",)))
  if shape is None:
    return None
  canvas = screen.elements[shape.parent]
  others = [e for e in screen.children(canvas.id) if e.id != shape.id]
  if others and rng.random() < 0.5:
    other = _choice(rng, others)
    end_box, phrase = _fbox(other.box), f"Drag the {shape.text} onto the {other.text}."
  else:
    corner = _choice(rng, list(CORNERS))
    x0, y0, x1, y1 = _canvas_inner(canvas)
    col, row = CORNERS[corner]
    w, h = (x1 - x0) / 3, (y1 - y0) / 3
    end_box = (x0 + col * w, y0 + row * h, x0 + (col + 1) * w, y0 + (row + 1) * h)
    phrase = f"Drag the {shape.text} to the {corner} corner of the canvas."
  return Task(phrase, "drag", shape.id, shape.role, shape.text, _fbox(shape.box),
              (_centre(shape.box), _centre(end_box)), end_box=end_box)


def _selection_drag(screen: Screen, rng: np.random.Generator) -> Task | None:
  words = _unique_words(screen)
  pairs = [(a, b) for a in words for b in words if a.parent == b.parent and 2 <= b.state["index"] - a.state["index"]
           <= 12]
  if not pairs:
    return None
  first, last = _choice(rng, pairs)
  block = screen.elements[first.parent]
  name = lambda word: word.text.rstrip(".")
  phrase = _choice(rng, (f"Select the text from '{name(first)}' to '{name(last)}' by dragging.",
                         f"Drag to highlight the words from '{name(first)}' through '{name(last)}'."))
  return Task(phrase, "drag", block.id, block.role, block.text, _fbox(first.box),
              (_centre(first.box), _centre(last.box)), end_box=_fbox(last.box))


def _drag_task(screen: Screen, rng: np.random.Generator) -> Task | None:
  makers = [_slider_drag, _shape_drag, _selection_drag]
  for index in rng.permutation(len(makers)):
    task = makers[index](screen, rng)
    if task is not None:
      return task
  return None


def _canvas_draw(screen: Screen, rng: np.random.Generator) -> Task | None:
  canvas = _choice(rng, [e for e in screen.elements if e.role == "canvas"])
  if canvas is None:
    return None
  x0, y0, x1, y1 = _canvas_inner(canvas)
  width, height = x1 - x0, y1 - y0
  tolerance = max(6.0 * screen.scale, 0.05 * min(width, height))
  inset_x, inset_y = 0.1 * width, 0.1 * height
  shapes = _unique(screen, ("canvas_shape",))
  shapes = [s for s in shapes if s.parent == canvas.id]
  kinds = ["corners", "middle", "circle", "triangle"] + ["between"] * (len(shapes) >= 2) + ["around"] * bool(shapes)
  kind = _choice(rng, kinds)
  closed = False
  if kind == "corners":
    start, end = _choice(rng, (("top-left", "bottom-right"), ("bottom-right", "top-left"), ("top-right", "bottom-left"),
                               ("bottom-left", "top-right")))
    corner = lambda name: (x0 + inset_x if "left" in name else x1 - inset_x, y0 + inset_y if "top" in name else
                           y1 - inset_y)
    trace = (corner(start), corner(end))
    phrase = f"Draw a line from the {start} to the {end} of the canvas."
  elif kind == "middle":
    if rng.random() < 0.5:
      trace, phrase = ((x0 + inset_x, (y0 + y1) / 2), (x1 - inset_x, (y0 + y1) / 2)), (
        "Draw a horizontal line from left to right across the middle of the canvas.")
    else:
      trace, phrase = (((x0 + x1) / 2, y0 + inset_y), ((x0 + x1) / 2, y1 - inset_y)), (
        "Draw a vertical line from top to bottom through the middle of the canvas.")
  elif kind == "between":
    a, b = (shapes[i] for i in rng.permutation(len(shapes))[:2])
    trace, phrase = (a.centre, b.centre), f"Draw a line from the {a.text} to the {b.text}."
  elif kind == "around":
    shape = _choice(rng, shapes)
    margin = max(tolerance, 4.0 * screen.scale)
    bx0, by0 = max(shape.box[0] - margin, x0 + 1), max(shape.box[1] - margin, y0 + 1)
    bx1, by1 = min(shape.box[2] + margin, x1 - 1), min(shape.box[3] + margin, y1 - 1)
    trace = ((bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1), (bx0, by0))
    phrase, closed = f"Draw a rectangle around the {shape.text}.", True
  else:
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, 0.3 * min(width, height)
    sides = 12 if kind == "circle" else 3
    angles = -np.pi / 2 + 2 * np.pi * np.arange(sides + 1) / sides
    trace = tuple((float(cx + radius * np.cos(t)), float(cy + radius * np.sin(t))) for t in angles)
    phrase, closed = f"Draw a {kind} in the centre of the canvas.", True
  trace = tuple((float(x), float(y)) for x, y in trace)
  return Task(phrase, "draw", canvas.id, canvas.role, canvas.text, _fbox(canvas.box), trace, closed=closed,
              tolerance=float(tolerance))


def _underline_draw(screen: Screen, rng: np.random.Generator) -> Task | None:
  word = _choice(rng, [w for w in _unique_words(screen) if len(_word_key(w.text)) >= 5])
  if word is None:
    return None
  x0, _, x1, y1 = word.box
  y = y1 + 2.0 * screen.scale
  name = word.text.rstrip(".")
  return Task(f"Underline the word '{name}'.", "draw", word.id, word.role, word.text, _fbox(word.box),
              ((float(x0), y), (float(x1), y)), tolerance=float(max(3.0 * screen.scale, 0.15 * (x1 - x0))))


def _draw_task(screen: Screen, rng: np.random.Generator) -> Task | None:
  makers = [_canvas_draw, _canvas_draw, _underline_draw]  # the canvas holds most draw families
  for index in rng.permutation(len(makers)):
    task = makers[index](screen, rng)
    if task is not None:
      return task
  return None


TEMPLATES: dict[str, Callable[[Screen, np.random.Generator], Task | None]] = {
  "click": _click_task, "double_click": lambda screen, rng: _click_task(screen, rng, double=True),
  "type": _type_task, "drag": _drag_task, "draw": _draw_task}


def make_tasks(screen: Screen, rng: np.random.Generator, num_tasks: int,
               actions: Sequence[str] = ACTIONS) -> list[Task]:
  """Up to `num_tasks` tasks with distinct instructions, cycling through `actions` in a random order; an action the
  screen cannot host (no text input for "type") is replaced by the next one."""
  unknown = sorted(set(actions) - set(ACTIONS))
  if unknown or not actions:
    raise ValueError(f"actions: expected a non-empty subset of {ACTIONS}, got {tuple(actions)}")
  order = [actions[i] for i in rng.permutation(len(actions))]
  tasks, seen = [], set()
  for attempt in range(4 * num_tasks + 4):
    if len(tasks) == num_tasks:
      break
    task = TEMPLATES[order[attempt % len(order)]](screen, rng)
    if task is not None and task.instruction not in seen:
      seen.add(task.instruction)
      tasks.append(task)
  return tasks


# ------------------------------------------------------------------------------------------------------------------
# Records and the on-disk format.


def _answer(task: Task, width: int, height: int) -> str:
  xy = lambda point: f"x={point[0] / width:.4f}, y={point[1] / height:.4f}"
  start = task.trace[0]
  if task.action == "click":
    return f"pyautogui.click({xy(start)})"
  if task.action == "double_click":
    return f"pyautogui.doubleClick({xy(start)})"
  if task.action == "type":
    return f"pyautogui.click({xy(start)})\npyautogui.write(message={task.text!r})"
  if task.action == "drag":
    return f"pyautogui.moveTo({xy(start)})\npyautogui.dragTo({xy(task.trace[-1])})"
  moves = "\n".join(f"pyautogui.moveTo({xy(point)})" for point in task.trace[1:])
  return f"pyautogui.moveTo({xy(start)})\npyautogui.mouseDown()\n{moves}\npyautogui.mouseUp()"


def task_record(task: Task, screen: Screen, image: str, record_id: str, screen_index: int = 0) -> dict:
  """The JSON record of `task` on `screen`, whose PNG is `image` (relative to the dataset directory)."""
  return {"id": record_id, "image": image, "width": screen.width, "height": screen.height, "scale": screen.scale,
          "screen": screen_index, "instruction": task.instruction, "action": task.action, "text": task.text,
          "element_id": task.element_id, "role": task.role, "element_text": task.element_text,
          "modality": task.modality, "target_box": list(task.target_box),
          "end_box": None if task.end_box is None else list(task.end_box), "trace": [list(p) for p in task.trace],
          "closed": task.closed, "tolerance": task.tolerance, "polygons": task.polygons(),
          "image_id": f"{task.modality}-{record_id}", "prompt": task.instruction, "images": [image],
          "answer": _answer(task, screen.width, screen.height)}


def screen_record(screen: Screen, image: str) -> dict:
  """The JSON line of `screen` in `screens.jsonl`."""
  return {"image": image, "width": screen.width, "height": screen.height, "scale": screen.scale, "seed": screen.seed,
          "theme": screen.theme, "background": list(screen.background),
          "elements": [element.to_json() for element in screen.elements]}


def screen_seed(seed: int, screen_index: int) -> int:
  """The renderer seed of screen `screen_index` of stream `seed` (a 32-bit hash of the pair)."""
  return int(np.random.SeedSequence([int(seed), int(screen_index)]).generate_state(1)[0])


def generate_screen_tasks(seed: int, screen_index: int, screens: Sequence[tuple[int, int, float]] = DEFAULT_SCREENS,
                          tasks_per_screen: int = 4, actions: Sequence[str] = ACTIONS) -> tuple[Screen, list[Task]]:
  """Screen `screen_index` of stream `seed` and exactly `tasks_per_screen` tasks: a pure function of the arguments.
  A screen that cannot host that many distinct instructions repeats its tasks in order."""
  width, height, scale = screens[screen_index % len(screens)]
  screen = gui_screens.render_screen(screen_seed(seed, screen_index), width, height, scale)
  rng = np.random.default_rng([int(seed), int(screen_index), 1])
  tasks = make_tasks(screen, rng, tasks_per_screen, actions)
  if not tasks:
    raise ValueError(f"actions: screen {screen_index} of stream {seed} hosts none of {tuple(actions)}")
  return screen, [tasks[i % len(tasks)] for i in range(tasks_per_screen)]


def _image_name(screen_index: int) -> str:
  return f"{IMAGES_DIR}/screen_{screen_index:05d}.png"


def _check_positive(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}")
  return int(value)


def write_dataset(directory: str | os.PathLike, num_screens: int, seed: int, *,
                  screens: Sequence[tuple[int, int, float]] = DEFAULT_SCREENS, tasks_per_screen: int = 4,
                  actions: Sequence[str] = ACTIONS) -> pathlib.Path:
  """Renders screens 0..num_screens-1 of stream `seed` with their tasks into `directory` (the module docstring's
  layout) and returns it. The JSONL files are written to `.partial` names first, so a reader never sees half."""
  _check_positive("num_screens", num_screens)
  _check_positive("tasks_per_screen", tasks_per_screen)
  directory = pathlib.Path(directory)
  (directory / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
  record_lines, screen_lines = [], []
  for index in range(num_screens):
    screen, tasks = generate_screen_tasks(seed, index, screens, tasks_per_screen, actions)
    image = _image_name(index)
    Image.fromarray(screen.image).save(directory / image)
    screen_lines.append(json.dumps(screen_record(screen, image)) + "\n")
    for task_index, task in enumerate(tasks):
      record = task_record(task, screen, image, f"gui-{seed}-{index}-{task_index}", index)
      record_lines.append(json.dumps(record) + "\n")
  for name, lines in ((SCREENS_FILE, screen_lines), (RECORDS_FILE, record_lines)):
    partial = directory / f"{name}.partial"
    partial.write_text("".join(lines))
    partial.replace(directory / name)
  return directory


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    raise FileNotFoundError(f"directory: {path} does not exist; expected a directory written by write_dataset")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_records(directory: str | os.PathLike) -> list[dict]:
  """The records of `records.jsonl`, in file order, as written (JSON types)."""
  return _read_jsonl(pathlib.Path(directory) / RECORDS_FILE)


def read_screens(directory: str | os.PathLike) -> list[dict]:
  """The lines of `screens.jsonl`, each with "elements" parsed back to `Element`s."""
  screens = _read_jsonl(pathlib.Path(directory) / SCREENS_FILE)
  for screen in screens:
    screen["elements"] = tuple(gui_screens.element_from_json(e) for e in screen["elements"])
  return screens


def load_image(directory: str | os.PathLike, record: Mapping) -> np.ndarray:
  """uint8 [height, width, 3]: the PNG of `record`."""
  with Image.open(pathlib.Path(directory) / record["image"]) as image:
    return np.asarray(image.convert("RGB"))


def record_arrays(record: Mapping, image: np.ndarray) -> dict[str, Any]:
  """A record as a source yields it: the JSON fields, "image" the pixels, "image_path" the PNG's relative path,
  "trace" float64 [K, 2] and "target_box", "end_box" float64 [4] (NaN when a task has no end box)."""
  out = dict(record)
  out["image_path"], out["image"] = record["image"], image
  out["trace"] = np.asarray(record["trace"], np.float64).reshape(-1, 2)
  out["target_box"] = np.asarray(record["target_box"], np.float64)
  out["end_box"] = np.full(4, np.nan) if record["end_box"] is None else np.asarray(record["end_box"], np.float64)
  return out


class GuiTaskSource:
  """Random access to a directory written by `write_dataset`: record i is `record_arrays` of line i. Picklable
  (it holds the parsed records and the directory path)."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = pathlib.Path(directory)
    self.records = read_records(self.directory)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < len(self.records):
      raise IndexError(f"index {index} out of range for {len(self.records)} records")
    record = self.records[index]
    return record_arrays(record, load_image(self.directory, record))

  def __repr__(self) -> str:
    return f"GuiTaskSource({len(self)} records, {self.directory})"


class SyntheticGuiSource:
  """The records `write_dataset(..., num_screens, seed, ...)` writes, generated on access: record i is task
  i % tasks_per_screen of screen i // tasks_per_screen. The last rendered screen is cached, so reading a screen's
  tasks in order renders it once; the cache is dropped when pickled."""

  def __init__(self, num_screens: int, seed: int, *, screens: Sequence[tuple[int, int, float]] = DEFAULT_SCREENS,
               tasks_per_screen: int = 4, actions: Sequence[str] = ACTIONS):
    self.num_screens = _check_positive("num_screens", num_screens)
    self.tasks_per_screen = _check_positive("tasks_per_screen", tasks_per_screen)
    self.seed, self.screens, self.actions = int(seed), tuple(screens), tuple(actions)
    self._cache: tuple[int, Screen, list[Task]] | None = None

  def __len__(self) -> int:
    return self.num_screens * self.tasks_per_screen

  def screen(self, screen_index: int) -> tuple[Screen, list[Task]]:
    if self._cache is None or self._cache[0] != screen_index:
      self._cache = (screen_index, *generate_screen_tasks(self.seed, screen_index, self.screens,
                                                          self.tasks_per_screen, self.actions))
    return self._cache[1], self._cache[2]

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    screen_index, task_index = divmod(index, self.tasks_per_screen)
    screen, tasks = self.screen(screen_index)
    record = task_record(tasks[task_index], screen, _image_name(screen_index),
                         f"gui-{self.seed}-{screen_index}-{task_index}", screen_index)
    return record_arrays(record, screen.image)

  def __getstate__(self):
    return {**self.__dict__, "_cache": None}

  def __repr__(self) -> str:
    return f"SyntheticGuiSource({self.num_screens} screens x {self.tasks_per_screen} tasks, seed {self.seed})"


def gui_dataset(source: GuiTaskSource | SyntheticGuiSource | str | os.PathLike) -> grain.MapDataset:
  """A grain `MapDataset` over a source, or over the directory `source` names (read with `GuiTaskSource`)."""
  if not isinstance(source, GuiTaskSource | SyntheticGuiSource):
    source = GuiTaskSource(source)
  return grain.MapDataset.source(source)

