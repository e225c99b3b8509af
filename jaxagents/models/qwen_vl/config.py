"""Configuration of the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), read from a transformers `config.json`.

One dataclass per part (`TextConfig`, `VisionConfig`) and one for the whole model (`QwenVLConfig`). `from_hf`
accepts the nested transformers 5.x form and the flat legacy form (text keys at the top level, `rope_scaling`
with `{"type": "mrope", "mrope_section": ...}`); `to_hf` writes the 5.23 nested form. Field differences between
the families are spelled out as fields (norm kind, gated MLP, biases, QK-norm, M-RoPE layout) so the modules
branch on features, never on family names. The fields follow transformers'
`Qwen2VLConfig`, `Qwen2_5_VLConfig` and `Qwen3VLConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The decoder LLM (Qwen2 decoder for Qwen2/2.5-VL, Qwen3 decoder for Qwen3-VL)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, ...] = (16, 24, 24)
  mrope_interleaved: bool = False  # Qwen3-VL: THWTHW...; Qwen2/2.5-VL: chunked TTT..HHH..WWW
  qkv_bias: bool = True  # Qwen2 decoder: biases on q, k, v
  out_bias: bool = False  # Qwen3 decoder with `attention_bias`: a bias on o too (q, k, v, o all get one)
  qk_norm: bool = False  # Qwen3 decoder: per-head RMSNorm on q and k before RoPE
  activation: str = "silu"
  # Not used by the network; kept so that a saved config.json says what the loaded one said (None: not given).
  max_position_embeddings: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if sum(self.mrope_section) != self.head_dim // 2:
      raise ValueError(
        f"mrope_section: must sum to head_dim / 2 = {self.head_dim // 2}, got {list(self.mrope_section)} "
        f"(sum {sum(self.mrope_section)})."
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_key_value_heads: must divide num_attention_heads={self.num_heads}, got {self.num_kv_heads}."
      )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The ViT: 3D patch embed, blocks with 2D rotary, 2x2 patch merger (and DeepStack mergers for Qwen3-VL)."""

  depth: int
  width: int  # C: Qwen2-VL `embed_dim`, Qwen2.5/3-VL `hidden_size`
  num_heads: int
  mlp_dim: int  # Qwen2-VL `embed_dim * mlp_ratio`, else `intermediate_size`
  out_dim: int  # merger output = text hidden size (Qwen2-VL `hidden_size`, else `out_hidden_size`)
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  in_channels: int = 3
  activation: str = "quick_gelu"
  norm: Literal["layer", "rms"] = "layer"  # Qwen2.5-VL uses RMSNorm in blocks and merger
  gated_mlp: bool = False  # Qwen2.5-VL: down(act(gate) * up) with biases
  patch_bias: bool = False  # Qwen3-VL: the patch-embed conv has a bias
  num_position_embeddings: int = 0  # Qwen3-VL: learned, bilinearly interpolated absolute positions (a square)
  deepstack_indexes: tuple[int, ...] = ()  # Qwen3-VL: ViT blocks whose outputs feed the decoder's first layers
  window_size: int = 0  # Qwen2.5-VL: window attention side in pixels (0: full attention everywhere)
  fullatt_block_indexes: tuple[int, ...] = ()  # Qwen2.5-VL: blocks with full attention despite windows
  tokens_per_second: float = 0.0  # Qwen2.5-VL: temporal position scale of video tokens
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"vision num_heads: must divide the width {self.width}, got {self.num_heads}.")
    if self.num_position_embeddings and math.isqrt(self.num_position_embeddings) ** 2 != self.num_position_embeddings:
      raise ValueError(
        f"vision num_position_embeddings: must be a square (a side x side grid), got {self.num_position_embeddings}."
      )
    bad = [i for i in (*self.deepstack_indexes, *self.fullatt_block_indexes) if not 0 <= i < self.depth]
    if bad:
      raise ValueError(f"vision block indexes {bad} are outside [0, depth={self.depth}).")
    if len(set(self.deepstack_indexes)) != len(self.deepstack_indexes):
      raise ValueError(
        f"vision deepstack_visual_indexes: expected distinct blocks, got {list(self.deepstack_indexes)}."
      )

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch vector: channels x temporal patch x patch x patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  family: Family
  text: TextConfig
  vision: VisionConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  tie_word_embeddings: bool = False
  # "qwen": text after a vision block starts at max(previous positions) + 1 (original Qwen code, vLLM,
  # transformers <= 5.2). "hf": transformers 5.23 (start + max(h', w')). They differ only for Qwen2/2.5 video.
  mrope_mode: Literal["qwen", "hf"] = "qwen"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family: expected one of {FAMILIES}, got {self.family!r}.")
    if self.mrope_mode not in ("qwen", "hf"):
      raise ValueError(f"mrope_mode: expected 'qwen' or 'hf', got {self.mrope_mode!r}.")
    if self.vision.out_dim != self.text.hidden_size:
      raise ValueError(
        f"vision out_hidden_size: the merger output {self.vision.out_dim} must equal the text hidden_size "
        f"{self.text.hidden_size}."
      )

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], *, mrope_mode: str = "qwen") -> QwenVLConfig:
    """Reads a transformers config dict (`json.load(open("config.json"))`, or `PretrainedConfig.to_dict()`)."""
    family = _family(hf)
    text_hf = dict(hf.get("text_config") or {})
    for key, value in hf.items():  # legacy flat configs keep the text fields at the top level
      if key not in ("text_config", "vision_config"):
        text_hf.setdefault(key, value)
    tie = hf.get("tie_word_embeddings", text_hf.get("tie_word_embeddings", False))
    return cls(
      family=family,
      text=_text_from_hf(text_hf, family),
      vision=_vision_from_hf(dict(hf["vision_config"]), family),
      image_token_id=hf.get("image_token_id", 151655),
      video_token_id=hf.get("video_token_id", 151656),
      vision_start_token_id=hf.get("vision_start_token_id", 151652),
      vision_end_token_id=hf.get("vision_end_token_id", 151653),
      tie_word_embeddings=bool(tie),
      mrope_mode=mrope_mode,
    )

  def to_hf(self) -> dict[str, Any]:
    """The transformers 5.23 nested config dict (loadable with `Qwen*VLConfig(**d)`)."""
    t, v = self.text, self.vision
    rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
    if t.mrope_interleaved:
      rope["mrope_interleaved"] = True
    text = dict(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
      rms_norm_eps=t.rms_norm_eps, hidden_act=t.activation, rope_parameters=rope,
    )
    for name in ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
      value = getattr(t, name)
      if value is not None:
        text[name] = list(value) if isinstance(value, tuple) else value
    if self.family == "qwen3_vl":
      text.update(head_dim=t.head_dim, attention_bias=t.qkv_bias)
    biases = {"qkv_bias": t.qkv_bias, "out_bias": t.out_bias}
    if biases != _attention_biases(self.family, t.qkv_bias):
      raise ValueError(
        f"text qkv_bias/out_bias: a {self.family} config.json can only express "
        f"{_attention_biases(self.family, t.qkv_bias)}, got {biases}."
      )
    vision = dict(
      depth=v.depth, num_heads=v.num_heads, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
      spatial_merge_size=v.merge_size, in_channels=v.in_channels, hidden_act=v.activation,
      rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
    )
    if self.family == "qwen2_vl":
      vision.update(embed_dim=v.width, hidden_size=v.out_dim, mlp_ratio=_int_if_whole(v.mlp_dim / v.width))
    else:
      vision.update(hidden_size=v.width, intermediate_size=v.mlp_dim, out_hidden_size=v.out_dim)
    if self.family == "qwen2_5_vl":
      vision.update(window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
                    tokens_per_second=_int_if_whole(v.tokens_per_second))
    if self.family == "qwen3_vl":
      vision.update(num_position_embeddings=v.num_position_embeddings,
                    deepstack_visual_indexes=list(v.deepstack_indexes))
    return dict(
      model_type=self.family, architectures=[_ARCHITECTURES[self.family]], text_config=text, vision_config=vision,
      image_token_id=self.image_token_id, video_token_id=self.video_token_id,
      vision_start_token_id=self.vision_start_token_id, vision_end_token_id=self.vision_end_token_id,
      tie_word_embeddings=self.tie_word_embeddings,
    )


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else x  # transformers types tokens_per_second and mlp_ratio as int


_ARCHITECTURES = {
  "qwen2_vl": "Qwen2VLForConditionalGeneration",
  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
  "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


def _family(hf: Mapping[str, Any]) -> str:
  model_type = hf.get("model_type")
  if model_type not in FAMILIES:
    raise ValueError(
      f"config model_type: expected one of {FAMILIES} (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), got {model_type!r}."
    )
  return model_type


def _rope(text_hf: Mapping[str, Any]) -> dict[str, Any]:
  rope = dict(text_hf.get("rope_parameters") or text_hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise ValueError(
      f"rope_parameters.rope_type: only 'default' (M-RoPE) is supported, got {rope_type!r}; scaled RoPE "
      f"variants (yarn, dynamic, ...) are not implemented."
    )
  rope.setdefault("rope_theta", text_hf.get("rope_theta", 1e6))
  return rope


def _attention_biases(family: str, attention_bias: bool) -> dict[str, bool]:
  """Which decoder projections have biases, as transformers builds them.

  Qwen3-VL's `attention_bias` switches biases on q, k, v and o together (`Qwen3VLTextAttention`); the Qwen2
  decoder of Qwen2/2.5-VL always has q/k/v biases and no o bias, and does not read `attention_bias`.
  """
  if family == "qwen3_vl":
    return {"qkv_bias": attention_bias, "out_bias": attention_bias}
  return {"qkv_bias": True, "out_bias": False}


def _text_from_hf(text_hf: Mapping[str, Any], family: str) -> TextConfig:
  if text_hf.get("use_sliding_window"):
    raise ValueError("text use_sliding_window: sliding-window attention is not supported; set it to false.")
  rope = _rope(text_hf)
  if "mrope_section" not in rope:
    raise ValueError("rope_parameters.mrope_section: required (e.g. [16, 24, 24]); the config has none.")
  num_heads = text_hf["num_attention_heads"]
  qwen3 = family == "qwen3_vl"
  head_dim = text_hf.get("head_dim") if qwen3 else None
  return TextConfig(
    vocab_size=text_hf["vocab_size"],
    hidden_size=text_hf["hidden_size"],
    intermediate_size=text_hf["intermediate_size"],
    num_layers=text_hf["num_hidden_layers"],
    num_heads=num_heads,
    num_kv_heads=text_hf.get("num_key_value_heads") or num_heads,
    head_dim=head_dim or text_hf["hidden_size"] // num_heads,
    rms_norm_eps=text_hf.get("rms_norm_eps", 1e-6),
    rope_theta=float(rope["rope_theta"]),
    mrope_section=tuple(rope["mrope_section"]),
    mrope_interleaved=qwen3,  # transformers 5.23 always interleaves for Qwen3-VL (the flag is not read)
    **_attention_biases(family, bool(text_hf.get("attention_bias", False))),
    qk_norm=qwen3,
    activation=text_hf.get("hidden_act", "silu"),
    max_position_embeddings=text_hf.get("max_position_embeddings"),
    bos_token_id=text_hf.get("bos_token_id"),
    eos_token_id=tuple(eos) if isinstance(eos := text_hf.get("eos_token_id"), list) else eos,
    pad_token_id=text_hf.get("pad_token_id"),
  )


def _vision_from_hf(v: Mapping[str, Any], family: str) -> VisionConfig:
  common = dict(
    depth=v["depth"], num_heads=v["num_heads"], patch_size=v.get("patch_size", 14),
    temporal_patch_size=v.get("temporal_patch_size", 2), merge_size=v.get("spatial_merge_size", 2),
    in_channels=v.get("in_channels", 3), activation=v.get("hidden_act", "quick_gelu"),
    rope_theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10_000.0)),
  )
  if family == "qwen2_vl":
    return VisionConfig(width=v["embed_dim"], mlp_dim=int(v["embed_dim"] * v.get("mlp_ratio", 4)),
                        out_dim=v["hidden_size"], **common)
  common.update(width=v["hidden_size"], mlp_dim=v["intermediate_size"], out_dim=v["out_hidden_size"])
  if family == "qwen2_5_vl":
    return VisionConfig(norm="rms", gated_mlp=True, window_size=v.get("window_size", 112),
                        fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", ())),
                        tokens_per_second=float(v.get("tokens_per_second", 4)), **common)
  return VisionConfig(patch_bias=True, num_position_embeddings=v.get("num_position_embeddings", 2304),
                      deepstack_indexes=tuple(v.get("deepstack_visual_indexes", ())), **common)
