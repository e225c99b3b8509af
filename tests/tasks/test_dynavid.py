"""The DynaVid job (`jaxagents.tasks.dynavid`) at toy size: the clips it reads, the first-frame condition, the flow
measure, and the whole job through the one loop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxagents import sample, train
from jaxagents.data import motion_clips
from jaxagents.data.motion_render import MotionConfig
from jaxagents.sharding import unbox
from jaxagents.tasks.dynavid import DynaVid, flow_correlation
from tests.tasks import configs

SMALL = MotionConfig(height=16, width=16, num_frames=5, camera_motions=("pan", "zoom+roll"))


def test_clip_records_are_a_pure_function_of_seed_and_index_and_name_their_camera_motion():
  source = motion_clips.MotionClipsSource(4, seed=3, config=SMALL)
  again = motion_clips.MotionClipsSource(4, seed=3, config=SMALL)
  other = motion_clips.MotionClipsSource(4, seed=4, config=SMALL)
  for index in range(4):
    record = source[index]
    assert all(np.array_equal(record[key], again[index][key]) for key in record)
    assert record["frames"].shape == (5, 16, 16, 3) and record["frames"].dtype == np.uint8
    assert record["flow"].shape == (5, 16, 16, 2) and np.all(record["flow"][0] == 0)
    motion = SMALL.camera_motions[int(record["camera_motion_id"])]
    words = [motion_clips.VOCABULARY[i] for i in record["caption_ids"][record["caption_mask"]]]
    assert " ".join(words) == motion_clips.caption(motion)
  assert not all(np.array_equal(source[i]["frames"], other[i]["frames"]) for i in range(4))
  assert motion_clips.caption("zoom+roll") == "the camera zooms and rolls"
  with pytest.raises(IndexError):
    source[4]
  with pytest.raises(ValueError, match="max_len"):
    motion_clips.MotionClipsSource(4, seed=3, config=SMALL, max_len=3)


def test_flow_correlation_is_one_for_a_scaled_copy_and_minus_one_for_the_reverse():
  flow = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 2))
  flow[:, 0] = 0.0
  assert flow_correlation(2.0 * flow, flow) == pytest.approx(1.0)
  assert flow_correlation(-flow, flow) == pytest.approx(-1.0)
  assert flow_correlation(np.zeros_like(flow), flow) == 0.0


@pytest.fixture(scope="module")
def task():
  return DynaVid(configs.load("dynavid_shapes", "test"))


@pytest.mark.slow  # in CI after the suite (.ci/run): three compilations of the 3D VAE, ~25 s
def test_the_first_frame_condition_is_what_encoding_the_first_frame_alone_gives(task):
  # Wan's causal VAE encodes frame 0 alone into latent frame 0, so sampling (which sees only the first frame) and
  # training (which encodes the whole clip) condition on the same latent.
  frames = jnp.asarray(np.stack([task.train_source[i]["frames"] for i in range(2)]))
  pixels = frames.astype(jnp.float32) / 127.5 - 1.0
  z_dim = task.vae_config.z_dim
  stats = {"mean": jnp.full((z_dim,), 0.1), "var": jnp.full((z_dim,), 2.0)}
  state = {"vae": unbox(jax.jit(task.vae.init)(jax.random.key(0), pixels))["params"], "latent_stats": {"rgb": stats}}
  encode = jax.jit(task.encode, static_argnums=2)
  clip, first = encode(state, pixels, "rgb"), encode(state, pixels[:, :1], "rgb")
  np.testing.assert_allclose(clip[:, :1], first, rtol=1e-5, atol=1e-5)
  condition = task.first_frame_condition(first, clip.shape[1])
  assert condition.shape == (*clip.shape[:-1], clip.shape[-1] + 1)
  np.testing.assert_array_equal(condition[:, 0, ..., :-1], first[:, 0])
  assert not np.any(condition[:, 1:, ..., :-1]) and np.all(condition[:, 0, ..., -1] == 1)
  assert not np.any(condition[:, 1:, ..., -1])


def test_flow_videos_lie_in_the_vae_range_and_decode_back_to_the_flow(task):
  assert task.motion_config.height == task.motion_config.width == 16
  flow = np.stack([task.train_source[i]["flow"] for i in range(2)])
  video = task.flow_video(flow)
  assert video.shape == (*flow.shape[:-1], 3) and float(jnp.abs(video).max()) <= 1.0
  # Flow beyond one image side (points that leave the frame) saturates there, as FloVD's clip does.
  saturated = np.clip(flow, -np.asarray(task.codec.max_flow(16, 16)), np.asarray(task.codec.max_flow(16, 16)))
  np.testing.assert_allclose(task.codec.decode(video), saturated, atol=1e-3)


def test_bad_clip_sizes_are_refused():
  config = configs.load("dynavid_shapes", "test")
  config.data.num_frames = 8
  with pytest.raises(ValueError, match="num_frames"):
    DynaVid(config)
  config = configs.load("dynavid_shapes", "test")
  config.data.height = 30
  with pytest.raises(ValueError, match="multiples"):
    DynaVid(config)


@pytest.mark.slow  # in CI after the suite (.ci/run): the whole job in-process, ~2 min of compilations
def test_the_job_runs_its_four_phases_through_the_one_loop(tmp_path):
  config = configs.load("dynavid_shapes", "test")
  final = train.train(config, str(tmp_path))
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "reconstruction_l1" in r] == [1, 2]
  assert [r["step"] for r in logged if "captions_dropped" in r] == [3, 4, 5, 6]
  assert [r["step"] for r in logged if "loss" in r and "captions_dropped" not in r and "kl" not in r] == [7, 8]
  for key in ("eval/motion_correlation", "eval/motion_unconditional_correlation", "eval/motion_endpoint_error",
              "eval/video_first_frame_l1", "eval/reconstruction_l1", "eval/controlled_motion_correlation",
              "eval/uncontrolled_motion_correlation", "eval/two_stage_motion_correlation"):
    assert key in final and np.isfinite(final[key]), key
  assert (tmp_path / "samples" / "step_000008.gif").exists()
  for name in ("before.json", "after_autoencoder.json", "after_motion.json", "after_video.json",
               "final_metrics.json"):
    assert (tmp_path / name).exists(), name
  # `python -m jaxagents.sample --run` reads the run's checkpoint and writes the two stages' GIFs.
  assert sample.main(["--run", str(tmp_path), "--clips", "2", "--out", str(tmp_path / "cli")]) == 0
  for name in ("flow_0.gif", "video_0.gif", "video_uncontrolled_1.gif"):
    with Image.open(tmp_path / "cli" / name) as gif:
      assert gif.n_frames > 1 and gif.size == (64, 64), name
