"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL in Flax linen (spec: ../shared/specs/vlm.md).

Typical use: `config, params = convert.load_params(checkpoint_dir)`; host-side `rope_index` and `vision_inputs`
for a batch; `QwenVL(config).apply({'params': params}, ...)` for logits, or `generate(...)` for tokens and
per-token log-probs.
"""

from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig
from jaxagents.models.qwen_vl.convert import hf_to_params, load_params, params_to_hf, save_params
from jaxagents.models.qwen_vl.generate import Generation, SamplingConfig, generate
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.positions import decode_positions, mm_token_type_ids, rope_deltas, rope_index
from jaxagents.models.qwen_vl.vision_layout import VisionInputs, vision_inputs

__all__ = [
  "Generation",
  "QwenVL",
  "QwenVLConfig",
  "SamplingConfig",
  "TextConfig",
  "VisionConfig",
  "VisionInputs",
  "decode_positions",
  "generate",
  "hf_to_params",
  "load_params",
  "mm_token_type_ids",
  "params_to_hf",
  "rope_deltas",
  "rope_index",
  "save_params",
  "vision_inputs",
]
