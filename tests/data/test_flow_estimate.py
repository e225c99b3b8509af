"""Block-matching flow (`jaxagents.data.flow_estimate`) against known motion: an exact shift of a texture, and the
rendered clips' exact flow."""

import numpy as np
import pytest

from jaxagents.data.flow_estimate import estimate_flow, estimate_pair
from jaxagents.data.motion_render import MotionConfig, render_clip


def test_a_shifted_texture_gets_its_shift_at_every_pixel_that_stays_in_the_frame():
  image = np.random.default_rng(0).random((24, 28, 3))
  dy, dx = 3, -5
  shifted = np.roll(image, (dy, dx), axis=(0, 1))
  flow = estimate_pair(image, shifted, radius=8, window=2)
  inside = np.zeros((24, 28), bool)
  inside[2 + max(0, -dy): 22 - max(0, dy), 2 + max(0, -dx): 26 - max(0, dx)] = True
  np.testing.assert_allclose(flow[inside], np.broadcast_to([dx, dy], flow[inside].shape), atol=0.5)
  assert np.mean(np.all(np.round(flow[inside]) == [dx, dy], axis=-1)) == 1.0


def test_rendered_pans_and_zooms_are_estimated_to_about_a_pixel_at_visible_points():
  # Translation-only matching: large rotations of the camera or of an object between frame 0 and frame t defeat it
  # (the module docstring says so), so the clips here pan or zoom mildly.
  config = MotionConfig(height=32, width=32, num_frames=5, camera_motions=("pan", "zoom"), max_zoom=1.3)
  for seed in range(4):
    clip = render_clip(config, seed=seed)
    flow = estimate_flow(clip.frames)
    assert flow.shape == clip.flow.shape and np.all(flow[0] == 0)
    visible = ~clip.occlusion[1:]
    error = np.linalg.norm(flow[1:] - clip.flow[1:], axis=-1)[visible]
    assert np.median(error) < 1.5 and np.mean(error < 1.0) > 0.4, (seed, np.median(error), np.mean(error < 1.0))


def test_bad_frames_are_refused():
  with pytest.raises(ValueError, match="frames"):
    estimate_flow(np.zeros((4, 8, 8)))
  with pytest.raises(ValueError, match="reference, target"):
    estimate_pair(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
