"""Image and video preprocessing of the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) in numpy + PIL.

Follows the transformers 5.23 Qwen-VL processors step by step, without torch or torchvision at run time:

* `smart_resize` (`models/qwen2_vl/image_processing_pil_qwen2_vl.py`): both sides become multiples of
  F = patch * merge with h*w in [min_pixels, max_pixels]; `round` is Python's banker's rounding. Qwen3-VL video
  uses `smart_resize_video` (`models/qwen3_vl/video_processing_qwen3_vl.py`), whose pixel budget is over t*h*w.
* `preprocess_images`: convert to RGB (transparency over white), PIL bicubic resize on uint8, x / 255,
  (x - mean) / std, then patches [gh*gw, C*T*p*p] in merge-block order with the frame repeated T times. The
  numerics follow `Qwen2VLImageProcessorPil` step by step (float64 rescale cast to float32, float32 normalize).
* `sample_frame_indices`: Qwen2/2.5-VL `Qwen2VLVideoProcessor.sample_frames` (floor(k*T/n)) and Qwen3-VL
  `Qwen3VLVideoProcessor.sample_frames` (round(linspace(0, T-1, n))).
* `preprocess_video`: sample, resize every frame, normalize, pad T to a multiple of the temporal patch by
  repeating the last frame, patches [gt*gh*gw, C*T*p*p]; plus Qwen2.5-VL `second_per_grid_ts` = T_p / sampled_fps or
  Qwen3-VL timestamps (indices padded like the frames, idx / fps, mean of the first and last of each group).
* `expand_prompt` (the processors' `replace_image_token` / `replace_video_token`): each `<|image_pad|>` /
  `<|video_pad|>` becomes t*h*w / merge^2 pads; Qwen3-VL videos become
  `<{t:.1f} seconds><|vision_start|>pads<|vision_end|>` per temporal group, replacing the template's wrapper.

Our choices, not transformers': video frames are resized with PIL bicubic on uint8 like images; transformers
resizes videos with torchvision (antialiased bicubic on tensors), so video pixels differ slightly from its output,
while frame choice, grids, layout and timing match. Qwen2-VL sampling uses exact integer floor(k*T/n);
transformers' float32 `torch.arange(0, T, T/n)` agrees on every index it shares but sometimes returns n+1 indices,
the last one out of range (e.g. T=17, n=14). Inputs transformers would silently default (no video fps: 24) raise here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxagents.models.qwen_vl.pixels import (
  check_frames,
  normalize,
  patchify,
  resize,
  smart_resize,
  smart_resize_video,
  to_rgb,
)

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD
HALF = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN / STD, Qwen3-VL
BICUBIC = int(Image.Resampling.BICUBIC)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"



@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """Image processor settings. `for_family` gives the released checkpoints' `preprocessor_config.json` values.

  Hub values (not the transformers class defaults 3136 / 1003520):
    Qwen2-VL, Qwen2.5-VL: min/max pixels 3136 / 12845056 (28*28*16384), CLIP mean/std, patch 14.
    Qwen3-VL: 65536 / 16777216, mean/std 0.5, patch 16.
  Temporal patch 2 and merge 2 everywhere; bicubic resampling; rescale 1/255.
  """

  min_pixels: int = 3136
  max_pixels: int = 12845056
  mean: tuple[float, ...] = CLIP_MEAN
  std: tuple[float, ...] = CLIP_STD
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  resample: int = BICUBIC  # a PIL.Image.Resampling code
  rescale_factor: float = 1 / 255
  convert_rgb: bool = True

  def __post_init__(self):
    _check_common(self)

  @property
  def factor(self) -> int:
    """Side multiple F = patch_size * merge_size of resized images."""
    return self.patch_size * self.merge_size

  @classmethod
  def for_family(cls, family: Any) -> ImageOptions:
    """Hub defaults of `family` (a name in FAMILIES or a config with `.family`)."""
    if _family(family) == "qwen3_vl":
      return cls(min_pixels=65536, max_pixels=16777216, mean=HALF, std=HALF, patch_size=16)
    return cls()

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], family: Any = None) -> ImageOptions:
    """Reads a `preprocessor_config.json` dict; missing keys take the family's hub defaults.

    `family` is inferred from `processor_class` (e.g. "Qwen3VLProcessor") when not given.
    """
    return cls(**_read_hf(config, cls.for_family(_family_of_config(config, family)), video=False))


@dataclasses.dataclass(frozen=True)
class VideoOptions(ImageOptions):
  """Video processor settings. `for_family` gives the released checkpoints' values; `from_hf` reads a processor config.

  Pixel budget: Qwen2/2.5-VL apply [min_pixels, max_pixels] to each frame; Qwen3-VL to t*h*w (t = sampled frames).
  `cap_pixels_per_frame` adds the qwen-vl-utils cap (transformers' flag of the same name):
    Qwen2/2.5-VL: per-frame max = max(min(max_pixels, int(max_video_tokens*F*F*0.9) * T_p // t), int(1.05*min_pixels));
    Qwen3-VL: per-frame = max(min(max_video_tokens*F*F, max_pixels // t), int(1.05*min_pixels)), budget that * t.
  Defaults:
    Qwen2/2.5-VL: qwen-vl-utils' 128*28*28 / 768*28*28 per frame with the total cap on (max_video_tokens 128000, the
      context it assumes); no sampling (transformers' default: the frames given are the frames used), fps 2 when
      sampling. For a repo without a video config transformers reads `preprocessor_config.json` instead:
      `VideoOptions.from_hf(that dict)` does the same (Qwen2/2.5-VL hub: 3136 / 12845056 per frame, no cap).
    Qwen3-VL: `video_preprocessor_config.json` 4096 / 25165824 over t*h*w, mean/std 0.5, patch 16, sampling on at 2 fps,
      4..768 frames, no cap (transformers 5.23's default).
  """

  fps: float = 2.0  # target sampling rate (frames per second of video time)
  min_frames: int = 4
  max_frames: int = 768
  num_frames: int | None = None  # sample this many frames instead of using `fps`
  do_sample_frames: bool = False
  cap_pixels_per_frame: bool = False
  max_video_tokens: int = 128000  # cap budget: Qwen2/2.5-VL context tokens per video, Qwen3-VL tokens per frame

  def __post_init__(self):
    super().__post_init__()
    if not self.fps > 0:
      raise ValueError(f"fps: expected > 0, got {self.fps}.")
    if not 1 <= self.min_frames <= self.max_frames:
      raise ValueError(f"min_frames, max_frames: expected 1 <= min <= max, got {self.min_frames}, {self.max_frames}.")
    if self.num_frames is not None and self.num_frames < 1:
      raise ValueError(f"num_frames: expected None or >= 1, got {self.num_frames}.")
    if self.max_video_tokens < 1:
      raise ValueError(f"max_video_tokens: expected >= 1, got {self.max_video_tokens}.")

  @classmethod
  def for_family(cls, family: Any) -> VideoOptions:
    """Released-checkpoint defaults of `family` (a name in FAMILIES or a config with `.family`)."""
    if _family(family) == "qwen3_vl":
      return cls(min_pixels=4096, max_pixels=25165824, mean=HALF, std=HALF, patch_size=16, do_sample_frames=True,
                 max_video_tokens=768)
    return cls(min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28, cap_pixels_per_frame=True)

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], family: Any = None) -> VideoOptions:
    """Reads a `video_preprocessor_config.json` (or, as transformers falls back to it, `preprocessor_config.json`).

    Keys that are absent take transformers' class defaults for the sampling flags (Qwen2/2.5-VL no sampling,
    Qwen3-VL sampling; no pixel cap) and the family's hub values for everything else.
    """
    family = _family_of_config(config, family)
    base = dataclasses.replace(cls.for_family(family), cap_pixels_per_frame=False)
    return cls(**_read_hf(config, base, video=True))


def preprocess_images(images: Sequence[Any], options: ImageOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Images -> (pixel_values [sum gh*gw, C*T*p*p] float32, image_grid_thw [n, 3] int64 rows (1, gh, gw)).

  images: a list of PIL images (any mode) or uint8 arrays [H, W], [H, W, 1|3|4]. Patch rows are concatenated in
  list order, each image in merge-block order.
  """
  options = options or ImageOptions()
  if isinstance(images, (Image.Image, np.ndarray)) or not isinstance(images, Sequence):
    raise ValueError(f"images: expected a list of PIL images or uint8 arrays, got {type(images).__name__}.")
  if not images:
    raise ValueError("images: expected at least one image, got an empty list.")
  patches, grids = [], []
  for i, image in enumerate(images):
    rgb = to_rgb(image, f"images[{i}]", options.convert_rgb)
    h, w = smart_resize(rgb.shape[0], rgb.shape[1], options.factor, options.min_pixels, options.max_pixels)
    frame = normalize(resize(rgb, h, w, options.resample), options)
    flat, grid = patchify(frame[None], options)
    patches.append(flat)
    grids.append(grid)
  return np.concatenate(patches), np.array(grids, np.int64)


def sample_frame_indices(num_frames: int, video_fps: float | None, family: Any, options: VideoOptions | None = None,
                         fps: float | None = None, num_frames_target: int | None = None) -> np.ndarray:
  """Indices [n] int64 of the frames to keep from a video of `num_frames` frames recorded at `video_fps`.

  Target: `num_frames_target` frames, or `fps` frames per second (mutually exclusive); with neither, the options'
  `num_frames` if set, else its `fps`.
    Qwen2/2.5-VL: n = round(target / T_p) * T_p, or from fps n = floor(clamp(T / video_fps * fps, min_frames,
      floor(min(max_frames, T) / T_p) * T_p, T) / T_p) * T_p; indices floor(k * T / n).
    Qwen3-VL: n = target, or clamp(floor(T / video_fps * fps), min_frames, max_frames, T);
      indices round(linspace(0, T - 1, n)) (half to even).
  """
  family = _family(family)
  options = options or VideoOptions.for_family(family)
  if num_frames < 1:
    raise ValueError(f"num_frames: expected a video with >= 1 frame, got {num_frames}.")
  if fps is not None and num_frames_target is not None:
    raise ValueError(f"fps, num_frames_target: pass at most one, got fps={fps} and num_frames={num_frames_target}.")
  if fps is None and num_frames_target is None:
    num_frames_target = options.num_frames
    fps = options.fps if num_frames_target is None else None
  if num_frames_target is not None and num_frames_target < 1:
    raise ValueError(f"num_frames_target: expected >= 1, got {num_frames_target}.")
  if fps is not None:
    if not fps > 0:
      raise ValueError(f"fps: expected > 0, got {fps}.")
    if video_fps is None or not video_fps > 0:
      raise ValueError(f"video_fps: sampling at fps={fps} needs the video's frame rate > 0, got {video_fps}.")
  tp = options.temporal_patch_size
  if family == "qwen3_vl":
    n = num_frames_target
    if n is None:
      n = min(max(int(num_frames / video_fps * fps), options.min_frames), options.max_frames, num_frames)
    return np.linspace(0, num_frames - 1, n).round().astype(np.int64)
  if num_frames_target is not None:
    n = round(num_frames_target / tp) * tp
  else:
    max_frames = math.floor(min(options.max_frames, num_frames) / tp) * tp
    n = min(max(num_frames / video_fps * fps, options.min_frames), max_frames, num_frames)
    n = math.floor(n / tp) * tp
  if not 1 <= n <= num_frames:
    raise ValueError(
      f"num_frames: Qwen2-VL sampling of a {num_frames}-frame video gives {n} frames (a multiple of "
      f"temporal_patch_size = {tp} in [1, {num_frames}]); pass more frames, another target, or sample=False."
    )
  return np.arange(n, dtype=np.int64) * num_frames // n


def frame_timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
  """Qwen3-VL seconds per temporal group: indices padded to a multiple of T_p with the last one, idx / video_fps,
  then the mean of each group's first and last (`Qwen3VLProcessor._calculate_timestamps`)."""
  idx = [int(i) for i in indices]
  if not idx:
    raise ValueError("indices: expected at least one frame index, got none.")
  idx += [idx[-1]] * (-len(idx) % temporal_patch_size)
  seconds = [i / video_fps for i in idx]
  return [(seconds[g] + seconds[g + temporal_patch_size - 1]) / 2 for g in range(0, len(seconds), temporal_patch_size)]


def preprocess_video(frames: Any, options: VideoOptions | None = None, family: Any = "qwen2_vl", *,
                     video_fps: float | None = None, sample: bool | None = None, fps: float | None = None,
                     num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, float | list[float] | None]:
  """One video -> (pixel_values_videos [gt*gh*gw, C*T*p*p] float32, video_grid_thw [1, 3] int64, timing).

  frames: uint8 [T, H, W, C] (C = 3; 1 and 4 are converted to RGB), recorded at `video_fps` frames per second.
  sample: take `sample_frame_indices` (with `fps` / `num_frames`) first; default `options.do_sample_frames`.
  timing: Qwen2.5-VL `second_per_grid_ts` = temporal_patch_size / sampled fps (sampled fps = n / T * video_fps);
  Qwen3-VL per-group timestamps in seconds (`frame_timestamps`), for `expand_prompt`; Qwen2-VL None.
  """
  family = _family(family)
  options = options or VideoOptions.for_family(family)
  frames = check_frames(frames)
  total = frames.shape[0]
  if sample is None:
    sample = options.do_sample_frames
  if not sample and (fps is not None or num_frames is not None):
    raise ValueError(f"sample: fps={fps} / num_frames={num_frames} only apply with sample=True, got sample=False.")
  if family != "qwen2_vl" and video_fps is None:
    raise ValueError(f"video_fps: {family} needs the frame rate of `frames` for its timing, got None.")
  indices = (sample_frame_indices(total, video_fps, family, options, fps, num_frames) if sample
             else np.arange(total, dtype=np.int64))
  frames = frames[indices]
  n, height, width = frames.shape[:3]
  factor = options.factor
  if family == "qwen3_vl":
    max_pixels = options.max_pixels
    if options.cap_pixels_per_frame:
      per_frame = min(options.max_video_tokens * factor * factor, options.max_pixels // n)
      max_pixels = max(per_frame, int(options.min_pixels * 1.05)) * n
    h, w = smart_resize_video(n, height, width, options.temporal_patch_size, factor, options.min_pixels, max_pixels)
  else:
    max_pixels = options.max_pixels
    if options.cap_pixels_per_frame:
      total_pixels = int(options.max_video_tokens * factor * factor * 0.9)
      max_pixels = max(min(max_pixels, total_pixels * options.temporal_patch_size // n), int(options.min_pixels * 1.05))
    h, w = smart_resize(height, width, factor, options.min_pixels, max_pixels)
  video = np.stack([normalize(resize(f, h, w, options.resample), options) for f in frames])
  patches, grid = patchify(video, options)
  timing = None
  if family == "qwen2_5_vl":
    timing = options.temporal_patch_size / (len(indices) / total * video_fps)
  elif family == "qwen3_vl":
    timing = frame_timestamps(indices, video_fps, options.temporal_patch_size)
  return patches, np.array([grid], np.int64), timing


def expand_prompt(text: str | Sequence[str], image_grid_thw: Any = None, video_grid_thw: Any = None,
                  cfg_or_family: Any = "qwen2_vl", merge_size: int | None = None,
                  timestamps: Sequence[Sequence[float]] | None = None) -> str | list[str]:
  """Replaces each image / video pad of `text` (a string or a batch of strings) by its expanded placeholder.

  Pads are consumed in order across the batch: the i-th `<|image_pad|>` takes image_grid_thw[i] ([n, 3] (t, h, w))
  and becomes t*h*w / merge^2 pads; videos likewise, except Qwen3-VL, where video i becomes, for each temporal group
  g, `<{timestamps[i][g]:.1f} seconds><|vision_start|>` + h*w / merge^2 pads + `<|vision_end|>`, and the chat
  template's own `<|vision_start|><|video_pad|><|vision_end|>` around it collapses into those frames (transformers
  >= 5.25 `Qwen3VLProcessor.get_text_with_replacements`; earlier versions kept an extra start/end pair around all
  frames). merge_size defaults to the config's (else 2).
  """
  family = _family(cfg_or_family)
  if merge_size is None:
    vision = getattr(cfg_or_family, "vision", None)
    merge_size = vision.merge_size if vision is not None else 2
  texts = [text] if isinstance(text, str) else list(text)
  if not all(isinstance(t, str) for t in texts):
    raise ValueError(f"text: expected a string or a list of strings, got {type(text).__name__}.")
  image_grids = _grids(image_grid_thw, "image_grid_thw", merge_size)
  video_grids = _grids(video_grid_thw, "video_grid_thw", merge_size)
  for pad, grids, name in ((IMAGE_PAD, image_grids, "image_grid_thw"), (VIDEO_PAD, video_grids, "video_grid_thw")):
    count = sum(t.count(pad) for t in texts)
    if count != len(grids):
      raise ValueError(f"text: found {count} {pad} placeholders but {name} has {len(grids)} rows; they must match.")
  merge = merge_size * merge_size
  replacements = {IMAGE_PAD: [IMAGE_PAD * int(np.prod(g) // merge) for g in image_grids], VIDEO_PAD: []}
  if family == "qwen3_vl" and len(video_grids):
    if timestamps is None or len(timestamps) != len(video_grids):
      got = None if timestamps is None else f"{len(timestamps)} lists"
      raise ValueError(f"timestamps: Qwen3-VL needs one list per video ({len(video_grids)}), got {got}.")
    for i, ((t, h, w), stamps) in enumerate(zip(video_grids, timestamps)):
      if len(stamps) != t:
        raise ValueError(f"timestamps[{i}]: expected {t} values (video_grid_thw t), got {len(stamps)}.")
      frame = VISION_START + VIDEO_PAD * int(h * w // merge) + VISION_END
      replacements[VIDEO_PAD].append("".join(f"<{s:.1f} seconds>{frame}" for s in stamps))
    texts = [t.replace(VISION_START + VIDEO_PAD + VISION_END, VIDEO_PAD) for t in texts]  # frames wrap themselves
  else:
    if timestamps is not None and family != "qwen3_vl":
      raise ValueError(f"timestamps: only Qwen3-VL prompts carry frame timestamps, got them for {family}.")
    replacements[VIDEO_PAD] = [VIDEO_PAD * int(np.prod(g) // merge) for g in video_grids]
  queues = {pad: iter(r) for pad, r in replacements.items()}
  pattern = re.compile(f"{re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)}")
  out = [pattern.sub(lambda m: next(queues[m.group()]), t) for t in texts]
  return out[0] if isinstance(text, str) else out


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _family(x: Any) -> str:
  family = getattr(x, "family", x)
  if family not in FAMILIES:
    raise ValueError(f"family: expected one of {FAMILIES} or a QwenVLConfig, got {family!r}.")
  return family


_PROCESSOR_FAMILY = {"Qwen2VLProcessor": "qwen2_vl", "Qwen2_5_VLProcessor": "qwen2_5_vl",
                     "Qwen3VLProcessor": "qwen3_vl"}


def _family_of_config(config: Mapping[str, Any], family: Any) -> str:
  if family is not None:
    return _family(family)
  processor = config.get("processor_class")
  if processor not in _PROCESSOR_FAMILY:
    raise ValueError(
      f"family: not given and processor_class {processor!r} is not one of {sorted(_PROCESSOR_FAMILY)}; pass family."
    )
  return _PROCESSOR_FAMILY[processor]


def _read_hf(config: Mapping[str, Any], base: ImageOptions, video: bool) -> dict[str, Any]:
  for flag in ("do_resize", "do_rescale", "do_normalize"):
    if config.get(flag) is False:
      raise ValueError(f"{flag}: only true is supported (the model expects resized, normalized pixels), got false.")
  out = dataclasses.asdict(base)
  size = dict(config.get("size") or {})
  min_pixels = config.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
  max_pixels = config.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
  renames = dict(min_pixels=min_pixels, max_pixels=max_pixels, mean=config.get("image_mean"),
                 std=config.get("image_std"), convert_rgb=config.get("do_convert_rgb"))
  keys = ["patch_size", "temporal_patch_size", "merge_size", "resample", "rescale_factor"]
  if video:
    keys += ["fps", "min_frames", "max_frames", "num_frames", "do_sample_frames", "cap_pixels_per_frame",
             "max_video_tokens"]
  renames.update({k: config.get(k) for k in keys})
  for key, value in renames.items():
    if value is not None:
      out[key] = tuple(value) if key in ("mean", "std") else value
  return out


def _check_common(o: ImageOptions):
  if not 0 < o.min_pixels <= o.max_pixels:
    raise ValueError(f"min_pixels, max_pixels: expected 0 < min <= max, got {o.min_pixels}, {o.max_pixels}.")
  for name in ("patch_size", "temporal_patch_size", "merge_size"):
    if getattr(o, name) < 1:
      raise ValueError(f"{name}: expected >= 1, got {getattr(o, name)}.")
  if len(o.mean) != 3 or len(o.std) != 3 or not all(s != 0 for s in o.std):
    raise ValueError(f"mean, std: expected 3 values each (RGB), std nonzero, got {o.mean}, {o.std}.")


def _grids(grid_thw: Any, name: str, merge_size: int) -> np.ndarray:
  if grid_thw is None:
    return np.zeros((0, 3), np.int64)
  grid = np.asarray(grid_thw)
  if grid.size == 0:
    return np.zeros((0, 3), np.int64)
  if grid.ndim != 2 or grid.shape[1] != 3 or grid.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected an integer array [n, 3] of (t, h, w), got shape {grid.shape} {grid.dtype}.")
  bad = [tuple(int(v) for v in g) for g in grid if min(g) < 1 or g[1] % merge_size or g[2] % merge_size]
  if bad:
    raise ValueError(f"{name}: t, h, w must be >= 1 and h, w multiples of merge_size {merge_size}, got rows {bad}.")
  return grid.astype(np.int64)
