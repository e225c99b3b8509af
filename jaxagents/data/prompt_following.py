"""Prompt following of generated captioned-shapes images, read from their pixels.

GenEval (arXiv 2310.11513, Sec. 3) scores a text-to-image model by detecting the objects of each generated image
and checking the prompt's count, colour and position against them. Here the objects are flat-coloured shapes on
black (`jaxagents.data.shapes_captions`), so no detector is needed: every pixel is read as the palette colour it is a
shade of (`classify_pixels`), and per group of the prompt's scene:

  colour_in_region  the dominant colour inside the group's region (`dominant_colour`) is the group's colour;
  count             the number of blobs of the group's colour in the whole image (`count_blobs`) is its count;
  size              every such blob's area is nearer (in log) that of a rendered shape of the group's kind and size
                    than of the other size (`blob_size`);
  kind              every such blob's moments say the group's kind (`blob_kind`): a triangle is bottom-heavy, a disc
                    lacks a square's corners.

Tolerances for a blurry generator (documented defaults; the tolerance and minimum area are arguments):

* A pixel is a shade of a palette colour when it lies near the colour's line through black, at least MIN_BRIGHTNESS
  (0.55) of the way up and within COLOUR_TOLERANCE (80 on the 0-255 scale) of it: a muted or blurred red (170, 20, 30)
  is red, a mid grey or a brown is no colour. Measuring along the line, not to the pure colour, keeps two- and
  three-channel colours (yellow, white) as tolerant to dimming as red.
* A blob (4-connected pixels of one colour, `scipy.ndimage.label`; scipy comes with jax) counts only when it covers at
  least `default_min_area(height, width)` pixels, a quarter of the smallest rendered shape (a small triangle):
  speckles of noise are not shapes. `dominant_colour` needs as many votes, so a blank region has no dominant colour.
* Size and kind read a blob's soft presence (`blob_moments`), not its thresholded pixels, so a blurred shape eroded by
  the colour thresholds is neither shrunk nor rounded.

Measured on 1,500 training records at 32x32, 32x48 and 48x32: renders score 1.0 on every check; with colours dimmed
to 0.85, a Gaussian blur of sigma 1 pixel and noise of std 0.05 every check stays >= 0.99; at sigma 1.5 colour,
count and size stay ~0.98 and kind ~0.83 (small triangles lose their tips); at sigma 2 `total` is ~0.72. Renders
paired with shuffled scenes score `total` ~0.03, uniform noise ~0.02, blank or mid-grey images 0.

`prompt_following_score` reports each check's accuracy over groups, and `total`: the fraction of images whose every
group passes colour_in_region and count, the two checks that hold longest as blur grows; `total_all_checks` adds
size and kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from jaxagents.data import shapes_captions as shapes

# `classify_pixels`: shades of two palette colours at brightness >= MIN_BRIGHTNESS are >= 140 apart (red and yellow at
# 0.55), so a pixel near two (within COLOUR_TOLERANCE of each) is rare and takes the nearer.
COLOUR_TOLERANCE, MIN_BRIGHTNESS = 80.0, 0.55
BACKGROUND = -1  # `classify_pixels` label of a dark pixel: no colour's shade at MIN_BRIGHTNESS or more
UNSURE = -2  # `classify_pixels` label of a bright pixel farther than the tolerance from every colour's shade
NO_COLOUR = -1  # `dominant_colour` of a region without enough coloured pixels
# `blob_moments`: presence below SOFT_FLOOR is noise, not shape; the window reaches BLOB_DILATION pixels past the
# thresholded blob to take back the edges that blur pushed below the colour tolerance.
SOFT_FLOOR, BLOB_DILATION = 0.15, 2
# Between a triangle's vertical skew (-0.57 sharp, ~-0.4 blurred) and 0; between a disc's cross cumulant (-1/3) and 0.
TRIANGLE_MAX_SKEW, CIRCLE_MAX_CROSS_CUMULANT = -0.2, -0.17
CHECKS = ("colour_in_region", "count", "size", "kind")
_PALETTE = np.array([shapes.RGB[name] for name in shapes.COLOURS], np.float32)  # [colours, 3]


def as_rgb255(image) -> np.ndarray:
  """float32 [H, W, 3] in [0, 255] from a uint8 image or a float one in [0, 1] (overshoot by a decoder is clipped;
  values far outside, as from a [-1, 1] decoder, raise)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image: expected an RGB image [H, W, 3], got shape {image.shape}")
  if image.dtype == np.uint8:
    return image.astype(np.float32)
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"image: expected uint8 or float values, got dtype {image.dtype}")
  low, high = float(image.min()), float(image.max())
  if low < -0.5 or high > 1.5:
    raise ValueError(f"image: expected float values in [0, 1], got the range [{low:.3g}, {high:.3g}] (map a [-1, 1] "
                     "decoder's output to [0, 1] first)")
  return np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0


def classify_pixels(image, tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
  """int32 [H, W]: per pixel, the index in `COLOURS` of the colour it is a shade of, BACKGROUND, or UNSURE.

  A pixel `p` is a shade `b * c` of palette colour `c` at brightness `b = <p, c> / <c, c>` (the projection on the
  colour's line through black). Among the colours it is a shade of at brightness >= MIN_BRIGHTNESS it takes the one
  whose shade is nearest; it is UNSURE when that shade is farther than `tolerance` (RGB distance, 0-255 scale), and
  BACKGROUND when it is no colour's shade that bright (dark pixels)."""
  return _classify_rgb(as_rgb255(image), tolerance)


def _classify_rgb(rgb: np.ndarray, tolerance: float) -> np.ndarray:
  brightness = rgb @ _PALETTE.T / (_PALETTE * _PALETTE).sum(-1)  # [H, W, colours]
  residual = np.linalg.norm(rgb[:, :, None, :] - brightness[..., None] * _PALETTE, axis=-1)
  residual = np.where(brightness >= MIN_BRIGHTNESS, residual, np.inf)
  nearest = residual.argmin(-1).astype(np.int32)
  best = residual.min(-1)
  return np.where(np.isinf(best), BACKGROUND, np.where(best <= tolerance, nearest, UNSURE)).astype(np.int32)


def default_min_area(height: int, width: int) -> int:
  """Fewest pixels a blob (or a dominant colour's vote) needs: a quarter of a small triangle's area at this size."""
  return max(3, round(0.25 * shapes.shape_side("small", height, width) ** 2 / 2))


def _colour_id(colour) -> int:
  if isinstance(colour, str):
    if colour not in shapes.COLOURS:
      raise ValueError(f"colour: expected one of {shapes.COLOURS}, got {colour!r}")
    return shapes.COLOURS.index(colour)
  if not 0 <= int(colour) < len(shapes.COLOURS):
    raise ValueError(f"colour: expected an index in [0, {len(shapes.COLOURS)}), got {colour}")
  return int(colour)


def _region_name(region) -> str:
  if isinstance(region, str):
    if region not in shapes.REGIONS:
      raise ValueError(f"region: expected one of {shapes.REGIONS}, got {region!r}")
    return region
  if not 0 <= int(region) < len(shapes.REGIONS):
    raise ValueError(f"region: expected an index in [0, {len(shapes.REGIONS)}), got {region}")
  return shapes.REGIONS[int(region)]


def _dominant_in_labels(labels: np.ndarray, region: str, min_pixels: int) -> int:
  top, left, bottom, right = shapes.region_box(region, *labels.shape)
  window = labels[top:bottom, left:right]
  votes = np.bincount(window[window >= 0], minlength=len(shapes.COLOURS))
  return int(votes.argmax()) if votes.max() >= min_pixels else NO_COLOUR


def _blobs_in_labels(labels: np.ndarray, colour_id: int, min_area: int) -> list[np.ndarray]:
  """bool [H, W] masks of the 4-connected blobs of `colour_id` with at least `min_area` pixels."""
  components, num_components = ndimage.label(labels == colour_id)
  areas = np.bincount(components.reshape(-1), minlength=num_components + 1)
  return [components == index for index in range(1, num_components + 1) if areas[index] >= min_area]


def _blob_moments(rgb: np.ndarray, blob: np.ndarray, colour_id: int) -> dict[str, float]:
  reference = np.asarray(shapes.RGB[shapes.COLOURS[colour_id]], np.float32)
  presence = np.clip(rgb @ reference / (reference @ reference), 0.0, 1.0)
  # A square structuring element: a diamond would cut the corners of a square's window and make it read as a disc.
  near_blob = ndimage.binary_dilation(blob, structure=np.ones((3, 3), bool), iterations=BLOB_DILATION)
  weights = np.where(near_blob & (presence > SOFT_FLOOR), presence, 0.0)
  area = float(weights.sum())
  if area == 0:
    raise ValueError(f"blob: expected pixels of {shapes.COLOURS[colour_id]}, got none brighter than {SOFT_FLOOR}")
  y, x = np.mgrid[:blob.shape[0], :blob.shape[1]] + 0.5
  dy, dx = y - (weights * y).sum() / area, x - (weights * x).sum() / area
  moment = lambda p, q: float((weights * dy**p * dx**q).sum() / area)  # noqa: E731
  mu20, mu02, mu11 = moment(2, 0), moment(0, 2), moment(1, 1)
  # A pixel is a unit square, not a point: its own variance 1/12 adds to the variances (and keeps a one-pixel-thin
  # blob's above 0) but cancels from the cumulants.
  variance_y, variance_x = mu20 + 1 / 12, mu02 + 1 / 12
  return {"area": area, "vertical_skew": moment(3, 0) / variance_y**1.5,
          "cross_cumulant": (moment(2, 2) - mu20 * mu02 - 2 * mu11**2) / (variance_y * variance_x)}


def blob_moments(image, blob: np.ndarray, colour) -> dict[str, float]:
  """Blur-tolerant statistics of one blob (bool [H, W]) of `colour` (a name or an index of `COLOURS`) in `image`.

  The blob's soft presence is each pixel's projection onto the colour (1 on the colour, 0 on black), kept where it
  exceeds SOFT_FLOOR, within BLOB_DILATION pixels of the blob. Blurring an image convolves this presence with the
  blur kernel, which keeps its total, adds the kernel's variance to its second central moments and leaves its higher
  cumulants unchanged; so these statistics survive blur, the last two only shrinking towards 0:

    'area': the total presence, in pixels.
    'vertical_skew': mu_30 / mu_20^1.5, y downwards: about -0.57 for an upward triangle, 0 for a disc or a square.
    'cross_cumulant': (mu_22 - mu_20 mu_02 - 2 mu_11^2) / (mu_20 mu_02): -1/3 for a disc, 0 for a square.

  (Central moments mu_pq of the presence; the variances in the denominators count a pixel as a unit square.)
  """
  blob = np.asarray(blob, bool)
  rgb = as_rgb255(image)
  if blob.shape != rgb.shape[:2] or not blob.any():
    raise ValueError(f"blob: expected a non-empty bool mask of the image's shape {rgb.shape[:2]}, got shape "
                     f"{blob.shape} with {int(blob.sum())} pixels")
  return _blob_moments(rgb, blob, _colour_id(colour))


def blob_kind(moments: Mapping[str, float]) -> str:
  """"triangle" when the blob is bottom-heavy (vertical_skew below TRIANGLE_MAX_SKEW), else "circle" when its cross
  cumulant is below CIRCLE_MAX_CROSS_CUMULANT, else "square"."""
  if moments["vertical_skew"] < TRIANGLE_MAX_SKEW:
    return "triangle"
  return "circle" if moments["cross_cumulant"] < CIRCLE_MAX_CROSS_CUMULANT else "square"


def blob_size(area: float, kind: str, height: int, width: int) -> str:
  """"large" when a blob's area is nearer (in log) that of a rendered large `kind` than a small one at this size."""
  small, large = (int(shapes.shape_mask(kind, shapes.shape_side(size, height, width)).sum()) for size in shapes.SIZES)
  return "large" if area > np.sqrt(small * large) else "small"


def dominant_colour(image, region, tolerance: float = COLOUR_TOLERANCE, min_pixels: int | None = None) -> int:
  """The index in `COLOURS` with the most pixels inside `region` (a name or an index of `REGIONS`), background and
  unsure pixels excluded; NO_COLOUR when the winner has fewer than `min_pixels` (default `default_min_area`)."""
  labels = classify_pixels(image, tolerance)
  min_pixels = default_min_area(*labels.shape) if min_pixels is None else min_pixels
  return _dominant_in_labels(labels, _region_name(region), min_pixels)


def count_blobs(image, colour, tolerance: float = COLOUR_TOLERANCE, min_area: int | None = None) -> int:
  """Number of 4-connected blobs of `colour` (a name or an index of `COLOURS`) with at least `min_area` pixels
  (default `default_min_area`)."""
  labels = classify_pixels(image, tolerance)
  min_area = default_min_area(*labels.shape) if min_area is None else min_area
  return len(_blobs_in_labels(labels, _colour_id(colour), min_area))


def check_scene(image, scene: shapes.Scene, tolerance: float = COLOUR_TOLERANCE,
                min_area: int | None = None) -> dict[str, list[bool]]:
  """Each check of `CHECKS` for each group of `scene`: {check: [passed, one per group]}."""
  rgb = as_rgb255(image)
  labels = _classify_rgb(rgb, tolerance)
  height, width = labels.shape
  min_area = default_min_area(height, width) if min_area is None else min_area
  results = {check: [] for check in CHECKS}
  for group in scene.groups:
    colour_id = shapes.COLOURS.index(group.colour)
    blobs = [_blob_moments(rgb, blob, colour_id) for blob in _blobs_in_labels(labels, colour_id, min_area)]
    results["colour_in_region"].append(_dominant_in_labels(labels, group.region, min_area) == colour_id)
    results["count"].append(len(blobs) == group.count)
    results["size"].append(bool(blobs) and all(blob_size(blob["area"], group.kind, height, width) == group.size
                                               for blob in blobs))
    results["kind"].append(bool(blobs) and all(blob_kind(blob) == group.kind for blob in blobs))
  return results


def _as_scene(scene) -> shapes.Scene:
  if isinstance(scene, shapes.Scene):
    return scene
  if isinstance(scene, Mapping):
    return shapes.scene_from_record(scene)
  raise TypeError(f"scene: expected a Scene or a record mapping, got {type(scene).__name__}")


def prompt_following_score(images, scenes: Sequence, tolerance: float = COLOUR_TOLERANCE,
                           min_area: int | None = None) -> dict[str, float]:
  """How well `images` (uint8 or float [0, 1], [N, H, W, 3] or a list of [H, W, 3]) follow `scenes` (`Scene`s, or
  records / `scene_arrays` dicts), pair by pair.

  Returns {check: accuracy over all groups, for each of CHECKS; 'total': fraction of images whose every group passes
  colour_in_region and count; 'total_all_checks': ... every check; 'num_images', 'num_groups'}."""
  if len(images) != len(scenes):
    raise ValueError(f"images, scenes: expected one scene per image, got {len(images)} images and {len(scenes)} scenes")
  if not len(images):
    raise ValueError("images: expected at least one image, got none")
  passed = {check: [] for check in CHECKS}
  total, total_all_checks = [], []
  for image, scene in zip(images, scenes):
    scene = _as_scene(scene)
    results = check_scene(image, scene, tolerance, min_area)
    for check in CHECKS:
      passed[check].extend(results[check])
    total.append(all(results["colour_in_region"]) and all(results["count"]))
    total_all_checks.append(all(all(results[check]) for check in CHECKS))
  scores = {check: float(np.mean(passed[check])) for check in CHECKS}
  scores.update(total=float(np.mean(total)), total_all_checks=float(np.mean(total_all_checks)),
                num_images=float(len(total)), num_groups=float(len(passed["count"])))
  return scores
