"""Qwen-VL preprocessing (`preprocess.py`) against hand-worked cases and transformers 5.23 without torchvision.

References: `Qwen2VLImageProcessorPil` (pixels and grids), the Qwen2/2.5/3-VL `*Processor` classes subclassed to skip
the video-processor class check ( prompt expansion, `mm_token_type_ids`, `second_per_grid_ts`),
`Qwen3VLVideoProcessor` with resize/rescale/normalize/convert-RGB off (frame sampling, grids, patch layout,
timestamps), the module-level `smart_resize` functions, `Qwen2VLVideoProcessor.sample_frames` executed from its source
(its module imports torchvision), and an explicit per-patch loop written from `Qwen2VLImageProcessorPil._preprocess`.
"""

import ast
import functools
import inspect
import math
import os
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

from jaxagents.models.qwen_vl import preprocess as pp
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.positions import mm_token_type_ids
from tests.models.qwen_vl.tiny import TINY

SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), rescale_factor=1.0)  # identity normalization: raw pixels
FLAGS_OFF = dict(do_resize=False, do_rescale=False, do_normalize=False, do_convert_rgb=False)


def rng_image(h, w, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def rng_video(t, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# smart_resize

@pytest.mark.parametrize("factor,min_px,max_px,cases", [
  (28, 3136, 1003520, {(60, 90): (56, 84), (10, 10): (56, 56), (1080, 1920): (728, 1316),
                       (4000, 3000): (1148, 840), (3000, 15): (2996, 28)}),
  (32, 65536, 16777216, {(60, 90): (224, 320), (224, 224): (256, 256), (1080, 1920): (1088, 1920)}),
])
def test_smart_resize_matches_hand_worked_sizes(factor, min_px, max_px, cases):
  for (h, w), expected in cases.items():
    assert pp.smart_resize(h, w, factor, min_px, max_px) == expected, (h, w)


def test_smart_resize_rejects_aspect_ratio_over_200_and_says_what_to_change():
  with pytest.raises(ValueError, match=r"aspect ratio.*10 x 2100.*crop or pad"):
    pp.smart_resize(10, 2100, 28, 3136, 1003520)
  assert pp.smart_resize(10, 2000, 28, 3136, 1003520)  # ratio exactly 200 is allowed


def test_smart_resize_equals_transformers_on_a_size_sweep():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_resize

  def outcome(fn, *args):
    try:
      return fn(*args)
    except ValueError:
      return "raises"

  sizes = [(h, w) for h in (1, 13, 14, 27, 42, 70, 126, 333, 1001) for w in (15, 28, 98, 250, 700)]
  raised = 0
  for h, w in sizes:
    for factor, lo, hi in ((28, 3136, 50176), (28, 3136, 12845056), (32, 65536, 16777216)):
      expected = outcome(hf_resize, h, w, factor, lo, hi)
      assert outcome(pp.smart_resize, h, w, factor, lo, hi) == expected, (h, w, factor)
      raised += expected == "raises"
    for t in (1, 2, 3, 8, 31):
      for lo, hi in ((4096, 25165824), (131072, 786432)):
        expected = outcome(hf_video_resize, t, h, w, 2, 32, lo, hi)
        assert outcome(pp.smart_resize_video, t, h, w, 2, 32, lo, hi) == expected, (t, h, w, lo, hi)
  assert 0 < raised < len(sizes)  # the sweep covers the aspect-ratio error and the normal path


# ---------------------------------------------------------------------------------------------------------------
# options

def test_family_defaults_are_the_released_checkpoints_processor_values():
  q2, q3 = pp.ImageOptions.for_family("qwen2_5_vl"), pp.ImageOptions.for_family("qwen3_vl")
  assert (q2.min_pixels, q2.max_pixels, q2.patch_size, q2.factor) == (3136, 28 * 28 * 16384, 14, 28)
  assert q2.mean == (0.48145466, 0.4578275, 0.40821073) and q2.std == (0.26862954, 0.26130258, 0.27577711)
  assert (q3.min_pixels, q3.max_pixels, q3.patch_size, q3.factor, q3.mean, q3.std) == (
    65536, 16777216, 16, 32, (0.5,) * 3, (0.5,) * 3)
  v2, v3 = pp.VideoOptions.for_family("qwen2_vl"), pp.VideoOptions.for_family("qwen3_vl")
  assert (v2.min_pixels, v2.max_pixels, v2.cap_pixels_per_frame, v2.max_video_tokens) == (
    128 * 28 * 28, 768 * 28 * 28, True, 128000)
  assert (v3.min_pixels, v3.max_pixels, v3.do_sample_frames, v3.fps, v3.min_frames, v3.max_frames) == (
    4096, 25165824, True, 2.0, 4, 768)
  assert pp.ImageOptions.for_family(QwenVLConfig.from_hf(TINY["qwen3_vl"])) == q3


def test_from_hf_reads_configs_as_transformers_does():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

  legacy = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                image_mean=list(pp.CLIP_MEAN), image_std=list(pp.CLIP_STD), processor_class="Qwen2VLProcessor")
  nested = dict(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16, image_mean=[0.5] * 3,
                image_std=[0.5] * 3, processor_class="Qwen3VLProcessor")
  for cfg in (legacy, nested, dict(legacy, size={"shortest_edge": 1, "longest_edge": 2}, max_pixels=4000)):
    ours = pp.ImageOptions.from_hf(cfg)
    hf = Qwen2VLImageProcessorPil(**{k: v for k, v in cfg.items() if k != "processor_class"})
    assert (ours.min_pixels, ours.max_pixels) == (hf.size["shortest_edge"], hf.size["longest_edge"])
    assert ours.mean == tuple(hf.image_mean) and ours.std == tuple(hf.image_std)
    assert (ours.patch_size, ours.merge_size, ours.temporal_patch_size) == (
      hf.patch_size, hf.merge_size, hf.temporal_patch_size)
  assert pp.ImageOptions.from_hf(legacy) == pp.ImageOptions.for_family("qwen2_vl")
  assert pp.ImageOptions.from_hf(nested) == pp.ImageOptions.for_family("qwen3_vl")

  video = dict(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, fps=1.5, min_frames=6,
               max_frames=64, image_mean=[0.5] * 3, image_std=[0.5] * 3)
  ours = pp.VideoOptions.from_hf(video, "qwen3_vl")
  hf = Qwen3VLVideoProcessor(**video)
  assert (ours.min_pixels, ours.max_pixels) == (hf.size["shortest_edge"], hf.size["longest_edge"])
  assert (ours.fps, ours.min_frames, ours.max_frames, ours.do_sample_frames, ours.cap_pixels_per_frame) == (
    hf.fps, hf.min_frames, hf.max_frames, hf.do_sample_frames, bool(hf.cap_pixels_per_frame))
  # transformers falls back to preprocessor_config.json when a repo has no video config (Qwen2/2.5-VL hub repos)
  assert (pp.VideoOptions.from_hf(legacy).max_pixels, pp.VideoOptions.from_hf(legacy).do_sample_frames) == (
    12845056, False)
  with pytest.raises(ValueError, match="family"):
    pp.ImageOptions.from_hf({"min_pixels": 3136})
  with pytest.raises(ValueError, match="do_normalize"):
    pp.ImageOptions.from_hf(dict(legacy, do_normalize=False))


# ---------------------------------------------------------------------------------------------------------------
# images vs Qwen2VLImageProcessorPil

def image_inputs():
  """RGB arrays with sides that are not multiples of 28/32, a tiny one (min_pixels), a large one (max_pixels), and
  PIL images that need RGB conversion (RGBA over white, grayscale, palette) plus an RGBA array."""
  rgba = Image.fromarray(rng_image(45, 70, 4, seed=3), "RGBA")
  return [rng_image(60, 90), rng_image(97, 131, seed=1), rng_image(9, 13, seed=2), rng_image(410, 610, seed=4),
          rgba, Image.fromarray(rng_image(50, 33, seed=5)[..., 0], "L"), rgba.convert("P"), rng_image(40, 57, 4, 6)]


@pytest.mark.parametrize("patch,mean,std", [(14, pp.CLIP_MEAN, pp.CLIP_STD), (16, pp.HALF, pp.HALF)])
def test_images_match_qwen2vl_pil_processor(patch, mean, std):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  factor = 2 * patch
  lo, hi = 4 * factor * factor, 64 * factor * factor  # the 9x13 image grows to lo, the 410x610 one shrinks to hi
  opts = pp.ImageOptions(min_pixels=lo, max_pixels=hi, mean=mean, std=std, patch_size=patch)
  hf = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi, patch_size=patch, image_mean=list(mean),
                                image_std=list(std))
  images = image_inputs()
  expected = hf(images=images, return_tensors="np")
  pixels, grid = pp.preprocess_images(images, opts)
  np.testing.assert_array_equal(grid, expected["image_grid_thw"])
  assert pixels.dtype == np.float32 and pixels.shape == expected["pixel_values"].shape == (
    grid.prod(1).sum(), 3 * 2 * patch * patch)
  assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-6
  (h_tiny, w_tiny), (h_big, w_big) = grid[2, 1:] * patch, grid[3, 1:] * patch
  assert round(9 / factor) == 0 and h_tiny * w_tiny >= lo  # grown by the min_pixels branch
  assert round(410 / factor) * round(610 / factor) * factor**2 > hi >= h_big * w_big  # shrunk by max_pixels


# ---------------------------------------------------------------------------------------------------------------
# video: sampling, layout, resize, timing

def hf_qwen2_sample_frames():
  """`Qwen2VLVideoProcessor.sample_frames` compiled from the installed source (its module imports torchvision)."""
  import torch
  from transformers.models import qwen2_vl
  from transformers.video_utils import VideoMetadata

  with open(os.path.join(os.path.dirname(inspect.getfile(qwen2_vl)), "video_processing_qwen2_vl.py")) as f:
    source = f.read()
  cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
  fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "sample_frames")
  namespace = {"math": math, "torch": torch, "VideoMetadata": VideoMetadata}
  exec(textwrap.dedent(ast.get_source_segment(source, fn)), namespace)
  hf_self = types.SimpleNamespace(num_frames=None, fps=None, temporal_patch_size=2, min_frames=4, max_frames=768)
  return lambda total, video_fps, **kw: namespace["sample_frames"](
    hf_self, VideoMetadata(total_num_frames=total, fps=video_fps), **kw).numpy()


def test_qwen2_frame_sampling_matches_oracle_and_transformers_source():
  assert pp.sample_frame_indices(100, 25, "qwen2_vl", fps=2).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]
  try:
    hf_sample = hf_qwen2_sample_frames()
  except OSError as e:  # the module file is missing from this transformers build
    pytest.skip(f"Qwen2VLVideoProcessor source not available: {e}")
  compared = 0
  for total in (1, 2, 3, 7, 17, 30, 33, 100, 301):
    for video_fps, fps in ((25, 2), (10, 2), (30, 1.5), (1, 4)):
      try:
        expected = hf_sample(total, video_fps, fps=fps)
      except (ValueError, ZeroDivisionError, RuntimeError):
        with pytest.raises(ValueError, match="num_frames"):
          pp.sample_frame_indices(total, video_fps, "qwen2_vl", fps=fps)
        continue
      ours = pp.sample_frame_indices(total, video_fps, "qwen2_vl", fps=fps)
      # transformers' float32 arange can add an (out-of-range) index; every index it shares with ours agrees
      np.testing.assert_array_equal(ours, expected[:len(ours)], err_msg=f"T={total} fps_v={video_fps} fps={fps}")
      assert len(expected) - len(ours) in (0, 1) and ours.max() < total and len(ours) % 2 == 0
      compared += 1
    for n in (2, 4, 5, 8):
      if round(n / 2) * 2 <= total:
        np.testing.assert_array_equal(pp.sample_frame_indices(total, None, "qwen2_vl", num_frames_target=n),
                                      hf_sample(total, None, num_frames=n)[:round(n / 2) * 2])
  assert compared >= 20


@pytest.fixture(scope="module")
def qwen3_video_processor():
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

  return Qwen3VLVideoProcessor(**FLAGS_OFF, cap_pixels_per_frame=False)


def test_qwen3_frame_sampling_matches_oracle_and_video_processor(qwen3_video_processor):
  from transformers.video_utils import VideoMetadata

  assert pp.sample_frame_indices(100, 25, "qwen3_vl", fps=2).tolist() == [0, 14, 28, 42, 57, 71, 85, 99]
  for total in (1, 2, 5, 6, 11, 33, 100, 1000):
    for video_fps in (1, 10, 25, 29.97):
      expected = qwen3_video_processor.sample_frames(VideoMetadata(total_num_frames=total, fps=video_fps))
      np.testing.assert_array_equal(pp.sample_frame_indices(total, video_fps, "qwen3_vl"), expected)
    for n in (3, 5, 6):  # (6, 3) and (11, 5) hit exact halves: linspace rounds half to even
      expected = qwen3_video_processor.sample_frames(VideoMetadata(total_num_frames=total, fps=25), num_frames=n)
      np.testing.assert_array_equal(pp.sample_frame_indices(total, 25, "qwen3_vl", num_frames_target=n), expected)


def test_timestamps_average_each_frame_pair_and_match_the_qwen3_processor():
  from transformers import Qwen3VLProcessor

  assert pp.frame_timestamps([0, 2, 5, 7], 4) == [0.25, 1.5]
  assert [f"<{t:.1f} seconds>" for t in pp.frame_timestamps([0, 2, 5, 7], 4)] == ["<0.2 seconds>", "<1.5 seconds>"]
  for indices, fps in (([0, 14, 28, 42, 57, 71, 85, 99], 25), ([0, 3, 9], 7.5), ([4], 2)):
    expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    assert pp.frame_timestamps(indices, fps) == expected


def loop_patchify(video, p, m, tp=2):
  """The patch layout of `Qwen2VLImageProcessorPil._preprocess` written as loops: video [T, C, H, W] -> rows
  [gt*gh*gw, C*tp*p*p] in (t, block row, block col, row in block, col in block) order; each row is the
  (C, tp, p, p) cube of one patch position."""
  video = np.concatenate([video] + [video[-1:]] * (-len(video) % tp))
  gt, gh, gw = len(video) // tp, video.shape[2] // p, video.shape[3] // p
  rows = []
  for t in range(gt):
    for bh in range(gh // m):
      for bw in range(gw // m):
        for i in range(m):
          for j in range(m):
            r, c = bh * m + i, bw * m + j
            cube = video[t * tp:(t + 1) * tp, :, r * p:(r + 1) * p, c * p:(c + 1) * p]  # [tp, C, p, p]
            rows.append(cube.transpose(1, 0, 2, 3).reshape(-1))
  return np.stack(rows)


@pytest.mark.parametrize("family,frames,size", [("qwen2_vl", 5, (56, 84)), ("qwen2_5_vl", 4, (84, 56)),
                                                ("qwen3_vl", 3, (64, 96)), ("qwen3_vl", 6, (128, 64))])
def test_video_patch_layout_matches_loops_and_unbound_qwen3_patchify(family, frames, size):
  import torch
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

  patch = 16 if family == "qwen3_vl" else 14
  opts = pp.VideoOptions(min_pixels=64, max_pixels=10**8, patch_size=patch, **RAW)  # size kept, raw pixel values
  video = rng_video(frames, *size)
  pixels, grid, _ = pp.preprocess_video(video, opts, family, video_fps=10)
  assert grid.tolist() == [[math.ceil(frames / 2), size[0] // patch, size[1] // patch]]
  chw = video.transpose(0, 3, 1, 2).astype(np.float32)
  np.testing.assert_array_equal(pixels, loop_patchify(chw, patch, 2))
  hf_patches, *hf_grid = Qwen3VLVideoProcessor.patchify(None, torch.from_numpy(chw)[None], patch, 2, 2)
  np.testing.assert_array_equal(pixels, hf_patches[0].numpy())
  assert list(grid[0]) == hf_grid


def test_image_layout_is_a_two_frame_video_of_the_same_image():
  image = rng_image(56, 84)
  img_pixels, img_grid = pp.preprocess_images([image], pp.ImageOptions(**RAW))
  vid_pixels, vid_grid, _ = pp.preprocess_video(image[None].repeat(2, 0), pp.VideoOptions(min_pixels=3136, **RAW))
  np.testing.assert_array_equal(img_pixels, vid_pixels)
  np.testing.assert_array_equal(img_grid, vid_grid)
  np.testing.assert_array_equal(img_pixels, loop_patchify(image.transpose(2, 0, 1)[None].astype(np.float32), 14, 2))


def test_qwen3_video_matches_video_processor_with_flags_off(qwen3_video_processor):
  """Raw-pixel parity: frames already at their smart_resize size, identity normalization on our side."""
  video = rng_video(100, 64, 96)
  for kwargs in ({}, {"num_frames": 5, "fps": None}):
    expected = qwen3_video_processor(videos=[video], video_metadata=[{"total_num_frames": 100, "fps": 25}],
                                     return_metadata=True, return_tensors="pt", **kwargs)
    opts = pp.VideoOptions(**{**vars(pp.VideoOptions.for_family("qwen3_vl")), **RAW})
    pixels, grid, stamps = pp.preprocess_video(video, opts, "qwen3_vl", video_fps=25,
                                               num_frames=kwargs.get("num_frames"))
    indices = expected["video_metadata"][0].frames_indices
    np.testing.assert_array_equal(grid, expected["video_grid_thw"].numpy())
    np.testing.assert_array_equal(pixels, expected["pixel_values_videos"].numpy().astype(np.float32))
    assert stamps == pp.frame_timestamps(indices, 25) and len(stamps) == grid[0, 0]


def test_video_frame_size_follows_family_budget_rules():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_resize

  video = rng_video(4, 280, 420)
  # Qwen2/2.5: per-frame budget; with the cap, max = max(min(max_px, int(tokens*F*F*0.9)*T_p//t), int(1.05*min_px))
  for cap in (False, True):
    opts = pp.VideoOptions(min_pixels=3136, max_pixels=602112, cap_pixels_per_frame=cap, max_video_tokens=200)
    hi = max(min(602112, int(200 * 28 * 28 * 0.9) * 2 // 4), int(3136 * 1.05)) if cap else 602112
    h, w = hf_resize(280, 420, 28, 3136, hi)
    assert pp.preprocess_video(video, opts, "qwen2_vl")[1].tolist() == [[2, h // 14, w // 14]]
  # Qwen3: the budget is over t*h*w; with the cap, max = max(min(tokens*F*F, max_px // t), int(1.05*min_px)) * t
  for cap in (False, True):
    opts = pp.VideoOptions(min_pixels=4096, max_pixels=400000, patch_size=16, cap_pixels_per_frame=cap,
                           max_video_tokens=40)
    hi = max(min(40 * 32 * 32, 400000 // 4), int(4096 * 1.05)) * 4 if cap else 400000
    h, w = hf_video_resize(4, 280, 420, 2, 32, 4096, hi)
    assert pp.preprocess_video(video, opts, "qwen3_vl", video_fps=2)[1].tolist() == [[2, h // 16, w // 16]]


# ---------------------------------------------------------------------------------------------------------------
# prompt expansion vs the subclassed HF processors

@functools.cache
def tokenizer():
  """A local word-level tokenizer with the four vision special tokens (no download)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  words = ["[UNK]", "[PAD]", "describe", "this", "and", "then", "<", ">", ".", "seconds", *map(str, range(10))]
  model = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  model.pre_tokenizer = pre_tokenizers.Whitespace()
  return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]", pad_token="[PAD]",
                                 additional_special_tokens=SPECIAL)


def hf_processor(family, video_patch):
  """The family's `*Processor`, with the video-processor class check skipped (it needs torchvision) and the
  expanded text kept.

  The video processor is `Qwen3VLVideoProcessor` with the four flags off for every family (the only one that runs
  without torchvision); Qwen2/2.5-VL processors only read its grids, metadata and patch sizes.
  """
  import transformers
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

  base = {"qwen2_vl": transformers.Qwen2VLProcessor, "qwen2_5_vl": transformers.Qwen2_5_VLProcessor,
          "qwen3_vl": transformers.Qwen3VLProcessor}[family]

  class Processor(base):
    def check_argument_for_proper_class(self, argument_name, argument):
      if argument_name == "video_processor":
        return None
      return super().check_argument_for_proper_class(argument_name, argument)

    def get_text_with_replacements(self, text, *args, **kwargs):
      out = super().get_text_with_replacements(text, *args, **kwargs)
      self.expanded = list(out[0])
      return out

  opts = pp.ImageOptions.for_family(family)
  images = Qwen2VLImageProcessorPil(min_pixels=opts.min_pixels, max_pixels=opts.max_pixels,
                                    patch_size=opts.patch_size, image_mean=list(opts.mean), image_std=list(opts.std))
  videos = Qwen3VLVideoProcessor(**FLAGS_OFF, patch_size=video_patch, cap_pixels_per_frame=False)
  return Processor(image_processor=images, tokenizer=tokenizer(), video_processor=videos)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_prompt_expansion_matches_hf_processor(family):
  cfg = QwenVLConfig.from_hf(TINY[family])
  patch = cfg.vision.patch_size
  processor = hf_processor(family, patch)
  vs, ve, img, vid = SPECIAL
  text = [f"describe {vs}{img}{ve} and {vs}{vid}{ve} then {vs}{img}{ve}", f"this {vs}{img}{ve} .",
          f"{vs}{vid}{ve} and this"]
  images = [rng_image(60, 90), rng_image(33, 250, seed=1), rng_image(8, 8, seed=2)]
  # 33 frames at 10 fps, sampled at 2 fps: 6 frames for both samplers (Qwen2 floor(6.6/2)*2, Qwen3 int(6.6)),
  # so Qwen2.5-VL's second_per_grid_ts = 2 / (6 / 33 * 10) = 1.1; 25 frames at 5 fps: 10 frames, 1.0 s
  factor = 2 * patch
  videos = [rng_video(33, factor, 3 * factor), rng_video(25, 2 * factor, factor, seed=1)]
  metadata = [{"total_num_frames": 33, "fps": 10}, {"total_num_frames": 25, "fps": 5}]
  expected = processor(images=images, text=list(text), videos=videos, video_metadata=metadata, return_metadata=True,
                       do_sample_frames=True, fps=2)

  pixels, image_grid = pp.preprocess_images(images, pp.ImageOptions.for_family(family))  # hub defaults
  np.testing.assert_array_equal(image_grid, expected["image_grid_thw"])
  assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-6
  video_opts = pp.VideoOptions(**{**vars(pp.VideoOptions.for_family(family)), "min_pixels": factor * factor})
  outs = [pp.preprocess_video(v, video_opts, family, video_fps=m["fps"], sample=True, fps=2)
          for v, m in zip(videos, metadata)]
  video_grid = np.concatenate([o[1] for o in outs])
  np.testing.assert_array_equal(video_grid, expected["video_grid_thw"])
  timing = [o[2] for o in outs]
  if family == "qwen2_5_vl":
    np.testing.assert_allclose(timing, expected["second_per_grid_ts"], rtol=1e-12)
    assert timing[0] == pytest.approx(1.1)
  stamps = timing if family == "qwen3_vl" else None

  ours = pp.expand_prompt(text, image_grid, video_grid, cfg, timestamps=stamps)
  assert ours == processor.expanded
  ids = tokenizer()(ours)["input_ids"]
  assert ids == expected["input_ids"]
  ids_cfg = types.SimpleNamespace(image_token_id=tokenizer().convert_tokens_to_ids(img),
                                  video_token_id=tokenizer().convert_tokens_to_ids(vid))
  for row, types_row in zip(ids, expected["mm_token_type_ids"]):
    np.testing.assert_array_equal(mm_token_type_ids(np.array(row), ids_cfg), types_row)
  assert pp.expand_prompt(text[1], image_grid[2:], None, family) == processor.expanded[1]  # a single string


def test_qwen3_prompt_replaces_the_template_markers_by_timestamped_frames():
  # transformers >= 5.25: the template's <|vision_start|><|video_pad|><|vision_end|> becomes the frames, each of
  # which carries its own markers; a bare <|video_pad|> becomes the same frames.
  vs, ve, _, vid = SPECIAL
  frame = f"{vs}{vid * 6}{ve}"
  for prompt in (f"a{vs}{vid}{ve}b", f"a{vid}b"):
    out = pp.expand_prompt(prompt, None, [[2, 4, 6]], "qwen3_vl", timestamps=[[0.25, 1.5]])
    assert out == f"a<0.2 seconds>{frame}<1.5 seconds>{frame}b", prompt


# ---------------------------------------------------------------------------------------------------------------
# errors

def test_bad_images_raise_value_errors_naming_the_argument():
  with pytest.raises(ValueError, match=r"images\[0\].*empty"):
    pp.preprocess_images([np.zeros((0, 5, 3), np.uint8)])
  with pytest.raises(ValueError, match=r"images\[1\].*uint8.*float32"):
    pp.preprocess_images([rng_image(30, 30), np.zeros((30, 30, 3), np.float32)])
  with pytest.raises(ValueError, match=r"images\[0\].*shape.*\(30, 30, 2\)"):
    pp.preprocess_images([np.zeros((30, 30, 2), np.uint8)])
  with pytest.raises(ValueError, match="images: expected a list"):
    pp.preprocess_images(rng_image(30, 30))
  with pytest.raises(ValueError, match="at least one"):
    pp.preprocess_images([])
  with pytest.raises(ValueError, match="aspect ratio"):
    pp.preprocess_images([np.zeros((2, 500, 3), np.uint8)])
  with pytest.raises(ValueError, match="min_pixels, max_pixels"):
    pp.ImageOptions(min_pixels=10, max_pixels=5)
  with pytest.raises(ValueError, match=r"10 x 10 resizes to 0 x 0.*min_pixels > 0"):
    pp.smart_resize(10, 10, 28, 0, 1000)


def test_bad_videos_raise_value_errors_naming_the_argument():
  with pytest.raises(ValueError, match=r"frames: Qwen3-VL video needs at least temporal_patch_size = 2.*got 1"):
    pp.preprocess_video(rng_video(1, 64, 64), None, "qwen3_vl", video_fps=2)
  with pytest.raises(ValueError, match=r"frames: expected dtype uint8.*float32"):
    pp.preprocess_video(np.zeros((2, 28, 28, 3), np.float32))
  with pytest.raises(ValueError, match=r"frames: expected shape \[T, H, W, C\].*\(28, 28, 3\)"):
    pp.preprocess_video(rng_image(28, 28))
  with pytest.raises(ValueError, match="video_fps"):
    pp.preprocess_video(rng_video(4, 28, 28), None, "qwen2_5_vl")
  with pytest.raises(ValueError, match="fps, num_frames_target"):
    pp.sample_frame_indices(100, 25, "qwen3_vl", fps=2, num_frames_target=4)
  with pytest.raises(ValueError, match="video_fps"):
    pp.sample_frame_indices(100, None, "qwen2_vl", fps=2)
  with pytest.raises(ValueError, match="num_frames"):
    pp.sample_frame_indices(1, 25, "qwen2_vl", fps=2)
  with pytest.raises(ValueError, match="family"):
    pp.sample_frame_indices(100, 25, "qwen4_vl")


def test_placeholder_grid_mismatches_raise():
  vs, ve, img, vid = SPECIAL
  one_image = f"{vs}{img}{ve}"
  with pytest.raises(ValueError, match=r"found 2 <\|image_pad\|> placeholders but image_grid_thw has 1 rows"):
    pp.expand_prompt(one_image * 2, [[1, 2, 2]])
  with pytest.raises(ValueError, match=r"found 1 <\|image_pad\|> placeholders but image_grid_thw has 2 rows"):
    pp.expand_prompt(one_image, [[1, 2, 2], [1, 2, 4]])
  with pytest.raises(ValueError, match=r"found 1 <\|video_pad\|> placeholders but video_grid_thw has 0 rows"):
    pp.expand_prompt(f"{vs}{vid}{ve}", None, None)
  with pytest.raises(ValueError, match="image_grid_thw.*multiples of merge_size"):
    pp.expand_prompt(one_image, [[1, 3, 2]])
  with pytest.raises(ValueError, match=r"timestamps: Qwen3-VL needs one list per video"):
    pp.expand_prompt(f"{vs}{vid}{ve}", None, [[2, 2, 2]], "qwen3_vl")
  with pytest.raises(ValueError, match=r"timestamps\[0\]: expected 2 values"):
    pp.expand_prompt(f"{vs}{vid}{ve}", None, [[2, 2, 2]], "qwen3_vl", timestamps=[[0.5]])
  with pytest.raises(ValueError, match="only Qwen3-VL"):
    pp.expand_prompt(f"{vs}{vid}{ve}", None, [[2, 2, 2]], "qwen2_5_vl", timestamps=[[0.5, 1.0]])
