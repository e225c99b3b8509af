"""Synthetic motion clips with exact optical flow: textured layers under extreme camera motion and vigorous object
and limb motion, rendered in numpy, a pure function of (config, seed).

DynaVid (arXiv 2604.01666) trains its motion generator on optical flow rendered from CG scenes of vigorous human
motion and extreme camera motion, not on flow estimated from video; its rendering pipeline is not public. This module
is our 2.5D stand-in [reconstruction]: every surface is a flat textured layer with a known per-frame map, so the
forward flow from frame 0 to every frame t (the representation FloVD, arXiv 2502.08244, estimates with RAFT)
is computed exactly instead of estimated.

Layers, far to near (painter's order):
  background  an unbounded procedural texture (smooth 1/f colour noise, a slow gradient, sometimes bold stripes) on
              a plane seen by the camera, so flow is observable everywhere;
  shapes      textured disks, rectangles and star-shaped polygons, each moving by a per-frame similarity (travel
              along a curved path, up to half a turn of spin, growth or shrinkage);
  figures     stick figures of ten parts (torso, head, two-segment arms and legs) whose limbs swing about their
              joints while the whole figure travels and tumbles.
Each layer carries `to_image[t]`, a 3x3 map from its own coordinates to the pixel coordinates of frame t: an object's
motion composed with the camera's `camera[t]`, a map of the background plane (frame-0 pixel coordinates) into frame t.
Camera motions, combinable with "+" ("pan+shake"):
  pan    translation by up to `max_pan` of the image's longer side over the clip;
  zoom   scaling by up to `max_zoom` (in or out) about a point near the centre;
  roll   rotation about the image centre by up to `max_roll_degrees`;
  orbit  the camera circles the plane point P = D e_z on its axis by up to `max_orbit_degrees`, about an axis
         parallel to the image: camera coordinates move as X -> R X + t with t = (I - R) P, and the plane e_z.X = D
         maps by the plane-induced homography H = K (R + t e_z^T / D) K^-1 = K (R + (I - R) e_z e_z^T) K^-1
         (Hartley and Zisserman, Multiple View Geometry, 2nd ed., Sec. 13.1), which keeps P's image fixed;
  shake  independent per-frame jitter of translation and rotation.

Rendering maps every pixel centre back to each layer's coordinates and evaluates the layer's shape and its texture
there (textures are analytic, so the inverse mapping samples them exactly, no bilinear texture lookup needed);
the texture's highest frequency is capped from the layer's largest minification over the clip so no frame aliases.
Pixel (row i, column j) has its centre at (x, y) = (j, i); flow channels are (x, y) displacements in pixels, the
convention of the Middlebury flow format.

  clip = render_clip(MotionConfig(height=64, width=64, num_frames=12), seed=3)
  clip.frames      float32 [T, H, W, 3] in [0, 1]
  clip.flow        float32 [T, H, W, 2]   flow[t] at p = where frame 0's surface point at p is in frame t, minus p
  clip.occlusion   bool [T, H, W]          True where that point is hidden in frame t or outside [0, W-1] x [0, H-1]
  save_gif([flow_to_color(f) for f in clip.flow], "flow.gif", fps=8)
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CAMERA_MOTIONS = ("static", "pan", "zoom", "orbit", "roll", "shake")
SHAPE_KINDS = ("disk", "rectangle", "polygon")
_TEXTURE_COMPONENTS = 16
# Parts of a stick figure, far to near. Far limbs swing in antiphase to near ones, and each arm to its leg.
_FIGURE_PARTS = ("far_upper_arm", "far_forearm", "far_thigh", "far_shin", "torso", "head", "near_thigh", "near_shin",
                 "near_upper_arm", "near_forearm")


@dataclasses.dataclass(frozen=True)
class MotionConfig:
  """Clip size and motion magnitudes. Lengths are fractions of the image's longer side; counts are inclusive
  (min, max) ranges drawn per clip; each clip draws one entry of `camera_motions` (a kind or kinds joined by "+")."""

  height: int = 64
  width: int = 64
  num_frames: int = 12
  camera_motions: tuple[str, ...] = ("pan", "zoom", "orbit", "roll", "shake", "pan+shake", "zoom+roll", "orbit+pan")
  num_shapes: tuple[int, int] = (1, 3)
  num_figures: tuple[int, int] = (0, 2)
  max_pan: float = 0.6
  max_zoom: float = 2.0
  max_roll_degrees: float = 180.0
  max_orbit_degrees: float = 30.0
  focal_length: float = 1.0  # pinhole focal length of the orbiting camera
  shake: float = 0.04  # standard deviation of each frame's shake translation
  shake_degrees: float = 3.0
  max_object_travel: float = 0.5
  max_object_rotation_degrees: float = 180.0
  max_object_scale_change: float = 1.5
  max_limb_swing_degrees: float = 75.0
  min_texture_period: float = 6.0  # pixels, in the frame where a layer is most minified

  def __post_init__(self):
    object.__setattr__(self, "camera_motions", tuple(self.camera_motions))
    if self.height < 8 or self.width < 8 or self.num_frames < 2:
      raise ValueError(f"height, width, num_frames: expected >= 8, >= 8, >= 2, got {self.height}, {self.width}, "
                       f"{self.num_frames}")
    for motion in self.camera_motions:
      camera_kinds(motion)
    for name in ("num_shapes", "num_figures"):
      low, high = getattr(self, name)
      if not 0 <= low <= high:
        raise ValueError(f"{name}: expected 0 <= min <= max, got {(low, high)}")
    if self.max_zoom < 1 or self.max_object_scale_change < 1:
      raise ValueError(f"max_zoom, max_object_scale_change: expected >= 1, got {self.max_zoom}, "
                       f"{self.max_object_scale_change}")
    half_diagonal = math.hypot(self.height, self.width) / 2 / (self.focal_length * max(self.height, self.width))
    if self.max_orbit_degrees + math.degrees(math.atan(half_diagonal)) >= 80:
      raise ValueError(f"max_orbit_degrees: {self.max_orbit_degrees} plus the half field of view must stay below 80 "
                       "degrees, or rays of the orbiting camera graze or miss the plane")


@dataclasses.dataclass(frozen=True, eq=False)
class MotionClip:
  """A rendered clip. `layer_ids[t]` is the layer seen at each pixel of frame t (0 the background, then
  `layer_matrices`' order, far to near); `camera_flow` is the background plane's flow at every pixel, as if no object
  stood in front (a camera-only motion condition)."""

  frames: np.ndarray  # float32 [T, H, W, 3] in [0, 1]
  flow: np.ndarray  # float32 [T, H, W, 2], (x, y) from frame 0 to frame t; flow[0] == 0
  occlusion: np.ndarray  # bool [T, H, W]
  camera_flow: np.ndarray  # float32 [T, H, W, 2]
  layer_ids: np.ndarray  # int16 [T, H, W]
  camera_matrices: np.ndarray  # float64 [T, 3, 3], frame-0 pixel coordinates of the plane -> frame t
  layer_matrices: np.ndarray  # float64 [num_layers, T, 3, 3], layer coordinates -> frame t
  camera_motion: str


@dataclasses.dataclass(frozen=True, eq=False)
class _Layer:
  kind: str  # "plane", a SHAPE_KINDS entry or "capsule" (a segment from (0, 0) to (0, length), rounded)
  params: np.ndarray  # radius | half sizes | polygon vertices [n, 2] | (length, radius)
  to_image: np.ndarray  # [T, 3, 3]
  texture: tuple[np.ndarray, ...]  # (frequencies [K, 2] cycles per unit, phases [K], loadings [K, 3], base [3])


def camera_kinds(motion: str) -> tuple[str, ...]:
  """The kinds of a camera-motion name ("pan+shake" -> ("pan", "shake")); ValueError on an unknown kind."""
  kinds = tuple(motion.split("+"))
  unknown = [kind for kind in kinds if kind not in CAMERA_MOTIONS]
  if unknown:
    raise ValueError(f"camera_motion: unknown kinds {unknown} in {motion!r}; expected kinds of {CAMERA_MOTIONS} "
                     "joined by '+'")
  return kinds


def _similarity(tx, ty, angle, scale) -> np.ndarray:
  """[..., 3, 3]: p -> scale * R(angle) p + (tx, ty), broadcast over the arguments."""
  tx, ty, angle, scale = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (tx, ty, angle, scale)))
  matrix = np.zeros(tx.shape + (3, 3))
  matrix[..., 0, 0] = matrix[..., 1, 1] = scale * np.cos(angle)
  matrix[..., 1, 0] = scale * np.sin(angle)
  matrix[..., 0, 1] = -matrix[..., 1, 0]
  matrix[..., 0, 2], matrix[..., 1, 2], matrix[..., 2, 2] = tx, ty, 1.0
  return matrix


def _about(point, matrix: np.ndarray) -> np.ndarray:
  """`matrix` applied about `point` instead of the origin."""
  return _similarity(point[0], point[1], 0, 1) @ matrix @ _similarity(-point[0], -point[1], 0, 1)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Points [..., N, 2] through 3x3 maps [..., 3, 3] (broadcast), with the homogeneous divide."""
  mapped = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1) @ np.swapaxes(matrix, -1, -2)
  return mapped[..., :2] / mapped[..., 2:]


def _camera(kind: str, config: MotionConfig, rng: np.random.Generator, progress: np.ndarray) -> np.ndarray:
  """[T, 3, 3], identity at frame 0: one kind of camera motion over progress [T] in [0, 1]."""
  size, centre = max(config.height, config.width), np.array([(config.width - 1) / 2, (config.height - 1) / 2])
  sign, strength = rng.choice((-1.0, 1.0)), rng.uniform(0.5, 1.0)
  progress = progress ** np.exp(rng.uniform(-0.4, 0.4))  # accelerating or decelerating
  if kind == "static":
    return np.broadcast_to(np.eye(3), (len(progress), 3, 3)).copy()
  if kind == "pan":
    direction = rng.uniform(0, 2 * np.pi)
    distance = strength * config.max_pan * size * progress
    return _similarity(distance * np.cos(direction), distance * np.sin(direction), 0, 1)
  if kind == "zoom":
    point = centre + rng.uniform(-0.25, 0.25, 2) * (config.width, config.height)
    return _about(point, _similarity(0, 0, 0, np.exp(sign * strength * np.log(config.max_zoom) * progress)))
  if kind == "roll":
    return _about(centre, _similarity(0, 0, sign * strength * np.radians(config.max_roll_degrees) * progress, 1))
  if kind == "orbit":
    axis_angle = rng.uniform(0, 2 * np.pi)
    axis = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    angles = sign * strength * np.radians(config.max_orbit_degrees) * progress
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotations = (np.cos(angles)[:, None, None] * np.eye(3) + np.sin(angles)[:, None, None] * cross
                 + (1 - np.cos(angles))[:, None, None] * np.outer(axis, axis))  # Rodrigues
    focal = config.focal_length * size
    intrinsics = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1.0]])
    plane_term = (np.eye(3) - rotations) @ np.diag([0.0, 0.0, 1.0])
    return intrinsics @ (rotations + plane_term) @ np.linalg.inv(intrinsics)
  if kind == "shake":
    jitter = np.clip(rng.normal(size=(len(progress), 3)), -2, 2)
    jitter[0] = 0
    shifts = jitter[:, :2] * config.shake * size
    return _about(centre, _similarity(shifts[:, 0], shifts[:, 1], jitter[:, 2] * np.radians(config.shake_degrees), 1))
  raise ValueError(f"camera_motion: expected one of {CAMERA_MOTIONS}, got {kind!r}")


def _object_motion(config: MotionConfig, rng: np.random.Generator, progress: np.ndarray) -> np.ndarray:
  """[T, 3, 3]: an object's local coordinates -> plane, travelling a curved path while it spins and scales."""
  size, extent = max(config.height, config.width), np.array([config.width - 1, config.height - 1])
  start = rng.uniform(0.15, 0.85, 2) * extent
  heading, bend = rng.uniform(0, 2 * np.pi, 2)
  travel = rng.uniform(0.3, 1.0) * config.max_object_travel * size * np.array([np.cos(heading), np.sin(heading)])
  curve = rng.uniform(0, 1.0) * config.max_object_travel * size * np.array([np.cos(bend), np.sin(bend)])
  centres = start + progress[:, None] * travel + (progress * (progress - 1))[:, None] * curve
  spin = rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 1.0) * np.radians(config.max_object_rotation_degrees)
  growth = rng.uniform(-1, 1) * np.log(config.max_object_scale_change)
  return _similarity(centres[:, 0], centres[:, 1], rng.uniform(0, 2 * np.pi) + spin * progress,
                     np.exp(growth * progress))


def _max_stretch(to_image: np.ndarray, height: int, width: int) -> float:
  """Largest singular value over frames, on a 5x5 grid of image points, of the Jacobian of image -> layer
  coordinates: a layer frequency f shows as up to f * stretch cycles per pixel."""
  ys, xs = np.meshgrid(np.linspace(0, height - 1, 5), np.linspace(0, width - 1, 5), indexing="ij")
  points, inverse, step = np.stack([xs.ravel(), ys.ravel()], -1), np.linalg.inv(to_image), 1e-3
  base = _apply(inverse, points)
  jacobian = np.stack([_apply(inverse, points + (step, 0)) - base, _apply(inverse, points + (0, step)) - base], -1)
  return float(np.linalg.svd(jacobian / step, compute_uv=False)[..., 0].max())


def _texture(rng: np.random.Generator, extent: float, max_frequency: float, base=None) -> tuple[np.ndarray, ...]:
  """Colour noise with a 1/f amplitude spectrum from one cycle per 2 * extent (a slow gradient) up to
  `max_frequency`, and bold stripes in half the draws."""
  low = 1 / (2 * extent)
  high = max(max_frequency, low)
  magnitudes = np.exp(rng.uniform(np.log(low), np.log(high), _TEXTURE_COMPONENTS))
  magnitudes[0] = low
  directions = rng.uniform(0, 2 * np.pi, _TEXTURE_COMPONENTS)
  frequencies = magnitudes[:, None] * np.stack([np.cos(directions), np.sin(directions)], -1)
  amplitudes = (low / magnitudes) ** 0.8
  amplitudes *= 1.6 / np.sqrt(np.sum(amplitudes ** 2) / 2)
  if rng.random() < 0.5:
    frequencies[1] *= rng.uniform(0.3, 0.7) * high / magnitudes[1]
    amplitudes[1] = 1.2
  loadings = amplitudes[:, None] * (rng.uniform(0.4, 1.0, (_TEXTURE_COMPONENTS, 1)) * rng.choice((-1, 1), (
    _TEXTURE_COMPONENTS, 1)) + 0.5 * rng.normal(size=(_TEXTURE_COMPONENTS, 3)))
  base = rng.normal(0, 0.8, 3) if base is None else base + rng.normal(0, 0.25, 3)
  return frequencies, rng.uniform(0, 2 * np.pi, _TEXTURE_COMPONENTS), loadings, base


def _shade(texture: tuple[np.ndarray, ...], local: np.ndarray) -> np.ndarray:
  """RGB [N, 3] in (0, 1) of a texture at layer coordinates [N, 2]."""
  frequencies, phases, loadings, base = texture
  waves = np.cos(2 * np.pi * (local @ frequencies.T) + phases)
  return 1 / (1 + np.exp(-(base + waves @ loadings)))


def _inside(layer: _Layer, local: np.ndarray) -> np.ndarray:
  """bool [N]: which layer coordinates [N, 2] fall inside the layer's shape."""
  x, y = local[:, 0], local[:, 1]
  if layer.kind == "plane":
    return np.ones(len(local), bool)
  if layer.kind == "disk":
    return x ** 2 + y ** 2 <= layer.params[0] ** 2
  if layer.kind == "rectangle":
    return (np.abs(x) <= layer.params[0]) & (np.abs(y) <= layer.params[1])
  if layer.kind == "capsule":
    length, radius = layer.params
    return x ** 2 + (y - np.clip(y, 0, length)) ** 2 <= radius ** 2
  inside = np.zeros(len(local), bool)  # polygon: even-odd rule
  for (x1, y1), (x2, y2) in zip(layer.params, np.roll(layer.params, -1, 0)):
    crosses = (y1 > y) != (y2 > y)
    x_cross = x1 + (y - y1) * (x2 - x1) / np.where(crosses, y2 - y1, 1.0)
    inside ^= crosses & (x < x_cross)
  return inside


def _figure(config: MotionConfig, rng: np.random.Generator, progress: np.ndarray, camera: np.ndarray):
  """([(kind, params, to_image [T, 3, 3], palette index) of each part, in `_FIGURE_PARTS` order], height)."""
  height = rng.uniform(0.35, 0.5) * min(config.height, config.width)
  torso, head, upper_arm, forearm, thigh, shin = (f * height for f in (0.3, 0.09, 0.17, 0.16, 0.22, 0.21))
  limb, trunk = 0.055 * height, 0.09 * height
  swing = np.radians(config.max_limb_swing_degrees) * rng.uniform(0.6, 1.0)
  phase = 2 * np.pi * rng.uniform(1.0, 2.5) * progress + rng.uniform(0, 2 * np.pi)

  def joint(parent, offset, angle):  # child coordinates -> image: translate along the parent's bone, then rotate
    return parent @ _similarity(0, offset, angle, 1)

  root = camera @ _object_motion(config, rng, progress)  # origin at the hips, +y down the legs
  torso_map = joint(root, 0, np.pi + 0.25 * swing * np.sin(phase))
  parts = {"torso": ("capsule", (torso, trunk), torso_map, 0),
           "head": ("disk", (head,), joint(torso_map, torso + 1.1 * head, 0.3 * swing * np.sin(phase + 1)), 1)}
  for side, lag in (("far", np.pi), ("near", 0.0)):
    upper = joint(torso_map, torso, np.pi + swing * np.sin(phase + lag))
    thigh_map = joint(root, 0, swing * np.sin(phase + lag + np.pi))
    parts[f"{side}_upper_arm"] = ("capsule", (upper_arm, limb), upper, 0)
    parts[f"{side}_forearm"] = ("capsule", (forearm, limb), joint(upper, upper_arm,
                                                                  -0.5 * swing * (1 + np.sin(phase + lag + 0.5))), 1)
    parts[f"{side}_thigh"] = ("capsule", (thigh, limb), thigh_map, 2)
    parts[f"{side}_shin"] = ("capsule", (shin, limb), joint(thigh_map, thigh,
                                                            0.5 * swing * (1 + np.sin(phase + lag + 0.5))), 2)
  return [parts[name] for name in _FIGURE_PARTS], height


def _scene(config: MotionConfig, rng: np.random.Generator, progress: np.ndarray, camera: np.ndarray) -> list[_Layer]:
  """The background and every object's layers, far to near; textures are band-limited per layer."""
  short = min(config.height, config.width)
  entities = []  # each a list of (kind, params, to_image, palette index), an extent and a palette
  for _ in range(rng.integers(config.num_shapes[0], config.num_shapes[1] + 1)):
    kind, radius = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))], rng.uniform(0.08, 0.18) * short
    if kind == "disk":
      params = (radius,)
    elif kind == "rectangle":
      params = tuple(radius * rng.uniform(0.6, 1.0, 2))
    else:
      count = rng.integers(3, 8)
      angles = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * 2 * np.pi / count + rng.uniform(0, 2 * np.pi)
      params = radius * rng.uniform(0.55, 1.0, (count, 1)) * np.stack([np.cos(angles), np.sin(angles)], -1)
    entities.append(([(kind, params, camera @ _object_motion(config, rng, progress), 0)], radius,
                     rng.normal(0, 1.0, (1, 3))))
  for _ in range(rng.integers(config.num_figures[0], config.num_figures[1] + 1)):
    parts, height = _figure(config, rng, progress, camera)
    entities.append((parts, height / 4, rng.normal(0, 1.0, (3, 3))))

  def top_frequency(to_image):  # cycles per layer unit that show as one cycle per min_texture_period pixels
    return 1 / (config.min_texture_period * _max_stretch(to_image, config.height, config.width))

  background = _texture(rng, max(config.height, config.width), top_frequency(camera))
  layers = [_Layer("plane", np.zeros(0), camera, background)]
  for index in rng.permutation(len(entities)):
    parts, extent, palette = entities[index]
    for kind, params, to_image, colour in parts:
      texture = _texture(rng, extent, top_frequency(to_image), palette[colour])
      layers.append(_Layer(kind, np.asarray(params, np.float64), to_image, texture))
  return layers


def _top_layer(layers: list[_Layer], inverses: list[np.ndarray], t: int, points: np.ndarray) -> np.ndarray:
  """int16 [N]: the nearest layer covering each image point [N, 2] of frame t."""
  ids = np.zeros(len(points), np.int16)
  for index in range(1, len(layers)):
    ids[_inside(layers[index], _apply(inverses[index][t], points))] = index
  return ids


def render_clip(config: MotionConfig | None = None, seed: int = 0, camera_motion: str | None = None) -> MotionClip:
  """Renders clip `seed`: a pure function of (config, seed, camera_motion). `camera_motion` (a kind or kinds joined
  by "+") overrides the clip's draw from `config.camera_motions` without changing the rest of the scene's draws."""
  config = MotionConfig() if config is None else config
  rng = np.random.default_rng(seed)
  drawn = config.camera_motions[rng.integers(len(config.camera_motions))]
  motion = drawn if camera_motion is None else camera_motion
  height, width, frames_count = config.height, config.width, config.num_frames
  progress = np.linspace(0.0, 1.0, frames_count)
  scene_rng, camera_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
  camera = np.broadcast_to(np.eye(3), (frames_count, 3, 3))
  for kind in camera_kinds(motion):
    camera = _camera(kind, config, camera_rng, progress) @ camera
  layers = _scene(config, scene_rng, progress, camera)
  inverses = [np.linalg.inv(layer.to_image) for layer in layers]
  ys, xs = np.mgrid[:height, :width]
  grid = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)

  frames = np.empty((frames_count, height * width, 3))
  layer_ids = np.empty((frames_count, height * width), np.int16)
  for t in range(frames_count):
    layer_ids[t] = _top_layer(layers, inverses, t, grid)
    for index in np.unique(layer_ids[t]):
      seen = layer_ids[t] == index
      frames[t, seen] = _shade(layers[index].texture, _apply(inverses[index][t], grid[seen]))

  flow = np.empty((frames_count, height * width, 2))
  for index in np.unique(layer_ids[0]):
    seen = layer_ids[0] == index
    local = _apply(inverses[index][0], grid[seen])
    flow[:, seen] = _apply(layers[index].to_image, local) - grid[seen]
  flow[0] = 0.0  # exactly, rather than p -> layer -> p rounding
  targets = grid + flow
  in_image = np.all((targets >= 0) & (targets <= (width - 1, height - 1)), -1)
  visible = np.stack([_top_layer(layers, inverses, t, targets[t]) for t in range(frames_count)]) == layer_ids[0]
  camera_flow = _apply(camera, grid) - grid

  shape = (frames_count, height, width)
  return MotionClip(frames=frames.reshape(*shape, 3).astype(np.float32),
                    flow=flow.reshape(*shape, 2).astype(np.float32), occlusion=~(in_image & visible).reshape(shape),
                    camera_flow=camera_flow.reshape(*shape, 2).astype(np.float32), layer_ids=layer_ids.reshape(shape),
                    camera_matrices=camera.copy(), layer_matrices=np.stack([layer.to_image for layer in layers]),
                    camera_motion=motion)


def bilinear_sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
  """image [H, W, C] at (x, y) points [..., 2] -> [..., C], bilinear, coordinates clamped to the image."""
  height, width = image.shape[:2]
  x, y = np.clip(points[..., 0], 0, width - 1), np.clip(points[..., 1], 0, height - 1)
  x0, y0 = np.minimum(np.floor(x).astype(np.int64), width - 2), np.minimum(np.floor(y).astype(np.int64), height - 2)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
  bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def warp_to_reference(frame_t: np.ndarray, flow_t: np.ndarray) -> np.ndarray:
  """Backward warp of frame t [H, W, C] to frame 0 with the forward flow 0 -> t [H, W, 2]: output pixel p is frame
  t bilinearly sampled at p + flow_t[p] (clamped to the border; trust only where the occlusion mask is False)."""
  frame_t, flow_t = np.asarray(frame_t), np.asarray(flow_t)
  if frame_t.ndim != 3 or flow_t.shape != (*frame_t.shape[:2], 2):
    raise ValueError(f"frame_t, flow_t: expected [H, W, C] and [H, W, 2], got {frame_t.shape} and {flow_t.shape}")
  ys, xs = np.mgrid[:frame_t.shape[0], :frame_t.shape[1]]
  warped = bilinear_sample(frame_t.astype(np.float64), np.stack([xs, ys], -1) + flow_t)
  return warped.astype(frame_t.dtype if frame_t.dtype.kind == "f" else np.float32)


def _colour_wheel() -> np.ndarray:
  """[55, 3] in [0, 255]: the Middlebury wheel's red-yellow-green-cyan-blue-magenta ramps of 15, 6, 4, 11, 13, 6."""
  ramps = []
  for start, end, steps in (((255, 0, 0), (255, 255, 0), 15), ((255, 255, 0), (0, 255, 0), 6),
                            ((0, 255, 0), (0, 255, 255), 4), ((0, 255, 255), (0, 0, 255), 11),
                            ((0, 0, 255), (255, 0, 255), 13), ((255, 0, 255), (255, 0, 0), 6)):
    rising = np.floor(255 * np.arange(steps) / steps)[:, None]  # each ramp moves one channel by floor steps
    start, end = np.array(start, np.float64), np.array(end, np.float64)
    ramps.append(np.where(end > start, rising, np.where(end < start, 255 - rising, start)))
  return np.concatenate(ramps)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
  """uint8 [..., 3]: flow [..., 2] on the Middlebury colour wheel (Baker et al., "A Database and Evaluation
  Methodology for Optical Flow", IJCV 2011, Sec. 4; code as tomrunia/OpticalFlow_Visualization
  flow_vis/flow_vis.py `make_colorwheel`, `flow_uv_to_colors`). Hue is direction (+x red, +y, i.e. down, yellow,
  -x cyan, -y violet), saturation is magnitude / max_magnitude (white at zero; beyond 1 the colour is dimmed by
  0.75). `max_magnitude` defaults to the largest magnitude in `flow`; pass one value for every frame of a clip so
  colours compare across frames."""
  flow = np.asarray(flow, np.float64)
  if flow.shape[-1:] != (2,):
    raise ValueError(f"flow: expected [..., 2], got {flow.shape}")
  radius = np.hypot(flow[..., 0], flow[..., 1])
  scale = (radius.max(initial=0.0) if max_magnitude is None else max_magnitude) + 1e-5
  u, v, radius = flow[..., 0] / scale, flow[..., 1] / scale, radius / scale
  wheel = _colour_wheel() / 255
  position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
  k0 = np.floor(position).astype(np.int64)
  k1 = np.where(k0 + 1 == len(wheel), 0, k0 + 1)
  fraction = (position - k0)[..., None]
  colour = (1 - fraction) * wheel[k0] + fraction * wheel[k1]
  inside = (radius <= 1)[..., None]
  colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
  return np.floor(255 * colour).astype(np.uint8)


def _to_uint8(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"frames: expected [T, H, W, 3] (or 1 channel), got {frames.shape}")
  if frames.dtype != np.uint8:
    frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)
  return np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames


def save_gif(frames: Sequence[np.ndarray] | np.ndarray, path, fps: float = 8, scale: int = 1) -> Path:
  """Writes frames [T, H, W, 3] (uint8, or floats in [0, 1]) as a looping GIF, each pixel a `scale` x `scale`
  block. PIL folds consecutive identical frames into one longer frame."""
  from PIL import Image

  frames = _to_uint8(frames).repeat(scale, 1).repeat(scale, 2)
  images = [Image.fromarray(frame) for frame in frames]
  path = Path(path)
  images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
  return path


def save_mp4(frames: Sequence[np.ndarray] | np.ndarray, path, fps: float = 8, scale: int = 1) -> Path:
  """Writes frames [T, H, W, 3] as an MP4 with the first encoder found: imageio-ffmpeg (H.264), OpenCV (MPEG-4
  Part 2), or an `ffmpeg` on PATH (H.264). Raises RuntimeError naming what to install when there is none. Odd sides
  are padded by one edge pixel (4:2:0 chroma needs even sides)."""
  frames = _to_uint8(frames).repeat(scale, 1).repeat(scale, 2)
  frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
  count, height, width = frames.shape[:3]
  path = Path(path)
  try:
    import imageio_ffmpeg
  except ImportError:
    imageio_ffmpeg = None
  if imageio_ffmpeg is not None:
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, output_params=["-loglevel", "error"])
    writer.send(None)
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path
  try:
    import cv2
  except ImportError:
    cv2 = None
  if cv2 is not None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
      writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    if path.exists() and path.stat().st_size > 0:
      return path
  binary = shutil.which("ffmpeg")
  if binary is not None:
    command = [binary, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(fps), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, input=frames.tobytes(), check=True)
    return path
  raise RuntimeError(f"save_mp4: no MP4 encoder found for {count} frames -> {path}; install one with "
                     "`pip install imageio-ffmpeg` (bundles an ffmpeg binary) or `pip install opencv-python-headless`, "
                     "or put ffmpeg on PATH; save_gif needs only Pillow")
