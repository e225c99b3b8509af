"""The encoder and decoder of the FLUX.2 VAE, NHWC: the SD-style KL autoencoder of Rombach et al. 2022
(arXiv 2112.10752, Sec. 3.1 and App. G), as diffusers 0.42.1 builds it for `AutoencoderKLFlux2`.

Reference: diffusers `src/diffusers/models/autoencoders/vae.py` (`Encoder`, `Decoder`), `models/resnet.py`
(`ResnetBlock2D`), `models/downsampling.py` (`Downsample2D`), `models/upsampling.py` (`Upsample2D`),
`models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D`) and
`models/attention_processor.py` (`Attention` built with `_from_deprecated_attn_block`, `AttnProcessor2_0`).
Every GroupNorm has eps 1e-6 and computes its statistics in float32, two-pass (not E[x^2] - E[x]^2, whose
cancellation would cost the fp32 parity). Parameters carry the logical axes `CONV_AXES` (conv kernels, HWIO)
and 'norm'; activations are constrained to `ACTIVATION_AXES` between blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention import attention
from jaxagents.layers.linear import Dense
from jaxagents.layers.mlp import ACTIVATIONS
from jaxagents.models.vae.config import Flux2VAEConfig

Dtype = Any
CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
ACTIVATION_AXES = ("activation_batch", "activation_height", "activation_width", "activation_embed")
_NORM_EPS = 1e-6  # diffusers' `resnet_eps` and the encoder/decoder output norms


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """diffusers' `get_activation(name)`: the shared table, plus Mish (Misra 2019, arXiv 1908.08681)."""
  if name == "mish":
    return jax.nn.mish
  return ACTIVATIONS[name]


def conv(features: int, kernel: int, *, dtype: Dtype, param_dtype: Dtype, strides: int = 1, padding: Any = None,
         name: str | None = None) -> nn.Conv:
  """A torch-style Conv2d on NHWC: `padding` defaults to kernel // 2 on every side (torch's `padding=k//2`)."""
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(
    features, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
    dtype=dtype, param_dtype=param_dtype, name=name,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
  )


def group_norm(groups: int, *, dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
  """torch `GroupNorm(groups, C, eps=1e-6)` over the channels-last axis, two-pass float32 statistics."""
  return nn.GroupNorm(
    num_groups=groups, epsilon=_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
  )


def constrain(x: jax.Array) -> jax.Array:
  """Activations [B, H, W, C]: batch over the data axes, the rest whole (no-op outside a mesh)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


class _Base(nn.Module):
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, name: str) -> nn.GroupNorm:
    return group_norm(self.groups, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _conv(self, features: int, kernel: int, name: str, **kw) -> nn.Conv:
    return conv(features, kernel, dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw)


class ResnetBlock(_Base):
  """diffusers `ResnetBlock2D` without time embedding: x' = shortcut(x) + conv2(act(gn2(conv1(act(gn1(x))))))."""

  out_channels: int = 0
  act_fn: str = "silu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, H, W, out_channels]."""
    act = activation_fn(self.act_fn)
    h = self._conv(self.out_channels, 3, "conv1")(act(self._norm("norm1")(x)))
    h = self._conv(self.out_channels, 3, "conv2")(act(self._norm("norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = self._conv(self.out_channels, 1, "conv_shortcut")(x)
    return x + h


class MidAttention(_Base):
  """Single-head self-attention over all H*W positions with a residual: diffusers' `Attention` with
  `heads = C // attention_head_dim = 1`, GroupNorm on the input, biased q/k/v/out projections."""

  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> [B, H, W, C]."""
    batch, height, width, channels = x.shape
    tokens = self._norm("norm")(x).reshape(batch, height * width, 1, channels)

    def proj(name):
      return Dense(channels, axes=("conv_in", "conv_out"), use_bias=True, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)

    q, k, v = proj("q")(tokens), proj("k")(tokens), proj("v")(tokens)
    out = attention(q, k, v, backend=self.attention_backend)
    return x + proj("out")(out).reshape(batch, height, width, channels)


class MidBlock(_Base):
  """diffusers `UNetMidBlock2D` (one layer): resnet_0, attention_0 (if enabled), resnet_1, all at C channels."""

  act_fn: str = "silu"
  add_attention: bool = True
  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
    x = ResnetBlock(out_channels=x.shape[-1], act_fn=self.act_fn, name="resnet_0", **kw)(x)
    if self.add_attention:
      x = MidAttention(attention_backend=self.attention_backend, name="attention_0", **kw)(x)
    return ResnetBlock(out_channels=x.shape[-1], act_fn=self.act_fn, name="resnet_1", **kw)(x)


class Encoder(nn.Module):
  """diffusers `Encoder` with `double_z`: image [B, H, W, in] -> moments [B, H/f, W/f, 2 * latent] (mean | logvar).

  Each level is `layers_per_block` resnets, then (except the last level) a stride-2 3x3 conv after padding one
  zero row/column at the bottom/right (diffusers `Downsample2D` with `padding=0`), so odd sizes round up.
  """

  config: Flux2VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(groups=c.norm_num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
    conv_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = conv(c.block_out_channels[0], 3, name="conv_in", **conv_kw)(x)
    last = len(c.block_out_channels) - 1
    for i, channels in enumerate(c.block_out_channels):
      for j in range(c.layers_per_block):
        h = ResnetBlock(out_channels=channels, act_fn=c.act_fn, name=f"down_{i}_resnet_{j}", **kw)(h)
      if i != last:
        h = conv(channels, 3, strides=2, padding=((0, 1), (0, 1)), name=f"down_{i}_downsample", **conv_kw)(h)
      h = constrain(h)
    h = MidBlock(act_fn=c.act_fn, add_attention=c.mid_block_add_attention, attention_backend=self.attention_backend,
                 name="mid", **kw)(h)
    h = nn.silu(group_norm(c.norm_num_groups, name="norm_out", **conv_kw)(constrain(h)))
    return conv(2 * c.latent_channels, 3, name="conv_out", **conv_kw)(h)


class Decoder(nn.Module):
  """diffusers `Decoder` (group norm): latent [B, h, w, latent] -> image [B, h*f, w*f, out].

  Levels run from the deepest (`decoder_channels[-1]`) up; each has `layers_per_block + 1` resnets, then (except the
  last) nearest-neighbour 2x upsampling and a 3x3 conv (diffusers `Upsample2D` with `use_conv=True`).
  """

  config: Flux2VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(groups=c.norm_num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
    conv_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = tuple(reversed(c.decoder_channels))
    h = conv(channels[0], 3, name="conv_in", **conv_kw)(z)
    h = MidBlock(act_fn=c.act_fn, add_attention=c.mid_block_add_attention, attention_backend=self.attention_backend,
                 name="mid", **kw)(h)
    for i, width in enumerate(channels):
      h = constrain(h)
      for j in range(c.layers_per_block + 1):
        h = ResnetBlock(out_channels=width, act_fn=c.act_fn, name=f"up_{i}_resnet_{j}", **kw)(h)
      if i != len(channels) - 1:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = conv(width, 3, name=f"up_{i}_upsample", **conv_kw)(h)
    h = nn.silu(group_norm(c.norm_num_groups, name="norm_out", **conv_kw)(constrain(h)))
    return conv(c.out_channels, 3, name="conv_out", **conv_kw)(h)
