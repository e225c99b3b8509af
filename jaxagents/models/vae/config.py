"""Configuration of the FLUX.2 VAE: the fields of diffusers' `AutoencoderKLFlux2` `config.json`.

`Flux2VAEConfig()` (all defaults) is the released FLUX.2 VAE: diffusers 0.42.1
`src/diffusers/models/autoencoders/autoencoder_kl_flux2.py`, `AutoencoderKLFlux2.__init__` defaults, 84,046,115
parameters plus the 128-channel batch-norm statistics. `from_diffusers` reads a `config.json`, `to_diffusers` writes
one. The presets below are plain instances: `FLUX2` (released), `TINY` and `TINY_ONE_LEVEL` for tests and smoke runs
(the one-level one is the size diffusers' own `tests/pipelines/flux2/test_pipeline_flux2.py` builds).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

# diffusers' `get_activation` names (`src/diffusers/models/activations.py`, `ACT2CLS`); the resnets use this one,
# the encoder's and decoder's output heads always use SiLU.
ACT_FNS = ("silu", "swish", "mish", "gelu", "relu")
_DOWN_BLOCK, _UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
_CLASS_NAME = "AutoencoderKLFlux2"


@dataclasses.dataclass(frozen=True)
class Flux2VAEConfig:
  """A KL autoencoder (SD-style encoder/decoder), its 2x2 latent patchify and the batch-norm of the patched latents.

  Attributes:
    in_channels, out_channels: image channels in and out (3).
    block_out_channels: encoder channels per level; level i > 0 halves the resolution (8x down for 4 levels).
    decoder_block_out_channels: decoder channels per level (None: the encoder's).
    layers_per_block: resnets per encoder level; decoder levels have one more (as diffusers' `Decoder`).
    act_fn: activation of the resnets, one of `ACT_FNS`.
    latent_channels: channels of the latent z (32); the encoder emits 2x that (mean, logvar).
    norm_num_groups: GroupNorm groups; must divide every channel count.
    sample_size: the image side diffusers' tiling is tuned for (sets the default tile of `decode_tiled`).
    use_quant_conv, use_post_quant_conv: the 1x1 convs after the encoder / before the decoder.
    mid_block_add_attention: single-head self-attention in the encoder's and decoder's mid blocks.
    batch_norm_eps: the eps of the latent normalisation, std = sqrt(running_var + eps).
    batch_norm_momentum: the running-statistics momentum of training; unused here, kept for `to_diffusers`.
    patch_size: (ph, pw) of the latent patchify; tokens have latent_channels * ph * pw channels (128).
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  decoder_block_out_channels: tuple[int, ...] | None = None
  layers_per_block: int = 2
  act_fn: str = "silu"
  latent_channels: int = 32
  norm_num_groups: int = 32
  sample_size: int = 1024
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  batch_norm_eps: float = 1e-4
  batch_norm_momentum: float = 0.1
  patch_size: tuple[int, int] = (2, 2)

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    if self.decoder_block_out_channels is not None:
      object.__setattr__(self, "decoder_block_out_channels", tuple(int(c) for c in self.decoder_block_out_channels))
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    for name in ("block_out_channels", "decoder_block_out_channels"):
      channels = getattr(self, name)
      if channels is None:
        continue
      if not channels or any(c < 1 for c in channels):
        raise ValueError(f"Flux2VAEConfig: `{name}` must be a non-empty tuple of positive ints, got {channels}")
      bad = [c for c in channels if c % self.norm_num_groups]
      if bad:
        raise ValueError(
          f"Flux2VAEConfig: `norm_num_groups`={self.norm_num_groups} must divide every entry of `{name}`, "
          f"got {channels} ({bad} not divisible)"
        )
    for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                 "sample_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"Flux2VAEConfig: `{name}` must be >= 1, got {getattr(self, name)}")
    if self.act_fn not in ACT_FNS:
      raise ValueError(f"Flux2VAEConfig: `act_fn` must be one of {ACT_FNS}, got {self.act_fn!r}")
    if len(self.patch_size) != 2 or min(self.patch_size) < 1:
      raise ValueError(f"Flux2VAEConfig: `patch_size` must be two positive ints (ph, pw), got {self.patch_size}")
    if self.batch_norm_eps < 0:
      raise ValueError(f"Flux2VAEConfig: `batch_norm_eps` must be >= 0, got {self.batch_norm_eps}")

  @property
  def decoder_channels(self) -> tuple[int, ...]:
    return self.decoder_block_out_channels or self.block_out_channels

  @property
  def downsample_factor(self) -> int:
    """Image pixels per latent pixel along a side (8 for the released VAE)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def upsample_factor(self) -> int:
    """Decoded pixels per latent pixel along a side."""
    return 2 ** (len(self.decoder_channels) - 1)

  @property
  def token_channels(self) -> int:
    """Channels of a patchified latent token: latent_channels * ph * pw (128)."""
    return self.latent_channels * math.prod(self.patch_size)

  @property
  def token_stride(self) -> tuple[int, int]:
    """Image pixels per token along (height, width): downsample_factor * patch (16, 16)."""
    return (self.downsample_factor * self.patch_size[0], self.downsample_factor * self.patch_size[1])

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any]) -> Flux2VAEConfig:
    """From the dict of an `AutoencoderKLFlux2` `config.json`; keys that do not change the network (`_*`,
    `force_upcast`, ...) are ignored, as diffusers' `from_config` ignores unexpected keys."""
    name = config.get("_class_name", _CLASS_NAME)
    if name != _CLASS_NAME:
      raise ValueError(f"Flux2VAEConfig.from_diffusers: `_class_name` must be {_CLASS_NAME!r}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in fields}
    for key in ("block_out_channels", "decoder_block_out_channels", "patch_size"):
      if kwargs.get(key) is not None:
        kwargs[key] = tuple(kwargs[key])
    if isinstance(kwargs.get("sample_size"), (list, tuple)):
      kwargs["sample_size"] = kwargs["sample_size"][0]  # diffusers' tiling also reads only the first entry
    made = cls(**kwargs)
    for key, kind, channels in (("down_block_types", _DOWN_BLOCK, made.block_out_channels),
                                ("up_block_types", _UP_BLOCK, made.decoder_channels)):
      types = tuple(config.get(key, (kind,) * len(channels)))
      if types != (kind,) * len(channels):
        raise ValueError(
          f"Flux2VAEConfig.from_diffusers: `{key}` must be {len(channels)} x {kind!r} (one per level of "
          f"{channels}), got {list(types)}"
        )
    return made

  def to_diffusers(self) -> dict[str, Any]:
    """The `config.json` dict diffusers' `AutoencoderKLFlux2.from_config` rebuilds this network from."""
    out = dataclasses.asdict(self)
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    out["down_block_types"] = [_DOWN_BLOCK] * len(self.block_out_channels)
    out["up_block_types"] = [_UP_BLOCK] * len(self.decoder_channels)
    return {"_class_name": _CLASS_NAME, **out}


# The released FLUX.2 VAE (black-forest-labs FLUX.2 `vae/`): diffusers' defaults, 84,046,115 parameters.
FLUX2 = Flux2VAEConfig()
# Two levels (2x down), odd channel counts, a wider decoder: exercises every branch of the network on CPU.
TINY = Flux2VAEConfig(block_out_channels=(6, 9), decoder_block_out_channels=(9, 6), layers_per_block=1,
                      latent_channels=3, norm_num_groups=3, sample_size=16)
# One level, no down/upsampling: diffusers' own pipeline-test size (block (4,), latent 1, groups 1).
TINY_ONE_LEVEL = Flux2VAEConfig(block_out_channels=(4,), layers_per_block=1, latent_channels=1, norm_num_groups=1,
                                sample_size=32)

PRESETS: dict[str, Flux2VAEConfig] = {"flux2": FLUX2, "tiny": TINY, "tiny_one_level": TINY_ONE_LEVEL}
