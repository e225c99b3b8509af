"""The Wan 2.1 video diffusion transformer (Wan team 2025, arXiv 2503.20314, Sec. 3.1.2), composed from the
shared layers; latents are channels-last.

    velocity = WanDiT(config).apply({'params': params}, latents, timesteps, text, image)

Reference: diffusers `src/diffusers/models/transformers/transformer_wan.py`, `WanTransformer3DModel` (with
`WanTransformerBlock`, `WanAttention` + `WanAttnProcessor`, `WanRotaryPosEmbed`, `WanTimeTextImageEmbedding`,
`WanImageEmbedding`). Data flow (B batch, N = T' H' W' video tokens, L text tokens, E = num_heads * head_dim):
  1. patchify: [B, T, H, W, C] -> [B, N, pt ph pw C] tokens in (t, h, w) order, then one Linear ('patch_embed';
     the reference's Conv3d with stride = kernel = patch_size is the same map).
  2. 3D RoPE: the rotary dims of each head are split over (t, h, w) (`config.rope_axes`), each axis with its own
     frequency ladder `theta ** (-2j / d_a)` at the token's grid index (`layers.multi_axis_rope_angles`),
     rotating interleaved pairs (2j, 2j + 1).
  3. conditions: the timestep's sinusoid (cos first) -> Linear-SiLU-Linear = temb [B, E]; `time_proj`
     Linear(SiLU(temb)) -> six [B, E] vectors shared by all blocks; text features -> Linear-GELU(tanh)-Linear
     [B, L, E]; I2V image tokens -> LayerNorm, Linear-GELU-Linear, LayerNorm [B, M, E].
  4. blocks (`WanBlock`, `nn.scan`ned): each adds its own learned `scale_shift_table` [6, E] to the shared six
     vectors (shift, scale, gate of the self-attention; shift, scale, gate of the FFN), then
       x += gate * self_attn(modulate(LN(x)))           q, k RMSNormed over all heads (not per head), RoPE
       x += cross_attn(LN_affine(x) or x, text, image)  no modulation, no gate; I2V adds a second attention of the
                                                        same queries over the image tokens' own k, v
       x += gate' * ffn(modulate'(LN(x)))               tanh-GELU MLP
  5. out: LN(x) modulated by (shift, scale) = `scale_shift_table` [2, E] + temb, one Linear, unpatchify.

The reference computes the norms, modulation and residual adds in float32 and casts back to the stream dtype; we
do the same (`_residual`), so a bf16 stream stays bf16 across the scan. Its I2V processor splits one
concatenated context at a hard-coded 512 text tokens; we take the image tokens as their own argument, which is
the same computation when the text has 512 tokens. Wan 2.2's per-token timesteps are not implemented.

Blocks are `nn.scan`ned by default (params stacked on a leading 'layers' axis), each wrapped in `nn.remat` under
`config.remat_policy`; `scan_layers=False` unrolls them into 'blocks_{i}' (`unstack_blocks` converts).
`control_residuals` [K, B, N, E] (a ControlNet's, `controlnet.py`) are added to x after each of the first K blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import layers
from jaxagents.layers.multi_axis_rope import multi_axis_rope_angles
from jaxagents.models.mmdit.model import TimestepEmbedding
from jaxagents.models.wan_dit.config import WanDiTConfig

Dtype = Any
_TOKENS = ("activation_batch", "activation_length", "activation_embed")


def patchify(latents: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """[B, T, H, W, C] -> [B, T/pt * H/ph * W/pw, pt * ph * pw * C], tokens in (t, h, w) order, features (pt, ph,
  pw, C)."""
  b, t, h, w, c = latents.shape
  p_t, p_h, p_w = patch_size
  x = latents.reshape(b, t // p_t, p_t, h // p_h, p_h, w // p_w, p_w, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, p_t * p_h * p_w * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], patch_size: tuple[int, int, int]) -> jax.Array:
  """The inverse of `patchify`: [B, T' H' W', pt ph pw C] -> [B, T' pt, H' ph, W' pw, C]."""
  (t, h, w), (p_t, p_h, p_w) = grid, patch_size
  b = tokens.shape[0]
  x = tokens.reshape(b, t, h, w, p_t, p_h, p_w, -1)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * p_t, h * p_h, w * p_w, -1)


def video_rope_angles(grid: tuple[int, int, int], config: WanDiTConfig) -> jax.Array:
  """[T' H' W', head_dim // 2] rotary angles of the token grid (diffusers `WanRotaryPosEmbed.forward`)."""
  ids = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), axis=-1).reshape(-1, 3)
  return multi_axis_rope_angles(ids, config.rope_axes, config.rope_theta)


def _residual(x: jax.Array, update: jax.Array) -> jax.Array:
  return (x.astype(jnp.float32) + update.astype(jnp.float32)).astype(x.dtype)


def _modulated_norm(x, shift, scale, eps, dtype):
  """LN(x) * (1 + scale) + shift in float32, cast to the stream dtype (the reference's `norm1`, `norm3`)."""
  normed = layers.LayerNorm(eps=eps, use_bias=False, use_scale=False, dtype=jnp.float32)(x)
  return layers.modulate(normed, shift, scale).astype(dtype or x.dtype)


class WanAttention(nn.Module):
  """Attention with biased q/k/v/o and RMSNorm over all heads on q and k (diffusers `WanAttention`).

  Self-attention (`context` None) rotates q and k by `angles`; cross-attention reads k, v from `context`
  [B, L, E], and with `image_branch` also attends with the same queries over `image` [B, M, E] through its own
  'img_k', 'img_v' and 'img_k_norm' (I2V), the two outputs summed before 'o'.
  """

  num_heads: int
  head_dim: int
  eps: float
  backend: str = "auto"
  image_branch: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, context=None, angles=None, image=None):
    width = self.num_heads * self.head_dim
    kw = dict(use_bias=True, dtype=self.dtype)

    def project(name, source, axes, norm=None):
      y = layers.Dense(width, axes=axes, name=name, **kw)(source)
      if norm is not None:
        y = layers.RMSNorm(eps=self.eps, dtype=self.dtype, name=norm)(y)
      y = y.reshape(*y.shape[:2], self.num_heads, self.head_dim)
      return nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_heads", "head_dim"))

    kv_source = x if context is None else context
    q = project("q", x, ("embed", "heads"), "q_norm")
    k = project("k", kv_source, ("embed", "kv_heads"), "k_norm")
    v = project("v", kv_source, ("embed", "kv_heads"))
    if angles is not None:
      q, k = (layers.apply_rope(t, angles, style="interleaved", compute_dtype=jnp.float32) for t in (q, k))
    q, k = q.astype(v.dtype), k.astype(v.dtype)
    out = layers.attention(q, k, v, backend=self.backend)
    if self.image_branch:
      k_img = project("img_k", image, ("embed", "kv_heads"), "img_k_norm").astype(v.dtype)
      v_img = project("img_v", image, ("embed", "kv_heads"))
      out = out + layers.attention(q, k_img, v_img, backend=self.backend)
    out = out.reshape(*out.shape[:2], width)
    return layers.Dense(x.shape[-1], axes=("heads", "embed"), name="o", **kw)(out)


class WanBlock(nn.Module):
  """One block on x [B, N, E] (module docstring, step 4; diffusers `WanTransformerBlock`).

  `time_mod` [B, 6, E] float32 are the shared modulation vectors, `context` is (text [B, L, E], image [B, M, E] or
  None), `angles` [N, head_dim // 2]. Returns (x, None) for `nn.scan`, or (x, x) with `return_hidden` (the
  ControlNet collects every block's output as the scan's stacked output).

  With `control_residuals` [K, B, N, E], block `layer` (an int or a 0-d int array: the scan index) adds
  `control_scale[:, None, None] * control_residuals[layer]` to its output when `layer < K`, and returns x unchanged
  otherwise (ControlNet residuals, see `controlnet.py`).
  """

  config: WanDiTConfig
  dtype: Dtype | None = None
  return_hidden: bool = False

  @nn.compact
  def __call__(self, x, time_mod, context, angles, control_residuals=None, control_scale=None, layer=None):
    c, dtype = self.config, self.dtype
    x = nn.with_logical_constraint(x, _TOKENS)
    text, image = context
    table = self.param(
      "scale_shift_table", nn.with_logical_partitioning(nn.initializers.normal(c.width**-0.5), (None, "embed")),
      (6, c.width), jnp.float32,
    )
    mods = table[None] + time_mod.astype(jnp.float32)
    shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (mods[:, i] for i in range(6))
    attn = dict(num_heads=c.num_heads, head_dim=c.head_dim, eps=c.eps, backend=c.attention_backend, dtype=dtype)

    h = _modulated_norm(x, shift, scale, c.eps, dtype)
    x = _residual(x, WanAttention(name="self_attn", **attn)(h, angles=angles) * gate[:, None])
    h = layers.LayerNorm(eps=c.eps, dtype=dtype, name="norm2")(x) if c.cross_attn_norm else x
    cross = WanAttention(image_branch=c.image_dim is not None, name="cross_attn", **attn)
    x = _residual(x, cross(h, context=text, image=image))
    h = _modulated_norm(x, ffn_shift, ffn_scale, c.eps, dtype)
    ffn = layers.MLP(c.ffn_dim, activation="gelu_tanh", use_bias=True, dtype=dtype, name="ffn")
    x = _residual(x, ffn(h) * ffn_gate[:, None])
    if control_residuals is not None:
      num_control = control_residuals.shape[0]
      # A dynamic index, so the same scanned body serves every layer; layers past K keep x as it is.
      residual = jax.lax.dynamic_index_in_dim(control_residuals, jnp.minimum(layer, num_control - 1), keepdims=False)
      controlled = _residual(x, residual.astype(jnp.float32) * control_scale[:, None, None])
      x = jnp.where(layer < num_control, controlled, x)
    x = nn.with_logical_constraint(x, _TOKENS)
    return x, (x if self.return_hidden else None)


class ImageEmbedding(nn.Module):
  """I2V image tokens [B, M, image_dim] -> [B, M, E]: (+ 'pos_embed'), LayerNorm, Linear-GELU-Linear, LayerNorm
  (diffusers `WanImageEmbedding`; its LayerNorms have affine params and eps 1e-5)."""

  config: WanDiTConfig
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    c = self.config
    if c.pos_embed_seq_len is not None:
      pos = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None)),
                       (c.pos_embed_seq_len, c.image_dim), jnp.float32)
      image = image + pos.astype(image.dtype)
    h = layers.LayerNorm(eps=1e-5, dtype=self.dtype, name="norm1")(image)
    h = layers.MLP(c.image_dim, activation="gelu", out_features=c.width, dtype=self.dtype, name="ff")(h)
    return layers.LayerNorm(eps=1e-5, dtype=self.dtype, name="norm2")(h)


class WanInputs(NamedTuple):
  """What the blocks read, embedded from the model inputs by `embed_inputs`."""

  tokens: jax.Array  # [B, N, E] patch-embedded latents
  temb: jax.Array  # [B, E] timestep embedding (the output layer's modulation)
  time_mod: jax.Array  # [B, 6, E] the blocks' shared modulation vectors
  context: tuple[jax.Array, jax.Array | None]  # (text [B, L, E], image [B, M, E] or None)
  angles: jax.Array  # [N, head_dim // 2] rotary angles
  grid: tuple[int, int, int]  # (T', H', W') token grid


def embed_inputs(config: WanDiTConfig, dtype: Dtype | None, latents, timesteps, text, image, caller: str = "WanDiT"):
  """Checks the inputs (errors name `caller`) and embeds them (module docstring, steps 1-3) into `WanInputs`.

  Called inside a compact `__call__`: the submodules it creates ('patch_embed', 'time_embed', 'time_proj',
  'text_embed', 'image_embed') belong to the calling module, so `WanDiT` and the ControlNet's copy share one
  param layout.
  """
  c = config
  if latents.ndim != 5 or latents.shape[-1] != c.in_channels:
    raise ValueError(f"{caller}: `latents` must have shape [B, T, H, W, in_channels={c.in_channels}], got "
                     f"{latents.shape}")
  batch = latents.shape[0]
  grid = tuple(n // p for n, p in zip(latents.shape[1:4], c.patch_size, strict=True))
  if any(n % p for n, p in zip(latents.shape[1:4], c.patch_size, strict=True)) or min(grid) < 1:
    raise ValueError(f"{caller}: `latents` (T, H, W) = {latents.shape[1:4]} must be positive multiples of "
                     f"patch_size={c.patch_size}")
  if max(grid) > c.rope_max_seq_len:
    raise ValueError(f"{caller}: the token grid {grid} exceeds rope_max_seq_len={c.rope_max_seq_len}")
  timesteps = jnp.asarray(timesteps)
  if timesteps.shape != (batch,):
    raise ValueError(f"{caller}: `timesteps` must have shape [B={batch}], got {timesteps.shape}")
  if text.ndim != 3 or text.shape[0] != batch or text.shape[-1] != c.text_dim:
    raise ValueError(f"{caller}: `text` must have shape [B={batch}, L, text_dim={c.text_dim}], got {text.shape}")
  if c.image_dim is None and image is not None:
    raise ValueError(f"{caller}: `image` must be None without `config.image_dim` (a T2V config)")
  if c.image_dim is not None:
    image_len = c.pos_embed_seq_len or (image.shape[1] if image is not None and image.ndim == 3 else "M")
    if image is None or image.shape != (batch, image_len, c.image_dim):
      raise ValueError(f"{caller}: `image` must have shape [B={batch}, {image_len}, image_dim={c.image_dim}], got "
                       f"{None if image is None else image.shape}")

  width = c.width
  x = layers.Dense(width, axes=(None, "embed"), use_bias=True, dtype=dtype, name="patch_embed")(
    patchify(latents, c.patch_size)
  )
  x = nn.with_logical_constraint(x, _TOKENS)
  angles = video_rope_angles(grid, c)
  temb = TimestepEmbedding(width, channels=c.freq_dim, scale=1.0, use_bias=True, dtype=dtype, name="time_embed")(
    timesteps
  )
  # Pinned to the activation layout (batch split, E whole), as `mmdit.model._pinned` explains: the 'mlp'-split
  # output of the projection must not spread into the token stream.
  time_mod = nn.with_logical_constraint(
    jnp.stack(layers.AdaLNModulation(6, zero_init=False, use_bias=True, dtype=dtype, name="time_proj")(temb), 1),
    ("activation_batch", None, "activation_embed"),
  )
  text_h = layers.MLP(width, activation="gelu_tanh", out_features=width, dtype=dtype, name="text_embed")(text)
  text_h = nn.with_logical_constraint(text_h, _TOKENS)
  image_h = None if c.image_dim is None else ImageEmbedding(c, dtype, name="image_embed")(image)
  return WanInputs(x, temb, time_mod, (text_h, image_h), angles, grid)


class WanDiT(nn.Module):
  """The Wan DiT under `config` (module docstring). Submodules: 'patch_embed', 'time_embed', 'time_proj',
  'text_embed', 'image_embed' (I2V), 'blocks' (or 'blocks_{i}'), 'proj_out'; param 'scale_shift_table' [2, E].

  Attributes:
    config: a `WanDiTConfig`.
    dtype: compute dtype (None: promote inputs and float32 params).
  """

  config: WanDiTConfig
  dtype: Dtype | None = None

  @nn.compact
  def __call__(
    self,
    latents: jax.Array,
    timesteps: jax.Array,
    text: jax.Array,
    image: jax.Array | None = None,
    control_residuals: jax.Array | Sequence[jax.Array] | None = None,
    control_scale: float | jax.Array = 1.0,
  ) -> jax.Array:
    """Predicts the flow-matching velocity of the latent video.

    Args:
      latents: [B, T, H, W, in_channels] channels-last latent video; T, H, W multiples of `patch_size`.
      timesteps: [B] diffusion timesteps on the scheduler's scale (flow matching: sigma * 1000).
      text: [B, L, text_dim] text-encoder features (umT5; padding positions zeroed, as the Wan pipeline does).
      image: [B, M, image_dim] image-encoder tokens when `config.image_dim` is set (I2V; with `pos_embed_seq_len`
        M = pos_embed_seq_len, the first and last frames' tokens concatenated), else None.
      control_residuals: ControlNet residuals [K, B, N, E] (or K arrays [B, N, E]), K <= num_layers: residual k is
        added to the hidden state after block k (`controlnet.WanFlowControlNet`). None: the plain model.
      control_scale: scalar or [B] weight of the residuals (0 for a sample: that sample is the plain model's).
    Returns:
      [B, T, H, W, out_channels].
    """
    c, dtype = self.config, self.dtype
    inputs = embed_inputs(c, dtype, latents, timesteps, text, image)
    x = inputs.tokens
    if control_residuals is None:
      x, _ = self._blocks()(x, inputs.time_mod, inputs.context, inputs.angles)
    else:
      residuals, scale = _check_control(c, x.shape, control_residuals, control_scale)
      x, _ = self._blocks(controlled=True)(x, inputs.time_mod, inputs.context, inputs.angles, residuals, scale)

    width = c.width
    table = self.param(
      "scale_shift_table", nn.with_logical_partitioning(nn.initializers.normal(width**-0.5), (None, "embed")),
      (2, width), jnp.float32,
    )
    mods = table[None] + inputs.temb.astype(jnp.float32)[:, None]
    h = _modulated_norm(x, mods[:, 0], mods[:, 1], c.eps, dtype)
    out = layers.Dense(c.out_features, axes=("embed", None), use_bias=True, dtype=dtype, name="proj_out")(h)
    return unpatchify(out, inputs.grid, c.patch_size)

  def _blocks(self, controlled: bool = False):
    """The blocks as one callable `(x, time_mod, context, angles[, residuals, scale]) -> (x, None)`: scanned or
    unrolled. `controlled` adds the ControlNet residuals [K, B, N, E] with scale [B] after the first K blocks."""
    c = self.config
    block_cls = layers.remat(WanBlock, c.remat_policy)
    if c.scan_layers:
      broadcast = (nn.broadcast,) * (5 if controlled else 3)
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(*broadcast, 0) if controlled else broadcast,
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )(c, self.dtype, name="blocks")
      if not controlled:
        return stack
      # The layer index is the scanned input that picks each block's residual.
      return lambda x, *args: stack(x, *args, jnp.arange(c.num_layers))
    blocks = [block_cls(c, self.dtype, name=f"blocks_{i}") for i in range(c.num_layers)]

    def run(x, time_mod, context, angles, residuals=None, scale=None):
      for i, block in enumerate(blocks):
        if residuals is not None and i < residuals.shape[0]:
          x, _ = block(x, time_mod, context, angles, residuals, scale, i)
        else:
          x, _ = block(x, time_mod, context, angles)
      return x, None

    return run


def _check_control(config: WanDiTConfig, tokens_shape, control_residuals, control_scale):
  """`control_residuals` stacked to [K, B, N, E] and `control_scale` broadcast to [B] float32, or a ValueError
  naming the argument, the expected and the actual shape."""
  residuals = control_residuals
  if isinstance(residuals, (list, tuple)):
    if not residuals or any(jnp.shape(r) != tuple(tokens_shape) for r in residuals):
      raise ValueError(f"WanDiT: `control_residuals` given as a sequence must hold 1 to num_layers="
                       f"{config.num_layers} arrays of shape [B, N, E]={tuple(tokens_shape)}, got "
                       f"{[jnp.shape(r) for r in residuals]}")
    residuals = jnp.stack(residuals)
  residuals = jnp.asarray(residuals)
  if residuals.ndim != 4 or residuals.shape[1:] != tuple(tokens_shape) or not 1 <= residuals.shape[0] <= (
    config.num_layers
  ):
    raise ValueError(f"WanDiT: `control_residuals` must have shape [K, B, N, E] = [1..{config.num_layers}, "
                     f"{', '.join(map(str, tokens_shape))}], got {residuals.shape}")
  batch = tokens_shape[0]
  scale = jnp.asarray(control_scale, jnp.float32)
  if scale.shape not in ((), (batch,)):
    raise ValueError(f"WanDiT: `control_scale` must be a scalar or have shape [B={batch}], got {scale.shape}")
  return residuals, jnp.broadcast_to(scale, (batch,))


def unstack_blocks(params: dict[str, Any], config: WanDiTConfig) -> dict[str, Any]:
  """Scanned params ('blocks' stacked on axis 0) -> the `scan_layers=False` layout ('blocks_{i}')."""
  params = dict(params)
  if "blocks" in params:
    stacked = params.pop("blocks")
    for i in range(config.num_layers):
      params[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
