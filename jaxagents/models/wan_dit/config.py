"""`WanDiTConfig`: one flat table of hyperparameters for the Wan 2.1 video DiT (arXiv 2503.20314, Sec. 3.1.2).

    from jaxagents.models import wan_dit
    model = wan_dit.WanDiT(wan_dit.get_config("wan2.1-t2v-1.3b"))

Presets (shapes from the transformer/config.json of the released diffusers-format checkpoints; no weights are
read):
  * 'wan2.1-t2v-1.3b': Wan-AI/Wan2.1-T2V-1.3B-Diffusers (30 blocks, 12 x 128 heads, FFN 8960, umT5 features 4096).
  * 'wan2.1-t2v-14b': Wan-AI/Wan2.1-T2V-14B-Diffusers (40 blocks, 40 x 128 heads, FFN 13824).
  * 'wan2.1-i2v-14b': Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (the 14B with 36 input channels = noisy latent, mask and
    first-frame latent, and the image cross-attention branch over 257 CLIP ViT-H/14 tokens of width 1280).
  * 'wan-tiny', 'wan-i2v-tiny': the same architectures at test size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxagents.layers.remat import REMAT_POLICIES

# diffusers `WanTransformerBlock` accepts these `qk_norm` values; its attention applies RMSNorm across all heads
# to q and k whichever is given (`WanAttention.__init__` always builds `norm_q`, `norm_k`), and so do we.
QK_NORMS = ("rms_norm_across_heads", None)


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
  """Hyperparameters of one Wan DiT (see `model.WanDiT` for what each one switches).

  Attributes:
    patch_size: (t, h, w) patch of the latent video; a token is `prod(patch_size) * in_channels` wide.
    num_heads, head_dim: attention shape; the model width is their product. The rotary dims are split over
      (t, h, w) as (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)).
    in_channels / out_channels: latent channels in and out (I2V: 36 in, the noisy latent concatenated with the
      first-frame condition; 16 out).
    text_dim: width of the text-encoder features (umT5-XXL: 4096).
    freq_dim: width of the sinusoidal timestep embedding.
    ffn_dim: hidden width of the block FFN (tanh GELU).
    num_layers: transformer blocks.
    cross_attn_norm: LayerNorm (with affine) before the text cross-attention.
    eps: eps of every LayerNorm and QK RMSNorm of the blocks and the output norm.
    image_dim: width of the image-encoder tokens (CLIP: 1280) for the I2V image cross-attention; None: T2V.
    pos_embed_seq_len: learned position embedding of the image tokens (Wan 2.1 FLF2V: 2 x 257, first and last
      frame); None: none.
    rope_max_seq_len: the reference's table length; a grid axis longer than this is refused.
    rope_theta: RoPE base (fixed at 1e4 in the reference).
    remat_policy: name in `layers.remat.REMAT_POLICIES`, applied to every block.
    attention_backend: `layers.attention` backend ('auto': cuDNN on a GPU for bf16/f16, else XLA).
    scan_layers: `nn.scan` over blocks (params stacked on a leading 'layers' axis) instead of a Python loop.
  """

  num_heads: int
  head_dim: int
  num_layers: int
  ffn_dim: int
  text_dim: int
  in_channels: int = 16
  out_channels: int = 16
  patch_size: tuple[int, int, int] = (1, 2, 2)
  freq_dim: int = 256
  cross_attn_norm: bool = True
  eps: float = 1e-6
  image_dim: int | None = None
  pos_embed_seq_len: int | None = None
  rope_max_seq_len: int = 1024
  rope_theta: float = 10000.0
  remat_policy: str = "none"
  attention_backend: str = "auto"
  scan_layers: bool = True

  def __post_init__(self):
    def bad(name, expected):
      raise ValueError(f"WanDiTConfig: `{name}` must be {expected}, got {getattr(self, name)!r}")

    for name in ("num_heads", "head_dim", "num_layers", "ffn_dim", "text_dim", "in_channels", "out_channels",
                 "freq_dim", "rope_max_seq_len"):
      if int(getattr(self, name)) < 1:
        bad(name, "a positive int")
    if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
      bad("patch_size", "three positive ints (t, h, w)")
    if self.head_dim % 2 or self.head_dim < 6:
      bad("head_dim", "even and >= 6 (its rotary dims are split over t, h, w)")
    for name in ("image_dim", "pos_embed_seq_len"):
      if getattr(self, name) is not None and int(getattr(self, name)) < 1:
        bad(name, "None or a positive int")
    if self.pos_embed_seq_len is not None and (self.image_dim is None or self.pos_embed_seq_len % 2):
      bad("pos_embed_seq_len", "None without image_dim, else even (two frames' image tokens)")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"one of {sorted(REMAT_POLICIES)}")

  @property
  def width(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def rope_axes(self) -> tuple[int, int, int]:
    """Rotary dims of (t, h, w) (diffusers `WanRotaryPosEmbed.__init__`)."""
    hw = 2 * (self.head_dim // 6)
    return (self.head_dim - 2 * hw, hw, hw)

  @property
  def token_features(self) -> int:
    p_t, p_h, p_w = self.patch_size
    return p_t * p_h * p_w * self.in_channels

  @property
  def out_features(self) -> int:
    p_t, p_h, p_w = self.patch_size
    return p_t * p_h * p_w * self.out_channels

  def replace(self, **changes: Any) -> WanDiTConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_diffusers(cls, config: dict[str, Any], **overrides: Any) -> WanDiTConfig:
    """From a diffusers `WanTransformer3DModel` config.json; missing keys take its constructor defaults.
    `overrides` set our own fields (remat_policy, ...)."""
    name = config.get("_class_name", "WanTransformer3DModel")
    if name != "WanTransformer3DModel":
      raise ValueError(f"WanDiTConfig.from_diffusers: `_class_name` must be 'WanTransformer3DModel', got {name!r}")
    get = config.get
    heads, head_dim = get("num_attention_heads", 40), get("attention_head_dim", 128)
    if get("qk_norm", "rms_norm_across_heads") not in QK_NORMS:
      raise ValueError(f"WanDiTConfig.from_diffusers: `qk_norm` must be one of {QK_NORMS}, got {get('qk_norm')!r}")
    image_dim, added_kv = get("image_dim"), get("added_kv_proj_dim")
    # The reference projects the image tokens to the model width before the added k/v projections.
    if (image_dim is None) != (added_kv is None) or added_kv not in (None, heads * head_dim):
      raise ValueError(
        f"WanDiTConfig.from_diffusers: `added_kv_proj_dim` must be None with `image_dim` None, else the model width "
        f"{heads * head_dim}; got image_dim={image_dim!r}, added_kv_proj_dim={added_kv!r}"
      )
    fields = dict(
      num_heads=heads, head_dim=head_dim, num_layers=get("num_layers", 40), ffn_dim=get("ffn_dim", 13824),
      text_dim=get("text_dim", 4096), in_channels=get("in_channels", 16),
      out_channels=get("out_channels") or get("in_channels", 16), patch_size=tuple(get("patch_size", (1, 2, 2))),
      freq_dim=get("freq_dim", 256), cross_attn_norm=get("cross_attn_norm", True), eps=get("eps", 1e-6),
      image_dim=image_dim, pos_embed_seq_len=get("pos_embed_seq_len"),
      rope_max_seq_len=get("rope_max_seq_len", 1024),
    )
    return cls(**{**fields, **overrides})


# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json.
WAN21_T2V_1_3B = WanDiTConfig(num_heads=12, head_dim=128, num_layers=30, ffn_dim=8960, text_dim=4096)
# Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json (= the diffusers constructor defaults).
WAN21_T2V_14B = WanDiTConfig(num_heads=40, head_dim=128, num_layers=40, ffn_dim=13824, text_dim=4096)
# Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json: CLIP ViT-H/14 penultimate tokens, width 1280.
WAN21_I2V_14B = WAN21_T2V_14B.replace(in_channels=36, image_dim=1280)
WAN_TINY = WanDiTConfig(num_heads=2, head_dim=12, num_layers=2, ffn_dim=37, text_dim=13, in_channels=4,
                        out_channels=4, freq_dim=32)
WAN_I2V_TINY = WAN_TINY.replace(in_channels=9, image_dim=11)

PRESETS: dict[str, WanDiTConfig] = {
  "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
  "wan2.1-t2v-14b": WAN21_T2V_14B,
  "wan2.1-i2v-14b": WAN21_I2V_14B,
  "wan-tiny": WAN_TINY,
  "wan-i2v-tiny": WAN_I2V_TINY,
}


def get_config(name: str, **overrides: Any) -> WanDiTConfig:
  """A preset by name, with fields replaced by `overrides` (e.g. remat_policy='full')."""
  if name not in PRESETS:
    raise ValueError(f"wan_dit.get_config: `name` must be one of {sorted(PRESETS)}, got {name!r}")
  return PRESETS[name].replace(**overrides)
