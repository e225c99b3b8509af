"""Captioned shapes: a synthetic text-to-image dataset, generated on the fly, small enough for a CPU-trained MMDiT.

A scene is 1-4 groups of flat-coloured shapes on a black background. A group is `count` shapes of one colour, one
kind (circle, square, triangle) and one size (small, large) in one named region; its caption phrase is
"two large red circles on the left". A scene's caption joins its group phrases with "and":

    "a small blue square at the top left and two large red circles on the right"

Layout. The image is split into a 2 x 2 grid of slots (its quadrants); every shape sits alone in one slot, so shapes
never touch and a pixel reader can count them. Regions are sets of slots:

    quadrants  "top left", "top right", "bottom left", "bottom right"   one slot, count 1
    halves     "left", "right", "top", "bottom"                         two slots, count 1 or 2
    "centre"   a slot-sized box in the middle of the image              count 1, only as the scene's one group
    "anywhere" the whole image (the caption names no place)             count 1-4, only as the scene's one group

Groups of one scene have distinct colours and disjoint regions, so "the dominant colour of a group's region" and
"the number of blobs of a group's colour" are both well defined; `jaxagents.data.prompt_following` scores
generated images with exactly these two checks (plus shape size and kind). Inside its slot a shape's position is
jittered by `Scene.layout_seed`, so `render(scene, height, width)` is a pure function and the same scene lays out the
same way at every aspect ratio.

Palette. `COLOURS` are the seven corners of the RGB cube other than black (the background): any two of the eight
are at least 255 apart in RGB, so a nearest-colour reading survives the blur of a tiny generator. Rendering has
no anti-aliasing: every pixel is exactly a palette colour or the background.

Vocabulary. Captions use the 29 words of `WORDS` (`VOCABULARY` adds "<pad>" as id 0); `tokenize` is a word-level
tokenizer for a tiny text encoder and raises on any other word. The longest caption has `MAX_CAPTION_LENGTH` (35)
words.

Held-out prompts. `HELDOUT_COMBINATIONS` lists (colour, kind, region) triples that training never shows, although each
colour, kind and region appears in training in other combinations (compositional generalisation, as in GenEval's
attribute-binding prompts, arXiv 2310.11513, Sec. 3). `sample_scene` redraws any scene holding one of them, and
`HELDOUT_SCENES` is a fixed list of evaluation scenes, each holding at least one.

`ShapesCaptionsSource` serves record `i` of stream `seed` (a pure function of (seed, i)) to a grain pipeline; record
`i` is rendered at `image_sizes[i % len(image_sizes)]`, so a batch of one aspect ratio is the indices of one residue
class.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
       "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255)}
BACKGROUND_RGB = (0, 0, 0)
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Side of a shape's bounding box as a fraction of its slot's shorter side; the rest is margin and jitter room.
SIZE_FRACTIONS = {"small": 0.45, "large": 0.75}
MARGIN_FRACTION = 0.1  # of the slot's shorter side, kept clear on every side: shapes in adjacent slots never touch
REGIONS = ("top left", "top right", "bottom left", "bottom right", "left", "right", "top", "bottom", "centre",
           "anywhere")
CENTRE_SLOT = 4  # slots 0-3 are the quadrants in reading order
REGION_SLOTS = {"top left": (0,), "top right": (1,), "bottom left": (2,), "bottom right": (3,), "left": (0, 2),
                "right": (1, 3), "top": (0, 1), "bottom": (2, 3), "centre": (CENTRE_SLOT,), "anywhere": (0, 1, 2, 3)}
SOLO_REGIONS = ("centre", "anywhere")  # they overlap every other region, so such a group is alone in its scene
REGION_PHRASES = {"top left": "at the top left", "top right": "at the top right", "bottom left": "at the bottom left",
                  "bottom right": "at the bottom right", "left": "on the left", "right": "on the right",
                  "top": "at the top", "bottom": "at the bottom", "centre": "in the centre", "anywhere": ""}
COUNT_WORDS = ("a", "two", "three", "four")  # COUNT_WORDS[n - 1] says n
MAX_GROUPS = 4
MAX_SHAPES = 4
DEFAULT_IMAGE_SIZES = ((32, 32), (32, 48), (48, 32))  # (height, width): square, wide, tall

WORDS = (*COUNT_WORDS, *SIZES, *COLOURS, *KINDS, *(kind + "s" for kind in KINDS),
         "at", "on", "in", "the", "top", "bottom", "left", "right", "centre", "and")
VOCABULARY = ("<pad>", *WORDS)
PAD_ID = 0
WORD_ID = {word: i for i, word in enumerate(VOCABULARY)}
# Four quadrant groups, "a small red circle at the top left" (8 words) each, joined by three "and".
MAX_CAPTION_LENGTH = 4 * 8 + 3


def max_caption_length(max_groups: int) -> int:
  """Words in the longest caption of at most `max_groups` groups: 8 per phrase, an "and" between phrases."""
  return 9 * max_groups - 1


# Each colour once; kinds and region types spread out. Scenes holding any of these never appear in training.
HELDOUT_COMBINATIONS = (("red", "triangle", "top left"), ("green", "circle", "right"), ("blue", "square", "bottom"),
                        ("yellow", "triangle", "centre"), ("magenta", "circle", "bottom right"),
                        ("cyan", "square", "left"), ("white", "triangle", "top"))

_NO_ID = -1  # pads the per-group arrays of a record beyond its scene's groups
_SCENE_KEYS = ("count", "colour_id", "kind_id", "size_id", "region_id", "num_groups", "layout_seed")


@dataclasses.dataclass(frozen=True)
class Group:
  """`count` shapes of one colour, kind and size in one region (names from COLOURS, KINDS, SIZES, REGIONS)."""

  count: int
  colour: str
  kind: str
  size: str
  region: str

  def __post_init__(self):
    for name, value, choices in (("colour", self.colour, COLOURS), ("kind", self.kind, KINDS),
                                 ("size", self.size, SIZES), ("region", self.region, REGIONS)):
      if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    capacity = 1 if self.region == "centre" else len(REGION_SLOTS[self.region])
    if isinstance(self.count, bool) or not isinstance(self.count, int | np.integer) or not 1 <= self.count <= capacity:
      raise ValueError(f"count: region {self.region!r} holds 1 to {capacity} shapes, got {self.count!r}")

  @property
  def combination(self) -> tuple[str, str, str]:
    """(colour, kind, region): what `HELDOUT_COMBINATIONS` holds out."""
    return (self.colour, self.kind, self.region)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Groups of shapes and the seed of their jitter. Groups have distinct colours and disjoint regions; a
  "centre" or "anywhere" group is alone. `layout_seed` only places shapes (`shape_boxes`); the caption ignores it."""

  groups: tuple[Group, ...]
  layout_seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "groups", tuple(self.groups))
    if not 1 <= len(self.groups) <= MAX_GROUPS:
      raise ValueError(f"groups: expected 1 to {MAX_GROUPS} groups, got {len(self.groups)}")
    colours = [group.colour for group in self.groups]
    if len(set(colours)) != len(colours):
      raise ValueError(f"groups: expected distinct colours, got {colours}")
    regions = [group.region for group in self.groups]
    if len(regions) > 1 and set(regions) & set(SOLO_REGIONS):
      raise ValueError(f"groups: regions {SOLO_REGIONS} must be a scene's only group, got regions {regions}")
    slots = [slot for region in regions for slot in REGION_SLOTS[region]]
    if len(set(slots)) != len(slots):
      raise ValueError(f"groups: expected disjoint regions, got {regions}")


def slot_box(slot: int, height: int, width: int) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) pixels of a slot (bottom and right exclusive): quadrants 0-3, CENTRE_SLOT."""
  if slot == CENTRE_SLOT:
    return height // 4, width // 4, height // 4 + height // 2, width // 4 + width // 2
  row, col = divmod(slot, 2)
  row_edges, col_edges = (0, height // 2, height), (0, width // 2, width)
  return row_edges[row], col_edges[col], row_edges[row + 1], col_edges[col + 1]


def region_box(region: str, height: int, width: int) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of the smallest box holding a region's slots; every region is exactly its box."""
  boxes = np.array([slot_box(slot, height, width) for slot in REGION_SLOTS[region]])
  return int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())


def shape_side(size: str, height: int, width: int) -> int:
  """Bounding-box side in pixels of a shape of `size` in an image of `height x width`."""
  return max(3, round(SIZE_FRACTIONS[size] * min(height // 2, width // 2)))


def shape_boxes(scene: Scene, height: int, width: int) -> list[tuple[int, int, int, int]]:
  """(group index, top, left, side) of every shape, group by group: where `render` draws. Each shape has a slot of
  its group's region to itself; `scene.layout_seed` picks the slots of a group with fewer shapes than slots and each
  shape's offset inside its slot, as fractions of the free room, so the layout is the same at every aspect ratio."""
  if height < 16 or width < 16:
    raise ValueError(f"height, width: expected at least 16 pixels each, got {height} x {width}")
  rng = np.random.default_rng(scene.layout_seed)
  boxes = []
  for group_index, group in enumerate(scene.groups):
    slots = REGION_SLOTS[group.region]
    chosen = sorted(rng.choice(slots, group.count, replace=False).tolist()) if group.count < len(slots) else slots
    side = shape_side(group.size, height, width)
    for slot in chosen:
      top, left, bottom, right = slot_box(slot, height, width)
      margin = max(1, round(MARGIN_FRACTION * min(bottom - top, right - left)))
      jitter_y, jitter_x = rng.random(2)
      free_y, free_x = max(0, bottom - top - side - 2 * margin), max(0, right - left - side - 2 * margin)
      boxes.append((group_index, top + margin + round(jitter_y * free_y), left + margin + round(jitter_x * free_x),
                    side))
  return boxes


def shape_mask(kind: str, side: int) -> np.ndarray:
  """bool [side, side]: the pixels whose centres lie inside a `kind` filling the box (no anti-aliasing). The
  triangle points up, its base the box's bottom edge."""
  y, x = np.mgrid[:side, :side] + 0.5
  if kind == "circle":
    return (y - side / 2) ** 2 + (x - side / 2) ** 2 <= (side / 2) ** 2
  if kind == "square":
    return np.ones((side, side), bool)
  if kind == "triangle":
    return np.abs(x - side / 2) <= y / 2
  raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def render(scene: Scene, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: the scene's shapes in their palette colours on a black background."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:] = BACKGROUND_RGB
  for group_index, top, left, side in shape_boxes(scene, height, width):
    group = scene.groups[group_index]
    image[top:top + side, left:left + side][shape_mask(group.kind, side)] = RGB[group.colour]
  return image


def group_phrase(group: Group) -> str:
  """"two large red circles on the left": count, size, colour, kind (plural past one) and the region's phrase."""
  noun = group.kind + ("s" if group.count > 1 else "")
  return " ".join(filter(None, (COUNT_WORDS[group.count - 1], group.size, group.colour, noun,
                                REGION_PHRASES[group.region])))


def caption(scene: Scene) -> str:
  """The scene's dense caption: its group phrases, in order, joined by "and"."""
  return " and ".join(group_phrase(group) for group in scene.groups)


def parse_caption(text: str) -> Scene:
  """The scene a caption describes (`layout_seed` 0): the inverse of `caption`. Raises ValueError on text that no
  scene's caption spells."""
  phrase_to_region = {phrase: region for region, phrase in REGION_PHRASES.items()}
  groups = []
  for phrase in text.split(" and "):
    words = phrase.split()
    if len(words) < 4 or words[0] not in COUNT_WORDS or words[3].rstrip("s") not in KINDS:
      raise ValueError(f"text: expected '<count> <size> <colour> <kind> <place>' phrases, got {phrase!r}")
    count = COUNT_WORDS.index(words[0]) + 1
    if words[3] != words[3].rstrip("s") + ("s" if count > 1 else ""):
      raise ValueError(f"text: {words[3]!r} does not agree with the count {words[0]!r} in {phrase!r}")
    place = " ".join(words[4:])
    if place not in phrase_to_region:
      raise ValueError(f"text: expected a place among {sorted(phrase_to_region)}, got {place!r} in {phrase!r}")
    groups.append(Group(count, words[2], words[3].rstrip("s"), words[1], phrase_to_region[place]))
  return Scene(tuple(groups))


def tokenize(text: str, max_len: int = MAX_CAPTION_LENGTH) -> tuple[np.ndarray, np.ndarray]:
  """Word-level ids of a caption: (ids int32 [max_len], mask bool [max_len]), ids of `VOCABULARY` padded with
  PAD_ID (0) and mask True on words. Raises ValueError on a word outside the vocabulary or a caption longer than
  `max_len` words."""
  words = text.split()
  unknown = sorted({word for word in words if word not in WORD_ID or word == VOCABULARY[PAD_ID]})
  if unknown:
    raise ValueError(f"text: words {unknown} are not in the shapes vocabulary {WORDS}")
  if len(words) > max_len:
    raise ValueError(f"max_len: the caption has {len(words)} words, more than max_len={max_len}")
  ids = np.full(max_len, PAD_ID, np.int32)
  ids[:len(words)] = [WORD_ID[word] for word in words]
  return ids, np.arange(max_len) < len(words)


def detokenize(ids, mask=None) -> str:
  """The words of `ids` (where `mask` is True; every non-pad id when it is None), joined by spaces."""
  ids = np.asarray(ids).reshape(-1)
  keep = ids != PAD_ID if mask is None else np.asarray(mask, bool).reshape(-1)
  return " ".join(VOCABULARY[i] for i in ids[keep].tolist())


def sample_scene(rng: np.random.Generator, colours: Sequence[str] = COLOURS, kinds: Sequence[str] = KINDS,
                 max_groups: int = MAX_GROUPS, exclude=HELDOUT_COMBINATIONS, solo_probability: float = 0.2) -> Scene:
  """A random scene whose groups avoid every (colour, kind, region) in `exclude` (redrawn until they do).

  With probability `solo_probability` the scene is one "centre" or "anywhere" group (counts 3 and 4 only occur
  there); otherwise 1 to `max_groups` groups take disjoint quadrants or halves, picked uniformly among the regions
  still free. Colours are distinct, kinds and sizes independent."""
  colours, kinds, exclude = tuple(colours), tuple(kinds), set(map(tuple, exclude))
  if not 1 <= max_groups <= min(MAX_GROUPS, len(colours)):
    raise ValueError(f"max_groups: expected 1 to {min(MAX_GROUPS, len(colours))} (at most one group per colour of "
                     f"{colours}), got {max_groups}")
  if unknown := sorted(set(colours) - set(COLOURS)) + sorted(set(kinds) - set(KINDS)):
    raise ValueError(f"colours, kinds: {unknown} are not among {COLOURS} and {KINDS}")
  if not kinds:
    raise ValueError("kinds: expected at least one kind, got none")
  for _ in range(1000):
    if rng.random() < solo_probability:
      region = SOLO_REGIONS[rng.integers(len(SOLO_REGIONS))]
      placements = [(region, 1 if region == "centre" else int(rng.integers(1, MAX_SHAPES + 1)))]
    else:
      placements, free = [], {0, 1, 2, 3}
      for _ in range(int(rng.integers(1, max_groups + 1))):
        candidates = [r for r in REGIONS if r not in SOLO_REGIONS and set(REGION_SLOTS[r]) <= free]
        if not candidates:
          break
        region = candidates[rng.integers(len(candidates))]
        free -= set(REGION_SLOTS[region])
        placements.append((region, int(rng.integers(1, len(REGION_SLOTS[region]) + 1))))
      placements.sort(key=lambda placement: min(REGION_SLOTS[placement[0]]))  # one caption order: reading order
    group_colours = rng.permutation(colours)[:len(placements)]
    groups = tuple(Group(count, str(colour), kinds[rng.integers(len(kinds))], SIZES[rng.integers(len(SIZES))], region)
                   for (region, count), colour in zip(placements, group_colours))
    layout_seed = int(rng.integers(2**31))
    if not any(group.combination in exclude for group in groups):
      return Scene(groups, layout_seed)
  raise ValueError(f"exclude: 1000 draws in a row held an excluded combination; it excludes too much ({exclude})")


def _heldout_scenes() -> tuple[Scene, ...]:
  """Per held-out combination: the group alone, large and small, then beside a training-legal group."""
  # A partner per combination: (count, colour, kind, size, region), disjoint from the held-out group's region.
  partners = {"top left": (2, "blue", "circle", "large", "right"), "right": (1, "yellow", "square", "small", "left"),
              "bottom": (2, "red", "square", "small", "top"), "bottom right": (1, "green", "triangle", "large", "top"),
              "left": (1, "white", "circle", "large", "top right"), "top": (1, "cyan", "circle", "large", "bottom")}
  scenes = []
  for colour, kind, region in HELDOUT_COMBINATIONS:
    count = 1 if region == "centre" else len(REGION_SLOTS[region])
    for size in SIZES[::-1]:
      scenes.append(Scene((Group(count, colour, kind, size, region),), layout_seed=len(scenes)))
    if region in partners:
      scenes.append(Scene((Group(count, colour, kind, "large", region), Group(*partners[region])),
                          layout_seed=len(scenes)))
  return tuple(scenes)


# 20 evaluation scenes (caption them with `caption`); no training record holds any of their held-out groups.
HELDOUT_SCENES = _heldout_scenes()


def scene_arrays(scene: Scene) -> dict[str, np.ndarray]:
  """A scene as plain arrays, groups padded to MAX_GROUPS: 'count' int32 [G] (0 past the scene's groups) and
  'colour_id', 'kind_id', 'size_id', 'region_id' int32 [G] (indices into COLOURS, KINDS, SIZES, REGIONS; -1
  past them), 'num_groups' int32 [], 'layout_seed' int64 []."""
  arrays = {"count": np.zeros(MAX_GROUPS, np.int32)}
  arrays.update({name: np.full(MAX_GROUPS, _NO_ID, np.int32)
                 for name in ("colour_id", "kind_id", "size_id", "region_id")})
  for i, group in enumerate(scene.groups):
    arrays["count"][i] = group.count
    arrays["colour_id"][i], arrays["kind_id"][i] = COLOURS.index(group.colour), KINDS.index(group.kind)
    arrays["size_id"][i], arrays["region_id"][i] = SIZES.index(group.size), REGIONS.index(group.region)
  arrays["num_groups"], arrays["layout_seed"] = np.int32(len(scene.groups)), np.int64(scene.layout_seed)
  return arrays


def scene_from_record(record: Mapping) -> Scene:
  """The scene of a record (or of `scene_arrays`): the inverse of `scene_arrays`."""
  groups = tuple(Group(int(record["count"][i]), COLOURS[int(record["colour_id"][i])], KINDS[int(record["kind_id"][i])],
                       SIZES[int(record["size_id"][i])], REGIONS[int(record["region_id"][i])])
                 for i in range(int(record["num_groups"])))
  return Scene(groups, int(record["layout_seed"]))


def scenes_from_batch(batch: Mapping) -> list[Scene]:
  """The scenes of a batch of records (the `scene_arrays` leaves with a leading batch axis, as grain yields them)."""
  return [scene_from_record({name: batch[name][i] for name in _SCENE_KEYS}) for i in range(len(batch["num_groups"]))]


class ShapesCaptionsSource:
  """Random-access source of captioned shapes for `jaxagents.data.make_pipeline` (grain). Record `i` renders
  `scene(i)`, drawn by `sample_scene` from `np.random.default_rng([seed, i])`, at `image_shape(i)`:

    {'image': uint8 [H, W, 3], 'caption': str, 'caption_ids': int32 [max_len], 'caption_mask': bool [max_len],
     'index': int64 [], and the `scene_arrays` of the scene ('count', 'colour_id', ... for scoring)}.

  Args:
    num_records: number of records, >= 0.
    seed: the stream; two sources with one seed serve identical records.
    image_sizes: (height, width) pairs; record `i` uses `image_sizes[i % len(image_sizes)]`.
    colours, kinds, max_groups: passed to `sample_scene` (a smaller task for a smaller model).
    max_len: caption token length (`tokenize`).

  Held-out combinations (`HELDOUT_COMBINATIONS`) never appear. Picklable; an index outside [0, num_records) raises
  IndexError.
  """

  def __init__(self, num_records: int, seed: int, image_sizes: Sequence[tuple[int, int]] = DEFAULT_IMAGE_SIZES,
               colours: Sequence[str] = COLOURS, kinds: Sequence[str] = KINDS, max_groups: int = MAX_GROUPS,
               max_len: int = MAX_CAPTION_LENGTH):
    if isinstance(num_records, bool) or not isinstance(num_records, int | np.integer) or num_records < 0:
      raise ValueError(f"num_records: expected a non-negative integer, got {num_records!r}")
    image_sizes = tuple((int(h), int(w)) for h, w in image_sizes)
    if not image_sizes or min(min(size) for size in image_sizes) < 16:
      raise ValueError(f"image_sizes: expected (height, width) pairs of at least 16 pixels, got {image_sizes}")
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
      raise ValueError(f"max_groups: expected a positive integer, got {max_groups!r}")
    if max_len < max_caption_length(max_groups):
      raise ValueError(f"max_len: captions of up to {max_groups} groups run up to {max_caption_length(max_groups)} "
                       f"words, got max_len={max_len}")
    self.num_records, self.seed, self.image_sizes, self.max_len = int(num_records), int(seed), image_sizes, max_len
    self.colours, self.kinds, self.max_groups = tuple(colours), tuple(kinds), max_groups
    self.scene(0)  # validates colours, kinds and max_groups now rather than in a grain worker

  def __len__(self) -> int:
    return self.num_records

  def image_shape(self, index: int) -> tuple[int, int]:
    """(height, width) of record `index`."""
    return self.image_sizes[index % len(self.image_sizes)]

  def scene(self, index: int) -> Scene:
    """The scene of record `index` without rendering it."""
    rng = np.random.default_rng([self.seed, index])
    return sample_scene(rng, self.colours, self.kinds, self.max_groups)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)  # ints and numpy integers; no floats or slices
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} records")
    scene = self.scene(index)
    text = caption(scene)
    caption_ids, caption_mask = tokenize(text, self.max_len)
    return {"image": render(scene, *self.image_shape(index)), "caption": text, "caption_ids": caption_ids,
            "caption_mask": caption_mask, "index": np.int64(index), **scene_arrays(scene)}

  def __repr__(self) -> str:
    return (f"ShapesCaptionsSource({self.num_records} records, seed {self.seed}, sizes {self.image_sizes}, "
            f"{len(self.colours)} colours, {len(self.kinds)} kinds, up to {self.max_groups} groups)")
