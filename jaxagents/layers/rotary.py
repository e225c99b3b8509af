"""Rotary position embeddings (RoFormer, Su et al. 2021, arXiv 2104.09864) as pure functions.

Angles are computed in float32 from integer positions, as HF does:
`angle[..., j] = float32(pos) * inv_freq[j]` with `inv_freq[j] = theta ** (-2j / d)`. Variants:
  * 1-D text RoPE (`rope_angles`), Llama / Qwen2 / Qwen3.
  * Multi-axis M-RoPE (`mrope_angles`): Qwen2-VL (arXiv 2409.12191, Sec. 2.1) gives each of the T/H/W position
    axes a contiguous *chunk* of frequency slots; Qwen3-VL interleaves them (T H W T H W ...). Lens / DynaVid
    use the chunked form for (t, h, w) video tokens.
  * Qwen2-VL vision 2-D RoPE (`vision_rope_2d_angles`).
`apply_rope` rotates `x` by angles in either the rotate-half layout (GPT-NeoX / HF Llama / Qwen, where slot j
pairs dims j and j + D/2) or the interleaved layout (GPT-J / Flux, pairs (2j, 2j+1)).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
  """Inverse frequencies `theta ** (-2j / head_dim)` for j < head_dim // 2, as float32 `[head_dim // 2]`.

  Rounded like HF's torch code (exponent `2j / d` in float32, reciprocal in float32) but with the power taken
  in float64: this matches `1 / (theta ** (arange(0, d, 2).float() / d))` to within 1 ulp (bit-equal in almost
  all slots), whereas rounding a float64 result once differs from torch by 1-2 ulp in a third or more of the
  slots, which at position 10^4 is already up to ~1e-3 rad.
  """
  if head_dim % 2:
    raise ValueError(f"rope_inv_freq: `head_dim` must be even, got {head_dim}")
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  power = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
  return (np.float32(1.0) / power).astype(np.float32)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
  """1-D RoPE angles. positions: [..., S] int -> [..., S, head_dim // 2] float32."""
  inv_freq = jnp.asarray(rope_inv_freq(head_dim, theta))
  return jnp.asarray(positions).astype(jnp.float32)[..., None] * inv_freq


def mrope_slot_axes(sections: Sequence[int], interleaved: bool) -> np.ndarray:
  """Which position axis drives each frequency slot: int `[sum(sections)]` with values in [0, len(sections)).

  Chunked (Qwen2/2.5-VL): slots `[0, s0)` take axis 0, the next `s1` slots axis 1, and so on.
  Interleaved (Qwen3-VL, sections e.g. [24, 20, 20]): slot j takes axis a >= 1 if
  `j % A == a and j < A * s_a`, else axis 0 (for A = 3: H if j%3==1 and j < 3*s1, W if j%3==2 and
  j < 3*s2, otherwise T).
  """
  sections = [int(s) for s in sections]
  if not sections or any(s < 0 for s in sections):
    raise ValueError(f"mrope: `sections` must be a non-empty list of non-negative ints, got {sections}")
  num_axes, num_slots = len(sections), sum(sections)
  if not interleaved:
    return np.repeat(np.arange(num_axes), sections)
  slots = np.arange(num_slots)
  axes = np.zeros(num_slots, dtype=np.int64)
  for axis in range(1, num_axes):
    axes[(slots % num_axes == axis) & (slots < num_axes * sections[axis])] = axis
  return axes


def mrope_angles(
  positions: jax.Array, head_dim: int, theta: float, sections: Sequence[int], interleaved: bool = False
) -> jax.Array:
  """Multi-axis RoPE angles.

  Args:
    positions: [A, ..., S] int, one row of positions per axis (A = 3 for T, H, W). Text tokens carry the same
      position on every axis, which makes the result equal to `rope_angles`.
    head_dim: D; `sum(sections)` must equal D // 2.
    theta: RoPE base.
    sections: [A] number of frequency slots per axis, e.g. Qwen2-VL [16, 24, 24], Qwen3-VL [24, 20, 20].
    interleaved: Qwen3-VL layout instead of Qwen2-VL chunks (see `mrope_slot_axes`).
  Returns:
    [..., S, D // 2] float32.
  """
  positions = jnp.asarray(positions)
  if sum(sections) != head_dim // 2:
    raise ValueError(
      f"mrope_angles: `sections` must sum to head_dim // 2 = {head_dim // 2}, got {list(sections)} "
      f"(sum {sum(sections)})"
    )
  if positions.ndim < 2 or positions.shape[0] != len(sections):
    raise ValueError(
      f"mrope_angles: `positions` must have shape [A={len(sections)}, ..., S] (one row per section), "
      f"got {positions.shape}"
    )
  slot_axes = mrope_slot_axes(sections, interleaved)
  # [D/2, ..., S] -> [..., S, D/2]: each slot's position, then the same fp32 product as rope_angles.
  slot_positions = jnp.moveaxis(positions[slot_axes], 0, -1).astype(jnp.float32)
  return slot_positions * jnp.asarray(rope_inv_freq(head_dim, theta))


def vision_rope_2d_angles(hw: jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
  """Qwen2-VL / Qwen3-VL vision-tower 2-D RoPE angles.

  `f_k = theta ** (-2k / (head_dim / 2))` for k < head_dim / 4; a patch at (h, w) gets
  `concat([h * f, w * f])`.
  Apply with `apply_rope(..., style='half', compute_dtype=jnp.float32)`.

  Args:
    hw: [..., P, 2] int (row, column) of each patch.
  Returns:
    [..., P, head_dim // 2] float32.
  """
  hw = jnp.asarray(hw)
  if hw.ndim < 2 or hw.shape[-1] != 2:
    raise ValueError(f"vision_rope_2d_angles: `hw` must have shape [..., P, 2], got {hw.shape}")
  if head_dim % 4:
    raise ValueError(f"vision_rope_2d_angles: `head_dim` must be divisible by 4, got {head_dim}")
  inv_freq = jnp.asarray(rope_inv_freq(head_dim // 2, theta))
  angles = hw.astype(jnp.float32)[..., None] * inv_freq  # [..., P, 2, D/4]
  return angles.reshape(*hw.shape[:-1], head_dim // 2)


def _rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(
  x: jax.Array, angles: jax.Array, style: str = "half", compute_dtype: Dtype | None = None
) -> jax.Array:
  """Rotates `x` by `angles`.

  Args:
    x: [..., S, H, D] (e.g. [B, S, H, D], or [P, H, D] for an unbatched vision tower).
    angles: [..., S, D // 2] float32, leading dims broadcastable to x's; shared by all heads.
    style: 'half' -- rotate-half, slot j rotates the pair (j, j + D/2) (cos/sin duplicated as [phi, phi]);
      'interleaved' -- slot j rotates the pair (2j, 2j + 1).
    compute_dtype: None (HF text semantics): cos/sin are computed in float32, cast to x.dtype, and the
      rotation runs in x.dtype. float32 (HF vision semantics): x is upcast, rotated in float32 and cast back.
  Returns:
    [..., S, H, D] in x.dtype.
  """
  if style not in ("half", "interleaved"):
    raise ValueError(f"apply_rope: `style` must be 'half' or 'interleaved', got {style!r}")
  if x.ndim < 3:
    raise ValueError(f"apply_rope: `x` must have shape [..., S, H, D], got {x.shape}")
  if x.shape[-1] % 2 or angles.shape[-1] != x.shape[-1] // 2:
    raise ValueError(
      f"apply_rope: `angles` must end in D // 2 = {x.shape[-1] // 2} (x {x.shape}), got {angles.shape}"
    )
  if angles.ndim < 2 or angles.shape[-2] != x.shape[-3]:
    raise ValueError(f"apply_rope: `angles` must have shape [..., S={x.shape[-3]}, D//2], got {angles.shape}")
  dtype = compute_dtype or x.dtype
  angles = angles.astype(jnp.float32)[..., None, :]  # shared over heads: [..., S, 1, D/2]
  cos, sin = jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
  xc = x.astype(dtype)
  if style == "half":
    cos, sin = jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)
    out = xc * cos + _rotate_half(xc) * sin
  else:
    pairs = xc.reshape(*xc.shape[:-1], xc.shape[-1] // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(xc.shape)
  return out.astype(x.dtype)
