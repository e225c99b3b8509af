"""FloVD's optical-flow codec: flow [..., H, W, 2] <-> a 3-channel "video" that an RGB video VAE encodes, and back.

FloVD (arXiv 2502.08244) turns the forward flow from frame 0 to every frame into VAE input with a per-axis signed
square root and a clip, then repeats information into a third channel (reference code: JinWonjoon/FloVD, mirrored in
rajit906/FloVD; `adaptive_normalize`, `adaptive_unnormalize`, `encode_flow` and `decode_flow` in
finetune/models/cogvideox_i2v/flovd_controlnet_trainer.py, the same functions in flovd/models/flow_generator.py).
Per axis, with scale s (s_x for x, s_y for y) and image side L (W for x, H for y):

  normalise    n = sign(f) * sqrt(|f| / s + 1e-7), clipped to [-sqrt(L / s), sqrt(L / s)]
  unnormalise  f = sign(n) * s * (n^2 - 1e-7)
  3 channels   (n_x, n_y, (n_x + n_y) / 2); decoding keeps channels 0-1 and drops the mean

so a flow with |f| <= L - 1e-7 s (within one image side) round-trips exactly up to float rounding, a larger one
saturates at sign(f) (L - 1e-7 s), and zero flow stays exactly zero (sign(0) = 0).

Scales (s_x, s_y) and the (height, width) they were set for, in `FLOVD_PRESETS`:
  flovd_cogvideox  (60, 36) at 480 x 720   `flow_scale_factor=[60, 36]` of the CogVideoX trainers and demos
  flovd_svd_fvsm   (45, 24) at 320 x 576   `scale_factor` of configs/train_flovd_FVSM/FloVD_FVSM.yaml
  flovd_svd_omsm   (12, 8)  at 320 x 576   `scale_factor` of configs/train_flovd_OMSM/FloVD_OMSM.yaml
FloVD feeds the normalised values to the VAE as they are: with the CogVideoX preset at 480 x 720 the clip bounds are
sqrt(12) = 3.46 and sqrt(13.3) = 3.65, beyond the [-1, 1] the VAE saw in training. `unit_range=True` divides each
channel by its clip bound so the VAE input lies in [-1, 1] [our option, not FloVD's]. `FlowCodec.for_resolution`
scales a preset's factors with the image [reconstruction: FloVD fixes them at one resolution]; the clip bounds and the
distribution of normalised values of a resized clip then stay those of the preset. DynaVid (arXiv 2604.01666) does
not publish its flow normalisation; using FloVD's is our reconstruction.

Layout is channels-last ([..., H, W, C], JAX's convention; FloVD's tensors are channels-first). Every function takes
numpy or jax arrays and answers in kind (jit-friendly: the bounds come from static shapes).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

EPSILON = 1e-7  # inside FloVD's square root, so the normalised value is never exactly sqrt(0)
FLOVD_PRESETS = {"flovd_cogvideox": ((60.0, 36.0), (480, 720)), "flovd_svd_fvsm": ((45.0, 24.0), (320, 576)),
                 "flovd_svd_omsm": ((12.0, 8.0), (320, 576))}


def _as_array(x):
  """(array, array module): jax arrays (and tracers) stay jax, anything else becomes a floating numpy array."""
  if isinstance(x, jax.Array):
    return (x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)), jnp
  x = np.asarray(x)
  return (x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)), np


def _check_channels(x, channels: tuple[int, ...], name: str) -> None:
  if x.ndim < 3 or x.shape[-1] not in channels:
    raise ValueError(f"{name}: expected [..., H, W, C] with C in {channels}, got shape {tuple(x.shape)}")


def clip_bounds(height: int, width: int, scale: tuple[float, float]) -> tuple[float, float]:
  """(x bound, y bound) of normalised flow: sqrt(W / s_x), sqrt(H / s_y)."""
  return math.sqrt(width / scale[0]), math.sqrt(height / scale[1])


def normalize_flow(flow, scale: tuple[float, float]):
  """FloVD's `adaptive_normalize`: flow [..., H, W, 2] (x, y pixels) -> signed square root, clipped per axis."""
  flow, xp = _as_array(flow)
  _check_channels(flow, (2,), "flow")
  bounds = xp.asarray(clip_bounds(flow.shape[-3], flow.shape[-2], scale), flow.dtype)
  normalized = xp.sign(flow) * xp.sqrt(xp.abs(flow) / xp.asarray(scale, flow.dtype) + EPSILON)
  return xp.clip(normalized, -bounds, bounds)


def unnormalize_flow(normalized, scale: tuple[float, float]):
  """FloVD's `adaptive_unnormalize`: normalised [..., H, W, 2] -> flow in pixels."""
  normalized, xp = _as_array(normalized)
  _check_channels(normalized, (2,), "normalized")
  return xp.sign(normalized) * xp.asarray(scale, normalized.dtype) * (normalized ** 2 - EPSILON)


@dataclasses.dataclass(frozen=True)
class FlowCodec:
  """Flow <-> VAE input. `scale` is (s_x, s_y) in pixels at the flow's resolution; `unit_range` divides the
  normalised channels by their clip bounds (our option; FloVD does not)."""

  scale: tuple[float, float] = FLOVD_PRESETS["flovd_cogvideox"][0]
  unit_range: bool = False

  def __post_init__(self):
    object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
    if len(self.scale) != 2 or min(self.scale) <= 0:
      raise ValueError(f"scale: expected two positive factors (s_x, s_y), got {self.scale}")

  @classmethod
  def for_resolution(cls, height: int, width: int, preset: str = "flovd_cogvideox", unit_range: bool = False):
    """A preset's factors scaled by width / preset width and height / preset height [reconstruction]."""
    if preset not in FLOVD_PRESETS:
      raise ValueError(f"preset: expected one of {sorted(FLOVD_PRESETS)}, got {preset!r}")
    (scale_x, scale_y), (preset_height, preset_width) = FLOVD_PRESETS[preset]
    return cls((scale_x * width / preset_width, scale_y * height / preset_height), unit_range)

  def bounds(self, height: int, width: int) -> tuple[float, float]:
    """Clip bounds of the two normalised channels for a flow of height x width."""
    return clip_bounds(height, width, self.scale)

  def max_flow(self, height: int, width: int) -> tuple[float, float]:
    """The largest |flow| per axis that round-trips, W - 1e-7 s_x and H - 1e-7 s_y; larger values saturate there."""
    return width - EPSILON * self.scale[0], height - EPSILON * self.scale[1]

  def encode(self, flow):
    """flow [..., H, W, 2] in pixels -> VAE input [..., H, W, 3]: (n_x, n_y, mean of the two)."""
    normalized = normalize_flow(flow, self.scale)
    xp = jnp if isinstance(normalized, jax.Array) else np
    if self.unit_range:
      normalized = normalized / xp.asarray(self.bounds(*normalized.shape[-3:-1]), normalized.dtype)
    return xp.concatenate([normalized, normalized.mean(-1, keepdims=True)], -1)

  def decode(self, video):
    """VAE output [..., H, W, 3] (or the two flow channels alone) -> flow [..., H, W, 2] in pixels; the third
    channel is dropped, as FloVD's `decode_flow` does."""
    video, xp = _as_array(video)
    _check_channels(video, (2, 3), "video")
    normalized = video[..., :2]
    if self.unit_range:
      normalized = normalized * xp.asarray(self.bounds(*video.shape[-3:-1]), video.dtype)
    return unnormalize_flow(normalized, self.scale)
