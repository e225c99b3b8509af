"""Shared layers: attention, norms, MLPs, rotary embeddings, blocks. Model families only compose these.

Note `jaxagents.layers.attention` here is the *function*; reach the module (e.g. for `ATTENTION_BACKENDS`)
with `from jaxagents.layers.attention import ...`.
"""

from jaxagents.layers.adaln import AdaLNModulation, modulate
from jaxagents.layers.attention import ATTENTION_BACKENDS, attention, make_attention_mask
from jaxagents.layers.attention_block import SelfAttention
from jaxagents.layers.block import TransformerBlock, make_norm
from jaxagents.layers.embeddings import Embed, sinusoidal_timestep_embedding
from jaxagents.layers.linear import Dense
from jaxagents.layers.mlp import ACTIVATIONS, MLP, GatedMLP, activation
from jaxagents.layers.norms import LayerNorm, RMSNorm
from jaxagents.layers.remat import REMAT_POLICIES, remat
from jaxagents.layers.rotary import (
  apply_rope,
  mrope_angles,
  mrope_slot_axes,
  rope_angles,
  rope_inv_freq,
  vision_rope_2d_angles,
)
from jaxagents.layers.segment_packing import SegmentPacking

__all__ = [
  "ACTIVATIONS",
  "ATTENTION_BACKENDS",
  "AdaLNModulation",
  "Dense",
  "Embed",
  "GatedMLP",
  "LayerNorm",
  "MLP",
  "REMAT_POLICIES",
  "RMSNorm",
  "SegmentPacking",
  "SelfAttention",
  "TransformerBlock",
  "activation",
  "apply_rope",
  "attention",
  "make_attention_mask",
  "make_norm",
  "modulate",
  "remat",
  "mrope_angles",
  "mrope_slot_axes",
  "rope_angles",
  "rope_inv_freq",
  "sinusoidal_timestep_embedding",
  "vision_rope_2d_angles",
]
