"""Multi-axis rotary position embeddings of image diffusion transformers, and the position ids they take.

Every position axis a (frame, row, column, text index, ...) owns a contiguous chunk of `d_a / 2` rotary slots with
its own frequency ladder `theta ** (-2j / d_a)`, j < d_a / 2, and the chunks are laid out in axis order. This is
FLUX's `EmbedND` (black-forest-labs/flux `src/flux/modules/layers.py`; diffusers
`src/diffusers/models/transformers/transformer_flux2.py`, `Flux2PosEmbed`) and the MSRoPE of Qwen-Image
(arXiv 2508.02324, "Multimodal Scalable RoPE"), which Lens uses (diffusers
`src/diffusers/models/transformers/transformer_lens.py`, `LensEmbedRope`). Unlike `rotary.mrope_angles` (Qwen2-VL),
where the axes share one frequency ladder over the whole head, each axis here restarts its ladder.

Rotate with `rotary.apply_rope(x, angles, style='interleaved', compute_dtype=jnp.float32)`: slot j turns the pair
of dims (2j, 2j + 1), i.e. a complex multiplication on interleaved pairs, as both references do in float32.

Position ids:
  * `flux_position_ids`: FLUX.2's (t, h, w, l) ids -- image token (r, c) gets (0, r, c, 0), text token i gets
    (0, 0, 0, i) (diffusers `pipelines/flux2/pipeline_flux2.py`, `_prepare_latent_ids`, `_prepare_text_ids`).
  * `msrope_position_ids`: MSRoPE's (frame, row, column) ids with *centred* image rows and columns,
    -(h - h//2) ... h//2 - 1, and text token i at max(h//2, w//2) + i on all three axes, so text continues the
    image diagonal (Qwen-Image's scheme with `scale_rope=True`; `LensEmbedRope.forward`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.rotary import rope_inv_freq


def multi_axis_rope_angles(ids: jax.Array, axes_dims: Sequence[int], theta: float) -> jax.Array:
  """Rotary angles of multi-axis positions.

  Args:
    ids: [..., S, A] positions (int or float; negative allowed), one column per axis.
    axes_dims: [A] rotary dims per axis (each even), summing to the head dim D.
    theta: RoPE base.
  Returns:
    [..., S, D // 2] float32: `concat_a(ids[..., a, None] * theta ** (-2j / d_a))`, each product in float32.
  """
  ids = jnp.asarray(ids)
  axes_dims = [int(d) for d in axes_dims]
  if ids.ndim < 2 or ids.shape[-1] != len(axes_dims):
    raise ValueError(
      f"multi_axis_rope_angles: `ids` must have shape [..., S, A={len(axes_dims)}] (one column per axis of "
      f"axes_dims={axes_dims}), got {ids.shape}"
    )
  if any(d <= 0 or d % 2 for d in axes_dims):
    raise ValueError(f"multi_axis_rope_angles: every entry of `axes_dims` must be positive and even, got {axes_dims}")
  positions = ids.astype(jnp.float32)
  return jnp.concatenate(
    [positions[..., a, None] * jnp.asarray(rope_inv_freq(d, theta)) for a, d in enumerate(axes_dims)], axis=-1
  )


def _check_grid(name: str, height: int, width: int, text_len: int) -> None:
  for arg, value, low in (("height", height, 1), ("width", width, 1), ("text_len", text_len, 0)):
    if int(value) != value or value < low:
      raise ValueError(f"{name}: `{arg}` must be an int >= {low}, got {value!r}")


def flux_position_ids(height: int, width: int, text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """FLUX.2 ids: (image [h*w, 4] = (0, r, c, 0) row-major, text [text_len, 4] = (0, 0, 0, i)), int32."""
  _check_grid("flux_position_ids", height, width, text_len)
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = np.zeros((height * width, 4), np.int32)
  image[:, 1], image[:, 2] = rows.reshape(-1), cols.reshape(-1)
  text = np.zeros((text_len, 4), np.int32)
  text[:, 3] = np.arange(text_len)
  return image, text


def msrope_position_ids(height: int, width: int, text_len: int, frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """MSRoPE ids with centred image positions (module docstring), int32.

  Returns:
    (image [h*w, 3] = (frame, r - (h - h//2), c - (w - w//2)) row-major,
     text [text_len, 3] = (m + i, m + i, m + i) with m = max(h//2, w//2)).
  """
  _check_grid("msrope_position_ids", height, width, text_len)
  rows = np.arange(height) - (height - height // 2)
  cols = np.arange(width) - (width - width // 2)
  rows, cols = np.meshgrid(rows, cols, indexing="ij")
  image = np.stack([np.full(height * width, frame), rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(np.int32)
  start = max(height // 2, width // 2)
  text = np.repeat((start + np.arange(text_len))[:, None], 3, axis=1).astype(np.int32)
  return image, text
