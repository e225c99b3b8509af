"""Host-side batch preparation for `QwenVL`: token ids + processor outputs -> everything the model call needs.

One function, `prepare_inputs`, so that positions, the vision layout and the checks that protect them are never
computed three different ways (trl #5785, EasyR1 #110: truncation that splits an image span). It runs
`positions.rope_index` (which raises, naming the item, when placeholder runs and grids disagree or a vision span
was cut) and `vision_layout.vision_inputs` on the images followed by the videos, the order `QwenVL` scatters
features in.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.positions import rope_index
from jaxagents.models.qwen_vl.vision_layout import VisionInputs, vision_inputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """input_ids / attention_mask [B, L], positions [3, B, L] int32, decode_base [3, B] int32, vision or None."""

  input_ids: np.ndarray
  attention_mask: np.ndarray
  positions: np.ndarray
  decode_base: np.ndarray
  vision: VisionInputs | None


def prepare_inputs(
  config: QwenVLConfig,
  input_ids: np.ndarray,
  attention_mask: np.ndarray | None = None,
  *,
  pixel_values: np.ndarray | None = None,
  image_grid_thw: np.ndarray | None = None,
  pixel_values_videos: np.ndarray | None = None,
  video_grid_thw: np.ndarray | None = None,
  second_per_grid_ts: np.ndarray | None = None,
  pad_patches_to: int | None = None,
  mode: str | None = None,
) -> ModelInputs:
  """Validates a batch and computes its positions and vision layout.

  Args:
    config: the model config.
    input_ids: [B, L] int token ids with the processor's expanded placeholders (left-padded for generation).
    attention_mask: [B, L], 1 at real tokens (default: all ones).
    pixel_values, image_grid_thw: image patches [N_img, patch_dim] and grids [n_img, 3] from the processor.
    pixel_values_videos, video_grid_thw: the same for videos.
    second_per_grid_ts: [n_videos] (Qwen2.5-VL).
    pad_patches_to: pad the patch count to this bucket (static shapes across batches).
    mode: M-RoPE semantics, "qwen" or "hf" (default `config.mrope_mode`).
  Returns:
    `ModelInputs`.
  """
  input_ids = np.asarray(input_ids)
  attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
  for name, pixels, grid in (("pixel_values", pixel_values, image_grid_thw),
                             ("pixel_values_videos", pixel_values_videos, video_grid_thw)):
    if (pixels is None) != (grid is None):
      grid_name = "image_grid_thw" if name == "pixel_values" else "video_grid_thw"
      raise ValueError(f"{name} and {grid_name}: pass both or neither, got only "
                       f"{name if pixels is not None else grid_name}")
  positions, decode_base = rope_index(input_ids, attention_mask, config, image_grid_thw=image_grid_thw,
                                      video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
                                      mode=mode)
  pixels = [np.asarray(p) for p in (pixel_values, pixel_values_videos) if p is not None]
  grids = [np.asarray(g).reshape(-1, 3) for g in (image_grid_thw, video_grid_thw) if g is not None]
  vision = None
  if pixels:
    vision = vision_inputs(np.concatenate(pixels), np.concatenate(grids), config, pad_to=pad_patches_to)
  return ModelInputs(input_ids, attention_mask, positions, decode_base, vision)
