"""The MMDiT (Esser et al. 2024, arXiv 2403.03206, Sec. 4) of FLUX.2 and Lens, composed from the shared layers.

    velocity = MMDiT(config).apply({'params': params}, img, txt, sigma, img_ids, txt_ids, txt_mask)

Data flow (B batch, N image tokens, T text tokens, E = num_heads * head_dim):
  1. time: `TimestepEmbedding` of sigma * 1000 (sinusoid with cos first, then Linear-SiLU-Linear), plus the same
     embedding of the guidance scale when `guidance_embeds` (FLUX.2-dev).
  2. text in: `text_layers` feature tensors, each RMSNormed when `text_norm` (Lens), concatenated, one Linear.
     Image in: one Linear of the patchified latent tokens.
  3. RoPE: `layers.multi_axis_rope` angles of the given ids (FLUX.2: (t, h, w, l); Lens: centred MSRoPE ids).
  4. dual-stream blocks (`DoubleStreamBlock`, `nn.scan`ned): per stream adaLN (shift/scale/gate, DiT arXiv
     2212.09748 Sec. 3.2) around `layers.JointAttention` and a per-stream MLP; they carry (txt, img).
  5. single-stream blocks (`SingleStreamBlock`, FLUX.2 only): the concatenated sequence through a parallel
     attention + MLP block (ViT-22B, arXiv 2302.05442, Sec. 2), the text slice dropped afterwards.
  6. out: LayerNorm without affine modulated by (scale, shift) from the time embedding, then a Linear
     (diffusers `AdaLayerNormContinuous` + `proj_out`).

The two configurations, against the reference implementations:
  * FLUX.2 (diffusers `src/diffusers/models/transformers/transformer_flux2.py`, `Flux2Transformer2DModel`): no
    biases anywhere; LayerNorm without affine in the blocks; the modulations are three Linears shared by all
    blocks (`double_stream_modulation_img/_txt`, `single_stream_modulation`); joint order (txt, img); SwiGLU
    MLPs of width 3E; RoPE axes (32, 32, 32, 32) with theta 2000.
  * Lens (diffusers `src/diffusers/models/transformers/transformer_lens.py`, `LensTransformer2DModel`): 48
    dual-stream blocks with their own biased modulation Linears, RMSNorm (with scale) pre-norms, biased fused
    qkv and out projections, joint order (img, txt), SwiGLU 4096 (`GateMLP`), text projector 4 x RMSNorm(2880)
    -> concat -> Linear, no guidance embedding; RoPE axes (8, 28, 28), theta 1e4, with centred MSRoPE ids.
  Text padding is a key mask (`txt_mask`) in every block; image keys are always valid. This departs from the
  diffusers Lens port (huggingface/diffusers commit d004842010, `LensTransformerBlock.forward`), whose blocks pop
  'attention_mask' out of the one kwargs dict they share, so that only its first block masks text padding and
  its output depends on the padding. Lens' QK-norm eps is 1e-6 in diffusers (we keep it, `norm_eps`) but 1e-5 in
  stable-diffusion.cpp `src/lens.hpp` [R: not checked against Microsoft's original code]. The references clip
  the residual streams to the float16 range in float16; we never compute in float16 and do not clip.

Blocks are `nn.scan`ned by default (params stacked on a leading 'layers' axis), each wrapped in `nn.remat` under
`config.remat_policy`; `scan_layers=False` unrolls them into 'double_blocks_{i}' / 'single_blocks_{i}'
(`unstack_blocks` converts a scanned param tree to that layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import layers
from jaxagents.layers.joint_attention import JointAttention
from jaxagents.layers.multi_axis_rope import multi_axis_rope_angles
from jaxagents.models.mmdit.config import MMDiTConfig

Dtype = Any
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
_BLOCK_NAMES = ("double_blocks", "single_blocks")


def _pinned(vectors: Sequence[jax.Array]) -> list[jax.Array]:
  """adaLN vectors [B, E] (shift, scale, gate), pinned to the activation layout: batch split, embedding whole.

  Computed by a Linear whose output axis is 'mlp', they come out split over `tensor` along E; left free, that split
  spreads into the token streams, and XLA's SPMD partitioner (jax 0.10.2, Shardy and GSPMD alike) miscomputes a dot
  with lhs [B, S, K] split (data, fsdp) x tensor, rhs [K, N] split tensor x fsdp and output N on tensor: it permutes
  the lhs batch to (fsdp, data) and never permutes it back, so batch shards 1 and 2 swap. Our out-projections
  forward and the q/k/v and MLP-in input gradients backward are such dots when the stream is short (text shorter
  than the image, short joint sequences) on a data x fsdp x tensor mesh.
  """
  return [nn.with_logical_constraint(v, ("activation_batch", "activation_embed")) for v in vectors]


def _norm(config: MMDiTConfig, dtype: Dtype | None, name: str) -> nn.Module:
  if config.norm == "rms":
    return layers.RMSNorm(eps=config.norm_eps, dtype=dtype, name=name)
  return layers.LayerNorm(eps=config.norm_eps, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _mlp(config: MMDiTConfig, dtype: Dtype | None, name: str) -> nn.Module:
  cls = layers.GatedMLP if config.gated_mlp else layers.MLP
  return cls(config.mlp_dim, activation=config.mlp_activation, use_bias=config.mlp_bias, dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
  """t: [B] -> [B, features] = linear_2(silu(linear_1(sinusoid(t * scale)))) (diffusers `embeddings.py`,
  `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)` + `TimestepEmbedding`)."""

  features: int
  channels: int = 256
  scale: float = 1000.0
  use_bias: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = layers.sinusoidal_timestep_embedding(
      jnp.asarray(t, jnp.float32) * self.scale, self.channels, flip_sin_to_cos=True, downscale_freq_shift=0.0
    )
    kw = dict(use_bias=self.use_bias, dtype=self.dtype)
    hidden = layers.Dense(self.features, axes=(None, "mlp"), name="linear_1", **kw)(emb)
    return layers.Dense(self.features, axes=("mlp", "embed"), name="linear_2", **kw)(jax.nn.silu(hidden))


class DoubleStreamBlock(nn.Module):
  """One dual-stream block on (txt [B, T, E], img [B, N, E]), returned in that order.

  Per stream s: `x_s += gate1 * attn_s(modulate(norm1(x_s)))`, `x_s += gate2 * mlp_s(modulate(norm2(x_s)))`, with
  attention joint over both streams. `cond` is the time embedding [B, E] when the block owns its modulation
  ('img_mod', 'txt_mod'; Lens), else a pair (img, txt) of six [B, E] modulation vectors each (FLUX.2), in the
  order shift1, scale1, gate1, shift2, scale2, gate2.
  """

  config: MMDiTConfig
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, streams, cond, angles, kv_masks):
    c, dtype = self.config, self.dtype
    txt, img = (nn.with_logical_constraint(x, _TOKENS) for x in streams)
    if c.shared_modulation:
      img_mod, txt_mod = cond
    else:
      img_mod, txt_mod = (
        layers.AdaLNModulation(6, use_bias=c.use_bias, dtype=dtype, name=f"{s}_mod")(cond) for s in ("img", "txt")
      )
    mods = {"txt": _pinned(txt_mod), "img": _pinned(img_mod)}
    x = {"txt": txt, "img": img}
    order = ("txt", "img") if c.text_first else ("img", "txt")
    normed = [layers.modulate(_norm(c, dtype, f"{s}_norm1")(x[s]), *mods[s][:2]) for s in order]
    attended = JointAttention(
      streams=order, num_heads=c.num_heads, head_dim=c.head_dim, qkv_bias=c.use_bias, out_bias=c.use_bias,
      norm_eps=c.norm_eps, backend=c.attention_backend, dtype=dtype, name="attn",
    )(normed, [angles[s] for s in order], [kv_masks[s] for s in order])
    for s, out in zip(order, attended, strict=True):
      shift1, scale1, gate1, shift2, scale2, gate2 = mods[s]
      h = x[s] + gate1[:, None] * out
      mlp_in = layers.modulate(_norm(c, dtype, f"{s}_norm2")(h), shift2, scale2)
      x[s] = nn.with_logical_constraint(h + gate2[:, None] * _mlp(c, dtype, f"{s}_mlp")(mlp_in), _TOKENS)
    return (x["txt"], x["img"]), None


class SingleStreamBlock(nn.Module):
  """One parallel block on the joint sequence x [B, S, E] (diffusers `Flux2SingleTransformerBlock`):
  `h = modulate(norm(x))`, `x += gate * (attn(h) + mlp(h))`; `cond` is the shared (shift, scale, gate).

  The reference fuses q/k/v with the MLP input and attention out with the MLP output into two Linears; without
  biases that is exactly `o(attn) + down(mlp)`, which `convert.py` splits the fused weights into.
  """

  config: MMDiTConfig
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, cond, angles, kv_mask):
    c, dtype = self.config, self.dtype
    x = nn.with_logical_constraint(x, _TOKENS)
    shift, scale, gate = _pinned(cond)
    h = layers.modulate(_norm(c, dtype, "norm")(x), shift, scale)
    attended = layers.SelfAttention(
      num_heads=c.num_heads, num_kv_heads=c.num_heads, head_dim=c.head_dim, qkv_bias=c.use_bias, out_bias=c.use_bias,
      qk_norm=True, norm_eps=c.norm_eps, rope_style="interleaved", rope_compute_dtype=jnp.float32,
      backend=c.attention_backend, dtype=dtype, name="attn",
    )(h, angles, kv_mask=kv_mask)
    out = x + gate[:, None] * (attended + _mlp(c, dtype, "mlp")(h))
    return nn.with_logical_constraint(out, _TOKENS), None


def _ids(name: str, ids: jax.Array, length: int, batch: int, axes: int) -> jax.Array:
  """[S, A] or [B|1, S, A] -> [B|1, S, A]."""
  ids = jnp.asarray(ids)
  if ids.ndim == 2:
    ids = ids[None]
  if ids.ndim != 3 or ids.shape[1:] != (length, axes) or ids.shape[0] not in (1, batch):
    raise ValueError(f"MMDiT: `{name}` must have shape [{length}, {axes}] or [B={batch}, {length}, {axes}], "
                     f"got {jnp.shape(ids)}")
  return ids


class MMDiT(nn.Module):
  """The MMDiT under `config` (module docstring). Submodules: 'time_embed', 'guidance_embed', 'txt_norm_{k}',
  'txt_in', 'img_in', 'double_mod_img' / 'double_mod_txt' / 'single_mod' (shared modulation), 'double_blocks',
  'single_blocks', 'norm_out', 'proj_out'.

  Attributes:
    config: an `MMDiTConfig`.
    dtype: compute dtype (None: promote inputs and float32 params).
  """

  config: MMDiTConfig
  dtype: Dtype | None = None

  @nn.compact
  def __call__(
    self,
    img: jax.Array,
    txt: jax.Array | Sequence[jax.Array],
    timesteps: jax.Array,
    img_ids: jax.Array,
    txt_ids: jax.Array,
    txt_mask: jax.Array | None = None,
    guidance: jax.Array | None = None,
  ) -> jax.Array:
    """Predicts the velocity of the image tokens.

    Args:
      img: [B, N, in_channels] patchified latent tokens.
      txt: [B, T, text_dim], or a sequence of `text_layers` such arrays (Lens: the selected GPT-OSS layers).
      timesteps: [B] sigma in [0, 1] (scaled by `timestep_scale` inside).
      img_ids: [N, A] or [B, N, A] position ids (A = len(rope_axes)), e.g. `layers.msrope_position_ids`.
      txt_ids: [T, A] or [B, T, A].
      txt_mask: [B, T] bool, False at padding text tokens (masked as keys), or None.
      guidance: [B] guidance scale, added as a second timestep embedding when `guidance_embeds` (None: the
        timestep alone, as the reference does); ignored without `guidance_embeds`.
    Returns:
      [B, N, patch_size**2 * out_channels].
    """
    c, dtype = self.config, self.dtype
    if img.ndim != 3 or img.shape[-1] != c.in_channels:
      raise ValueError(f"MMDiT: `img` must have shape [B, N, in_channels={c.in_channels}], got {img.shape}")
    batch, num_img = img.shape[:2]
    features = [txt] if isinstance(txt, (jax.Array, np.ndarray)) else list(txt)
    if len(features) != c.text_layers or any(
      f.ndim != 3 or f.shape[0] != batch or f.shape[2] != c.text_dim or f.shape[1] != features[0].shape[1]
      for f in features
    ):
      raise ValueError(
        f"MMDiT: `txt` must be {c.text_layers} array(s) of shape [B={batch}, T, text_dim={c.text_dim}], got "
        f"{[tuple(f.shape) for f in features]}"
      )
    num_txt = features[0].shape[1]
    timesteps = jnp.asarray(timesteps)
    if timesteps.shape != (batch,):
      raise ValueError(f"MMDiT: `timesteps` must have shape [B={batch}], got {timesteps.shape}")
    if txt_mask is not None and (txt_mask.shape != (batch, num_txt) or txt_mask.dtype != jnp.bool_):
      raise ValueError(f"MMDiT: `txt_mask` must be bool [B, T] = {(batch, num_txt)}, got "
                       f"{txt_mask.dtype}{txt_mask.shape}")
    axes = len(c.rope_axes)
    img_ids = _ids("img_ids", img_ids, num_img, batch, axes)
    txt_ids = _ids("txt_ids", txt_ids, num_txt, batch, axes)
    width = c.width
    lin = dict(use_bias=c.use_bias, dtype=dtype)

    time = dict(features=width, channels=c.time_channels, scale=c.timestep_scale, **lin)
    temb = TimestepEmbedding(name="time_embed", **time)(timesteps)
    if c.guidance_embeds:  # built even without guidance, so that `init` always creates its params
      given = guidance is not None
      embedded = TimestepEmbedding(name="guidance_embed", **time)(
        jnp.broadcast_to(guidance if given else 0.0, (batch,))
      )
      temb = temb + embedded if given else temb

    if c.text_norm:
      features = [layers.RMSNorm(eps=c.text_norm_eps, dtype=dtype, name=f"txt_norm_{k}")(f)
                  for k, f in enumerate(features)]
    txt_h = layers.Dense(width, axes=(None, "embed"), name="txt_in", **lin)(jnp.concatenate(features, axis=-1))
    img_h = layers.Dense(width, axes=(None, "embed"), name="img_in", **lin)(img)
    txt_h, img_h = (nn.with_logical_constraint(x, _TOKENS) for x in (txt_h, img_h))
    angles = {"txt": multi_axis_rope_angles(txt_ids, c.rope_axes, c.rope_theta),
              "img": multi_axis_rope_angles(img_ids, c.rope_axes, c.rope_theta)}
    kv_masks = {"txt": txt_mask, "img": None}

    def modulation(chunks, name):
      return layers.AdaLNModulation(chunks, use_bias=c.use_bias, dtype=dtype, name=name)(temb)

    if c.shared_modulation:  # built even for zero blocks of a kind, as the reference's checkpoints hold them
      double_cond = (modulation(6, "double_mod_img"), modulation(6, "double_mod_txt"))
      single_cond = modulation(3, "single_mod")
    else:
      double_cond, single_cond = temb, None
    if c.num_double_layers:
      (txt_h, img_h), _ = self._blocks(DoubleStreamBlock, "double_blocks", c.num_double_layers)(
        (txt_h, img_h), double_cond, angles, kv_masks
      )
    if c.num_single_layers:
      order = ("txt", "img") if c.text_first else ("img", "txt")
      joint = {"txt": txt_h, "img": img_h}
      x = jnp.concatenate([joint[s] for s in order], axis=1)
      joint_angles = jnp.concatenate(
        [jnp.broadcast_to(angles[s], (batch, *angles[s].shape[1:])) for s in order], axis=1
      )
      joint_mask = None
      if txt_mask is not None:
        masks = {"txt": txt_mask, "img": jnp.ones((batch, num_img), bool)}
        joint_mask = jnp.concatenate([masks[s] for s in order], axis=1)
      x, _ = self._blocks(SingleStreamBlock, "single_blocks", c.num_single_layers)(
        x, single_cond, joint_angles, joint_mask
      )
      img_h = x[:, num_txt:] if c.text_first else x[:, :num_img]

    scale, shift = _pinned(layers.AdaLNModulation(2, use_bias=c.use_bias, dtype=dtype, name="norm_out")(temb))
    normed = layers.LayerNorm(eps=c.norm_eps, use_bias=False, use_scale=False, dtype=dtype, name="final_norm")(img_h)
    out = layers.Dense(c.out_features, axes=("embed", None), name="proj_out", **lin)(
      layers.modulate(normed, shift, scale)
    )
    return out

  def _blocks(self, block_cls: type[nn.Module], name: str, length: int):
    """`length` blocks as one callable `(carry, cond, angles, masks) -> (carry, None)`: scanned or unrolled."""
    c = self.config
    block_cls = layers.remat(block_cls, c.remat_policy)
    if c.scan_layers:
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0, "attention_inputs": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      return stack(c, self.dtype, name=name)
    blocks = [block_cls(c, self.dtype, name=f"{name}_{i}") for i in range(length)]

    def run(carry, *args):
      for block in blocks:
        carry, _ = block(carry, *args)
      return carry, None

    return run


def unstack_blocks(params: dict[str, Any], config: MMDiTConfig) -> dict[str, Any]:
  """Scanned params ('double_blocks' stacked on axis 0) -> the `scan_layers=False` layout ('double_blocks_{i}')."""
  params = dict(params)
  for name, length in zip(_BLOCK_NAMES, (config.num_double_layers, config.num_single_layers), strict=True):
    if name in params:
      stacked = params.pop(name)
      for i in range(length):
        params[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
