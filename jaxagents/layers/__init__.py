"""Shared layers: attention (+ joint two-stream, sinks), norms, MLPs, rotary embeddings (+ multi-axis, YaRN), adaLN,
blocks. Model families only compose these.

Note `jaxagents.layers.attention` here is the *function*; reach the module (e.g. for `ATTENTION_BACKENDS`)
with `from jaxagents.layers.attention import ...`.
"""

from jaxagents.layers.adaln import AdaLNModulation, modulate
from jaxagents.layers.attention import ATTENTION_BACKENDS, attention, make_attention_mask
from jaxagents.layers.attention_block import SelfAttention
from jaxagents.layers.attention_sinks import attention_with_sinks, sliding_window_mask
from jaxagents.layers.block import TransformerBlock, make_norm
from jaxagents.layers.embeddings import Embed, sinusoidal_timestep_embedding
from jaxagents.layers.joint_attention import JointAttention
from jaxagents.layers.linear import Dense
from jaxagents.layers.mlp import ACTIVATIONS, MLP, GatedMLP, activation
from jaxagents.layers.multi_axis_rope import flux_position_ids, msrope_position_ids, multi_axis_rope_angles
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
from jaxagents.layers.yarn import yarn_inv_freq, yarn_mscale

__all__ = [
  "ACTIVATIONS",
  "ATTENTION_BACKENDS",
  "AdaLNModulation",
  "Dense",
  "Embed",
  "GatedMLP",
  "JointAttention",
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
  "attention_with_sinks",
  "flux_position_ids",
  "make_attention_mask",
  "make_norm",
  "modulate",
  "msrope_position_ids",
  "multi_axis_rope_angles",
  "remat",
  "mrope_angles",
  "mrope_slot_axes",
  "rope_angles",
  "rope_inv_freq",
  "sinusoidal_timestep_embedding",
  "sliding_window_mask",
  "vision_rope_2d_angles",
  "yarn_inv_freq",
  "yarn_mscale",
]
