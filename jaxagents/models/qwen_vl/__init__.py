"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL in Flax linen (spec: ../shared/specs/vlm.md)."""

from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig

__all__ = ["QwenVLConfig", "TextConfig", "VisionConfig"]
