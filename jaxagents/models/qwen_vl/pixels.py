"""Sizes and pixel operations of the Qwen-VL processors in numpy + PIL: `smart_resize` (transformers
`models/qwen2_vl/image_processing_pil_qwen2_vl.py`), `smart_resize_video`
(`models/qwen3_vl/video_processing_qwen3_vl.py`), RGB conversion, resize, rescale + normalize, and the patch layout
of `Qwen2VLImageProcessorPil._preprocess`.

`jaxagents.models.qwen_vl.preprocess` composes them into image and video preprocessing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
  from jaxagents.models.qwen_vl.preprocess import ImageOptions

MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 3136,
                 max_pixels: int = 12845056) -> tuple[int, int]:
  """(height, width) -> resized (h, w), both multiples of `factor`, h*w within [min_pixels, max_pixels].

  Step 1 rounds each side to the nearest multiple (banker's rounding); a product above max_pixels shrinks both sides
  by sqrt(h*w / max_pixels) and floors (never below `factor`); one below min_pixels grows them and ceils.
  """
  check_size(height, width)
  _check_aspect(height, width, "image",
                f"crop or pad the long side to at most {MAX_ASPECT_RATIO} times the short side")
  h_bar, w_bar = _fit(height, width, factor, min_pixels, max_pixels)
  if not h_bar or not w_bar:  # only with min_pixels 0: a side shorter than factor / 2 rounds to nothing
    raise ValueError(
      f"image height x width: {height} x {width} resizes to {h_bar} x {w_bar}; a side shorter than factor/2 = "
      f"{factor / 2} needs min_pixels > 0 (got {min_pixels})."
    )
  return h_bar, w_bar


def smart_resize_video(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = 4096, max_pixels: int = 25165824) -> tuple[int, int]:
  """Qwen3-VL video frame size: as `smart_resize` with the budget applied to t_bar*h*w (t_bar = t rounded to the
  temporal factor, banker's rounding) and sides shorter than `factor` first scaled up to it."""
  if num_frames < temporal_factor:
    raise ValueError(
      f"frames: Qwen3-VL video needs at least temporal_patch_size = {temporal_factor} frames (after sampling), got "
      f"{num_frames}; pass more frames (or repeat the frame), or process a single frame as an image."
    )
  check_size(height, width, "video")
  if height < factor or width < factor:
    scale = max(factor / height, factor / width)
    height, width = int(height * scale), int(width * scale)
  _check_aspect(height, width, "video", "crop or pad the frames")
  t_bar = round(num_frames / temporal_factor) * temporal_factor
  return _fit(height, width, factor, min_pixels, max_pixels, frames=num_frames, rounded_frames=t_bar)


def _check_aspect(height: int, width: int, name: str, advice: str) -> None:
  ratio = max(height, width) / min(height, width)
  if ratio > MAX_ASPECT_RATIO:
    raise ValueError(
      f"{name} height x width: aspect ratio max/min must be <= {MAX_ASPECT_RATIO}, got {height} x {width} "
      f"(ratio {ratio:.1f}); {advice}."
    )


def _fit(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 1,
         rounded_frames: int = 1) -> tuple[int, int]:
  """Both sides rounded to multiples of `factor`; if rounded_frames * h * w leaves [min_pixels, max_pixels], both
  sides scaled by sqrt(frames * height * width / budget) and floored (never below `factor`) or ceiled."""
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if rounded_frames * h_bar * w_bar > max_pixels:
    beta = math.sqrt(frames * height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif rounded_frames * h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (frames * height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def check_size(height: int, width: int, name: str = "image"):
  if height < 1 or width < 1:
    raise ValueError(f"{name} height x width: expected both >= 1, got {height} x {width} (an empty image).")


def to_rgb(image: Any, name: str, convert: bool) -> np.ndarray:
  """-> uint8 [H, W, 3]. Transparency is composited over white (transformers' `convert_to_rgb`)."""
  if isinstance(image, Image.Image):
    check_size(image.height, image.width, name)
    if image.mode != "RGB" and not convert:
      raise ValueError(f"{name}: expected an RGB image with convert_rgb=False, got mode {image.mode}.")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
      rgba = image.convert("RGBA")
      image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"))
  if not isinstance(image, np.ndarray):
    raise ValueError(f"{name}: expected a PIL image or a uint8 numpy array, got {type(image).__name__}.")
  if image.dtype != np.uint8:
    raise ValueError(f"{name}: expected dtype uint8 (0..255), got {image.dtype}.")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{name}: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}.")
  check_size(image.shape[0], image.shape[1], name)
  if image.shape[-1] != 3 and not convert:
    raise ValueError(f"{name}: expected 3 channels with convert_rgb=False, got shape {image.shape}.")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:] / 255
    return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
  return image


def check_frames(frames: Any) -> np.ndarray:
  if not isinstance(frames, np.ndarray):
    raise ValueError(f"frames: expected a uint8 numpy array [T, H, W, C], got {type(frames).__name__}.")
  if frames.dtype != np.uint8:
    raise ValueError(f"frames: expected dtype uint8 (0..255), got {frames.dtype}.")
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4) or min(frames.shape[:3]) < 1:
    raise ValueError(f"frames: expected shape [T, H, W, C] with T, H, W >= 1 and C in (1, 3, 4), got {frames.shape}.")
  if frames.shape[-1] == 3:
    return frames
  return np.stack([to_rgb(f, f"frames[{i}]", True) for i, f in enumerate(frames)])


def resize(rgb: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [height, width, 3] with PIL (a same-size resize is an exact copy)."""
  return np.asarray(Image.fromarray(rgb).resize((width, height), resample=resample))


def normalize(rgb: np.ndarray, options: ImageOptions) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [3, H, W]; float64 rescale then float32 normalize, as transformers' numpy path."""
  x = (rgb.astype(np.float64) * options.rescale_factor).astype(np.float32)
  x = (x - np.asarray(options.mean, np.float32)) / np.asarray(options.std, np.float32)
  return np.ascontiguousarray(x.transpose(2, 0, 1))


def patchify(video: np.ndarray, options: ImageOptions) -> tuple[np.ndarray, list[int]]:
  """[T, C, H, W] -> ([gt*gh*gw, C*Tp*p*p], [gt, gh, gw]), the layout of `Qwen2VLImageProcessorPil._preprocess`.

  T is padded to a multiple of Tp by repeating the last frame (an image, T = 1, becomes Tp copies). Rows are in
  (t, h-block, w-block, h-in-block, w-in-block) order, so each merge_size^2 run of rows is one merged token; a row
  is (C, Tp, p, p) flattened.
  """
  tp, p, m = options.temporal_patch_size, options.patch_size, options.merge_size
  if pad := -video.shape[0] % tp:
    video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
  t, c, h, w = video.shape
  gt, gh, gw = t // tp, h // p, w // p
  x = video.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(gt * gh * gw, c * tp * p * p), [gt, gh, gw]
