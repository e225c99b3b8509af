"""The Qwen-VL vision tower (Qwen2-VL, arXiv 2409.12191 Sec. 2.1; Qwen2.5-VL, arXiv 2502.13923 Sec. 2.1;
Qwen3-VL, arXiv 2511.21631, DeepStack), composed from the shared layers. Reference: transformers
`Qwen2VisionTransformerPretrainedModel`, `Qwen2_5_VisionTransformerPretrainedModel`, `Qwen3VLVisionModel`.

patches -> 3-D patch embed (a Dense over the flattened (C, T, p, p) patch: the Conv3d with stride = kernel) ->
[+ interpolated learned positions (Qwen3-VL)] -> `depth` pre-norm blocks with 2-D rotary attention inside each
(item, frame group) segment [Qwen2.5-VL: inside windows, except `fullatt_block_indexes`] -> 2x2 patch merger ->
[N, U, D_text]. Qwen3-VL also returns DeepStack features: the hidden states after the blocks
`deepstack_indexes`, each through its own merger with a post-shuffle LayerNorm.

The input is N prompts of P patches each, laid out on the host by `vision_layout.vision_inputs` (static padded
shapes). Attention runs inside each segment only: the segments (windows) are packed into rows of the longest
segment's length by host-computed indices (`layers.SegmentPacking`), so the cost is linear in the number of
images, as transformers' loop over `cu_seqlens`, instead of one mask over every patch of the call.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents import layers
from jaxagents.models.qwen_vl.config import VisionConfig
from jaxagents.models.qwen_vl.vision_layout import VisionInputs

Dtype = Any


class PatchMerger(nn.Module):
  """Concatenates each 2x2 block of patches and projects it: fc2(GELU(fc1(.))), GELU exact (erf) in every family.

  `postshuffle_norm=False` normalizes each patch (width C) before the concatenation (the main merger);
  True normalizes the concatenated 4C vector (Qwen3-VL DeepStack mergers). Submodules 'norm', 'fc1', 'fc2'.
  """

  out_dim: int
  merge_size: int = 2
  norm: str = "layer"
  postshuffle_norm: bool = False
  eps: float = 1e-6
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., P, C] (P a multiple of merge_size**2, in merge-block order) -> [..., P / merge_size**2, out_dim]."""
    unit = self.merge_size**2
    width = x.shape[-1] * unit
    merged = (*x.shape[:-2], -1, width)
    norm = layers.make_norm(self.norm, self.eps, self.dtype, jnp.float32, name="norm")
    x = norm(x.reshape(merged)) if self.postshuffle_norm else norm(x).reshape(merged)
    x = layers.Dense(width, axes=("embed", "mlp"), use_bias=True, dtype=self.dtype, name="fc1")(x)
    x = layers.activation("gelu")(x)
    return layers.Dense(self.out_dim, axes=("mlp", "embed"), use_bias=True, dtype=self.dtype, name="fc2")(x)


class _VisionBlock(nn.Module):
  """One ViT block in `nn.scan` form; also stores its output into the DeepStack buffer at `slot` (>= 0).

  With windows (Qwen2.5-VL) the per-layer flag `full_attention` picks the packing by `nn.cond`: both branches
  call the one 'block' submodule, so the params are those of a plain block and only the taken branch runs.
  (Window masks inside the full-attention rows would cost those rows' length squared in every windowed block:
  measured on CPU, a tower of 8 images 1.2x slower at 224 px and 1.9x at 448 px.)
  """

  config: VisionConfig
  dtype: Dtype | None
  backend: str

  @nn.compact
  def __call__(self, carry, per_layer, angles, packing, window_packing):
    x, captured = carry
    full_attention, slot = per_layer
    c = self.config

    def run(packing):
      return lambda module, x: layers.TransformerBlock(
        num_heads=c.num_heads, num_kv_heads=c.num_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim, norm=c.norm,
        activation=c.activation, gated_mlp=c.gated_mlp, mlp_bias=True, qkv_bias=True, out_bias=True,
        rope_compute_dtype=jnp.float32, norm_eps=c.norm_eps, backend=self.backend, dtype=self.dtype, name="block",
      )(x, angles, packing=packing)

    if window_packing is None:
      x = run(packing)(self, x)
    else:
      x = nn.cond(full_attention, run(packing), run(window_packing), self, x)
    if captured is not None:
      stored = jax.lax.dynamic_update_index_in_dim(captured, x.astype(captured.dtype), jnp.maximum(slot, 0), 0)
      captured = jnp.where(slot >= 0, stored, captured)
    return (x, captured), None


class VisionTower(nn.Module):
  """`__call__(inputs: VisionInputs) -> (features [N, U, D], deepstack: tuple of [N, U, D])`, U = P / merge_size**2
  per prompt; `deepstack` is in ViT-block order (sorted `deepstack_indexes`), the order the decoder layers take
  it in.

  Features come out in item order, prompt by prompt. Attention runs on the host-packed rows of
  `inputs.packing` (Qwen2.5-VL windowed blocks: `inputs.window_packing`), never on a [P, P] score matrix.
  Submodules: 'patch_embed' (kernel [C*T*p*p, width]), 'pos_embed' (Qwen3-VL, [N, width]), 'blocks' (scanned,
  params stacked on a leading 'layers' axis), 'merger', 'deepstack_merger_<k>'.
  """

  config: VisionConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"

  @nn.compact
  def __call__(self, inputs: VisionInputs) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    c = self.config
    patches = jnp.asarray(inputs.patches)
    if patches.ndim != 3 or patches.shape[-1] != c.patch_dim:
      raise ValueError(f"VisionTower: patches must be [N, P, {c.patch_dim}], got {patches.shape}")
    unit = c.merge_size**2
    if patches.shape[1] % unit:
      raise ValueError(f"VisionTower: the patch count per prompt {patches.shape[1]} must be a multiple of {unit}")
    if c.window_size and inputs.window_packing is None:
      raise ValueError("VisionTower: this config has window attention (window_size > 0) but "
                       "inputs.window_packing is None; build the inputs with `vision_layout.vision_inputs`")
    # Like the Conv3d, normalized pixels are cast to the compute dtype before the projection
    # (transformers `PatchEmbed.forward`).
    x = layers.Dense(c.width, axes=("patch", "embed"), use_bias=c.patch_bias, dtype=self.dtype,
                     name="patch_embed")(patches.astype(self.dtype or patches.dtype))
    if c.num_position_embeddings:
      table = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (c.num_position_embeddings, c.width), jnp.float32)
      taps = jnp.take(table, jnp.asarray(inputs.pos_interp_index), axis=0)  # [N, P, 4, C]
      weights = jnp.asarray(inputs.pos_interp_weight, jnp.float32)[..., None]
      x = x + jnp.sum(taps.astype(jnp.float32) * weights, axis=-2).astype(x.dtype)
    angles = layers.vision_rope_2d_angles(jnp.asarray(inputs.patch_hw), c.head_dim, c.rope_theta)
    packing = jax.tree.map(jnp.asarray, inputs.packing)
    window_packing = jax.tree.map(jnp.asarray, inputs.window_packing) if c.window_size else None

    full_attention = jnp.array([i in c.fullatt_block_indexes or not c.window_size for i in range(c.depth)])
    slots = jnp.array([c.deepstack_indexes.index(i) if i in c.deepstack_indexes else -1 for i in range(c.depth)])
    captured = jnp.zeros((len(c.deepstack_indexes), *x.shape), x.dtype) if c.deepstack_indexes else None
    block = layers.remat(_VisionBlock, self.remat)
    (x, captured), _ = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=c.depth,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, self.backend, name="blocks")((x, captured), (full_attention, slots), angles, packing,
                                                  window_packing)

    features = PatchMerger(c.out_dim, c.merge_size, c.norm, eps=c.norm_eps, dtype=self.dtype, name="merger")(x)
    deepstack = tuple(
      PatchMerger(c.out_dim, c.merge_size, "layer", postshuffle_norm=True, eps=c.norm_eps, dtype=self.dtype,
                  name=f"deepstack_merger_{k}")(captured[k])
      for k in range(len(c.deepstack_indexes))
    )
    # transformers' `Qwen3VLVisionModel.forward` gives block deepstack_indexes[k] to merger k but collects the
    # results while walking the blocks, and decoder layer j adds the j-th: the decoder sees them in block order.
    deepstack = tuple(deepstack[k] for k in sorted(range(len(deepstack)), key=c.deepstack_indexes.__getitem__))
    return features, deepstack
