"""One MMDiT (arXiv 2403.03206) in Flax linen, configured as FLUX.2 (diffusers `Flux2Transformer2DModel`) and as
Lens (diffusers `LensTransformer2DModel`).

Typical use: `config, params = load_params(transformer_dir)` (a diffusers `save_pretrained` directory), ids from
`jaxagents.layers.multi_axis_rope` (`flux_position_ids` for FLUX.2, `msrope_position_ids` for Lens), then
`MMDiT(config).apply({'params': params}, img, txt, sigma, img_ids, txt_ids, txt_mask)` for the velocity.
"""

from jaxagents.models.mmdit.config import PRESETS, MMDiTConfig, get_config
from jaxagents.models.mmdit.convert import load_config, load_params, param_shapes, tensors_to_params
from jaxagents.models.mmdit.model import DoubleStreamBlock, MMDiT, SingleStreamBlock, TimestepEmbedding, unstack_blocks

__all__ = [
  "PRESETS",
  "DoubleStreamBlock",
  "MMDiT",
  "MMDiTConfig",
  "SingleStreamBlock",
  "TimestepEmbedding",
  "get_config",
  "load_config",
  "load_params",
  "param_shapes",
  "tensors_to_params",
  "unstack_blocks",
]
