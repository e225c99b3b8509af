"""Token rows + images -> a `QwenVL` batch: what an HF Qwen-VL processor and collator do for token-level prompts.

`token_batch` takes prompts as token-id rows holding ONE image placeholder per image (`<|vision_start|>
<|image_pad|> <|vision_end|>`, what a chat template writes), preprocesses the images
(`preprocess.preprocess_images`), expands each placeholder to the image's merged-token count t*h*w / merge^2 from
its grid (`preprocess.expand_prompt`, as the processors' `replace_image_token`; transformers
`models/qwen2_vl/processing_qwen2_vl.py`, `Qwen2VLProcessor.__call__`), left-pads the rows (for generation),
appends completions and calls `inputs.prepare_inputs` for positions and the vision layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from jaxagents.models.qwen_vl.preprocess import IMAGE_PAD, ImageOptions, expand_prompt, preprocess_images

_RENDERED = re.compile(r"<(\d+)>|" + re.escape(IMAGE_PAD))


def token_batch(
  config: QwenVLConfig,
  prompt_rows: Sequence[Sequence[int]],
  images: Sequence[Sequence[np.ndarray]],
  image_options: ImageOptions,
  *,
  pad_id: int,
  completions: Sequence[Sequence[int]] | None = None,
) -> tuple[ModelInputs, np.ndarray | None]:
  """Builds the model inputs of B rows.

  Args:
    config: the model config (its image / video token ids and vision patch and merge sizes).
    prompt_rows: B token-id lists; each image is one `config.image_token_id` placeholder (between vision start and
      end), in the order of `images[b]`. Video placeholders are not supported.
    images: images[b] is the list (possibly empty) of row b's images, numpy uint8 [H, W, 3] (or anything
      `preprocess_images` reads).
    image_options: how images are resized and normalised (e.g. `ImageOptions(min_pixels=S*S, max_pixels=S*S,
      patch_size=p, merge_size=m)` keeps a patch-aligned S x S image as it is); its patch and merge sizes must be
      the model's.
    pad_id: the id that fills the left padding (masked out).
    completions: B token-id lists appended after the expanded prompts, or None.
  Returns:
    (`ModelInputs` of the rows: prompt + completion left-padded to the longest row, completion_mask bool [B, L]
    True at completion tokens) when `completions` is given, else (`ModelInputs` of the left-padded prompts, None).
  """
  rows = [[int(t) for t in row] for row in prompt_rows]
  if not rows:
    raise ValueError("prompt_rows: expected at least one row, got none")
  if len(images) != len(rows):
    raise ValueError(f"images: expected one list of images per prompt row ({len(rows)}), got {len(images)}")
  if completions is not None and len(completions) != len(rows):
    raise ValueError(f"completions: expected one per prompt row ({len(rows)}), got {len(completions)}")
  vision = config.vision
  if (image_options.patch_size, image_options.merge_size) != (vision.patch_size, vision.merge_size):
    raise ValueError(f"image_options: patch_size and merge_size must be the model's ({vision.patch_size}, "
                     f"{vision.merge_size}), got ({image_options.patch_size}, {image_options.merge_size})")
  for b, (row, row_images) in enumerate(zip(rows, images, strict=True)):
    if row and min(row) < 0:
      raise ValueError(f"prompt_rows[{b}]: token ids must be >= 0, got {min(row)}")
    if config.video_token_id in row:
      raise ValueError(f"prompt_rows[{b}]: holds video placeholders ({config.video_token_id}); token_batch takes "
                       "images only")
    if row.count(config.image_token_id) != len(row_images):
      raise ValueError(f"prompt_rows[{b}]: expected one image placeholder ({config.image_token_id}) per image of "
                       f"images[{b}] ({len(row_images)}), got {row.count(config.image_token_id)}")
  flat_images = [image for row_images in images for image in row_images]
  pixel_values = grid = None
  if flat_images:
    pixel_values, grid = preprocess_images(flat_images, image_options)
    rows = _expand(rows, grid, config)
  return padded_batch(config, rows, completions, pad_id=pad_id, pixel_values=pixel_values, image_grid_thw=grid)


def padded_batch(
  config: QwenVLConfig,
  rows: Sequence[Sequence[int]],
  completions: Sequence[Sequence[int]] | None,
  *,
  pad_id: int,
  mode: str | None = None,
  length_multiple: int = 1,
  **vision: Any,
) -> tuple[ModelInputs, np.ndarray | None]:
  """Expanded prompt rows (+ completions) -> left-padded `ModelInputs` (and the completion mask, or None).

  `vision` holds `prepare_inputs`' keyword arguments (pixel values, grids, `second_per_grid_ts`, `pad_patches_to`);
  `mode` is the M-RoPE mode (`positions` module docstring; default the config's); rows are padded to a multiple of
  `length_multiple` tokens (a static-shape bucket).
  """
  completion_rows = [[] for _ in rows] if completions is None else [[int(t) for t in c] for c in completions]
  full = [list(prompt) + completion for prompt, completion in zip(rows, completion_rows, strict=True)]
  length = max(len(row) for row in full)
  length = -(-length // length_multiple) * length_multiple
  ids = np.full((len(full), length), pad_id, np.int32)
  attention_mask = np.zeros_like(ids)
  completion_mask = np.zeros(ids.shape, bool)
  for b, (row, completion) in enumerate(zip(full, completion_rows, strict=True)):
    ids[b, length - len(row):] = row
    attention_mask[b, length - len(row):] = 1
    completion_mask[b, length - len(completion):] = bool(completion)
  inputs = prepare_inputs(config, ids, attention_mask, mode=mode, **vision)
  return inputs, (completion_mask if completions is not None else None)


def _expand(rows: list[list[int]], grid: np.ndarray, config: QwenVLConfig) -> list[list[int]]:
  """Each image placeholder -> t*h*w / merge^2 of them, by `expand_prompt`: it works on processor text, so each row
  is rendered as text in which the image placeholder is the processor's string and every other token `<id>`."""
  texts = ["".join(IMAGE_PAD if t == config.image_token_id else f"<{t}>" for t in row) for row in rows]
  expanded = expand_prompt(texts, grid, None, config)
  return [[int(m[1]) if m[1] else config.image_token_id for m in _RENDERED.finditer(text)] for text in expanded]
