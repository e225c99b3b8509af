"""YaRN rotary scaling (Peng et al. 2023, arXiv 2309.00071): "NTK-by-parts" inverse frequencies (Sec. 3.2) and
the attention temperature `0.1 ln(s) + 1` (Sec. 3.4), as transformers `modeling_rope_utils.py`,
`_compute_yarn_parameters` and `yarn_get_mscale` compute them (GPT-OSS, Qwen, DeepSeek configs with
`rope_type: yarn`).

Frequencies whose wavelength fits `beta_fast` times into the original context keep their RoPE value
(extrapolation); those fitting fewer than `beta_slow` times are divided by the scale factor s (interpolation); a
linear ramp over the slot index blends the two in between. The cos/sin tables are then multiplied by the attention
factor, which scales q . k by its square: apply the rotation with `rotary.apply_rope` and multiply q and k by
`attention_factor`.

Rounding follows transformers' float32 torch code (the powers `theta ** (2j / d)` as `rotary.rope_inv_freq` rounds
them), so the table matches theirs to about one ulp.
"""

from __future__ import annotations

import math

import numpy as np


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  """`0.1 * mscale * ln(scale) + 1` for scale > 1, else 1 (arXiv 2309.00071, Sec. 3.4)."""
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(num_rotations: float, dim: int, theta: float, original_length: int) -> float:
  """The slot index whose wavelength fits `num_rotations` times into `original_length` tokens."""
  return (dim * math.log(original_length / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))


def yarn_inv_freq(
  head_dim: int,
  theta: float,
  factor: float,
  original_max_position_embeddings: int,
  *,
  beta_fast: float = 32.0,
  beta_slow: float = 1.0,
  truncate: bool = True,
  attention_factor: float | None = None,
  mscale: float | None = None,
  mscale_all_dim: float | None = None,
) -> tuple[np.ndarray, float]:
  """YaRN inverse frequencies and attention factor.

  Args:
    head_dim: D (even); the table has D // 2 slots.
    theta: RoPE base.
    factor: context scale s.
    original_max_position_embeddings: the pre-training context length L.
    beta_fast, beta_slow: rotation counts bounding the ramp (the paper's beta and alpha).
    truncate: round the ramp bounds outwards to whole slots (transformers' default; GPT-OSS sets False).
    attention_factor: explicit cos/sin multiplier; default from `mscale` / `mscale_all_dim` if both are given
      (DeepSeek), else `yarn_mscale(factor)`.
  Returns:
    (inv_freq float32 [D // 2], attention_factor).
  """
  if head_dim % 2:
    raise ValueError(f"yarn_inv_freq: `head_dim` must be even, got {head_dim}")
  if factor <= 0 or original_max_position_embeddings <= 0:
    raise ValueError(
      f"yarn_inv_freq: `factor` and `original_max_position_embeddings` must be positive, got {factor} and "
      f"{original_max_position_embeddings}"
    )
  if attention_factor is None:
    if mscale and mscale_all_dim:
      attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
      attention_factor = yarn_mscale(factor)
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  powers = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
  extrapolation = np.float32(1.0) / powers
  interpolation = np.float32(1.0) / (np.float32(factor) * powers)
  low = _correction_dim(beta_fast, head_dim, theta, original_max_position_embeddings)
  high = _correction_dim(beta_slow, head_dim, theta, original_max_position_embeddings)
  if truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001  # as transformers: avoid a zero-width ramp
  ramp = (np.arange(head_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
  keep = np.float32(1.0) - np.clip(ramp, np.float32(0.0), np.float32(1.0))  # 1: extrapolate, 0: interpolate
  inv_freq = interpolation * (np.float32(1.0) - keep) + extrapolation * keep
  return inv_freq.astype(np.float32), float(attention_factor)
