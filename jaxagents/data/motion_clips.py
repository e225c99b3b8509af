"""Captioned motion clips for training DynaVid's two stages: rendered frames, their exact optical flow from frame 0,
and a caption naming the camera motion, served to a grain pipeline.

DynaVid (arXiv 2604.01666) trains its motion generator on rendered flow and conditions it on text and the first
frame; its captions describe the whole video. Our clips (`data.motion_render`) are textured layers under a camera
motion drawn from `MotionConfig.camera_motions`, so the caption says what text can say about their motion: the
camera's kinds, "the camera pans and shakes" [our choice]. Record `i` of stream `seed` is
`render_clip(config, seed=hash(seed, i))`, a pure function of (config, seed, i):

    {'frames': uint8 [T, H, W, 3], 'flow': float32 [T, H, W, 2] (x, y pixels, frame 0 -> t),
     'caption_ids': int32 [max_len], 'caption_mask': bool [max_len], 'camera_motion_id': int32 [],
     'index': int64 []}

`VOCABULARY` holds "<pad>" (id 0), the filler words and every camera kind; `caption` / `tokenize` build the words.
"""

from __future__ import annotations

import operator

import numpy as np

from jaxagents.data.motion_render import CAMERA_MOTIONS, MotionConfig, camera_kinds, render_clip

VERBS = {"static": "stays", "pan": "pans", "zoom": "zooms", "orbit": "orbits", "roll": "rolls", "shake": "shakes"}
VOCABULARY = ("<pad>", "the", "camera", "and", *(VERBS[kind] for kind in CAMERA_MOTIONS))
PAD_ID = 0
WORD_ID = {word: i for i, word in enumerate(VOCABULARY)}


def caption(camera_motion: str) -> str:
  """"pan+shake" -> "the camera pans and shakes"."""
  return "the camera " + " and ".join(VERBS[kind] for kind in camera_kinds(camera_motion))


def tokenize(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Word ids int32 [max_len] (padded with PAD_ID) and mask bool [max_len]; ValueError on an unknown word or a caption
  longer than max_len."""
  words = text.split()
  unknown = [word for word in words if word not in WORD_ID]
  if unknown:
    raise ValueError(f"tokenize: words {unknown} are not in the vocabulary {VOCABULARY}")
  if len(words) > max_len:
    raise ValueError(f"tokenize: the caption {text!r} has {len(words)} words, more than max_len={max_len}")
  ids = np.full(max_len, PAD_ID, np.int32)
  ids[: len(words)] = [WORD_ID[word] for word in words]
  return ids, np.arange(max_len) < len(words)


def max_caption_length(camera_motions) -> int:
  return max(len(caption(motion).split()) for motion in camera_motions)


class MotionClipsSource:
  """Random-access source of captioned motion clips (module docstring) for `jaxagents.data.make_pipeline`.

  Args:
    num_records: number of records, >= 0.
    seed: the stream; two sources with one seed serve identical records, and held-out clips come from another seed.
    config: the renderer's `MotionConfig` (size, frames, camera motions, motion magnitudes).
    max_len: caption length in tokens (None: the longest caption of `config.camera_motions`).
  """

  def __init__(self, num_records: int, seed: int, config: MotionConfig, max_len: int | None = None):
    if isinstance(num_records, bool) or not isinstance(num_records, int | np.integer) or num_records < 0:
      raise ValueError(f"num_records: expected a non-negative integer, got {num_records!r}")
    longest = max_caption_length(config.camera_motions)
    if max_len is not None and max_len < longest:
      raise ValueError(f"max_len: the captions of {config.camera_motions} run up to {longest} words, got {max_len}")
    self.num_records, self.seed, self.config = int(num_records), int(seed), config
    self.max_len = longest if max_len is None else int(max_len)

  def __len__(self) -> int:
    return self.num_records

  def clip_seed(self, index: int) -> int:
    return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} records")
    clip = render_clip(self.config, seed=self.clip_seed(index))
    ids, mask = tokenize(caption(clip.camera_motion), self.max_len)
    frames = np.clip(np.round(clip.frames * 255.0), 0, 255).astype(np.uint8)
    return {"frames": frames, "flow": clip.flow, "caption_ids": ids, "caption_mask": mask,
            "camera_motion_id": np.int32(self.config.camera_motions.index(clip.camera_motion)),
            "index": np.int64(index)}

  def __repr__(self) -> str:
    c = self.config
    return (f"MotionClipsSource({self.num_records} clips, seed {self.seed}, {c.num_frames} x {c.height} x {c.width}, "
            f"camera motions {c.camera_motions})")
