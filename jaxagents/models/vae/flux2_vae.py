"""The FLUX.2 VAE in Flax linen (NHWC) and the latent <-> token functions of the FLUX.2 pipeline.

Model: diffusers 0.42.1 `src/diffusers/models/autoencoders/autoencoder_kl_flux2.py`, `AutoencoderKLFlux2` -- an
SD-style KL autoencoder (Rombach et al. 2022, arXiv 2112.10752, Sec. 3.1), 8x down, 32 latent channels, with 1x1
quant/post-quant convs and a non-affine `BatchNorm2d(128, eps=1e-4)` whose running statistics normalise the
2x2-patchified latents. Pipeline: diffusers `src/diffusers/pipelines/flux2/pipeline_flux2.py`, `Flux2Pipeline`:
`_encode_vae_image` (posterior mode -> `_patchify_latents` -> (x - running_mean) / sqrt(running_var + eps)) and the
decode path (x * sqrt(running_var + eps) + running_mean -> `_unpatchify_latents` -> `vae.decode`).

Layout: images [B, H, W, 3] in [-1, 1]; latents z [B, H/8, W/8, 32]; tokens [B, H/16, W/16, 128] whose channel
c * 4 + dy * 2 + dx holds latent channel c at offset (dy, dx) of its 2x2 patch -- the (C, 2, 2) order the DiT was
trained on. The running statistics are the `batch_stats` collection (`bn/running_mean`, `bn/running_var`, [128]),
never trained here; the loss of the VAE itself is out of scope.

    vae = Flux2VAE(FLUX2)
    config, variables = load_variables(checkpoint_dir)          # jaxagents.models.vae.convert
    tokens = vae.apply(variables, images, method="encode_to_tokens")   # [B, H/16, W/16, 128], normalised
    images = vae.apply(variables, tokens, method="decode_from_tokens")

`decode_tiled` decodes overlapping latent tiles and blends them linearly, as diffusers'
`AutoencoderKLFlux2.tiled_decode` does (same tiles, same blend, same crop), for images too large to decode at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.models.vae.blocks import Decoder, Encoder, conv
from jaxagents.models.vae.config import Flux2VAEConfig
from jaxagents.sharding import DEFAULT_RULES

Dtype = Any

# Logical names of the VAE -> mesh axes, added to the library defaults. Conv weights are replicated (84M params, 0.34
# GB in fp32); activations keep `activation_batch` -> (data, fsdp) from the defaults, their spatial axes whole.
VAE_RULES: tuple[tuple[str, Any], ...] = (
  ("conv_height", None),
  ("conv_width", None),
  ("conv_in", None),
  ("conv_out", None),
  ("activation_height", None),
  ("activation_width", None),
)
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (*DEFAULT_RULES, *VAE_RULES)

# diffusers `DiagonalGaussianDistribution` clamps the log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)


def _check_nhwc(name: str, x: jax.Array, channels: int, layout: str) -> None:
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"Flux2VAE: `{name}` must be {layout} with {channels} channels, got shape {tuple(x.shape)}")


def patchify_latents(z: jax.Array, patch_size: tuple[int, int] = (2, 2)) -> jax.Array:
  """z [B, H, W, C] -> [B, H/ph, W/pw, C*ph*pw], channel index c*ph*pw + dy*pw + dx (diffusers' `_patchify_latents`
  order, (C, ph, pw), here channels-last)."""
  ph, pw = patch_size
  if z.ndim != 4 or z.shape[1] % ph or z.shape[2] % pw:
    raise ValueError(f"patchify_latents: `z` must be [B, H, W, C] with H % {ph} == 0 and W % {pw} == 0, got shape "
                     f"{tuple(z.shape)}")
  b, h, w, c = z.shape
  z = z.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
  return z.reshape(b, h // ph, w // pw, c * ph * pw)


def unpatchify_latents(tokens: jax.Array, patch_size: tuple[int, int] = (2, 2)) -> jax.Array:
  """The inverse of `patchify_latents`: [B, h, w, C*ph*pw] -> [B, h*ph, w*pw, C]."""
  ph, pw = patch_size
  if tokens.ndim != 4 or tokens.shape[-1] % (ph * pw):
    raise ValueError(f"unpatchify_latents: `tokens` must be [B, h, w, C*{ph * pw}], got shape {tuple(tokens.shape)}")
  b, h, w, d = tokens.shape
  c = d // (ph * pw)
  tokens = tokens.reshape(b, h, w, c, ph, pw).transpose(0, 1, 4, 2, 5, 3)
  return tokens.reshape(b, h * ph, w * pw, c)


def _bn_std(running_var: jax.Array, eps: float) -> jax.Array:
  return jnp.sqrt(running_var.astype(jnp.float32) + eps)


def normalize_latents(tokens: jax.Array, running_mean: jax.Array, running_var: jax.Array, eps: float) -> jax.Array:
  """(tokens - running_mean) / sqrt(running_var + eps) over the last axis (the FLUX.2 pipeline's latent norm)."""
  out = (tokens.astype(jnp.float32) - running_mean.astype(jnp.float32)) / _bn_std(running_var, eps)
  return out.astype(tokens.dtype)


def denormalize_latents(tokens: jax.Array, running_mean: jax.Array, running_var: jax.Array, eps: float) -> jax.Array:
  """The inverse of `normalize_latents`: tokens * sqrt(running_var + eps) + running_mean."""
  out = tokens.astype(jnp.float32) * _bn_std(running_var, eps) + running_mean.astype(jnp.float32)
  return out.astype(tokens.dtype)


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
  """b with its first `extent` rows (axis 1) or columns (axis 2) faded in from a's last ones: weight of b = k/extent
  at offset k (diffusers `blend_v` / `blend_h`), extent clipped to both sizes."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = extent
  ramp = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape).astype(b.dtype)
  head = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis) * (1 - ramp)
  head = head + jax.lax.slice_in_dim(b, 0, extent, axis=axis) * ramp
  return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


def tiled_decode(decode: Callable[[jax.Array], jax.Array], z: jax.Array, tile: int, overlap: int) -> jax.Array:
  """Decodes z [B, h, w, C] tile by tile: tiles of `tile` x `tile` latents start every `tile - overlap` latents (edge
  tiles are smaller), each is decoded by `decode` (which scales sides by an integer s), every tile is blended with the
  already blended tile above and to its left over `overlap * s` pixels, and the top-left `(tile - overlap) * s` pixels
  of each are kept. This is diffusers' `AutoencoderKLFlux2.tiled_decode` (its in-place blends included) with
  `tile = tile_latent_min_size` and `overlap = tile - int(tile * (1 - tile_overlap_factor))`.

  Where `decode` is local (each output pixel depends on a window of latents that fits in the overlap), the result
  equals `decode(z)`; through the VAE's mid-block attention and GroupNorms it is an approximation, as in diffusers.

  Memory: called eagerly with a jitted `decode`, e.g. `jax.jit(lambda t: vae.apply(variables, t, method="decode"))`,
  one tile's activations are live at a time and each tile shape (at most four) compiles once. Traced inside one `jit`
  (`Flux2VAE.decode_tiled`), every tile is a copy of the decoder in the program and XLA schedules them.
  """
  if tile < 1 or not 0 <= overlap < tile:
    raise ValueError(f"tiled_decode: need `tile` >= 1 and 0 <= `overlap` < `tile`, got tile={tile}, overlap={overlap}")
  height, width = z.shape[1], z.shape[2]
  stride = tile - overlap
  grid = []
  scale = None
  for i in range(0, height, stride):
    row = []
    for j in range(0, width, stride):
      piece = z[:, i:i + tile, j:j + tile]
      out = decode(piece)
      s = out.shape[1] // piece.shape[1]
      if out.shape[1:3] != (piece.shape[1] * s, piece.shape[2] * s) or scale not in (None, s):
        raise ValueError(f"tiled_decode: `decode` must scale both sides by one integer; a {piece.shape[1:3]} tile "
                         f"decoded to {out.shape[1:3]}")
      scale = s
      if i > 0:
        out = _blend(grid[-1][len(row)], out, overlap * s, axis=1)
      if j > 0:
        out = _blend(row[-1], out, overlap * s, axis=2)
      row.append(out)
    grid.append(row)
  keep = stride * scale
  return jnp.concatenate([jnp.concatenate([t[:, :keep, :keep] for t in row], axis=2) for row in grid], axis=1)


class LatentBatchNorm(nn.Module):
  """The frozen, non-affine `BatchNorm2d` of the patchified latents: running statistics in `batch_stats`."""

  features: int
  eps: float

  def setup(self):
    self.running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, (self.features,), jnp.float32)
    self.running_var = self.variable("batch_stats", "running_var", jnp.ones, (self.features,), jnp.float32)

  def normalize(self, tokens: jax.Array) -> jax.Array:
    return normalize_latents(tokens, self.running_mean.value, self.running_var.value, self.eps)

  def denormalize(self, tokens: jax.Array) -> jax.Array:
    return denormalize_latents(tokens, self.running_mean.value, self.running_var.value, self.eps)


class Flux2VAE(nn.Module):
  """FLUX.2 VAE: `encode`, `decode`, `decode_tiled` and the token interface of the DiT.

  Attributes:
    config: the network (`Flux2VAEConfig`; `FLUX2` is the released one).
    dtype: compute dtype (GroupNorm statistics and the latent norm stay float32).
    param_dtype: dtype of the parameters.
    attention_backend: backend of `jaxagents.layers.attention` for the mid-block attention.
  """

  config: Flux2VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_backend: str = "auto"

  def setup(self):
    c = self.config
    kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype, attention_backend=self.attention_backend)
    self.encoder = Encoder(**kw)
    self.decoder = Decoder(**kw)
    conv_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.quant_conv = conv(2 * c.latent_channels, 1, **conv_kw) if c.use_quant_conv else None
    self.post_quant_conv = conv(c.latent_channels, 1, **conv_kw) if c.use_post_quant_conv else None
    self.bn = LatentBatchNorm(c.token_channels, c.batch_norm_eps)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Reconstruction through the posterior mode (diffusers' `forward`); also touches the latent statistics, so
    `init` on it creates every variable. x: [B, H, W, in] -> [B, H', W', out]."""
    self.bn.normalize(jnp.zeros((1, self.config.token_channels), jnp.float32))
    mean, _ = self.encode(x)
    return self.decode(mean)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, H, W, in] in [-1, 1] -> the diagonal Gaussian posterior (mean, logvar), each [B, ceil(H/f), ceil(W/f),
    latent]; logvar clamped to `LOGVAR_RANGE` as diffusers' `DiagonalGaussianDistribution`."""
    _check_nhwc("x", x, self.config.in_channels, "an image [B, H, W, C]")
    moments = self.encoder(x)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, h, w, latent] -> image [B, h*f, w*f, out]."""
    _check_nhwc("z", z, self.config.latent_channels, "a latent [B, h, w, C]")
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def decode_tiled(self, z: jax.Array, tile: int | None = None, overlap: int | None = None) -> jax.Array:
    """`decode` over overlapping latent tiles blended linearly (`tiled_decode`). Defaults are diffusers':
    tile = sample_size / downsample_factor latents (128 for FLUX.2), overlap = tile - int(0.75 * tile) (32)."""
    _check_nhwc("z", z, self.config.latent_channels, "a latent [B, h, w, C]")
    if tile is None:
      tile = int(self.config.sample_size / self.config.downsample_factor)
    if overlap is None:
      overlap = tile - int(tile * 0.75)
    return tiled_decode(self.decode, z, tile, overlap)

  def normalize_latents(self, tokens: jax.Array) -> jax.Array:
    """Patchified latents [..., 128] -> the DiT's normalised tokens (running statistics of `batch_stats`)."""
    _check_tokens(tokens, self.config)
    return self.bn.normalize(tokens)

  def denormalize_latents(self, tokens: jax.Array) -> jax.Array:
    """The inverse of `normalize_latents`."""
    _check_tokens(tokens, self.config)
    return self.bn.denormalize(tokens)

  def encode_to_tokens(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """x [B, H, W, 3] in [-1, 1], H and W multiples of 16 -> normalised tokens [B, H/16, W/16, 128].

    The latent is the posterior mode (the pipeline's `sample_mode="argmax"`), or a sample mean + exp(logvar / 2) * e
    when `rng` is given.
    """
    _check_nhwc("x", x, self.config.in_channels, "an image [B, H, W, C]")
    sh, sw = self.config.token_stride
    if x.shape[1] % sh or x.shape[2] % sw:
      raise ValueError(f"Flux2VAE.encode_to_tokens: `x` height and width must be multiples of {(sh, sw)}, got shape "
                       f"{tuple(x.shape)}")
    mean, logvar = self.encode(x)
    z = mean
    if rng is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.bn.normalize(patchify_latents(z, self.config.patch_size))

  def decode_from_tokens(self, tokens: jax.Array, tile: int | None = None, overlap: int | None = None) -> jax.Array:
    """Normalised tokens [B, h, w, 128] -> image [B, h*16, w*16, 3]; tiled when `tile` is given."""
    z = unpatchify_latents(self.denormalize_latents(tokens), self.config.patch_size)
    if tile is None:
      return self.decode(z)
    return self.decode_tiled(z, tile, overlap)


def _check_tokens(tokens: jax.Array, config: Flux2VAEConfig) -> None:
  if tokens.ndim < 1 or tokens.shape[-1] != config.token_channels:
    raise ValueError(f"Flux2VAE: `tokens` must end in {config.token_channels} = latent_channels "
                     f"{config.latent_channels} x patch {math.prod(config.patch_size)} channels, got shape "
                     f"{tuple(tokens.shape)}")
