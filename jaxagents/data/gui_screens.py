"""Synthetic GUI screens: a deterministic, offline PIL renderer that records every element's box, text and role.

Phi-Ground-Any (arXiv 2605.12501, abstract) trains its grounding model on screenshots rendered by per-modality scene
generators that record element coordinates, and tests on CUActSpot (microsoft/Phi-Ground, `benchmark/CUActSpot`), whose
items span five modalities: GUI, Text, Table, Canvas and Image. That renderer is not public; this one is ours, a
reconstruction that covers the same modalities on one screen:

    +--------------------------------------------------------------+
    | menubar: File  Edit  View  ...                               |
    +----------------------+---------------------------------------+
    | panel "Settings"     | panel "Notes"                         |
    |  tab_bar: tab tab    |  text_block: word word word ...       |
    |  button text_input   +---------------------------------------+
    |  checkbox  slider    | panel "Sketch": tool buttons, canvas  |
    |  menu_button + menu  |   with canvas_shapes                  |
    +----------------------+---------------------------------------+

The screen is cut into 3-6 panels (a random guillotine partition); each panel holds a title `label` and one kind of
content: a form (buttons, text inputs, checkboxes, sliders, a menu button with its open dropdown `menu`), tabs over a
form, text blocks (one `word` element per word), a table (`table_cell`s, the first row headers), a drawing canvas with
coloured shapes under a row of tool buttons, or natural-image-like texture panels (`image`, 1/f-spectrum noise, the
amplitude fall-off of natural images) with captions. Texts are drawn from fixed ASCII pools, unique per screen among
the elements an instruction names (button, field, checkbox, slider, tab and panel names).

Sizes. `width` x `height` are physical pixels and `scale` is the DPI factor (1, 1.25, 1.5, 2 as in desktop display
settings): every size (fonts, paddings, borders, widgets) is its 1x size times `scale`, so a 2560x1600 screen at
scale 2 holds the layout of a 1280x800 screen at scale 1, at double resolution. `RESOLUTIONS` and `DPI_SCALES` list
common values; any width/scale >= 480 and height/scale >= 320 works.

Elements. `Screen.elements[i]` has `id == i`, a `role` (one of `ROLES`), a `box` (x0, y0, x1, y1) in pixels covering
columns x0..x1-1 and rows y0..y1-1 (so, in continuous coordinates, the closed rectangle [x0, x1] x [y0, y1]), its
`text`, its `parent` (-1: the screen) and role-specific `state` (a checkbox's `checked`, a slider's `value` and
`track`, a table cell's `row` and `col`, ...). Parents come before their children. The rendering keeps three
invariants that a reader of the pixels can check (the tests do):

* Boxes are tight: each box's first and last row and column hold a pixel that differs from the parent's *surface*
  (the `fill` of the nearest ancestor that has one, else `Screen.background`). Leaves without a fill (labels, words,
  checkboxes) are drawn as binary, un-antialiased text and their box is the bounding box of their ink.
* Containers (`CONTAINER_ROLES`) paint nothing outside their children: inside a container's border, every pixel
  outside its children's boxes is its surface colour, and its `border_width` ring is its `border` colour. The same
  holds for the screen and its top-level elements.
* Siblings never overlap and lie inside their parent's border; every box lies inside the screen.

The text font is Pillow's bundled default (`ImageFont.load_default(size)`, Aileron Regular with FreeType; without
FreeType Pillow's fixed bitmap font, whatever the size), so no system font path is needed. A screen is a pure function
of (seed, width, height, scale): the same arguments give a bitwise-equal image.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

ROLES = ("menubar", "menu_button", "menu", "menu_item", "panel", "label", "button", "text_input", "checkbox",
         "slider", "slider_thumb", "tab_bar", "tab", "text_block", "word", "table", "table_cell", "canvas",
         "canvas_shape", "image")
CONTAINER_ROLES = ("menubar", "menu", "panel", "slider", "tab_bar", "text_block", "table", "canvas")
PANEL_KINDS = ("form", "tabs", "text", "table", "canvas", "image")
RESOLUTIONS = ((1024, 768), (1280, 800), (1366, 768), (1440, 900), (1920, 1080), (2560, 1440), (2560, 1600))
DPI_SCALES = (1.0, 1.25, 1.5, 2.0)
MIN_LOGICAL_SIZE = (480, 320)  # (width, height) / scale
FONT_SIZE = 13  # at scale 1, in pixels

MENUBAR_TEXTS = ("File", "Edit", "View", "Insert", "Format", "Tools", "Window", "Help")
BUTTON_TEXTS = ("Save", "Cancel", "Apply", "Open", "Export", "Import", "Submit", "Reset", "Next", "Back", "Delete",
                "Share", "Upload", "Download", "Refresh", "Search", "Print", "Close", "Add", "Copy", "Paste", "Undo",
                "Redo", "Rename", "Send", "Sync", "Preview", "Publish", "Archive", "Filter", "Run", "Stop", "Connect",
                "Log in", "Sign up", "Continue", "Finish")
FIELD_TEXTS = ("Search", "Email", "Username", "Password", "First name", "Last name", "City", "Phone", "Address",
               "Company", "Website", "Zip code", "Country", "Comment", "Subject", "Tags", "Amount")
CHECKBOX_TEXTS = ("Remember me", "Dark mode", "Auto-save", "Notifications", "Show grid", "Wi-Fi", "Bluetooth",
                  "Spell check", "Word wrap", "Line numbers", "Sound effects", "Location", "Subtitles", "Autoplay",
                  "Hidden files", "Sync contacts")
SLIDER_TEXTS = ("Volume", "Brightness", "Contrast", "Zoom", "Opacity", "Speed", "Balance", "Saturation", "Quality",
                "Sensitivity", "Temperature")
MENUS = {"Sort by": ("Name", "Date", "Size", "Type", "Rating"), "Theme": ("Light", "Dark", "System", "High contrast"),
         "Language": ("English", "French", "German", "Spanish", "Japanese"),
         "Export as": ("PDF", "PNG", "CSV", "HTML", "Markdown"), "View as": ("List", "Grid", "Columns", "Gallery")}
TAB_TEXTS = ("General", "Display", "Sound", "Network", "Privacy", "Advanced", "Accounts", "Security", "Updates",
             "Storage", "Battery", "Keyboard")
TOOL_TEXTS = ("Pen", "Line", "Rectangle", "Ellipse", "Eraser", "Fill", "Clear", "Select")
PANEL_TITLES = {"form": ("Settings", "Preferences", "Account", "Profile", "Options", "Connection"),
                "tabs": ("System", "Control panel", "Configuration", "Properties"),
                "text": ("Notes", "Readme", "Article", "Message", "Summary", "Release notes"),
                "table": ("Orders", "Inventory", "Contacts", "Invoices", "Scores", "Flights"),
                "canvas": ("Sketch", "Whiteboard", "Diagram", "Drawing"),
                "image": ("Gallery", "Photos", "Album", "Wallpapers")}
IMAGE_CAPTIONS = ("harbor at dusk", "mountain lake", "forest trail", "desert dunes", "city skyline", "autumn field",
                  "coral reef", "snowy pass", "river delta", "misty valley", "tulip farm", "old bridge")
NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Kira", "Liam", "Mona",
         "Nils", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara")
CITIES = ("Oslo", "Lima", "Kyoto", "Cairo", "Perth", "Quito", "Dakar", "Hanoi", "Porto", "Riga", "Tunis", "Accra",
          "Bern", "Doha", "Malmo", "Nice")
TABLE_COLUMNS = ("Name", "City", "Qty", "Price", "Date", "Status", "Score")
STATUSES = ("Open", "Paid", "Shipped", "Late", "Draft", "Closed")
PARAGRAPH_WORDS = (
  "the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "this", "that", "we",
  "our", "new", "team", "report", "project", "update", "version", "release", "meeting", "design", "review", "data",
  "model", "screen", "window", "button", "system", "user", "users", "file", "files", "folder", "page", "pages",
  "river", "harbor", "garden", "market", "station", "museum", "library", "bridge", "village", "island", "valley",
  "morning", "evening", "weekend", "summer", "winter", "quickly", "slowly", "carefully", "today", "tomorrow",
  "yesterday", "before", "after", "during", "between", "improves", "changes", "adds", "removes", "fixes", "shows",
  "opens", "saves", "loads", "runs", "moves", "keeps", "reads", "writes", "simple", "small", "large", "bright",
  "quiet", "early", "late", "final", "first", "second", "third", "several", "every", "each", "many", "few", "green",
  "blue", "orange", "purple", "yellow", "silver", "golden", "wooden", "stone", "paper", "glass", "coffee", "tea",
  "bread", "apples", "letters", "numbers", "colors", "shapes", "lines", "points", "notes", "ideas", "plans", "goals",
  "budget", "schedule", "travel", "weather", "network", "backup", "server", "client", "support", "feedback")
SHAPE_KINDS = ("circle", "square", "triangle")
SHAPE_COLOURS = {"red": (220, 38, 38), "green": (22, 163, 74), "blue": (37, 99, 235), "orange": (234, 88, 12),
                 "purple": (147, 51, 234)}
ACCENTS = ((37, 99, 235), (22, 128, 74), (124, 58, 237), (194, 65, 12), (13, 118, 110))

# Surfaces that touch are distinct colours, so every box edge differs from the surface under it.
THEMES = {
  "light": {"background": (214, 219, 227), "menubar": (246, 247, 249), "menu_button": (229, 232, 237),
            "panel": (255, 255, 255), "panel_border": (196, 201, 210), "text": (28, 30, 36), "muted": (120, 125, 135),
            "button": (238, 240, 244), "button_border": (165, 171, 182), "input": (255, 255, 255),
            "input_border": (150, 156, 168), "tab_bar": (232, 235, 240), "tab": (244, 246, 249),
            "trough": (226, 229, 235), "grid": (190, 196, 206), "cell": (255, 255, 255), "header": (236, 239, 244),
            "menu": (214, 219, 227), "menu_item": (255, 255, 255), "canvas": (255, 255, 255)},
  "dark": {"background": (24, 26, 30), "menubar": (40, 42, 48), "menu_button": (56, 59, 66), "panel": (36, 38, 43),
           "panel_border": (70, 74, 82), "text": (232, 234, 238), "muted": (150, 155, 165), "button": (58, 61, 68),
           "button_border": (96, 101, 112), "input": (28, 30, 34), "input_border": (100, 105, 116),
           "tab_bar": (30, 32, 36), "tab": (48, 51, 57), "trough": (56, 59, 66), "grid": (76, 80, 90),
           "cell": (44, 46, 52), "header": (56, 59, 66), "menu": (76, 80, 90), "menu_item": (44, 46, 52),
           "canvas": (250, 250, 250)},
}
WHITE = (255, 255, 255)


@dataclasses.dataclass(frozen=True)
class Element:
  """One recorded element. `box` = (x0, y0, x1, y1): columns x0..x1-1, rows y0..y1-1; `parent` -1 is the screen;
  `fill` is the colour under its children (None: transparent, the parent's surface shows); `border` and
  `border_width` its outline; `state` role-specific values (JSON-able)."""

  id: int
  role: str
  box: Box
  text: str = ""
  parent: int = -1
  fill: RGB | None = None
  border: RGB | None = None
  border_width: int = 0
  state: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def centre(self) -> tuple[float, float]:
    """(x, y) of the box centre in continuous pixel coordinates."""
    x0, y0, x1, y1 = self.box
    return (x0 + x1) / 2, (y0 + y1) / 2

  def to_json(self) -> dict:
    """A JSON-able dict; `element_from_json` inverts it."""
    return {"id": self.id, "role": self.role, "box": list(self.box), "text": self.text, "parent": self.parent,
            "fill": None if self.fill is None else list(self.fill),
            "border": None if self.border is None else list(self.border), "border_width": self.border_width,
            "state": dict(self.state)}


def element_from_json(data: Mapping) -> Element:
  """The element of `Element.to_json`."""
  colour = lambda value: None if value is None else tuple(int(c) for c in value)
  return Element(int(data["id"]), str(data["role"]), tuple(int(v) for v in data["box"]), str(data["text"]),
                 int(data["parent"]), colour(data["fill"]), colour(data["border"]), int(data["border_width"]),
                 dict(data["state"]))


@dataclasses.dataclass(frozen=True, eq=False)
class Screen:
  """A rendered screen: `image` uint8 [height, width, 3] and its elements (parents first, `elements[i].id == i`)."""

  image: np.ndarray
  elements: tuple[Element, ...]
  background: RGB
  seed: int
  scale: float
  theme: str

  @property
  def height(self) -> int:
    return self.image.shape[0]

  @property
  def width(self) -> int:
    return self.image.shape[1]

  def children(self, element_id: int) -> list[Element]:
    """The elements whose parent is `element_id` (-1: the top-level elements)."""
    return [element for element in self.elements if element.parent == element_id]

  def surface(self, element_id: int) -> RGB:
    """The colour under `element_id`'s children: its fill, else its nearest filled ancestor's, else the background."""
    while element_id >= 0:
      element = self.elements[element_id]
      if element.fill is not None:
        return element.fill
      element_id = element.parent
    return self.background


# ------------------------------------------------------------------------------------------------------------------
# Text and shape masks.


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's bundled default font at `size` pixels (its fixed bitmap font when Pillow lacks FreeType)."""
  return ImageFont.load_default(size=size) if features.check("freetype2") else ImageFont.load_default()


@functools.lru_cache(maxsize=16384)
def text_ink(text: str, size: int) -> tuple[np.ndarray, int, int]:
  """(mask bool [h, w], dx, dy): the binary (un-antialiased) ink of `text` cropped to its bounding box, and the
  offset of that box from the point PIL draws the text at (its left-ascender origin)."""
  if not text.strip():
    raise ValueError(f"text: expected visible characters, got {text!r}")
  face = font(size)
  left, top, right, bottom = face.getbbox(text)
  margin = 2 + size // 4
  canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin))
  draw = ImageDraw.Draw(canvas)
  draw.fontmode = "1"  # binary glyphs: every ink pixel is exactly the text colour
  draw.text((margin - left, margin - top), text, font=face, fill=255)
  mask, col, row = tight(np.asarray(canvas) > 127)
  mask = mask.copy()
  mask.flags.writeable = False
  return mask, col - margin + left, row - margin + top


def shape_mask(kind: str, height: int, width: int) -> np.ndarray:
  """bool [height, width]: pixels whose centres lie inside a `kind` ("circle": an ellipse, "square", "triangle"
  pointing up) filling the box. Crop it with `tight` before recording a box."""
  y, x = np.mgrid[:height, :width] + 0.5
  if kind == "circle":
    mask = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2 <= 1
  elif kind == "square":
    mask = np.ones((height, width), bool)
  elif kind == "triangle":
    mask = np.abs(x - width / 2) <= y / height * width / 2 + 0.5
  else:
    raise ValueError(f"kind: expected one of {SHAPE_KINDS}, got {kind!r}")
  return mask


def tight(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
  """(mask cropped to the bounding box of its True pixels, column offset, row offset of the crop)."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if not rows.size:
    raise ValueError("mask: expected at least one True pixel")
  return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], int(cols[0]), int(rows[0])


def segment_mask(height: int, width: int, p0, p1, thickness: float) -> np.ndarray:
  """bool [height, width]: pixels whose centres lie within thickness/2 of the segment p0-p1 ((x, y) pairs)."""
  y, x = np.mgrid[:height, :width] + 0.5
  (ax, ay), (bx, by) = p0, p1
  dx, dy = bx - ax, by - ay
  t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
  return (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 <= (thickness / 2) ** 2


def natural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: coloured noise with a 1/f^a amplitude spectrum (a in [1, 1.5]), the fall-off of
  natural images (Field, J. Opt. Soc. Am. A 4(12), 1987), mixed into a random palette over a vertical gradient."""
  fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
  radius = np.hypot(fy, fx)
  radius[0, 0] = 1.0
  amplitude = radius ** -rng.uniform(1.0, 1.5)
  amplitude[0, 0] = 0.0
  fields = []
  for _ in range(3):
    spectrum = amplitude * (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape))
    field = np.fft.irfft2(spectrum, s=(height, width))
    fields.append((field - field.mean()) / (field.std() + 1e-12))
  fields = np.stack(fields, -1)
  base = rng.uniform(50, 200, 3)
  mixing = rng.normal(0, 28, (3, 3))
  gradient = np.linspace(1, -1, height)[:, None, None] * rng.uniform(-50, 50, 3)
  return np.clip(base + fields @ mixing + gradient, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------------
# The builder: a numpy image and the element list, filled parent first.


@dataclasses.dataclass
class _Item:
  """A widget measured before placement: `place(parent, x, y)` adds its elements with top-left (x, y)."""

  width: int
  height: int
  place: Callable[[int, int, int], None]


class _Builder:

  def __init__(self, seed: int, width: int, height: int, scale: float):
    self.rng = np.random.default_rng(seed)
    self.scale, self.width, self.height = scale, width, height
    self.theme_name = ("light", "dark")[int(self.rng.random() < 0.3)]
    self.theme = THEMES[self.theme_name]
    self.accent = ACCENTS[int(self.rng.integers(len(ACCENTS)))]
    self.image = np.empty((height, width, 3), np.uint8)
    self.image[:] = self.theme["background"]
    self.elements: list[Element] = []
    self.used: set[str] = set()
    self.font_size = self.u(FONT_SIZE)
    self.line_height = sum(font(self.font_size).getmetrics())
    self.border = self.u(1)

  def u(self, pixels: float) -> int:
    """A 1x size in pixels at this screen's scale (at least 1)."""
    return max(1, round(pixels * self.scale))

  def pick(self, pool: Sequence[str], count: int = 1) -> list[str]:
    """Up to `count` texts of `pool` not used on this screen yet, in random order; marks them used."""
    free = [text for text in pool if text not in self.used]
    chosen = [free[i] for i in self.rng.permutation(len(free))[:count]]
    self.used.update(chosen)
    return chosen

  def add(self, role: str, box: Box, parent: int, text: str = "", fill: RGB | None = None, border: RGB | None = None,
          **state) -> int:
    """Records an element and paints its fill and border; returns its id."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
      raise AssertionError(f"{role} box {box} is empty or leaves the {self.width}x{self.height} screen")
    border_width = self.border if border is not None else 0
    if border is not None:
      self.image[y0:y1, x0:x1] = border
    if fill is not None:
      self.image[y0 + border_width:y1 - border_width, x0 + border_width:x1 - border_width] = fill
    element = Element(len(self.elements), role, (int(x0), int(y0), int(x1), int(y1)), text, parent, fill, border,
                      border_width, state)
    self.elements.append(element)
    return element.id

  def ink_size(self, text: str) -> tuple[int, int]:
    mask, _, _ = text_ink(text, self.font_size)
    return mask.shape[1], mask.shape[0]

  def paint_mask(self, mask: np.ndarray, x: int, y: int, colour: RGB) -> Box:
    self.image[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = colour
    return x, y, x + mask.shape[1], y + mask.shape[0]

  def text(self, text: str, x: int, y: int, colour: RGB) -> Box:
    """Paints `text` with its origin (left, ascender line) at (x, y); returns its ink box."""
    mask, dx, dy = text_ink(text, self.font_size)
    return self.paint_mask(mask, x + dx, y + dy, colour)

  def text_in(self, text: str, box: Box, colour: RGB, align: str = "centre", pad: int = 0) -> Box:
    """Paints `text` inside `box`: centred (or left-aligned after `pad`) across, centred on the line height down."""
    x0, y0, x1, y1 = box
    mask, _, dy = text_ink(text, self.font_size)
    x = x0 + pad if align == "left" else x0 + (x1 - x0 - mask.shape[1]) // 2
    return self.paint_mask(mask, x, y0 + (y1 - y0 - self.line_height) // 2 + dy, colour)

  def label(self, parent: int, text: str, x: int, y: int, colour: RGB | None = None) -> int:
    """A text-only element at origin (x, y); its box is its ink."""
    mask, dx, dy = text_ink(text, self.font_size)
    box = (x + dx, y + dy, x + dx + mask.shape[1], y + dy + mask.shape[0])
    element_id = self.add("label", box, parent, text)
    self.paint_mask(mask, box[0], box[1], colour or self.theme["text"])
    return element_id


# ------------------------------------------------------------------------------------------------------------------
# Widgets: each returns an `_Item` sized at this scale.


def _button(b: _Builder, text: str, primary: bool = False, role: str = "button") -> _Item:
  width, height = b.ink_size(text)[0] + 2 * b.u(12), b.line_height + 2 * b.u(6)

  def place(parent, x, y):
    fill, colour = (b.accent, WHITE) if primary else (b.theme["button"], b.theme["text"])
    box = (x, y, x + width, y + height)
    b.add(role, box, parent, text, fill, b.theme["button_border"], primary=primary)
    b.text_in(text, box, colour)

  return _Item(width, height, place)


def _text_input(b: _Builder, text: str) -> _Item:
  width, height = max(b.u(150), b.ink_size(text)[0] + 2 * b.u(10)), b.line_height + 2 * b.u(6)

  def place(parent, x, y):
    box = (x, y, x + width, y + height)
    b.add("text_input", box, parent, text, b.theme["input"], b.theme["input_border"], placeholder=text, value="")
    b.text_in(text, box, b.theme["muted"], align="left", pad=b.u(8))

  return _Item(width, height, place)


def _checkbox(b: _Builder, text: str) -> _Item:
  checked = bool(b.rng.random() < 0.5)
  side, gap = b.u(14), b.u(6)
  mask, dx, dy = text_ink(text, b.font_size)
  height = max(side, b.line_height)
  square_y, origin_y = (height - side) // 2, (height - b.line_height) // 2
  ink_y0, ink_y1 = origin_y + dy, origin_y + dy + mask.shape[0]
  top, bottom = min(square_y, ink_y0), max(square_y + side, ink_y1)
  width = side + gap + mask.shape[1]

  def place(parent, x, y):
    b.add("checkbox", (x, y, x + width, y + bottom - top), parent, text, checked=checked)
    square = (x, y + square_y - top, x + side, y + square_y - top + side)
    fill = b.accent if checked else b.theme["input"]
    b.image[square[1]:square[3], square[0]:square[2]] = b.accent if checked else b.theme["input_border"]
    inner = b.border
    b.image[square[1] + inner:square[3] - inner, square[0] + inner:square[2] - inner] = fill
    if checked:
      tick = segment_mask(side, side, (0.22 * side, 0.52 * side), (0.42 * side, 0.72 * side), b.u(2.2))
      tick |= segment_mask(side, side, (0.42 * side, 0.72 * side), (0.78 * side, 0.3 * side), b.u(2.2))
      tick[:inner + 1], tick[-inner - 1:], tick[:, :inner + 1], tick[:, -inner - 1:] = False, False, False, False
      b.paint_mask(tick, square[0], square[1], WHITE)
    b.paint_mask(mask, x + side + gap, y + ink_y0 - top, b.theme["text"])

  return _Item(width, bottom - top, place)


def _slider(b: _Builder, text: str) -> _Item:
  value = int(b.rng.integers(0, 21)) * 5
  caption = f"{text}: {value}"
  caption_height = b.ink_size(caption)[1]
  track_width, track_height, gap = b.u(170), b.u(18), b.u(4)
  thumb_width, pad = b.u(10), b.u(2)
  width = max(track_width, b.ink_size(caption)[0])

  def place(parent, x, y):
    _, _, dy = text_ink(caption, b.font_size)
    b.label(parent, caption, x, y - dy)
    top = y + caption_height + gap
    box = (x, top, x + track_width, top + track_height)
    inner_x0 = x + b.border + pad
    travel = track_width - 2 * (b.border + pad) - thumb_width
    track = [inner_x0 + thumb_width / 2, inner_x0 + thumb_width / 2 + travel]  # thumb centres at 0 and 100
    slider = b.add("slider", box, parent, text, b.theme["trough"], b.theme["input_border"], value=value, minimum=0,
                   maximum=100, track=track)
    thumb_x = inner_x0 + round(value / 100 * travel)
    b.add("slider_thumb", (thumb_x, top + b.border + pad, thumb_x + thumb_width, top + track_height - b.border - pad),
          slider, text, b.accent, b.theme["button_border"])

  return _Item(width, caption_height + gap + track_height, place)


def _menu(b: _Builder, title: str, items: Sequence[str]) -> _Item:
  trigger_width = b.ink_size(title)[0] + 2 * b.u(12) + b.u(10)  # room on the right for the chevron
  trigger_height, gap = b.line_height + 2 * b.u(6), b.u(2)
  row_height, pad = b.line_height + 2 * b.u(4), b.u(2)
  list_width = max(trigger_width, max(b.ink_size(item)[0] for item in items) + 2 * b.u(12))
  list_height = 2 * (b.border + pad) + len(items) * row_height + (len(items) - 1) * b.border
  highlighted = int(b.rng.integers(len(items)))

  def place(parent, x, y):
    box = (x, y, x + trigger_width, y + trigger_height)
    b.add("menu_button", box, parent, title, b.theme["button"], b.theme["button_border"], expanded=True)
    b.text_in(title, (x, y, x + trigger_width - b.u(10), y + trigger_height), b.theme["text"])
    side = b.u(8)
    chevron = shape_mask("triangle", side // 2 + 1, side)[::-1]
    b.paint_mask(chevron, x + trigger_width - b.u(10) - side, y + (trigger_height - chevron.shape[0]) // 2,
                 b.theme["text"])
    top = y + trigger_height + gap
    menu = b.add("menu", (x, top, x + list_width, top + list_height), parent, title, b.theme["menu"],
                 b.theme["panel_border"])
    row_top = top + b.border + pad
    for index, item in enumerate(items):
      row = (x + b.border + pad, row_top, x + list_width - b.border - pad, row_top + row_height)
      hot = index == highlighted
      b.add("menu_item", row, menu, item, b.accent if hot else b.theme["menu_item"], highlighted=hot)
      b.text_in(item, row, WHITE if hot else b.theme["text"], align="left", pad=b.u(10))
      row_top += row_height + b.border

  return _Item(list_width, trigger_height + gap + list_height, place)


def _flow(b: _Builder, parent: int, area: Box, items: Sequence[_Item], gap: int) -> None:
  """Places items left to right in rows inside `area`, top-aligned; an item that fits nowhere is skipped."""
  x0, y0, x1, y1 = area
  x, y, row_height = x0, y0, 0
  for item in items:
    if item.width > x1 - x0:
      continue
    if x + item.width > x1:
      if y + row_height + gap + item.height > y1:
        continue
      x, y, row_height = x0, y + row_height + gap, 0
    if y + item.height > y1:
      continue
    item.place(parent, x, y)
    x, row_height = x + item.width + gap, max(row_height, item.height)


# ------------------------------------------------------------------------------------------------------------------
# Panels.


def _form_items(b: _Builder, area: Box) -> list[_Item]:
  rng = b.rng
  density = np.clip((area[2] - area[0]) * (area[3] - area[1]) / b.u(200) ** 2, 1, 4)  # more widgets in big panels
  count = lambda low, high: int(round(rng.integers(low, high + 1) * density))
  items = [_button(b, text, primary=i == 0) for i, text in enumerate(b.pick(BUTTON_TEXTS, count(1, 3)))]
  items += [_text_input(b, text) for text in b.pick(FIELD_TEXTS, count(1, 2))]
  items += [_checkbox(b, text) for text in b.pick(CHECKBOX_TEXTS, count(1, 2))]
  items += [_slider(b, text) for text in b.pick(SLIDER_TEXTS, count(0, 1))]
  if rng.random() < 0.7:
    for title in b.pick(tuple(MENUS), 1):
      items.append(_menu(b, title, MENUS[title]))
  return [items[i] for i in rng.permutation(len(items))]


def _fill_form(b: _Builder, panel: int, area: Box) -> None:
  _flow(b, panel, area, _form_items(b, area), b.u(12))


def _fill_tabs(b: _Builder, panel: int, area: Box) -> None:
  x0, y0, x1, y1 = area
  tabs = b.pick(TAB_TEXTS, int(b.rng.integers(3, 6)))
  selected = int(b.rng.integers(len(tabs)))
  pad, gap = b.u(3), b.u(2)
  tab_height = b.line_height + 2 * b.u(6)
  bar = b.add("tab_bar", (x0, y0, x1, y0 + tab_height + 2 * pad), panel, "", b.theme["tab_bar"])
  x = x0 + pad
  for index, text in enumerate(tabs):
    width = b.ink_size(text)[0] + 2 * b.u(14)
    if x + width > x1 - pad:
      break
    hot = index == selected
    box = (x, y0 + pad, x + width, y0 + pad + tab_height)
    b.add("tab", box, bar, text, b.accent if hot else b.theme["tab"], selected=hot)
    b.text_in(text, box, WHITE if hot else b.theme["text"])
    x += width + gap
  _fill_form(b, panel, (x0, y0 + tab_height + 2 * pad + b.u(12), x1, y1))


def _fill_text(b: _Builder, panel: int, area: Box) -> None:
  x0, y0, x1, y1 = area
  space = max(font(b.font_size).getlength(" "), 0.4 * b.font_size)  # wide enough that word inks never touch
  line_step = round(1.5 * b.font_size)
  y = y0
  for _ in range(int(b.rng.integers(1, 4))):
    words = [PARAGRAPH_WORDS[i] for i in b.rng.integers(len(PARAGRAPH_WORDS), size=int(b.rng.integers(20, 90)))]
    words[0] = words[0].capitalize()
    words[-1] += "."
    placed, x = [], float(x0)
    line_top = y
    for word in words:
      advance = font(b.font_size).getlength(word)
      if x > x0 and x + advance > x1:
        x, line_top = float(x0), line_top + line_step
      if line_top + b.line_height > y1:
        break
      placed.append((word, round(x), line_top))
      x += advance + space
    if not placed:
      return
    boxes = []
    for word, wx, wy in placed:
      mask, dx, dy = text_ink(word, b.font_size)
      boxes.append((wx + dx, wy + dy, wx + dx + mask.shape[1], wy + dy + mask.shape[0]))
    block_box = (min(bx[0] for bx in boxes), min(bx[1] for bx in boxes), max(bx[2] for bx in boxes),
                 max(bx[3] for bx in boxes))
    block = b.add("text_block", block_box, panel, " ".join(word for word, _, _ in placed))
    for index, ((word, wx, wy), box) in enumerate(zip(placed, boxes)):
      b.add("word", box, block, word, index=index, line=(wy - y) // line_step)
      b.text(word, wx, wy, b.theme["text"])
    y = placed[-1][2] + line_step + b.u(10)
    if y + b.line_height > y1:
      return


def _cell_value(rng: np.random.Generator, column: str) -> str:
  if column == "Name":
    return NAMES[int(rng.integers(len(NAMES)))]
  if column == "City":
    return CITIES[int(rng.integers(len(CITIES)))]
  if column == "Qty":
    return str(int(rng.integers(1, 250)))
  if column == "Price":
    return f"{rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
  if column == "Date":
    return f"2024-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
  if column == "Status":
    return STATUSES[int(rng.integers(len(STATUSES)))]
  return str(int(rng.integers(0, 101)))


def _fill_table(b: _Builder, panel: int, area: Box) -> None:
  x0, y0, x1, y1 = area
  rng = b.rng
  columns = [TABLE_COLUMNS[i] for i in sorted(rng.permutation(len(TABLE_COLUMNS))[:int(rng.integers(2, 6))])]
  rows = [[_cell_value(rng, column) for column in columns] for _ in range(int(rng.integers(4, 13)))]
  pad = b.u(8)
  widths = [max(b.ink_size(text)[0] for text in [column] + [row[c] for row in rows]) + 2 * pad
            for c, column in enumerate(columns)]
  while len(columns) > 1 and sum(widths) + (len(columns) + 1) * b.border > x1 - x0:
    columns, widths, rows = columns[:-1], widths[:-1], [row[:-1] for row in rows]
  row_height = b.line_height + 2 * b.u(5)
  fit = (y1 - y0 - b.border) // (row_height + b.border)
  num_rows = min(len(rows) + 1, fit)
  if num_rows < 2 or sum(widths) + (len(columns) + 1) * b.border > x1 - x0:
    return _fill_form(b, panel, area)
  width = sum(widths) + (len(columns) + 1) * b.border
  height = num_rows * (row_height + b.border) + b.border
  table = b.add("table", (x0, y0, x0 + width, y0 + height), panel, "", b.theme["grid"], rows=num_rows - 1,
                columns=list(columns))
  top = y0 + b.border
  for r, values in enumerate([columns] + rows[:num_rows - 1]):
    left = x0 + b.border
    for c, text in enumerate(values):
      box = (left, top, left + widths[c], top + row_height)
      header = r == 0
      b.add("table_cell", box, table, text, b.theme["header"] if header else b.theme["cell"], row=r, col=c,
            header=header, column=columns[c])
      b.text_in(text, box, b.theme["text"], align="left", pad=pad)
      left += widths[c] + b.border
    top += row_height + b.border


def _fill_canvas(b: _Builder, panel: int, area: Box) -> None:
  x0, y0, x1, y1 = area
  tools = [_button(b, text) for text in b.pick(TOOL_TEXTS, int(b.rng.integers(3, 5)))]
  x = x0
  for tool in tools:
    if x + tool.width <= x1:
      tool.place(panel, x, y0)
      x += tool.width + b.u(6)
  top = y0 + (tools[0].height + b.u(8) if tools else 0)
  if y1 - top < b.u(80):
    return
  canvas = b.add("canvas", (x0, top, x1, y1), panel, "", b.theme["canvas"], b.theme["panel_border"])
  inner = (x0 + b.border, top + b.border, x1 - b.border, y1 - b.border)
  names = [(colour, kind) for colour in SHAPE_COLOURS for kind in SHAPE_KINDS]
  placed: list[Box] = []
  margin = b.u(8)
  for index in b.rng.permutation(len(names))[:int(b.rng.integers(2, 5))]:
    colour, kind = names[index]
    side = b.u(float(b.rng.uniform(24, 44)))
    height = side if kind != "triangle" else round(side * 0.87)
    for _ in range(20):
      if inner[2] - inner[0] - side - 2 * margin <= 0 or inner[3] - inner[1] - height - 2 * margin <= 0:
        break
      sx = inner[0] + margin + int(b.rng.integers(inner[2] - inner[0] - side - 2 * margin))
      sy = inner[1] + margin + int(b.rng.integers(inner[3] - inner[1] - height - 2 * margin))
      mask, dx, dy = tight(shape_mask(kind, height, side))
      box = (sx + dx, sy + dy, sx + dx + mask.shape[1], sy + dy + mask.shape[0])
      if all(_gap(box, other) >= margin for other in placed):
        placed.append(box)
        b.add("canvas_shape", box, canvas, f"{colour} {kind}", colour=colour, kind=kind)
        b.paint_mask(mask, box[0], box[1], SHAPE_COLOURS[colour])
        break


def _fill_images(b: _Builder, panel: int, area: Box) -> None:
  x0, y0, x1, y1 = area
  gap = b.u(12)
  count = int(b.rng.integers(1, 4))
  caption_height = b.line_height + b.u(4)
  width = min((x1 - x0 - (count - 1) * gap) // count, b.u(260))
  height = min(y1 - y0 - caption_height, round(width * 0.7))
  if width < b.u(60) or height < b.u(40):
    return
  for index, caption in enumerate(b.pick(IMAGE_CAPTIONS, count)):
    left = x0 + index * (width + gap)
    box = (left, y0, left + width, y0 + height)
    captioned = b.ink_size(caption)[0] <= width
    b.add("image", box, panel, caption, border=b.theme["panel_border"], captioned=captioned)
    inner = b.border
    b.image[y0 + inner:y0 + height - inner, left + inner:left + width - inner] = natural_texture(
      b.rng, height - 2 * inner, width - 2 * inner)
    if captioned:
      b.label(panel, caption, left, y0 + height + b.u(4), b.theme["muted"])


_FILLERS = {"form": _fill_form, "tabs": _fill_tabs, "text": _fill_text, "table": _fill_table,
            "canvas": _fill_canvas, "image": _fill_images}
_MIN_PANEL = {"form": (200, 120), "tabs": (220, 150), "text": (160, 90), "table": (180, 130), "canvas": (200, 160),
              "image": (180, 130)}  # (width, height) at scale 1


def _gap(a: Box, b: Box) -> int:
  """Chebyshev gap between two boxes in pixels (negative when they overlap)."""
  return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])


def _partition(rng: np.random.Generator, area: Box, count: int, min_size: tuple[int, int], gap: int) -> list[Box]:
  """Splits `area` into up to `count` boxes, `gap` apart, by cutting the largest box across its longer side."""
  boxes = [area]
  while len(boxes) < count:
    for box in sorted(boxes, key=lambda r: -(r[2] - r[0]) * (r[3] - r[1])):
      x0, y0, x1, y1 = box
      vertical = (x1 - x0) / min_size[0] >= (y1 - y0) / min_size[1]
      length = (x1 - x0) if vertical else (y1 - y0)
      need = min_size[0] if vertical else min_size[1]
      if length - gap < 2 * need:
        continue
      cut = int(np.clip(round(length * rng.uniform(0.35, 0.65)), need, length - gap - need))
      first, second = ((x0, y0, x0 + cut, y1), (x0 + cut + gap, y0, x1, y1)) if vertical else (
        (x0, y0, x1, y0 + cut), (x0, y0 + cut + gap, x1, y1))
      boxes.remove(box)
      boxes += [first, second]
      break
    else:
      break
  return sorted(boxes, key=lambda r: (r[1], r[0]))


def render_screen(seed: int, width: int = 1280, height: int = 800, scale: float = 1.0) -> Screen:
  """Renders screen `seed` at `width` x `height` physical pixels and DPI `scale`; see the module docstring.

  Raises ValueError when width/scale < 480 or height/scale < 320 (too small a logical screen to lay out)."""
  for name, value in (("seed", seed), ("width", width), ("height", height)):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
      raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
  if not (isinstance(scale, int | float) and 0.5 <= scale <= 4):
    raise ValueError(f"scale: expected a DPI factor in [0.5, 4], got {scale!r}")
  if width / scale < MIN_LOGICAL_SIZE[0] or height / scale < MIN_LOGICAL_SIZE[1]:
    raise ValueError(f"width, height: expected at least {MIN_LOGICAL_SIZE} pixels times scale {scale}, "
                     f"got {width} x {height}")
  b = _Builder(int(seed), int(width), int(height), float(scale))
  theme, margin = b.theme, b.u(8)

  bar_height = b.line_height + 2 * b.u(6)
  menubar = b.add("menubar", (0, 0, width, bar_height), -1, "", theme["menubar"])
  b.used.update(MENUBAR_TEXTS)
  x = b.u(4)
  for text in MENUBAR_TEXTS[:int(b.rng.integers(4, len(MENUBAR_TEXTS) + 1))]:
    item_width = b.ink_size(text)[0] + 2 * b.u(8)
    if x + item_width > width - b.u(4):
      break
    box = (x, b.u(3), x + item_width, bar_height - b.u(3))
    b.add("menu_button", box, menubar, text, theme["menu_button"], expanded=False)
    b.text_in(text, box, theme["text"])
    x += item_width + b.u(4)

  area = (margin, bar_height + margin, width - margin, height - margin)
  min_panel = (b.u(200), b.u(150))
  panels = _partition(b.rng, area, int(b.rng.integers(3, 7)), min_panel, margin)
  kinds = [PANEL_KINDS[i] for i in b.rng.permutation(len(PANEL_KINDS))]
  for index, box in enumerate(panels):
    x0, y0, x1, y1 = box
    pad = b.u(10)
    content = (x0 + b.border + pad, y0 + b.border + pad, x1 - b.border - pad, y1 - b.border - pad)
    order = kinds[index % len(kinds):] + kinds[:index % len(kinds)]
    kind = next((k for k in order if content[2] - content[0] >= b.u(_MIN_PANEL[k][0])
                 and content[3] - content[1] >= b.u(_MIN_PANEL[k][1])), "form")
    title = (b.pick(PANEL_TITLES[kind]) or [kind.capitalize()])[0]
    panel = b.add("panel", box, -1, title, theme["panel"], theme["panel_border"], kind=kind)
    _, _, dy = text_ink(title, b.font_size)
    b.label(panel, title, content[0], content[1] - dy)
    title_bottom = content[1] + b.ink_size(title)[1] + b.u(10)
    _FILLERS[kind](b, panel, (content[0], title_bottom, content[2], content[3]))
  return Screen(b.image, tuple(b.elements), theme["background"], int(seed), float(scale), b.theme_name)
