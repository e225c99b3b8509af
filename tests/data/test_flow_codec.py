"""FloVD's flow codec: hand-computed values of the signed square root, exact round trips inside the clip range,
saturation past it at the value FloVD's formulas give, the 2 -> 3 channel layout, numpy and jax (jit) alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.data import flow_codec as fc
from jaxagents.data.flow_codec import FlowCodec


def _flow(rng, height, width, frames=3, reach=0.9):
  """Random flow [frames, H, W, 2] inside +-reach of the image side per axis, with exact zeros sprinkled in."""
  flow = rng.uniform(-1, 1, (frames, height, width, 2)) * reach * np.array([width, height])
  flow[rng.random(flow.shape) < 0.05] = 0.0
  return flow


def test_normalisation_matches_hand_computed_values():
  flow = np.zeros((1, 48, 90, 2))  # H = 48, W = 90; scale (45, 24)
  flow[0, 0, 0] = (45.0, -24.0)  # |f| = s on both axes -> +-sqrt(1 + 1e-7)
  flow[0, 0, 1] = (-11.25, 0.0)  # x: -sqrt(1/4 + 1e-7); y: zero stays zero
  flow[0, 0, 2] = (1e4, -1e4)  # saturates at sqrt(W / s_x) = sqrt(H / s_y) = sqrt(2)
  normalized = fc.normalize_flow(flow, (45.0, 24.0))
  np.testing.assert_allclose(normalized[0, 0, 0], [np.sqrt(1 + 1e-7), -np.sqrt(1 + 1e-7)], rtol=1e-15)
  np.testing.assert_allclose(normalized[0, 0, 1], [-np.sqrt(0.25 + 1e-7), 0.0], rtol=1e-15)
  np.testing.assert_array_equal(normalized[0, 0, 2], [np.sqrt(2), -np.sqrt(2)])
  assert normalized[0, 0, 1, 1] == 0.0 and normalized[0, 1, 0, 0] == 0.0
  assert fc.clip_bounds(48, 90, (45.0, 24.0)) == (np.sqrt(2), np.sqrt(2))


@pytest.mark.parametrize("preset", sorted(fc.FLOVD_PRESETS))
@pytest.mark.parametrize("unit_range", [False, True])
def test_round_trip_is_exact_inside_the_clip_range(preset, unit_range):
  rng = np.random.default_rng(0)
  codec = FlowCodec.for_resolution(24, 40, preset, unit_range)
  flow = _flow(rng, 24, 40)
  np.testing.assert_allclose(codec.decode(codec.encode(flow)), flow, rtol=1e-9, atol=1e-9)
  flow32 = flow.astype(np.float32)
  decoded32 = codec.decode(codec.encode(flow32))
  assert decoded32.dtype == np.float32
  np.testing.assert_allclose(decoded32, flow32, rtol=2e-5, atol=2e-5 * max(codec.scale))
  assert np.all(codec.decode(codec.encode(np.zeros((2, 24, 40, 2)))) == 0)


def test_values_past_the_clip_saturate_where_flovds_formulas_put_them():
  codec = FlowCodec((6.0, 4.0))
  height, width = 16, 24
  flow = np.zeros((1, height, width, 2))
  flow[0, :, :8] = (30.0, -50.0)  # beyond W = 24 and H = 16
  flow[0, :, 8:16] = (-1e6, 1e6)
  flow[0, :, 16:] = (20.0, -10.0)  # inside
  encoded = codec.encode(flow)
  bound_x, bound_y = codec.bounds(height, width)
  np.testing.assert_array_equal(encoded[0, :, :8, :2], np.broadcast_to([bound_x, -bound_y], (height, 8, 2)))
  np.testing.assert_array_equal(encoded[0, :, 8:16, :2], np.broadcast_to([-bound_x, bound_y], (height, 8, 2)))
  max_x, max_y = codec.max_flow(height, width)
  assert (max_x, max_y) == (24 - 6e-7, 16 - 4e-7)
  decoded = codec.decode(encoded)
  np.testing.assert_allclose(decoded[0, :, :8], np.broadcast_to([max_x, -max_y], (height, 8, 2)), rtol=1e-12)
  np.testing.assert_allclose(decoded[0, :, 8:16], np.broadcast_to([-max_x, max_y], (height, 8, 2)), rtol=1e-12)
  np.testing.assert_allclose(decoded[0, :, 16:], flow[0, :, 16:], rtol=1e-12)


def test_encoding_is_three_channels_with_the_mean_third_and_unit_range_within_one():
  rng = np.random.default_rng(1)
  flow = _flow(rng, 12, 20, frames=4, reach=3.0)  # some of it saturates
  for unit_range in (False, True):
    encoded = FlowCodec((5.0, 3.0), unit_range).encode(flow)
    assert encoded.shape == (4, 12, 20, 3)
    np.testing.assert_allclose(encoded[..., 2], encoded[..., :2].mean(-1), rtol=1e-15)
  assert np.abs(encoded).max() == pytest.approx(1.0)  # the last is unit_range: saturated values sit at +-1
  assert np.abs(FlowCodec((5.0, 3.0)).encode(flow)[..., 0]).max() == pytest.approx(np.sqrt(20 / 5))
  codec = FlowCodec((5.0, 3.0))
  np.testing.assert_array_equal(codec.decode(codec.encode(flow)), codec.decode(codec.encode(flow)[..., :2]))


def test_for_resolution_keeps_the_presets_clip_bounds():
  for preset, (scale, (height, width)) in fc.FLOVD_PRESETS.items():
    codec = FlowCodec.for_resolution(height // 8, width // 8, preset)
    np.testing.assert_allclose(codec.bounds(height // 8, width // 8), fc.clip_bounds(height, width, scale))
    assert FlowCodec.for_resolution(height, width, preset).scale == scale
  assert FlowCodec().scale == (60.0, 36.0)


def test_jax_inputs_give_jax_outputs_equal_to_numpy_and_jit():
  rng = np.random.default_rng(2)
  flow = _flow(rng, 8, 16).astype(np.float32)
  codec = FlowCodec((4.0, 2.0), unit_range=True)
  encoded = jax.jit(codec.encode)(jnp.asarray(flow))
  assert isinstance(encoded, jax.Array) and encoded.shape == (3, 8, 16, 3)
  np.testing.assert_allclose(np.asarray(encoded), codec.encode(flow), rtol=1e-6, atol=1e-6)
  decoded = jax.jit(codec.decode)(encoded)
  np.testing.assert_allclose(np.asarray(decoded), flow, rtol=2e-5, atol=1e-4)
  assert isinstance(fc.normalize_flow(jnp.asarray(flow), (4.0, 2.0)), jax.Array)


def test_bad_shapes_and_scales_raise_naming_the_argument():
  with pytest.raises(ValueError, match="flow"):
    FlowCodec().encode(np.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match="video"):
    FlowCodec().decode(np.zeros((4, 4, 4)))
  with pytest.raises(ValueError, match="scale"):
    FlowCodec((1.0, 0.0))
  with pytest.raises(ValueError, match="preset"):
    FlowCodec.for_resolution(8, 8, "flovd")
