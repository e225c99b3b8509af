"""Configuration of the Wan 2.1 video VAE: the fields of diffusers' `AutoencoderKLWan` `config.json`.

`WanVAEConfig()` (all defaults) is the released Wan 2.1 VAE (Wan Team 2025, arXiv 2503.20314, Sec. 3.1): diffusers
0.42.1 `src/diffusers/models/autoencoders/autoencoder_kl_wan.py`, `AutoencoderKLWan.__init__` defaults, 126,892,531
parameters, 4x temporal and 8x spatial compression to 16 latent channels. `from_diffusers` reads a `config.json`,
`to_diffusers` writes one. The Wan 2.2 options of the same class (`is_residual`, `patch_size`) and encoder attention
(`attn_scales`) are not ported and are rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

_CLASS_NAME = "AutoencoderKLWan"
_TUPLES = ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std")

# Per-channel statistics of the released VAE's latents (diffusers' `AutoencoderKLWan` defaults, as in Wan-AI's
# `wan/modules/vae.py` `WanVAE.mean` / `WanVAE.std`).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                      -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                     1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """The causal 3D KL autoencoder of Wan 2.1 (field names, including the `temperal` spelling, are diffusers').

  Attributes:
    base_dim, decoder_base_dim: base channels of the encoder / decoder (None: the encoder's).
    z_dim: latent channels; the encoder emits 2x that (mean, logvar).
    dim_mult: channel multipliers per level; every level but the last halves height and width.
    num_res_blocks: residual blocks per encoder level; decoder levels have one more.
    attn_scales: scales with attention in the encoder levels; only () (the released value) is ported.
    temperal_downsample: per downsampling level, whether it also halves time (len(dim_mult) - 1 entries, at most
      two True: the encoder runs on chunks of 4 frames); the decoder upsamples time in the reverse order.
    dropout: the resnets' dropout; inference only here, so it never applies.
    latents_mean, latents_std: per-channel statistics the Wan pipelines normalise latents with.
    is_residual, patch_size: Wan 2.2 options; must be False / None.
    in_channels, out_channels: video channels in and out (3).
    scale_factor_temporal, scale_factor_spatial: the compression the pipelines assume; kept for `to_diffusers`.
  """

  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  is_residual: bool = False
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int | None = None
  scale_factor_temporal: int | None = 4
  scale_factor_spatial: int | None = 8

  def __post_init__(self):
    object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
    object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
    object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
    object.__setattr__(self, "latents_mean", tuple(float(m) for m in self.latents_mean))
    object.__setattr__(self, "latents_std", tuple(float(s) for s in self.latents_std))
    for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"WanVAEConfig: `{name}` must be >= 1, got {getattr(self, name)}")
    if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
      raise ValueError(f"WanVAEConfig: `decoder_base_dim` must be None or >= 1, got {self.decoder_base_dim}")
    if not self.dim_mult or min(self.dim_mult) < 1:
      raise ValueError(f"WanVAEConfig: `dim_mult` must be a non-empty tuple of positive ints, got {self.dim_mult}")
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"WanVAEConfig: `temperal_downsample` must have len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                       f"entries, got {self.temperal_downsample}")
    if sum(self.temperal_downsample) > 2:
      raise ValueError(f"WanVAEConfig: at most two levels can halve time (chunks of 4 frames), got "
                       f"{self.temperal_downsample}")
    if self.is_residual or self.patch_size is not None:
      raise ValueError(f"WanVAEConfig: the Wan 2.2 VAE (`is_residual`={self.is_residual}, `patch_size`="
                       f"{self.patch_size}) is not ported; need is_residual=False and patch_size=None")
    if self.attn_scales:
      raise ValueError(f"WanVAEConfig: encoder attention (`attn_scales`={self.attn_scales}) is not ported; need ()")

  @property
  def decoder_dim(self) -> int:
    return self.decoder_base_dim or self.base_dim

  @property
  def temperal_upsample(self) -> tuple[bool, ...]:
    """Per decoder level, whether it doubles time (diffusers' `temperal_downsample[::-1]`)."""
    return self.temperal_downsample[::-1]

  @property
  def spatial_factor(self) -> int:
    """Video pixels per latent pixel along a side (8 for the released VAE)."""
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    """Frames per latent frame after the first (4 for the released VAE): 1 + 4k frames <-> 1 + k latents."""
    return 2 ** sum(self.temperal_downsample)

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any]) -> WanVAEConfig:
    """From the dict of an `AutoencoderKLWan` `config.json`; keys that are not fields (`_*`, ...) are ignored, as
    diffusers' `from_config` ignores unexpected keys."""
    name = config.get("_class_name", _CLASS_NAME)
    if name != _CLASS_NAME:
      raise ValueError(f"WanVAEConfig.from_diffusers: `_class_name` must be {_CLASS_NAME!r}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if k in _TUPLES else v for k, v in config.items() if k in fields})

  def to_diffusers(self) -> dict[str, Any]:
    """The `config.json` dict diffusers' `AutoencoderKLWan.from_config` rebuilds this network from."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    return {"_class_name": _CLASS_NAME, **out}


# The released Wan 2.1 VAE (Wan-AI/Wan2.1-T2V-1.3B-Diffusers `vae/`): diffusers' defaults.
WAN21 = WanVAEConfig()
# Two levels, one temporal halving, 4 latent channels: every block type on CPU in a second.
TINY = WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2), num_res_blocks=1, temperal_downsample=(True,),
                    latents_mean=(0.1, -0.2, 0.3, -0.4), latents_std=(1.5, 0.5, 2.0, 0.8))

PRESETS: dict[str, WanVAEConfig] = {"wan21": WAN21, "tiny": TINY}
