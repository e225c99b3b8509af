"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL in Flax linen (arXiv 2409.12191, 2502.13923, 2511.21631), matching
transformers 5.23's `models/qwen2_vl`, `models/qwen2_5_vl` and `models/qwen3_vl`.

Typical use: `config, params = load_params(checkpoint_dir)`; on the host, `Processor.from_pretrained(checkpoint_dir)`
turns chat messages with images and videos into `ModelInputs` (or, piece by piece, `preprocess_images` /
`preprocess_video`, `expand_prompt`, then `prepare_inputs`: positions + vision layout, with named errors);
`QwenVL(config).apply({'params': params}, inputs)` for logits, or `generate(model, params, inputs, sampling=...)`
(`jaxagents.generation`) for tokens and per-token log-probs.
"""

from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig
from jaxagents.models.qwen_vl.convert import hf_to_params, load_params, params_to_hf, save_params
from jaxagents.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.pixels import smart_resize
from jaxagents.models.qwen_vl.positions import decode_positions, mm_token_type_ids, rope_deltas, rope_index
from jaxagents.models.qwen_vl.preprocess import (
  ImageOptions,
  VideoOptions,
  expand_prompt,
  preprocess_images,
  preprocess_video,
  sample_frame_indices,
)
from jaxagents.models.qwen_vl.processor import Processor
from jaxagents.models.qwen_vl.vision_layout import VisionInputs, vision_inputs

__all__ = [
  "ImageOptions",
  "ModelInputs",
  "Processor",
  "VideoOptions",
  "QwenVL",
  "QwenVLConfig",
  "TextConfig",
  "VisionConfig",
  "VisionInputs",
  "decode_positions",
  "expand_prompt",
  "hf_to_params",
  "load_params",
  "mm_token_type_ids",
  "params_to_hf",
  "prepare_inputs",
  "preprocess_images",
  "preprocess_video",
  "rope_deltas",
  "rope_index",
  "sample_frame_indices",
  "save_params",
  "smart_resize",
  "vision_inputs",
]
