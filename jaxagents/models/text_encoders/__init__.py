"""Text encoders for text-to-image models behind one interface, `encode(prompts) -> TextFeatures`.

  * `GptOssTextEncoder`: Lens (GPT-OSS-20B, Harmony-wrapped prompts, layers 5/11/17/23, the first 97 tokens
    dropped); the decoder `GptOss` (MoE, clamped SwiGLU, attention sinks, sliding windows, YaRN) and its
    checkpoint conversion with MXFP4 dequantisation (`gpt_oss_convert`).
  * `Qwen3TextEncoder`: FLUX.2-klein (Qwen3 hidden states 9/18/27 on the Qwen-VL text stack).
  * `PrecomputedTextEncoder`: rows of features written by `save_features` (.npz or .safetensors).
Prompt wrapping and tokenisation with local HF tokenizers: `prompts`.

Typical use: `config, params = gpt_oss_convert.load_params(dir)`; `encoder = GptOssTextEncoder(
load_tokenizer(dir), config, params)`; `features = encoder.encode(["a red cube"])`.
"""

from jaxagents.models.text_encoders.gpt_oss import (
  GPT_OSS_20B,
  GptOss,
  GptOssConfig,
  GptOssTextEncoder,
  YarnScaling,
  clamped_swiglu,
  param_count,
)
from jaxagents.models.text_encoders.interface import (
  PrecomputedTextEncoder,
  TextEncoder,
  TextFeatures,
  save_features,
)
from jaxagents.models.text_encoders.prompts import (
  LENS_TXT_OFFSET,
  flux2_klein_token_ids,
  lens_prefix_length,
  lens_token_ids,
  load_tokenizer,
)
from jaxagents.models.text_encoders.qwen3_text import (
  FLUX2_KLEIN_HIDDEN_STATES,
  Qwen3Text,
  Qwen3TextEncoder,
  text_config_from_hf,
)

__all__ = [
  "FLUX2_KLEIN_HIDDEN_STATES",
  "GPT_OSS_20B",
  "GptOss",
  "GptOssConfig",
  "GptOssTextEncoder",
  "LENS_TXT_OFFSET",
  "PrecomputedTextEncoder",
  "Qwen3Text",
  "Qwen3TextEncoder",
  "TextEncoder",
  "TextFeatures",
  "YarnScaling",
  "clamped_swiglu",
  "flux2_klein_token_ids",
  "lens_prefix_length",
  "lens_token_ids",
  "load_tokenizer",
  "param_count",
  "save_features",
  "text_config_from_hf",
]
