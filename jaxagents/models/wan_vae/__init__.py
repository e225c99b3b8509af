"""The Wan 2.1 causal 3D video VAE (diffusers `AutoencoderKLWan`) in Flax linen, channels-last [B, T, H, W, C].

Typical use: `config, variables = load_variables(checkpoint_dir)` (a diffusers `save_pretrained` directory, e.g. the
`vae/` folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers), then `WanVAE(config).apply(variables, video, method="encode")`
for the posterior (mean, logvar) of a [B, 1 + 4k, H, W, 3] clip and `method="decode"` back to video in one pass,
or `encode_chunked` / `decode_chunked` for diffusers' chunk loop (activation memory of one chunk);
`normalize_latents` / `denormalize_latents` apply the pipelines' `latents_mean` / `latents_std`. `LOGICAL_RULES`
maps the VAE's logical axis names onto the mesh.
"""

from jaxagents.models.wan_vae.config import PRESETS, TINY, WAN21, WanVAEConfig
from jaxagents.models.wan_vae.convert import (
  diffusers_to_variables,
  load_config,
  load_variables,
  save_variables,
  variable_shapes,
  variables_to_diffusers,
)
from jaxagents.models.wan_vae.model import (
  LOGICAL_RULES,
  WAN_VAE_RULES,
  WanVAE,
  decode_chunked,
  denormalize_latents,
  encode_chunked,
  normalize_latents,
  posterior,
  usable_frames,
)

__all__ = [
  "LOGICAL_RULES",
  "PRESETS",
  "TINY",
  "WAN21",
  "WAN_VAE_RULES",
  "WanVAE",
  "WanVAEConfig",
  "decode_chunked",
  "denormalize_latents",
  "diffusers_to_variables",
  "encode_chunked",
  "load_config",
  "load_variables",
  "normalize_latents",
  "posterior",
  "save_variables",
  "usable_frames",
  "variable_shapes",
  "variables_to_diffusers",
]
