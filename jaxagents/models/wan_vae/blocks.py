"""The causal 3D encoder and decoder of the Wan 2.1 VAE (Wan Team 2025, arXiv 2503.20314, Sec. 3.1), channels-last
[B, T, H, W, C], as diffusers 0.42.1 builds them for `AutoencoderKLWan`.

Reference: diffusers `src/diffusers/models/autoencoders/autoencoder_kl_wan.py` (`WanCausalConv3d`, `WanRMS_norm`,
`WanResample`, `WanResidualBlock`, `WanAttentionBlock`, `WanMidBlock`, `WanEncoder3d`, `WanDecoder3d`, `WanUpBlock`).

diffusers runs the encoder on the first frame and then on chunks of 4 frames, and the decoder one latent frame at a
time, carrying the last input frames of every causal conv across chunks (`feat_cache`). Every layer here is either
per-frame (norms, attention, 2D resampling) or causal in time, so the chunked computation equals one pass over the
whole clip with the caches replaced by their meaning:
  * a causal conv sees 2 zero frames before the clip, none after (the cache: the previous chunk's last frames);
  * `downsample3d` keeps frame 0, then convolves frames (2m - 2, 2m - 1, 2m) with stride 2, no padding (its first
    chunk is cached, not convolved, and each later chunk is prefixed with the last cached frame);
  * `upsample3d` passes frame 0 through (the 'Rep' marker of the first chunk) and turns each later frame into two by
    a causal conv over frames 1.. with 2 zero frames before them ('Rep', then zeros in the cache).
Without a mutable 'cache' collection the modules make that one pass. With one (`model.encode_chunked`,
`decode_chunked`) they run diffusers' loop: each causal conv keeps its last input frames in 'cache' (zeros before
the first chunk), and the call that creates the cache is the first chunk. The parity tests check both against
diffusers at 1, 5 and 9 frames.
Parameters carry the logical axes `CONV3D_AXES` / `CONV_AXES` (conv kernels), ('conv_out',) (biases) and ('norm',).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention import attention
from jaxagents.models.vae.blocks import CONV_AXES
from jaxagents.models.wan_vae.config import WanVAEConfig

Dtype = Any
CONV3D_AXES = ("conv_time", *CONV_AXES)
ACTIVATION_AXES = ("activation_batch", "activation_time", "activation_height", "activation_width", "activation_embed")
_NORM_EPS = 1e-12  # torch `F.normalize`'s default eps


def constrain(x: jax.Array) -> jax.Array:
  """Activations [B, T, H, W, C]: batch over the data axes, the rest whole (no-op outside a mesh)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


def conv(features: int, kernel: tuple[int, ...], padding: Any, *, dtype: Dtype, param_dtype: Dtype, strides: Any = 1,
         name: str | None = None) -> nn.Conv:
  """A torch Conv2d (2-long `kernel`) or Conv3d (3-long) on channels-last input; leading axes are batch.

  Biases start small and random, as torch's convolutions start them (uniform in +-1/sqrt(fan_in)), not at zero: with
  zero biases a black frame (or a zero flow) stays an exactly zero activation, where `WanRMS_norm`'s
  x / max(||x||, 1e-12) has slope 1e12 and a training step overflows.
  """
  return nn.Conv(
    features, kernel, strides=strides, padding=padding, dtype=dtype, param_dtype=param_dtype, name=name,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                             CONV3D_AXES if len(kernel) == 3 else CONV_AXES),
    bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-2), ("conv_out",)),
  )


def streaming(module: nn.Module) -> bool:
  """Whether `module` runs chunk by chunk: 'cache' is mutable (never during `init`, which makes everything so)."""
  return module.is_mutable_collection("cache") and not module.is_initializing()


def history(module: nn.Module, name: str, x: jax.Array, frames: int) -> jax.Array:
  """The `frames` frames before x [B, T, H, W, C] along time: zeros in one pass or on the first chunk, else the
  'cache' variable `{name}_history` of `module`, which is then moved on to the last `frames` frames seen."""
  zeros = lambda: jnp.zeros((x.shape[0], frames, *x.shape[2:]), x.dtype)
  if not streaming(module):
    return zeros()
  cached = module.variable("cache", f"{name}_history", zeros)
  past = cached.value
  cached.value = jnp.concatenate([past, x], axis=1)[:, -frames:]
  return past


def causal_conv(module: nn.Module, x: jax.Array, features: int, kernel: int | tuple[int, int, int], name: str,
                **kw) -> jax.Array:
  """`WanCausalConv3d(..., padding=k // 2)` of `module` on x [B, T, H, W, C]: kt - 1 frames of `history` before the
  clip (zeros: torch's causal padding), none after; spatial zero padding k // 2 on both sides."""
  kt, kh, kw_ = (kernel,) * 3 if isinstance(kernel, int) else kernel
  layer = conv(features, (kt, kh, kw_), ((0, 0), (kh // 2, kh // 2), (kw_ // 2, kw_ // 2)), name=name, **kw)
  if kt > 1:
    x = jnp.concatenate([history(module, name, x, kt - 1), x], axis=1)
  return layer(x)


class RMSNorm(nn.Module):
  """`WanRMS_norm` (no bias): x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels, statistics in float32."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    gamma = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (channels,),
                       self.param_dtype)
    xf = x.astype(jnp.float32)
    # max(||x||, eps) as sqrt(max(||x||^2, eps^2)): the same value, and a zero vector gets a finite gradient instead
    # of sqrt's infinite slope at 0 times 0 (see `conv` for why zero vectors stay rare).
    norm = jnp.sqrt(jnp.maximum(jnp.sum(xf * xf, axis=-1, keepdims=True), _NORM_EPS**2))
    normalized = (xf / norm).astype(self.dtype)
    return normalized * channels**0.5 * gamma.astype(self.dtype)


class _Base(nn.Module):
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


class ResidualBlock(_Base):
  """`WanResidualBlock`: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), causal 3x3x3 convs, a 1x1x1
  shortcut conv where the channels change."""

  out_channels: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C_in] -> [B, T, H, W, out_channels]."""
    h = nn.silu(RMSNorm(name="norm1", **self.kw)(x))
    h = causal_conv(self, h, self.out_channels, 3, "conv1", **self.kw)
    h = nn.silu(RMSNorm(name="norm2", **self.kw)(h))
    h = causal_conv(self, h, self.out_channels, 3, "conv2", **self.kw)
    if x.shape[-1] != self.out_channels:
      x = causal_conv(self, x, self.out_channels, 1, "conv_shortcut", **self.kw)
    return x + h


class AttentionBlock(_Base):
  """`WanAttentionBlock`: single-head self-attention over the H*W positions of each frame, RMS-normed input, 1x1
  conv q/k/v and output projections, residual."""

  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, C]."""
    batch, time, height, width, channels = x.shape
    qkv = conv(3 * channels, (1, 1), "VALID", name="to_qkv", **self.kw)(RMSNorm(name="norm", **self.kw)(x))
    q, k, v = jnp.split(qkv.reshape(batch * time, height * width, 1, 3 * channels), 3, axis=-1)
    out = attention(q, k, v, backend=self.attention_backend).reshape(batch, time, height, width, channels)
    return x + conv(channels, (1, 1), "VALID", name="proj", **self.kw)(out)


class MidBlock(_Base):
  """`WanMidBlock(num_layers=1)`: resnet_0, attention_0, resnet_1 at C channels."""

  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = ResidualBlock(out_channels=channels, name="resnet_0", **self.kw)(x)
    x = AttentionBlock(attention_backend=self.attention_backend, name="attention_0", **self.kw)(x)
    return ResidualBlock(out_channels=channels, name="resnet_1", **self.kw)(x)


class Resample(_Base):
  """`WanResample` in mode 'downsample2d' / 'downsample3d' (3x3 stride-2 conv after one zero row and column at the
  bottom and right, so odd sides round down; '3d' then halves time) or 'upsample2d' / 'upsample3d' (nearest 2x,
  then a 3x3 conv to `out_channels`; '3d' first doubles time)."""

  mode: str = "downsample2d"
  out_channels: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', H', W', C'] (see the class docstring)."""
    channels = x.shape[-1]
    if self.mode == "upsample3d":
      x = self._double_time(x, channels)
    if self.mode.startswith("upsample"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      return conv(self.out_channels, (3, 3), ((1, 1), (1, 1)), name="resample", **self.kw)(x)
    if not self.mode.startswith("downsample"):
      raise ValueError(f"Resample: unknown `mode` {self.mode!r}")
    x = conv(channels, (3, 3), ((0, 1), (0, 1)), strides=2, name="resample", **self.kw)(x)
    if self.mode == "downsample3d":
      x = self._halve_time(x, channels)
    return x

  def _halve_time(self, x: jax.Array, channels: int) -> jax.Array:
    """Frame 0, then a valid (3, 1, 1) stride-(2, 1, 1) conv over all frames: 1 + 2k -> 1 + k frames. In chunks
    (see the module docstring): the first chunk as one pass, each later (even) chunk after the last frame seen."""
    time_conv = conv(channels, (3, 1, 1), "VALID", strides=(2, 1, 1), name="time_conv", **self.kw)
    chunked = streaming(self)
    if chunked and self.has_variable("cache", "time_conv_history"):
      last = self.variable("cache", "time_conv_history", None)
      out, last.value = time_conv(jnp.concatenate([last.value, x], axis=1)), x[:, -1:]
      return out
    if chunked:
      self.variable("cache", "time_conv_history", lambda: x[:, -1:])
    if x.shape[1] < 3:
      if self.is_initializing():  # create the parameters even when the init clip is too short to use them
        time_conv(jnp.zeros((1, 3, 1, 1, channels), x.dtype))
      return x
    return jnp.concatenate([x[:, :1], time_conv(x)], axis=1)

  def _double_time(self, x: jax.Array, channels: int) -> jax.Array:
    """Frame 0, then each later frame t -> two frames (channels [:C] then [C:] of a causal (3, 1, 1) conv over
    frames 1..): 1 + k -> 1 + 2k frames. In chunks, frame 0 is the first chunk's; later chunks all go through."""
    first = not (streaming(self) and self.has_variable("cache", "time_conv_history"))
    head, rest = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
    if rest.shape[1] == 0:
      history(self, "time_conv", rest, 2)  # the cache starts at zeros
      if self.is_initializing():
        causal_conv(self, jnp.zeros((1, 1, 1, 1, channels), x.dtype), 2 * channels, (3, 1, 1), "time_conv",
                    **self.kw)
      return head
    rest = causal_conv(self, rest, 2 * channels, (3, 1, 1), "time_conv", **self.kw)
    batch, time, height, width, _ = rest.shape
    rest = rest.reshape(batch, time, height, width, 2, channels).transpose(0, 1, 4, 2, 3, 5)
    return jnp.concatenate([head, rest.reshape(batch, 2 * time, height, width, channels)], axis=1)


class Encoder(_Base):
  """`WanEncoder3d`: video [B, T, H, W, in] -> moments [B, T', H / f, W / f, 2 * z_dim] (mean | logvar before the
  quant conv). Submodules `down_{n}` follow diffusers' flat `down_blocks` index (resnets, then a resample)."""

  config: WanVAEConfig | None = None
  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    dims = [c.base_dim * m for m in (1, *c.dim_mult)]
    h = causal_conv(self, x, dims[0], 3, "conv_in", **self.kw)
    n = 0
    for i, out_dim in enumerate(dims[1:]):
      for _ in range(c.num_res_blocks):
        h = ResidualBlock(out_channels=out_dim, name=f"down_{n}", **self.kw)(h)
        n += 1
      if i != len(c.dim_mult) - 1:
        mode = "downsample3d" if c.temperal_downsample[i] else "downsample2d"
        h = Resample(mode=mode, out_channels=out_dim, name=f"down_{n}", **self.kw)(h)
        n += 1
      h = constrain(h)
    h = MidBlock(attention_backend=self.attention_backend, name="mid", **self.kw)(h)
    h = nn.silu(RMSNorm(name="norm_out", **self.kw)(constrain(h)))
    return causal_conv(self, h, 2 * c.z_dim, 3, "conv_out", **self.kw)


class Decoder(_Base):
  """`WanDecoder3d` (Wan 2.1, `WanUpBlock`s): latent [B, t, h, w, z_dim] -> video [B, T, h * f, w * f, out]. Each
  upsampling halves the channels, so every level after the first starts at half its predecessor's width."""

  config: WanVAEConfig | None = None
  attention_backend: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = self.config
    dims = [c.decoder_dim * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
    h = causal_conv(self, z, dims[0], 3, "conv_in", **self.kw)
    h = MidBlock(attention_backend=self.attention_backend, name="mid", **self.kw)(h)
    for i, out_dim in enumerate(dims[1:]):
      h = constrain(h)
      for j in range(c.num_res_blocks + 1):
        h = ResidualBlock(out_channels=out_dim, name=f"up_{i}_resnet_{j}", **self.kw)(h)
      if i != len(c.dim_mult) - 1:
        mode = "upsample3d" if c.temperal_upsample[i] else "upsample2d"
        h = Resample(mode=mode, out_channels=out_dim // 2, name=f"up_{i}_upsample", **self.kw)(h)
    h = nn.silu(RMSNorm(name="norm_out", **self.kw)(constrain(h)))
    return causal_conv(self, h, c.out_channels, 3, "conv_out", **self.kw)
