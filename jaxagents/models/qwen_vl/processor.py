"""The Qwen-VL processor: chat messages with images and videos -> `ModelInputs` in one call, and completions -> text.

    processor = Processor.from_pretrained("path/to/Qwen2.5-VL-3B-Instruct")     # local files only
    inputs = processor([messages], images=[[image]])                              # left-padded, positions, vision
    out = generate(model, {"params": params}, inputs, sampling=SamplingConfig(64, **processor.stop_options))
    print(processor.decode(out.tokens, out.lengths))

What transformers' `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` / `Qwen3VLProcessor` and a collator do, with the
library's own pieces: the checkpoint's chat template renders each conversation (one
`<|vision_start|><|image_pad|><|vision_end|>` per image part, `<|video_pad|>` per video part), images and videos are
resized and patchified (`preprocess.preprocess_images` / `preprocess_video`, options from the checkpoint's
`preprocessor_config.json` / `video_preprocessor_config.json`), each placeholder is expanded by its grid
(`preprocess.expand_prompt`), the text is tokenized, rows are left-padded (generation writes every row's next
token to one cache slot) and `inputs.prepare_inputs` computes M-RoPE positions and the vision layout, raising
a named error when a prompt and its images disagree. Nothing is truncated: a prompt longer than
`max_prompt_tokens` is refused with its row and length, since cutting it would cut an image span (trl #5785).

Stop ids come from `generation_config.json` (`eos_token_id`, an int or a list; Qwen2.5-VL: `<|im_end|>` and
`<|endoftext|>`), else the tokenizer's eos.

M-RoPE position mode (`mode`): "qwen" (default; the original Qwen code and vLLM) or "hf" (transformers >= 5.3).
They give the same positions for text, images and every Qwen3-VL input, and differ for Qwen2/2.5-VL videos, where
"hf" advances the next run by the frame's spatial extent rather than past its last temporal position. Choose "hf"
to reproduce a model trained or served with transformers 5.3+, "qwen" for one served with vLLM
(`positions` module docstring).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxagents.models.qwen_vl.batching import padded_batch
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.convert import load_config
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.preprocess import (
  ImageOptions,
  VideoOptions,
  expand_prompt,
  preprocess_images,
  preprocess_video,
)

Messages = Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Processor:
  """Attributes:
    config: the model config (family, special-token ids, patch and merge sizes).
    tokenizer: a transformers tokenizer with a chat template.
    image_options, video_options: preprocessing settings.
    stop_ids: token ids that end a completion.
    pad_id: the id of left padding and of slots after a stop.
    mode: M-RoPE position mode, "qwen" or "hf" (module docstring).
    video_fps: the frame rate assumed for videos given as frames without one (Qwen2.5-VL and Qwen3-VL time them).
  """

  config: QwenVLConfig
  tokenizer: Any
  image_options: ImageOptions
  video_options: VideoOptions
  stop_ids: tuple[int, ...]
  pad_id: int
  mode: str = "qwen"
  video_fps: float = 2.0

  @classmethod
  def from_pretrained(cls, directory: str, *, config: QwenVLConfig | None = None, mode: str = "qwen",
                      min_pixels: int | None = None, max_pixels: int | None = None,
                      video_fps: float = 2.0) -> Processor:
    """Reads a local checkpoint directory: config.json, the tokenizer and chat template, the preprocessor
    configs (missing files take the family's hub defaults), generation_config.json. `min_pixels` / `max_pixels`
    override the image pixel budget (fewer visual tokens per image: the main memory knob of VLM RL)."""
    import transformers

    if not os.path.isdir(directory):
      raise FileNotFoundError(f"directory: expected a local checkpoint directory, got {directory!r}")
    config = config or load_config(directory, mrope_mode=mode)
    try:
      tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as error:
      raise ValueError(f"{directory}: no tokenizer could be loaded from local files ({error})") from error
    if not getattr(tokenizer, "chat_template", None):
      raise ValueError(f"{directory}: the tokenizer has no chat template (chat_template.jinja or the "
                       "tokenizer_config.json field); the processor renders conversations with it.")
    image_hf = _read_json(os.path.join(directory, "preprocessor_config.json"))
    video_hf = _read_json(os.path.join(directory, "video_preprocessor_config.json")) or image_hf
    image_options = ImageOptions.from_hf(image_hf, config.family)
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_options = dataclasses.replace(image_options, **overrides)
    video_options = VideoOptions.from_hf(video_hf, config.family)
    generation = _read_json(os.path.join(directory, "generation_config.json"))
    eos = generation.get("eos_token_id", tokenizer.eos_token_id)
    stop_ids = tuple(int(i) for i in (eos if isinstance(eos, list | tuple) else [eos]) if i is not None)
    if not stop_ids:
      raise ValueError(f"{directory}: no stop token id in generation_config.json (eos_token_id) nor the tokenizer.")
    pad_id = generation.get("pad_token_id", tokenizer.pad_token_id)
    pad_id = stop_ids[-1] if pad_id is None else int(pad_id)
    return cls(config, tokenizer, image_options, video_options, stop_ids, pad_id, mode, video_fps)

  # -- text --------------------------------------------------------------------------------------------------------
  def chat_text(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
    """The conversation rendered by the checkpoint's chat template (one placeholder per image / video part)."""
    return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                              add_generation_prompt=add_generation_prompt)

  def encode_completion(self, text: str) -> list[int]:
    """A reference completion's token ids, closed by the first stop id (what the model must learn to emit)."""
    return [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.stop_ids[0]]

  def decode(self, tokens: Any, lengths: Any = None) -> list[str]:
    """Completion rows [B, T] (cut at `lengths` [B] when given; stop and special tokens dropped) -> B strings."""
    tokens = np.asarray(tokens)
    lengths = np.full(tokens.shape[0], tokens.shape[1]) if lengths is None else np.asarray(lengths)
    rows = [[int(t) for t in row[:n] if int(t) not in self.stop_ids] for row, n in zip(tokens, lengths, strict=True)]
    return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]

  @property
  def stop_options(self) -> dict[str, Any]:
    """`generation.SamplingConfig` keywords of this checkpoint: stop at its stop ids, pad with its pad id, never emit
    a vision placeholder (`SamplingConfig(64, temperature=0.7, **processor.stop_options)`)."""
    c = self.config
    return {"eos_ids": self.stop_ids, "pad_id": self.pad_id,
            "suppress_ids": (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id)}

  # -- batches -----------------------------------------------------------------------------------------------------
  def __call__(
    self,
    conversations: Sequence[Messages],
    images: Sequence[Sequence[Any]] | None = None,
    videos: Sequence[Sequence[Any]] | None = None,
    *,
    completions: Sequence[str | Sequence[int]] | None = None,
    add_generation_prompt: bool = True,
    max_prompt_tokens: int | None = None,
    video_fps: Sequence[Sequence[float]] | None = None,
    length_multiple: int = 1,
    patch_multiple: int | None = None,
  ) -> ModelInputs | tuple[ModelInputs, np.ndarray]:
    """B conversations -> `ModelInputs` (left-padded prompts), or (`ModelInputs`, completion_mask [B, L]) with
    `completions` (strings, tokenized and closed by a stop id, or token-id lists taken as they are).

    images[b] / videos[b]: row b's images (PIL or uint8 [H, W, 3]) and videos (frames [T, H, W, 3] or a list of
    frames), in the order their parts appear in the conversation. video_fps[b][i]: video i's frame rate
    (default `self.video_fps`). Static-shape buckets: rows are padded to a multiple of `length_multiple` tokens and,
    with `patch_multiple` (a multiple of merge_size**2), every prompt's patches to a multiple of it.
    """
    count = len(conversations)
    if count == 0:
      raise ValueError("conversations: expected at least one conversation, got none")
    images = [[] for _ in range(count)] if images is None else [list(row) for row in images]
    videos = [[] for _ in range(count)] if videos is None else [list(row) for row in videos]
    for name, value in (("images", images), ("videos", videos)):
      if len(value) != count:
        raise ValueError(f"{name}: expected one list per conversation ({count}), got {len(value)}")
    if completions is not None and len(completions) != count:
      raise ValueError(f"completions: expected one per conversation ({count}), got {len(completions)}")
    texts = [self.chat_text(m, add_generation_prompt=add_generation_prompt) for m in conversations]
    for b, text in enumerate(texts):
      for pad, items, name in (("<|image_pad|>", images[b], "images"), ("<|video_pad|>", videos[b], "videos")):
        if text.count(pad) != len(items):
          raise ValueError(f"conversations[{b}]: the chat template wrote {text.count(pad)} {pad} placeholders but "
                           f"{name}[{b}] holds {len(items)}; give one image/video part per item, in order.")
    vision = self._vision(images, videos, video_fps)
    texts = expand_prompt(texts, vision.get("image_grid_thw"), vision.get("video_grid_thw"), self.config,
                          timestamps=vision.pop("timestamps", None))
    rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None:
      for b, row in enumerate(rows):
        if len(row) > max_prompt_tokens:
          raise ValueError(f"conversations[{b}]: the prompt is {len(row)} tokens (visual tokens included), more "
                           f"than max_prompt_tokens={max_prompt_tokens}; it is not truncated (that would cut an "
                           "image span). Lower the pixel budget (max_pixels) or raise the limit.")
    completion_rows = None
    if completions is not None:
      completion_rows = [self.encode_completion(c) if isinstance(c, str) else [int(t) for t in c]
                         for c in completions]
    if patch_multiple is not None and (images or videos):
      patches = [sum(int(np.prod(g)) for g in _row_grids(vision, images, videos, b)) for b in range(count)]
      if max(patches):
        vision["pad_patches_to"] = -(-max(patches) // patch_multiple) * patch_multiple
    inputs, mask = padded_batch(self.config, rows, completion_rows, pad_id=self.pad_id, mode=self.mode,
                                length_multiple=length_multiple, **vision)
    return inputs if completions is None else (inputs, mask)

  def _vision(self, images, videos, video_fps) -> dict[str, Any]:
    out: dict[str, Any] = {}
    flat_images = [image for row in images for image in row]
    if flat_images:
      out["pixel_values"], out["image_grid_thw"] = preprocess_images(flat_images, self.image_options)
    patches, grids, timings = [], [], []
    for b, row in enumerate(videos):
      for i, frames in enumerate(row):
        fps = self.video_fps if video_fps is None else video_fps[b][i]
        frames = np.stack([np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in frames])
        pixels, grid, timing = preprocess_video(frames, self.video_options, self.config.family, video_fps=fps)
        patches.append(pixels)
        grids.append(grid)
        timings.append(timing)
    if patches:
      out["pixel_values_videos"], out["video_grid_thw"] = np.concatenate(patches), np.concatenate(grids)
      if self.config.family == "qwen2_5_vl":
        out["second_per_grid_ts"] = np.asarray(timings, np.float32)
      elif self.config.family == "qwen3_vl":
        out["timestamps"] = timings
    return out


def _row_grids(vision: Mapping[str, Any], images, videos, row: int) -> list[np.ndarray]:
  """The (t, h, w) grids of row `row`'s images and videos (items are concatenated row by row)."""
  out = []
  for key, items in (("image_grid_thw", images), ("video_grid_thw", videos)):
    if key in vision:
      start = sum(len(r) for r in items[:row])
      out += list(vision[key][start:start + len(items[row])])
  return out


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from error
