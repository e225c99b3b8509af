"""`MMDiTConfig`: one flat table of hyperparameters for the MMDiT, with presets for FLUX.2 and Lens.

    from jaxagents.models import mmdit
    model = mmdit.MMDiT(mmdit.get_config("lens"))

Presets (all shapes from the reference implementations' constructors; no weights are read):
  * 'flux2-dev': diffusers `Flux2Transformer2DModel` defaults (8 double + 48 single blocks, 48 x 128 heads,
    Mistral text features 15360 wide, guidance embedding), 32.2e9 parameters.
  * 'flux2-klein-4b' / 'flux2-klein-9b': the transformer/config.json of black-forest-labs/FLUX.2-klein-4B
    (5 + 20 blocks, 24 x 128, Qwen3-4B features 3 x 2560) and -9B (8 + 24 blocks, 32 x 128, Qwen3-8B 3 x 4096),
    no guidance embedding; 3.88e9 and 9.08e9 parameters.
  * 'lens': diffusers `LensTransformer2DModel` defaults (48 dual-stream blocks, 24 x 64 heads, SwiGLU 4096,
    4 GPT-OSS layers of 2880, RoPE axes (8, 28, 28) with theta 1e4), 4.10e9 parameters.
  * 'flux2-tiny', 'lens-tiny': the same architectures at test size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxagents.layers.remat import REMAT_POLICIES

FAMILIES = ("flux2", "lens")


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
  """Hyperparameters of one MMDiT (see `model.MMDiT` for what each one switches).

  Attributes:
    family: 'flux2' or 'lens' -- the checkpoint layout `convert.py` reads.
    in_channels: width of an input (already patchified) latent token.
    out_channels / patch_size: the output token is `patch_size**2 * out_channels` wide (diffusers' naming).
    num_heads, head_dim: attention shape; the model width is their product.
    num_double_layers: dual-stream blocks.
    num_single_layers: single-stream (parallel) blocks after them.
    mlp_dim: hidden width of every MLP.
    gated_mlp: SwiGLU-style `GatedMLP` (FLUX.2, Lens) or the two-layer `MLP` (Lens with gate_mlp=False).
    mlp_activation: activation name of `layers.mlp.ACTIVATIONS`.
    mlp_bias: biases in the MLPs.
    text_dim: width of one text-feature tensor.
    text_layers: how many text-feature tensors are concatenated (Lens: 4 GPT-OSS layers; FLUX.2: 1, already
      concatenated by its pipeline).
    text_norm: RMSNorm each text tensor before the concatenation (Lens).
    text_norm_eps: eps of those norms.
    time_channels: width of the sinusoidal timestep embedding.
    timestep_scale: timesteps (sigma in [0, 1]) are multiplied by this before the sinusoid.
    guidance_embeds: add an embedding of the guidance scale (FLUX.2-dev).
    norm: 'layer' (LayerNorm without affine, FLUX.2) or 'rms' (RMSNorm with scale, Lens) in the blocks.
    norm_eps: eps of the block norms, the QK norms and the final norm.
    use_bias: biases on the q/k/v/out, modulation, input, time and output projections (Lens).
    shared_modulation: one modulation per block type computed once from the time embedding and shared by all
      blocks (FLUX.2), instead of one per block (Lens).
    text_first: joint sequences are (text, image) (FLUX.2) instead of (image, text) (Lens).
    rope_axes: rotary dims per position axis (sum = head_dim).
    rope_theta: RoPE base.
    remat_policy: name in `layers.remat.REMAT_POLICIES`, applied to every block.
    attention_backend: `layers.attention` backend; 'auto' takes cuDNN's fused kernel on a GPU (bf16/f16, no text
      padding mask) and the XLA reference elsewhere. 'xla' on a GPU materialises the float32 scores: on an H200
      the Lens forward at 1024^2 took 320 ms with it (the XLA attention alone ~4x cuDNN's whole forward).
    scan_layers: `nn.scan` over blocks (params stacked on a leading 'layers' axis) instead of a Python loop.
  """

  family: str
  in_channels: int
  out_channels: int
  patch_size: int
  num_heads: int
  head_dim: int
  num_double_layers: int
  num_single_layers: int
  mlp_dim: int
  text_dim: int
  gated_mlp: bool = True
  mlp_activation: str = "silu"
  mlp_bias: bool = False
  text_layers: int = 1
  text_norm: bool = False
  text_norm_eps: float = 1e-5
  time_channels: int = 256
  timestep_scale: float = 1000.0
  guidance_embeds: bool = False
  norm: str = "layer"
  norm_eps: float = 1e-6
  use_bias: bool = False
  shared_modulation: bool = True
  text_first: bool = True
  rope_axes: tuple[int, ...] = (32, 32, 32, 32)
  rope_theta: float = 2000.0
  remat_policy: str = "none"
  attention_backend: str = "auto"
  scan_layers: bool = True

  def __post_init__(self):
    def bad(name, expected):
      raise ValueError(f"MMDiTConfig: `{name}` must be {expected}, got {getattr(self, name)!r}")

    if self.family not in FAMILIES:
      bad("family", f"one of {FAMILIES}")
    if self.norm not in ("layer", "rms"):
      bad("norm", "'layer' or 'rms'")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"one of {sorted(REMAT_POLICIES)}")
    for name in ("in_channels", "out_channels", "patch_size", "num_heads", "head_dim", "mlp_dim", "text_dim",
                 "text_layers", "time_channels"):
      if int(getattr(self, name)) < 1:
        bad(name, "a positive int")
    for name in ("num_double_layers", "num_single_layers"):
      if int(getattr(self, name)) < 0:
        bad(name, "a non-negative int")
    if self.num_double_layers + self.num_single_layers == 0:
      bad("num_double_layers", "> 0 when num_single_layers is 0")
    if any(int(d) <= 0 or int(d) % 2 for d in self.rope_axes) or sum(self.rope_axes) != self.head_dim:
      bad("rope_axes", f"positive even dims summing to head_dim={self.head_dim}")
    if self.shared_modulation is False and self.num_single_layers:
      bad("num_single_layers", "0 without shared_modulation (per-block single-stream modulation is not defined)")

  @property
  def width(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def out_features(self) -> int:
    return self.patch_size**2 * self.out_channels

  def replace(self, **changes: Any) -> MMDiTConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_diffusers(cls, config: dict[str, Any], **overrides: Any) -> MMDiTConfig:
    """From a diffusers transformer config.json (`Flux2Transformer2DModel` or `LensTransformer2DModel`); missing
    keys take the diffusers constructor defaults. `overrides` set our own fields (remat_policy, ...)."""
    name = config.get("_class_name")
    get = config.get
    if name == "Flux2Transformer2DModel":
      width = get("num_attention_heads", 48) * get("attention_head_dim", 128)
      fields = dict(
        family="flux2", in_channels=get("in_channels", 128),
        out_channels=get("out_channels") or get("in_channels", 128),
        patch_size=get("patch_size", 1), num_heads=get("num_attention_heads", 48),
        head_dim=get("attention_head_dim", 128), num_double_layers=get("num_layers", 8),
        num_single_layers=get("num_single_layers", 48), mlp_dim=int(width * get("mlp_ratio", 3.0)),
        text_dim=get("joint_attention_dim", 15360), time_channels=get("timestep_guidance_channels", 256),
        guidance_embeds=get("guidance_embeds", True), norm_eps=get("eps", 1e-6),
        rope_axes=tuple(get("axes_dims_rope", (32, 32, 32, 32))), rope_theta=float(get("rope_theta", 2000)),
      )
    elif name == "LensTransformer2DModel":
      width = get("num_attention_heads", 24) * get("attention_head_dim", 64)
      gated = get("gate_mlp", True)
      multi = get("multi_layer_encoder_feature", True)
      fields = dict(
        family="lens", in_channels=get("in_channels", 128),
        out_channels=get("out_channels", 32) or get("in_channels", 128), patch_size=get("patch_size", 2),
        num_heads=get("num_attention_heads", 24), head_dim=get("attention_head_dim", 64),
        num_double_layers=get("num_layers", 48), num_single_layers=0,
        # GateMLP hidden int(d / 3 * 8), or diffusers FeedForward (mult 4, tanh GELU, biases).
        mlp_dim=int(width / 3 * 8) if gated else 4 * width, gated_mlp=gated,
        mlp_activation="silu" if gated else "gelu_tanh", mlp_bias=not gated,
        text_dim=get("enc_hidden_dim", 2880),
        text_layers=len(get("selected_layer_index", (5, 11, 17, 23))) if multi else 1, text_norm=True,
        norm="rms" if get("rms_norm", True) else "layer", use_bias=True, shared_modulation=False,
        text_first=False, rope_axes=tuple(get("axes_dims_rope", (8, 28, 28))), rope_theta=10000.0,
      )
    else:
      raise ValueError(
        f"MMDiTConfig.from_diffusers: `_class_name` must be 'Flux2Transformer2DModel' or 'LensTransformer2DModel', "
        f"got {name!r}"
      )
    return cls(**{**fields, **overrides})


# diffusers `Flux2Transformer2DModel` constructor defaults = FLUX.2-dev.
FLUX2_DEV = MMDiTConfig(
  family="flux2", in_channels=128, out_channels=128, patch_size=1, num_heads=48, head_dim=128,
  num_double_layers=8, num_single_layers=48, mlp_dim=3 * 6144, text_dim=15360, guidance_embeds=True,
)
# black-forest-labs/FLUX.2-klein-4B transformer/config.json: Qwen3-4B features, 3 layers x 2560.
FLUX2_KLEIN_4B = FLUX2_DEV.replace(num_heads=24, num_double_layers=5, num_single_layers=20, mlp_dim=3 * 3072,
                                   text_dim=7680, guidance_embeds=False)
# black-forest-labs/FLUX.2-klein-9B transformer/config.json: Qwen3-8B features, 3 layers x 4096.
FLUX2_KLEIN_9B = FLUX2_DEV.replace(num_heads=32, num_double_layers=8, num_single_layers=24, mlp_dim=3 * 4096,
                                   text_dim=12288, guidance_embeds=False)
# diffusers `LensTransformer2DModel` defaults (microsoft/Lens).
LENS = MMDiTConfig(
  family="lens", in_channels=128, out_channels=32, patch_size=2, num_heads=24, head_dim=64, num_double_layers=48,
  num_single_layers=0, mlp_dim=4096, text_dim=2880, text_layers=4, text_norm=True, norm="rms", use_bias=True,
  shared_modulation=False, text_first=False, rope_axes=(8, 28, 28), rope_theta=10000.0,
)
FLUX2_TINY = FLUX2_DEV.replace(in_channels=12, out_channels=12, num_heads=2, head_dim=16, num_double_layers=2,
                               num_single_layers=2, mlp_dim=96, text_dim=24, rope_axes=(4, 4, 4, 4))
LENS_TINY = LENS.replace(in_channels=16, out_channels=4, num_heads=2, head_dim=16, num_double_layers=2, mlp_dim=85,
                         text_dim=24, text_layers=2, rope_axes=(4, 6, 6))

PRESETS: dict[str, MMDiTConfig] = {
  "flux2-dev": FLUX2_DEV,
  "flux2-klein-4b": FLUX2_KLEIN_4B,
  "flux2-klein-9b": FLUX2_KLEIN_9B,
  "lens": LENS,
  "flux2-tiny": FLUX2_TINY,
  "lens-tiny": LENS_TINY,
}


def get_config(name: str, **overrides: Any) -> MMDiTConfig:
  """A preset by name, with fields replaced by `overrides` (e.g. remat_policy='full')."""
  if name not in PRESETS:
    raise ValueError(f"mmdit.get_config: `name` must be one of {sorted(PRESETS)}, got {name!r}")
  return PRESETS[name].replace(**overrides)
