"""Text to image: a text encoder, an MMDiT (Lens or FLUX.2) and the FLUX.2 VAE around a flow-matching sampler.

The loop of the Lens and FLUX.2 pipelines (diffusers `pipelines/lens/pipeline_lens.py`, `LensPipeline.__call__`;
`pipelines/flux2/pipeline_flux2.py`, `Flux2Pipeline.__call__`): noise tokens [B, (H/16)(W/16), 128] (16 pixels
per token: the VAE's 8x, then a 2x2 patchify), sigmas from FLUX.2's empirical mu for that many tokens, Euler steps
on the DiT's velocity with classifier-free guidance (the prompt and the negative prompt in one batched call,
Lens's per-token norm rescale), then the VAE decodes the denormalised tokens. Lens gives its RoPE centred MSRoPE
ids, FLUX.2 its (t, h, w, l) ids.

    pipeline = TextToImage.from_pretrained(directory, text_encoder)   # transformer/ and vae/ in diffusers layout
    images = pipeline(["a red cube on a blue floor"], height=1024, width=1024, num_steps=20, guidance=5.0)

`images` is uint8 [B, H, W, 3]. The sampler is one jitted program per (batch, size, steps, guidance on/off,
text length); `__call__` compiles it ahead of time, so compilation and sampling are timed apart.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.diffusion import batched_cfg, euler_sample, inference_sigmas
from jaxagents.layers.multi_axis_rope import flux_position_ids, msrope_position_ids
from jaxagents.models import mmdit, vae
from jaxagents.models.text_encoders import TextEncoder, TextFeatures


@dataclasses.dataclass
class TextToImage:
  """The pieces of a text-to-image model; call it with prompts.

  Attributes:
    dit_config, dit_params: the MMDiT (`jaxagents.models.mmdit`).
    vae_config, vae_variables: the FLUX.2 VAE (`jaxagents.models.vae`), batch-norm statistics included.
    text_encoder: anything with `encode(prompts) -> TextFeatures` (`jaxagents.models.text_encoders`).
    dtype: compute dtype of the DiT and the VAE.
  """

  dit_config: mmdit.MMDiTConfig
  dit_params: Any
  vae_config: vae.Flux2VAEConfig
  vae_variables: Any
  text_encoder: TextEncoder
  dtype: Any = jnp.float32

  @classmethod
  def from_pretrained(cls, directory: str, text_encoder: TextEncoder, dtype: Any = jnp.float32) -> TextToImage:
    """Loads `directory`/transformer and `directory`/vae (diffusers `save_pretrained` layout, safetensors only)."""
    for part in ("transformer", "vae"):
      if not os.path.isdir(os.path.join(directory, part)):
        raise FileNotFoundError(f"TextToImage.from_pretrained: `directory` {directory!r} has no {part}/ folder "
                                "(expected a diffusers pipeline layout: transformer/, vae/)")
    dit_config, dit_params = mmdit.load_params(os.path.join(directory, "transformer"), dtype=dtype)
    vae_config, vae_variables = vae.load_variables(os.path.join(directory, "vae"), dtype=dtype)
    return cls(dit_config, dit_params, vae_config, vae_variables, text_encoder, dtype)

  @property
  def token_pixels(self) -> int:
    """Pixels per token side: the VAE's down-sampling (8 for FLUX.2: 4 levels) times the 2x2 patchify."""
    return 2 * 2 ** (len(self.vae_config.block_out_channels) - 1)

  def _check_size(self, height: int, width: int) -> tuple[int, int]:
    step = self.token_pixels
    for name, value in (("height", height), ("width", width)):
      if value <= 0 or value % step:
        raise ValueError(f"TextToImage: `{name}` must be a positive multiple of {step}, got {value}")
    return height // step, width // step

  def text_features(self, prompts: Sequence[str], negative_prompt: str | None) -> tuple[TextFeatures, TextFeatures
                                                                                       | None]:
    """The prompts' features and, when guiding, the negative prompt's, padded to one length."""
    cond = self.text_encoder.encode(list(prompts))
    if negative_prompt is None:
      return cond, None
    uncond = self.text_encoder.encode([negative_prompt] * len(prompts))
    length = max(cond.shape[1], uncond.shape[1])
    return cond.pad_to(length), uncond.pad_to(length)

  def sampler(self, height: int, width: int, num_steps: int, guidance: float | None) -> Callable:
    """A jitted (noise [B, N, C], cond, uncond) -> tokens [B, N, C]; `guidance` None runs the conditional model
    alone (distilled students: one DiT call per step)."""
    rows, cols = self._check_size(height, width)
    config = self.dit_config
    position_ids = msrope_position_ids if config.family == "lens" else flux_position_ids
    model = mmdit.MMDiT(config, dtype=self.dtype)
    sigmas, timesteps = inference_sigmas(num_steps, rows * cols)
    times = np.asarray(timesteps, np.float32) / np.float32(1000.0)  # what the pipelines hand the DiT

    def run(params, noise, cond: TextFeatures, uncond: TextFeatures | None):
      text = cond if uncond is None else TextFeatures(
        hidden=tuple(jnp.concatenate(pair) for pair in zip(cond.hidden, uncond.hidden, strict=True)),
        mask=jnp.concatenate([cond.mask, uncond.mask]))
      img_ids, txt_ids = position_ids(rows, cols, text.shape[1])
      # FLUX.2 takes its encoder layers concatenated per token, Lens one array per layer (its own RMSNorms).
      txt = [text.concatenated()] if config.text_layers == 1 else list(text.hidden)
      txt = [x.astype(self.dtype) for x in txt]

      def velocity(x, t):
        return model.apply({"params": params}, x, txt, jnp.broadcast_to(t, (x.shape[0],)), img_ids, txt_ids,
                           text.mask)

      field = velocity if uncond is None else batched_cfg(velocity, guidance)
      return euler_sample(field, noise, sigmas, times=times)

    return jax.jit(run)

  def decode(self, tokens: jax.Array, rows: int, cols: int) -> np.ndarray:
    """Tokens [B, N, 128] -> uint8 images [B, H, W, 3]."""
    model = vae.Flux2VAE(self.vae_config, dtype=self.dtype)
    grid = tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1])
    images = jax.jit(lambda v, t: model.apply(v, t, method="decode_from_tokens"))(self.vae_variables, grid)
    pixels = np.asarray(jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5 + 0.5, 0, 255))
    return pixels.astype(np.uint8)

  def __call__(self, prompts: Sequence[str], *, height: int = 1024, width: int = 1024, num_steps: int = 20,
               guidance: float = 5.0, negative_prompt: str = "", seed: int = 0, timings: dict | None = None
               ) -> np.ndarray:
    """uint8 [B, H, W, 3] images of `prompts`. guidance <= 1 runs without CFG (Lens-Turbo: 4 steps at 1.0).
    With a `timings` dict, fills seconds for 'text', 'compile', 'sampling', 'per_step' and 'decode'."""
    if not prompts:
      raise ValueError("TextToImage: `prompts` must not be empty")
    rows, cols = self._check_size(height, width)
    timings = {} if timings is None else timings
    start = time.perf_counter()
    cond, uncond = self.text_features(prompts, negative_prompt if guidance > 1 else None)
    jax.block_until_ready(cond.hidden)
    timings["text"] = time.perf_counter() - start
    noise = jax.random.normal(jax.random.key(seed), (len(prompts), rows * cols, self.dit_config.in_channels),
                              self.dtype)
    sample = self.sampler(height, width, num_steps, guidance if guidance > 1 else None)
    start = time.perf_counter()
    compiled = sample.lower(self.dit_params, noise, cond, uncond).compile()
    timings["compile"] = time.perf_counter() - start
    start = time.perf_counter()
    tokens = jax.block_until_ready(compiled(self.dit_params, noise, cond, uncond))
    timings["sampling"] = time.perf_counter() - start
    timings["per_step"] = timings["sampling"] / num_steps
    start = time.perf_counter()
    images = self.decode(tokens, rows, cols)
    timings["decode"] = time.perf_counter() - start
    return images
