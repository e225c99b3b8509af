"""The FLUX.2 VAE (diffusers `AutoencoderKLFlux2`) in Flax linen, with the FLUX.2 pipeline's latent tokens.

Typical use: `config, variables = load_variables(checkpoint_dir)` (a diffusers `save_pretrained` directory), then
`Flux2VAE(config).apply(variables, images, method="encode_to_tokens")` for the DiT's normalised [B, H/16, W/16, 128]
tokens and `method="decode_from_tokens"` back to images; `encode` / `decode` / `decode_tiled` work on the 32-channel
latents. `LOGICAL_RULES` maps the VAE's logical axis names onto the mesh.
"""

from jaxagents.models.vae.config import FLUX2, PRESETS, TINY, TINY_ONE_LEVEL, Flux2VAEConfig
from jaxagents.models.vae.convert import (
  diffusers_to_variables,
  iter_checkpoint,
  load_config,
  load_variables,
  save_variables,
  variable_shapes,
  variables_to_diffusers,
)
from jaxagents.models.vae.flux2_vae import (
  LOGICAL_RULES,
  VAE_RULES,
  Flux2VAE,
  denormalize_latents,
  normalize_latents,
  patchify_latents,
  tiled_decode,
  unpatchify_latents,
)

__all__ = [
  "FLUX2",
  "LOGICAL_RULES",
  "PRESETS",
  "TINY",
  "TINY_ONE_LEVEL",
  "VAE_RULES",
  "Flux2VAE",
  "Flux2VAEConfig",
  "denormalize_latents",
  "diffusers_to_variables",
  "iter_checkpoint",
  "load_config",
  "load_variables",
  "normalize_latents",
  "patchify_latents",
  "save_variables",
  "tiled_decode",
  "unpatchify_latents",
  "variable_shapes",
  "variables_to_diffusers",
]
