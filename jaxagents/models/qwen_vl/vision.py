"""The Qwen-VL vision tower (Qwen2-VL, arXiv 2409.12191 Sec. 2.1; Qwen2.5-VL, arXiv 2502.13923 Sec. 2.1;
Qwen3-VL, arXiv 2511.21631, DeepStack), composed from the shared layers. Reference: transformers
`Qwen2VisionTransformerPretrainedModel`, `Qwen2_5_VisionTransformerPretrainedModel`, `Qwen3VLVisionModel`.

patches -> 3-D patch embed (a Dense over the flattened (C, T, p, p) patch: the Conv3d with stride = kernel) ->
[+ interpolated learned positions (Qwen3-VL)] -> `depth` pre-norm blocks with 2-D rotary attention inside each
(item, frame group) segment [Qwen2.5-VL: inside windows, except `fullatt_block_indexes`] -> 2x2 patch merger ->
[U, D_text]. Qwen3-VL also returns DeepStack features: the hidden states after the blocks
`deepstack_indexes`, each through its own merger with a post-shuffle LayerNorm.

The sequence is one flat list of patches of every image and video in the batch, laid out on the host by
`vision_layout.vision_inputs` (segments instead of cu_seqlens, static padded shapes).
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
    """x: [P, C] (P a multiple of merge_size**2, in merge-block order) -> [P / merge_size**2, out_dim]."""
    unit = self.merge_size**2
    width = x.shape[-1] * unit
    norm = layers.make_norm(self.norm, self.eps, self.dtype, jnp.float32, name="norm")
    x = norm(x.reshape(-1, width)) if self.postshuffle_norm else norm(x).reshape(-1, width)
    x = layers.Dense(width, axes=("embed", "mlp"), use_bias=True, dtype=self.dtype, name="fc1")(x)
    x = layers.activation("gelu")(x)
    return layers.Dense(self.out_dim, axes=("mlp", "embed"), use_bias=True, dtype=self.dtype, name="fc2")(x)


class _VisionBlock(nn.Module):
  """One ViT block in `nn.scan` form; also stores its output into the DeepStack buffer at `slot` (>= 0)."""

  config: VisionConfig
  dtype: Dtype | None
  backend: str

  @nn.compact
  def __call__(self, carry, per_layer, angles, segment_ids, window_segment_ids):
    x, captured = carry
    full_attention, slot = per_layer
    c = self.config
    segments = segment_ids if window_segment_ids is None else jnp.where(full_attention, segment_ids,
                                                                         window_segment_ids)
    x = layers.TransformerBlock(
      num_heads=c.num_heads, num_kv_heads=c.num_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim, norm=c.norm,
      activation=c.activation, gated_mlp=c.gated_mlp, mlp_bias=True, qkv_bias=True, out_bias=True,
      rope_compute_dtype=jnp.float32, norm_eps=c.norm_eps, backend=self.backend, dtype=self.dtype, name="block",
    )(x[None], angles[None], q_segment_ids=segments[None], kv_segment_ids=segments[None])[0]
    if captured is not None:
      stored = jax.lax.dynamic_update_index_in_dim(captured, x.astype(captured.dtype), jnp.maximum(slot, 0), 0)
      captured = jnp.where(slot >= 0, stored, captured)
    return (x, captured), None


class VisionTower(nn.Module):
  """`__call__(inputs: VisionInputs) -> (features [U, D], deepstack: tuple of [U, D])`, U = P / merge_size**2;
  `deepstack` is in ViT-block order (sorted `deepstack_indexes`), the order the decoder layers take it in.

  Features come out in item order (the window permutation of Qwen2.5-VL is undone). Submodules: 'patch_embed'
  (kernel [C*T*p*p, width]), 'pos_embed' (Qwen3-VL, [N, width]), 'blocks' (scanned, params stacked on a leading
  'layers' axis), 'merger', 'deepstack_merger_<k>'.
  """

  config: VisionConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"

  @nn.compact
  def __call__(self, inputs: VisionInputs) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    c = self.config
    patches = jnp.asarray(inputs.patches)
    if patches.ndim != 2 or patches.shape[-1] != c.patch_dim:
      raise ValueError(f"VisionTower: patches must be [P, {c.patch_dim}], got {patches.shape}")
    unit = c.merge_size**2
    if patches.shape[0] % unit:
      raise ValueError(f"VisionTower: the patch count {patches.shape[0]} must be a multiple of {unit}")
    # Like the Conv3d, normalized pixels are cast to the compute dtype before the projection
    # (transformers `PatchEmbed.forward`).
    x = layers.Dense(c.width, axes=("patch", "embed"), use_bias=c.patch_bias, dtype=self.dtype,
                     name="patch_embed")(patches.astype(self.dtype or patches.dtype))
    if c.num_position_embeddings:
      table = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (c.num_position_embeddings, c.width), jnp.float32)
      taps = jnp.take(table, jnp.asarray(inputs.pos_interp_index), axis=0)  # [P, 4, C]
      weights = jnp.asarray(inputs.pos_interp_weight, jnp.float32)[..., None]
      x = x + jnp.sum(taps.astype(jnp.float32) * weights, axis=1).astype(x.dtype)
    angles = layers.vision_rope_2d_angles(jnp.asarray(inputs.patch_hw), c.head_dim, c.rope_theta)
    segment_ids = jnp.asarray(inputs.segment_ids)
    window_segment_ids = None
    if c.window_size:
      window_index = jnp.asarray(inputs.window_index)
      order = (window_index[:, None] * unit + jnp.arange(unit)).reshape(-1)
      x, angles, segment_ids = x[order], angles[order], segment_ids[order]
      window_segment_ids = jnp.asarray(inputs.window_segment_ids)

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
    )(c, self.dtype, self.backend, name="blocks")((x, captured), (full_attention, slots), angles, segment_ids,
                                                  window_segment_ids)

    features = PatchMerger(c.out_dim, c.merge_size, c.norm, eps=c.norm_eps, dtype=self.dtype, name="merger")(x)
    deepstack = tuple(
      PatchMerger(c.out_dim, c.merge_size, "layer", postshuffle_norm=True, eps=c.norm_eps, dtype=self.dtype,
                  name=f"deepstack_merger_{k}")(captured[k])
      for k in range(len(c.deepstack_indexes))
    )
    # transformers' `Qwen3VLVisionModel.forward` gives block deepstack_indexes[k] to merger k but collects the
    # results while walking the blocks, and decoder layer j adds the j-th: the decoder sees them in block order.
    deepstack = tuple(deepstack[k] for k in sorted(range(len(deepstack)), key=c.deepstack_indexes.__getitem__))
    if c.window_size:
      restore = jnp.argsort(window_index)
      features = features[restore]
      deepstack = tuple(d[restore] for d in deepstack)
    return features, deepstack
