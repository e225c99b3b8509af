"""The Wan 2.1 video DiT (arXiv 2503.20314) in Flax linen, ported from diffusers `WanTransformer3DModel`.

Typical use: `config, params = load_params(transformer_dir)` (a diffusers `save_pretrained` directory), then
`WanDiT(config).apply({'params': params}, latents, timesteps, text, image)` for the velocity of channels-last
latents [B, T, H, W, C]. `controlnet.py` adds a flow ControlNet (FloVD, arXiv 2502.08244) whose residuals enter
`WanDiT(..., control_residuals=...)`.
"""

from jaxagents.models.wan_dit.config import PRESETS, WanDiTConfig, get_config
from jaxagents.models.wan_dit.controlnet import (
  WanFlowControlNet,
  controlled_velocity,
  controlnet_params_from_base,
  freeze_base,
  param_labels,
  sigma_window_gate,
)
from jaxagents.models.wan_dit.convert import load_config, load_params, param_shapes, tensors_to_params
from jaxagents.models.wan_dit.model import (
  ImageEmbedding,
  WanAttention,
  WanBlock,
  WanDiT,
  WanInputs,
  embed_inputs,
  patchify,
  unpatchify,
  unstack_blocks,
  video_rope_angles,
)

__all__ = [
  "PRESETS",
  "ImageEmbedding",
  "WanAttention",
  "WanBlock",
  "WanDiT",
  "WanDiTConfig",
  "WanFlowControlNet",
  "WanInputs",
  "controlled_velocity",
  "controlnet_params_from_base",
  "embed_inputs",
  "freeze_base",
  "get_config",
  "load_config",
  "load_params",
  "param_shapes",
  "param_labels",
  "patchify",
  "sigma_window_gate",
  "tensors_to_params",
  "unpatchify",
  "unstack_blocks",
  "video_rope_angles",
]
