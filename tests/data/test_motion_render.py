"""Synthetic motion clips: the rendered flow warps every frame back onto frame 0 away from occlusions (and fails where
the mask says it should), flow equals the analytic camera and object maps, occlusion marks background that an object
covers later, clips are a pure function of the seed, the Middlebury colour wheel, GIF and MP4 export."""

import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from jaxagents.data import motion_render as mr

CONFIG = mr.MotionConfig(height=64, width=64, num_frames=12)
EMPTY = mr.MotionConfig(height=48, width=64, num_frames=8, num_shapes=(0, 0), num_figures=(0, 0))
WARP_ERROR_LIMIT = 0.01  # mean |warped - frame 0| over valid pixels, on [0, 1] images; measured <= 0.004
SEEDS = (0, 1, 2)


def _grid(height, width):
  ys, xs = np.mgrid[:height, :width]
  return np.stack([xs, ys], -1).astype(np.float64)


def _warp_masks(clip, t):
  """(valid, occluded_in_image) [H, W]: valid pixels are unoccluded and their bilinear footprint in frame t lies on
  frame 0's layer (a footprint straddling a layer edge mixes two surfaces); occluded_in_image are occluded pixels
  whose target is still inside the image."""
  height, width = clip.layer_ids.shape[1:]
  target = _grid(height, width) + clip.flow[t]
  x0 = np.clip(np.floor(target[..., 0]).astype(int), 0, width - 2)
  y0 = np.clip(np.floor(target[..., 1]).astype(int), 0, height - 2)
  same_layer = np.ones((height, width), bool)
  for dy in (0, 1):
    for dx in (0, 1):
      same_layer &= clip.layer_ids[t][y0 + dy, x0 + dx] == clip.layer_ids[0]
  in_image = np.all((target >= 0) & (target <= (width - 1, height - 1)), -1)
  return same_layer & ~clip.occlusion[t], clip.occlusion[t] & in_image


@pytest.mark.parametrize("camera_motion", [*mr.CAMERA_MOTIONS, "pan+shake", "zoom+roll", "orbit+pan"])
def test_warping_frame_t_back_reproduces_frame_0_away_from_occlusions(camera_motion):
  for seed in SEEDS:
    clip = mr.render_clip(CONFIG, seed, camera_motion)
    errors, occluded_errors, still_errors, valid_fraction = [], [], [], []
    for t in range(1, CONFIG.num_frames):
      valid, occluded = _warp_masks(clip, t)
      warped = mr.warp_to_reference(clip.frames[t], clip.flow[t])
      error = np.abs(warped - clip.frames[0]).mean(-1)
      errors.append(error[valid].mean())
      occluded_errors.extend(error[occluded])
      still_errors.append(np.abs(clip.frames[t] - clip.frames[0]).mean(-1)[valid].mean())
      valid_fraction.append(valid.mean())
    assert max(errors) < WARP_ERROR_LIMIT, (camera_motion, seed, errors)
    assert min(valid_fraction) > 0.15, (camera_motion, seed, valid_fraction)
    # The test can fail: where the mask says occluded the same warp is far off, and so is ignoring the motion.
    if len(occluded_errors) > 50:
      assert np.mean(occluded_errors) > 0.05, (camera_motion, seed)
    if camera_motion != "static" or clip.layer_matrices.shape[0] > 1:
      assert np.mean(still_errors) > 5 * np.mean(errors), (camera_motion, seed)


def test_clips_are_bitwise_deterministic_per_seed_and_differ_across_seeds():
  first, second, other = mr.render_clip(CONFIG, 7), mr.render_clip(CONFIG, 7), mr.render_clip(CONFIG, 8)
  for field in ("frames", "flow", "occlusion", "camera_flow", "layer_ids", "camera_matrices", "layer_matrices"):
    np.testing.assert_array_equal(getattr(first, field), getattr(second, field), err_msg=field)
  assert first.camera_motion == second.camera_motion and first.camera_motion in CONFIG.camera_motions
  assert not np.array_equal(first.frames, other.frames) and not np.array_equal(first.flow, other.flow)
  assert first.frames.shape == (12, 64, 64, 3) and first.frames.dtype == np.float32
  assert 0 <= first.frames.min() and first.frames.max() <= 1
  assert first.flow.shape == (12, 64, 64, 2) and first.flow.dtype == np.float32 and not first.flow[0].any()
  assert first.occlusion.shape == (12, 64, 64) and first.occlusion.dtype == bool and not first.occlusion[0].any()
  # Overriding the camera keeps the objects' draws: same layers, same motion relative to the camera.
  panned = mr.render_clip(CONFIG, 7, "pan")
  assert panned.layer_matrices.shape == first.layer_matrices.shape
  relative = np.linalg.inv(panned.camera_matrices)[:, None] @ panned.layer_matrices[1:].swapaxes(0, 1)
  original = np.linalg.inv(first.camera_matrices)[:, None] @ first.layer_matrices[1:].swapaxes(0, 1)
  np.testing.assert_allclose(relative, original, atol=1e-9)


def test_pure_pan_flow_is_the_pan_translation_at_every_pixel():
  for seed in SEEDS:
    clip = mr.render_clip(EMPTY, seed, "pan")
    shifts = clip.camera_matrices[:, :2, 2]
    np.testing.assert_array_equal(clip.camera_matrices[:, :2, :2], np.broadcast_to(np.eye(2), (8, 2, 2)))
    np.testing.assert_allclose(clip.flow, np.broadcast_to(shifts[:, None, None], clip.flow.shape), atol=1e-5)
    np.testing.assert_array_equal(clip.flow, clip.camera_flow)
    distance = np.linalg.norm(shifts[-1])
    assert 0.5 * EMPTY.max_pan * 64 - 1e-9 <= distance <= EMPTY.max_pan * 64 + 1e-9
    assert np.all(np.diff(np.linalg.norm(shifts, axis=-1)) > 0)  # the pan only moves on
    target = _grid(48, 64) + shifts[:, None, None]
    np.testing.assert_array_equal(clip.occlusion, ~np.all((target >= 0) & (target <= (63, 47)), -1))


def test_warp_with_a_whole_pixel_flow_is_an_exact_shift():
  clip = mr.render_clip(EMPTY, 4, "pan")
  shift = np.round(clip.flow[-1, 0, 0]).astype(int)
  ys, xs = np.mgrid[:48, :64]
  shifted = mr.warp_to_reference(clip.frames[0], np.broadcast_to(shift.astype(np.float32), (48, 64, 2)))
  inside = (xs + shift[0] >= 0) & (xs + shift[0] < 64) & (ys + shift[1] >= 0) & (ys + shift[1] < 48)
  np.testing.assert_array_equal(shifted[inside], clip.frames[0][(ys + shift[1])[inside], (xs + shift[0])[inside]])


def test_object_flow_is_a_similarity_from_its_analytic_map_and_background_stays_still():
  config = mr.MotionConfig(height=64, width=64, num_frames=6, num_shapes=(1, 1), num_figures=(0, 0))
  for seed in SEEDS:
    clip = mr.render_clip(config, seed, "static")
    pixels = clip.layer_ids[0] == 1
    assert pixels.sum() > 20
    points = _grid(64, 64)[pixels]
    maps = clip.layer_matrices[1] @ np.linalg.inv(clip.layer_matrices[1, 0])
    for t in range(6):
      moved = points + clip.flow[t][pixels]
      expected = points @ maps[t, :2, :2].T + maps[t, :2, 2]
      np.testing.assert_allclose(moved, expected, atol=1e-4)
      # Independently of the maps: a rigid, scaling, spinning object moves its points by one similarity.
      design = np.stack([points[:, 0], -points[:, 1], np.ones(len(points)), np.zeros(len(points))], -1)
      design = np.concatenate([design, np.stack([points[:, 1], points[:, 0], design[:, 3], design[:, 2]], -1)])
      fit, *_ = np.linalg.lstsq(design, np.concatenate([moved[:, 0], moved[:, 1]]), rcond=None)
      assert np.abs(design @ fit - np.concatenate([moved[:, 0], moved[:, 1]])).max() < 1e-3
    assert not clip.flow[:, clip.layer_ids[0] == 0].any()


def test_occlusion_is_true_exactly_where_an_object_covers_background_at_t():
  config = mr.MotionConfig(height=64, width=64, num_frames=8, num_shapes=(2, 3), num_figures=(1, 1))
  covered_somewhere = False
  for seed in SEEDS:
    clip = mr.render_clip(config, seed, "static")
    background = clip.layer_ids[0] == 0
    for t in range(8):
      covered = clip.layer_ids[t] != 0
      np.testing.assert_array_equal(clip.occlusion[t][background], covered[background])
      covered_somewhere |= bool((covered & background).any())
    assert not clip.camera_flow.any()
  assert covered_somewhere


@pytest.mark.parametrize("camera_motion", ["zoom", "orbit", "roll", "shake"])
def test_camera_flow_is_the_background_flow_and_the_camera_moves(camera_motion):
  clip = mr.render_clip(CONFIG, 3, camera_motion)
  background = clip.layer_ids[0] == 0
  np.testing.assert_allclose(clip.flow[:, background], clip.camera_flow[:, background], atol=1e-4)
  assert np.abs(clip.camera_flow[-1]).max() > 3  # pixels: every kind moves the view visibly by the last frame
  if camera_motion == "orbit":  # a homography, not an affine map, about the point the camera circles
    assert np.abs(clip.camera_matrices[-1, 2, :2]).max() > 1e-4
    centre = np.array([[31.5, 31.5]])
    np.testing.assert_allclose(mr._apply(clip.camera_matrices, centre), np.broadcast_to(centre, (12, 1, 2)), atol=1e-9)


def test_colour_wheel_is_white_at_rest_and_maps_directions_to_middlebury_hues():
  directions = np.array([[0.0, 0.0], [1, 0], [0, 1], [-1, 0], [0, -1], [0.5, 0], [2, 0]])
  colours = mr.flow_to_color(directions[:, None], max_magnitude=1.0)[:, 0]
  assert colours.dtype == np.uint8
  np.testing.assert_array_equal(colours[0], [255, 255, 255])  # zero flow is white
  np.testing.assert_array_equal(colours[1], [255, 0, 0])  # +x (right) red
  np.testing.assert_array_equal(colours[2], [255, 229, 0])  # +y (down) yellow
  np.testing.assert_array_equal(colours[3], [0, 209, 255])  # -x (left) cyan-blue
  np.testing.assert_array_equal(colours[4], [88, 0, 255])  # -y (up) violet
  np.testing.assert_array_equal(colours[5], [255, 127, 127])  # half the maximum: halfway to white
  np.testing.assert_array_equal(colours[6], [191, 0, 0])  # beyond the maximum: dimmed by 0.75
  assert mr.flow_to_color(np.zeros((3, 4, 5, 2))).shape == (3, 4, 5, 3)
  assert (mr.flow_to_color(np.zeros((4, 5, 2))) == 255).all()
  wheel = mr._colour_wheel()
  assert wheel.shape == (55, 3) and (wheel[0] == (255, 0, 0)).all() and (wheel[15] == (255, 255, 0)).all()
  # Magnitude is normalised by the largest in the input when no maximum is given.
  np.testing.assert_array_equal(mr.flow_to_color(directions[1:2, None] * 7)[0, 0], [255, 0, 0])


def test_gif_is_written_and_read_back_with_every_frame(tmp_path):
  clip = mr.render_clip(CONFIG, 5)
  path = mr.save_gif(clip.frames, tmp_path / "frames.gif", fps=10)
  with Image.open(path) as gif:
    assert gif.n_frames == CONFIG.num_frames and gif.size == (64, 64)
  colours = [mr.flow_to_color(f, np.abs(clip.flow).max()) for f in clip.flow]
  with Image.open(mr.save_gif(colours, tmp_path / "flow.gif", fps=10, scale=2)) as gif:
    assert gif.n_frames == CONFIG.num_frames and gif.size == (128, 128)


def test_mp4_is_written_when_an_encoder_exists_and_otherwise_raises_naming_one(tmp_path, monkeypatch):
  frames = mr.render_clip(EMPTY, 0).frames
  try:
    path = mr.save_mp4(frames, tmp_path / "clip.mp4", fps=8)
  except RuntimeError as error:
    assert "imageio-ffmpeg" in str(error)
  else:
    assert path.stat().st_size > 0
  monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import raises ImportError
  monkeypatch.setitem(sys.modules, "cv2", None)
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
    mr.save_mp4(frames, tmp_path / "none.mp4")


def test_bad_configs_and_arguments_raise_naming_them():
  with pytest.raises(ValueError, match="camera_motion"):
    mr.MotionConfig(camera_motions=("pan", "dolly"))
  with pytest.raises(ValueError, match="camera_motion"):
    mr.render_clip(EMPTY, 0, "pan+spin")
  with pytest.raises(ValueError, match="num_shapes"):
    mr.MotionConfig(num_shapes=(3, 1))
  with pytest.raises(ValueError, match="max_orbit_degrees"):
    mr.MotionConfig(max_orbit_degrees=60)
  with pytest.raises(ValueError, match="flow_t"):
    mr.warp_to_reference(np.zeros((8, 8, 3)), np.zeros((8, 9, 2)))
  with pytest.raises(ValueError, match="flow"):
    mr.flow_to_color(np.zeros((4, 4, 3)))
