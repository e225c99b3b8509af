"""Multi-axis RoPE: per-axis frequency ladders, the FLUX.2 and MSRoPE position ids, and parity with diffusers'
`Flux2PosEmbed` + `apply_rotary_emb` (FLUX.2) when diffusers is installed. Lens' `LensEmbedRope` tables are checked
in tests/models/mmdit/test_lens.py."""

import numpy as np
import pytest

from jaxagents.layers.multi_axis_rope import flux_position_ids, msrope_position_ids, multi_axis_rope_angles
from jaxagents.layers.rotary import apply_rope


def test_each_axis_owns_a_chunk_with_its_own_frequency_ladder():
  axes, theta = (2, 4, 6), 100.0
  ids = np.array([[3, -2, 5], [0, 7, -1]])
  angles = np.asarray(multi_axis_rope_angles(ids, axes, theta))
  assert angles.shape == (2, sum(axes) // 2) and angles.dtype == np.float32
  start = 0
  for axis, dim in enumerate(axes):
    ladder = theta ** (-np.arange(0, dim, 2) / dim)
    np.testing.assert_allclose(angles[:, start:start + dim // 2], ids[:, axis, None] * ladder, rtol=1e-6)
    start += dim // 2


def test_interleaved_rotation_is_complex_multiplication_of_pairs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3, 16)).astype(np.float32)
  img_ids, _ = msrope_position_ids(1, 5, 0)
  angles = multi_axis_rope_angles(img_ids, (4, 6, 6), 10000.0)
  out = np.asarray(apply_rope(x, angles, style="interleaved", compute_dtype=np.float32))
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.asarray(angles, np.float64))[None, :, None, :]
  np.testing.assert_allclose(out, np.stack([z.real, z.imag], -1).reshape(x.shape), atol=1e-6)


def test_flux_position_ids_are_row_major_grid_then_text_index():
  image, text = flux_position_ids(2, 3, 4)
  np.testing.assert_array_equal(image, [[0, r, c, 0] for r in range(2) for c in range(3)])
  np.testing.assert_array_equal(text, [[0, 0, 0, i] for i in range(4)])


@pytest.mark.parametrize("height,width", [(3, 4), (4, 3), (1, 2), (5, 5)])
def test_msrope_ids_are_centred_and_text_continues_the_diagonal(height, width):
  image, text = msrope_position_ids(height, width, 3)
  rows, cols = image[:, 1].reshape(height, width), image[:, 2].reshape(height, width)
  np.testing.assert_array_equal(rows[:, 0], np.arange(height) - (height - height // 2))
  np.testing.assert_array_equal(cols[0], np.arange(width) - (width - width // 2))
  assert rows.max() == height // 2 - 1 and cols.min() == -(width - width // 2)  # odd sizes lean negative
  assert (image[:, 0] == 0).all()
  start = max(height // 2, width // 2)
  np.testing.assert_array_equal(text, np.repeat(np.arange(start, start + 3)[:, None], 3, axis=1))


def test_bad_arguments_raise_value_errors_naming_them():
  with pytest.raises(ValueError, match="`ids`"):
    multi_axis_rope_angles(np.zeros((4, 3)), (4, 4), 10.0)
  with pytest.raises(ValueError, match="`axes_dims`"):
    multi_axis_rope_angles(np.zeros((4, 2)), (4, 3), 10.0)
  with pytest.raises(ValueError, match="`height`"):
    msrope_position_ids(0, 3, 1)
  with pytest.raises(ValueError, match="`text_len`"):
    flux_position_ids(2, 3, -1)


def test_flux2_rotation_matches_diffusers():
  torch = pytest.importorskip("torch")
  embeddings = pytest.importorskip("diffusers.models.embeddings")
  flux2 = pytest.importorskip("diffusers.models.transformers.transformer_flux2")
  axes, theta = (4, 8, 6, 6), 2000
  img_ids, txt_ids = flux_position_ids(3, 5, 4)
  ids = np.concatenate([txt_ids, img_ids])
  x = np.random.default_rng(1).standard_normal((2, len(ids), 3, sum(axes))).astype(np.float32)
  cos, sin = flux2.Flux2PosEmbed(theta=theta, axes_dim=list(axes))(torch.from_numpy(ids))
  expected = embeddings.apply_rotary_emb(torch.from_numpy(x), (cos, sin), sequence_dim=1).numpy()
  out = apply_rope(x, multi_axis_rope_angles(ids, axes, theta), style="interleaved", compute_dtype=np.float32)
  np.testing.assert_allclose(np.asarray(out), expected, atol=2e-6)
