"""The Wan 2.1 causal 3D video VAE in Flax linen, channels-last, and the latent normalisation of the Wan pipelines.

Model: Wan Team 2025 (arXiv 2503.20314, Sec. 3.1), as diffusers 0.42.1 `src/diffusers/models/autoencoders/
autoencoder_kl_wan.py` `AutoencoderKLWan` computes it: `_encode` (first frame, then chunks of 4 frames; frames past
the last full chunk are dropped), the 1x1x1 quant convs, `DiagonalGaussianDistribution` (logvar clamped to
[-30, 20]), `_decode` (one latent frame at a time) and the final clamp to [-1, 1]. `WanVAE.encode` / `decode` make
one causal pass over the clip, which computes what the chunk loop and its feature caches compute (see `blocks`);
`encode_chunked` / `decode_chunked` run diffusers' loop itself, jitted per chunk with the caches as an explicit
'cache' pytree, so that activation memory is a chunk's rather than the clip's.
Normalisation: diffusers `src/diffusers/pipelines/wan/pipeline_wan.py` `WanPipeline.__call__` (latents / (1 / std) +
mean before decoding) and `pipeline_wan_i2v.py` `WanImageToVideoPipeline.prepare_latents` ((z - mean) * (1 / std)).

Layout: videos [B, T, H, W, C] in [-1, 1] with T = 1 + 4k; latents [B, 1 + k, H / 8, W / 8, 16] for the released
VAE (`WAN21`).

    config, variables = load_variables(checkpoint_dir)       # jaxagents.models.wan_vae.convert
    vae = WanVAE(config)
    mean, logvar = vae.apply(variables, video, method="encode")   # or encode_chunked(vae, variables, video)
    video = vae.apply(variables, mean, method="decode")           # or decode_chunked(vae, variables, mean)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.models.vae.flux2_vae import LOGVAR_RANGE, VAE_RULES
from jaxagents.models.wan_vae.blocks import Decoder, Encoder, conv
from jaxagents.models.wan_vae.config import WanVAEConfig
from jaxagents.sharding import DEFAULT_RULES

Dtype = Any

# The FLUX.2 VAE's rules plus time: conv weights replicated, activations sharded over the batch only.
WAN_VAE_RULES: tuple[tuple[str, Any], ...] = (*VAE_RULES, ("conv_time", None), ("activation_time", None))
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (*DEFAULT_RULES, *WAN_VAE_RULES)
CHUNK_FRAMES = 4  # diffusers `AutoencoderKLWan._encode`: the first frame, then chunks of 4


def usable_frames(num_frames: int) -> int:
  """The frames diffusers' `_encode` reads: 1 + 4 * ((T - 1) // 4)."""
  return 1 + CHUNK_FRAMES * ((num_frames - 1) // CHUNK_FRAMES)


def _stats(config: WanVAEConfig, z: jax.Array) -> tuple[jax.Array, jax.Array]:
  if len(config.latents_mean) != config.z_dim or len(config.latents_std) != config.z_dim:
    raise ValueError(f"WanVAE: `latents_mean` and `latents_std` must have z_dim = {config.z_dim} entries, got "
                     f"{len(config.latents_mean)} and {len(config.latents_std)}")
  if z.ndim < 1 or z.shape[-1] != config.z_dim:
    raise ValueError(f"WanVAE: latents must end in z_dim = {config.z_dim} channels, got shape {tuple(z.shape)}")
  mean = jnp.asarray(config.latents_mean, jnp.float32)
  return mean, 1.0 / jnp.asarray(config.latents_std, jnp.float32)


def normalize_latents(z: jax.Array, config: WanVAEConfig) -> jax.Array:
  """(z - latents_mean) * (1 / latents_std) over the channel axis, in float32 (the Wan I2V pipeline's formula)."""
  mean, inv_std = _stats(config, z)
  return ((z.astype(jnp.float32) - mean) * inv_std).astype(z.dtype)


def denormalize_latents(z: jax.Array, config: WanVAEConfig) -> jax.Array:
  """The inverse: z / (1 / latents_std) + latents_mean (the Wan pipelines' formula before `vae.decode`)."""
  mean, inv_std = _stats(config, z)
  return (z.astype(jnp.float32) / inv_std + mean).astype(z.dtype)


def posterior(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """moments [..., 2 * z_dim] -> (mean, logvar clamped to [-30, 20]) (diffusers `DiagonalGaussianDistribution`)."""
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return mean, jnp.clip(logvar, *LOGVAR_RANGE)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_chunk(vae: WanVAE, method: str, params: Any, cache: Any, chunk: jax.Array) -> tuple[jax.Array, Any]:
  out, state = vae.apply({"params": params, "cache": cache}, chunk, method=method, mutable=["cache"])
  return out, state["cache"]


def encode_chunked(vae: WanVAE, variables: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`WanVAE.encode` as diffusers' `AutoencoderKLWan._encode` runs it: the first frame, then chunks of 4, each a
  jitted call that carries the causal convs' last frames in an explicit 'cache' pytree. Activations are a chunk's
  (two compiled programs), not the clip's; the result equals `encode`."""
  _check("x", x, vae.config.in_channels, "a video")
  x = x[:, :usable_frames(x.shape[1])]
  cache, outs = {}, []
  for start in range(0, x.shape[1], CHUNK_FRAMES):
    chunk = x[:, :1] if start == 0 else x[:, start - CHUNK_FRAMES + 1:start + 1]
    out, cache = _run_chunk(vae, "encode_moments", variables["params"], cache, chunk)
    outs.append(out)
  return posterior(jnp.concatenate(outs, axis=1))


def decode_chunked(vae: WanVAE, variables: Any, z: jax.Array) -> jax.Array:
  """`WanVAE.decode` as diffusers' `AutoencoderKLWan._decode` runs it: one latent frame per jitted call, the caches
  carried in an explicit pytree (two compiled programs); the result equals `decode`."""
  _check("z", z, vae.config.z_dim, "a latent")
  cache, outs = {}, []
  for t in range(z.shape[1]):
    out, cache = _run_chunk(vae, "decode_frames", variables["params"], cache, z[:, t:t + 1])
    outs.append(out)
  return jnp.clip(jnp.concatenate(outs, axis=1), -1.0, 1.0)


def _check(name: str, x: jax.Array, channels: int, what: str) -> None:
  if x.ndim != 5 or x.shape[-1] != channels or x.shape[1] < 1:
    raise ValueError(f"WanVAE: `{name}` must be {what} [B, T, H, W, C] with T >= 1 and {channels} channels, got "
                     f"shape {tuple(x.shape)}")


class WanVAE(nn.Module):
  """Wan 2.1 VAE: `encode`, `decode`, `sample` and `__call__` (reconstruction), one pass over the clip; the module
  functions `encode_chunked` / `decode_chunked` run it chunk by chunk, `normalize_latents` / `denormalize_latents`
  apply the pipelines' latent statistics.

  Attributes:
    config: the network (`WanVAEConfig`; `WAN21` is the released one).
    dtype: compute dtype (the RMS-norm statistics and the attention softmax stay float32).
    param_dtype: dtype of the parameters.
    attention_backend: backend of `jaxagents.layers.attention` for the mid-block attention.
  """

  config: WanVAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_backend: str = "auto"

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(config=c, attention_backend=self.attention_backend, **kw)
    self.decoder = Decoder(config=c, attention_backend=self.attention_backend, **kw)
    self.quant_conv = conv(2 * c.z_dim, (1, 1, 1), "VALID", name="quant_conv", **kw)
    self.post_quant_conv = conv(c.z_dim, (1, 1, 1), "VALID", name="post_quant_conv", **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Reconstruction through the posterior mode (diffusers' `forward` with `sample_posterior=False`).
    x: [B, T, H, W, in] -> [B, T', H', W', out]. `init` on any clip creates every parameter."""
    mean, _ = self.encode(x)
    return self.decode(mean)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, T, H, W, in] in [-1, 1] -> the posterior (mean, logvar), each [B, 1 + (T' - 1) / temporal_factor,
    H // f, W // f, z_dim] where T' = `usable_frames(T)`; logvar clamped to [-30, 20]."""
    _check("x", x, self.config.in_channels, "a video")
    return posterior(self.encode_moments(x[:, :usable_frames(x.shape[1])]))

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, t, h, w, z_dim] -> video [B, 1 + (t - 1) * temporal_factor, h * f, w * f, out], clamped to [-1, 1]."""
    _check("z", z, self.config.z_dim, "a latent")
    return jnp.clip(self.decode_frames(z), -1.0, 1.0)

  def encode_moments(self, x: jax.Array) -> jax.Array:
    """Encoder and quant conv: x [B, T, H, W, in] -> moments [B, t, h, w, 2 * z_dim] (mean | logvar), one pass, or
    one chunk with a mutable 'cache' (`encode_chunked`)."""
    return self.quant_conv(self.encoder(x))

  def decode_frames(self, z: jax.Array) -> jax.Array:
    """Post-quant conv and decoder, not clamped: z [B, t, h, w, z_dim] -> [B, T, H, W, out], one pass or one chunk."""
    return self.decoder(self.post_quant_conv(z))

  def sample(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    """A posterior sample mean + exp(logvar / 2) * e, e ~ N(0, 1) (diffusers' `latent_dist.sample`)."""
    mean, logvar = self.encode(x)
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
