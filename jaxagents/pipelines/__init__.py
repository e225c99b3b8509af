"""Inference pipelines: models composed with the samplers of `diffusion/` (text to image)."""

from jaxagents.pipelines.text_to_image import TextToImage

__all__ = ["TextToImage"]
