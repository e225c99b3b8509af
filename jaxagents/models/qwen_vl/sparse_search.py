"""Sparse-attention calibration of a Qwen-VL checkpoint: captures q/k/v on synthetic videos and runs the
model-agnostic per-head search (`jaxagents.sparse.search`; MMInference, arXiv 2504.16083).

    python -m jaxagents.models.qwen_vl.sparse_search --checkpoint DIR --out config.json --frames 16 --height 448 \
      --width 448

`main` loads a Qwen-VL checkpoint (or a preset / config.json with random weights), renders synthetic calibration
videos (moving coloured squares) with a text prompt, captures every decoder layer's post-RoPE q/k/v
(`sparse_prefill.attention_inputs`), scores each layer sample by sample (one sample's capture in memory at a time;
`search.score_layer`), and writes the config atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.convert import load_params, param_shapes
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.preprocess import VideoOptions, preprocess_video
from jaxagents.models.qwen_vl.presets import PRESETS
from jaxagents.models.qwen_vl.sparse_prefill import attention_inputs, modality_ids
from jaxagents.sparse.config import SparseAttentionConfig
from jaxagents.sparse.search import (
  DEFAULT_BUDGETS,
  PATTERNS,
  THRESHOLD,
  build_config,
  calibration_hash,
  choose,
  default_candidates,
  layer_summary,
  score_layer,
)


def synthetic_video(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
  """uint8 [T, H, W, 3]: 2-4 coloured squares moving at constant speeds (bouncing) over a shaded background."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0.0, 1.0, height)[:, None, None]
  background = np.broadcast_to(rng.uniform(20, 90, 3) + 40 * ramp * rng.uniform(0, 1, 3), (height, width, 3))
  squares = []
  for _ in range(rng.integers(2, 5)):
    side = int(rng.integers(max(2, min(height, width) // 8), max(3, min(height, width) // 3)))
    start = rng.uniform(0, [height - side, width - side])
    velocity = rng.uniform(-0.08, 0.08, 2) * np.array([height, width])
    squares.append((side, start, velocity, rng.uniform(120, 255, 3)))
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    frame = background.copy()
    for side, start, velocity, colour in squares:
      span = np.array([height - side, width - side], float)
      pos = (start + t * velocity) % (2 * np.maximum(span, 1))
      top, left = np.minimum(pos, 2 * span - pos).astype(int)  # bounce off the borders
      frame[top : top + side, left : left + side] = colour
    frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
  return frames


def _text_encoder(checkpoint: str | None, config):
  """str -> token ids: the checkpoint's `tokenizer.json` if any, else bytes mapped below the special ids."""
  path = os.path.join(checkpoint, "tokenizer.json") if checkpoint else None
  if path and os.path.exists(path):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(path)
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
  special = min(config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id, config.text.vocab_size)
  return lambda text: [byte % special for byte in text.encode()]


PROMPT = ("Describe the video: how many coloured squares are there, what colour is each one, and in which "
          "direction and how fast does each square move?")


def calibration_sample(config, encode, frames: np.ndarray, block: int, video_fps: float = 2.0) -> dict:
  """One calibration input: a video and a prompt, the text padded so that S is a multiple of `block`.

  Returns the `prepare_inputs` keyword arguments (input_ids [1, S], pixel_values_videos, video_grid_thw and,
  for Qwen2.5-VL, second_per_grid_ts) plus 'strides': tokens per frame group and per row of merged patches.
  """
  family, merge = config.family, config.vision.merge_size
  options = VideoOptions.for_family(family)
  factor = options.factor
  num_frames, height, width = frames.shape[:3]
  # Room for rounding each side to a multiple of the factor, so frames keep about their size.
  max_pixels = (height + factor) * (width + factor) * (num_frames if family == "qwen3_vl" else 1)
  options = dataclasses.replace(options, min_pixels=factor * factor, max_pixels=max_pixels,
                                cap_pixels_per_frame=False, do_sample_frames=False)
  pixels, grid, timing = preprocess_video(frames, options, family, video_fps=video_fps, sample=False)
  groups, rows, cols = (int(x) for x in grid[0])
  per_group = (rows // merge) * (cols // merge)
  pads = [config.video_token_id] * per_group
  if family == "qwen3_vl":  # one "<t seconds>" VS pads VE block per frame group (transformers
    # `Qwen3VLProcessor.replace_video_token`)
    group_ids = [encode(f"<{t:.1f} seconds>") + [config.vision_start_token_id, *pads, config.vision_end_token_id]
                 for t in timing]
    video = [i for ids in group_ids for i in ids]
    frame_stride = len(group_ids[0])
  else:
    video, frame_stride = pads * groups, per_group
  ids = [*encode("Watch this video. "), config.vision_start_token_id, *video, config.vision_end_token_id,
         *encode(PROMPT)]
  filler = encode(" Answer briefly.") or [0]
  ids += [filler[i % len(filler)] for i in range(-len(ids) % block)]
  sample = {"input_ids": np.array([ids], np.int32), "pixel_values_videos": pixels, "video_grid_thw": grid,
            "strides": (frame_stride, cols // merge)}
  if family == "qwen2_5_vl":
    sample["second_per_grid_ts"] = np.array([timing], np.float32)
  return sample


def _load_model(args):
  dtype = jnp.dtype(args.dtype)
  config = None
  if args.preset:
    if args.preset not in PRESETS:
      raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {args.preset!r}")
    config = QwenVLConfig.from_hf(PRESETS[args.preset])
  elif args.config_json:
    with open(args.config_json) as f:
      config = QwenVLConfig.from_hf(json.load(f))
  if args.checkpoint:
    config, params = load_params(args.checkpoint, config, dtype)
  elif config is None:
    raise ValueError("sparse_search: give --checkpoint DIR, or --preset / --config-json for random weights")
  else:
    params = random_params(config, args.seed, dtype)
  name = args.model or (os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint else "")
  name = name or args.preset or config.family
  return QwenVL(config, dtype=dtype), config, params, name


def random_params(config, seed: int = 0, dtype=np.float32) -> dict:
  """Random Qwen-VL weights without running the model: kernels N(0, 1 / fan_in), embeddings N(0, 1), norm scales
  1, biases N(0, 0.1^2) (shapes from `convert.param_shapes`)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in sorted(param_shapes(config).items()):
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "scale":
      value = np.ones(shape)
    elif leaf == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif leaf == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(shape[-2])
    else:
      value = rng.standard_normal(shape)
    flat[path] = value.astype(dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m jaxagents.models.qwen_vl.sparse_search",
                                   description=__doc__.split("\n\n")[0])
  source = parser.add_argument_group("model (a checkpoint, or a preset / config for random weights)")
  source.add_argument("--checkpoint", help="HF safetensors directory (config.json + *.safetensors)")
  which = source.add_mutually_exclusive_group()
  which.add_argument("--preset", help="a jaxagents.models.qwen_vl.presets name (overrides the checkpoint config)")
  which.add_argument("--config-json", help="a transformers config.json (overrides the checkpoint config)")
  parser.add_argument("--out", required=True, help="output config JSON (written atomically)")
  parser.add_argument("--model", default="", help="model name stored in the config (default: the directory name)")
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--height", type=int, default=448)
  parser.add_argument("--width", type=int, default=448)
  parser.add_argument("--samples", type=int, default=4, help="calibration videos (4 or more recommended)")
  parser.add_argument("--threshold", type=float, default=THRESHOLD, help="recall a chosen pattern must reach")
  parser.add_argument("--max-error", type=float, default=None, help="optional bound on the relative output error")
  parser.add_argument("--block", type=int, default=64, help="block_q = block_kv of the layouts")
  parser.add_argument("--budgets", default=",".join(str(f) for f in DEFAULT_BUDGETS),
                      help="comma-separated budget fractions of the candidate buckets")
  parser.add_argument("--patterns", default=",".join(PATTERNS), help="comma-separated patterns to search")
  parser.add_argument("--no-boundary", action="store_true", help="no Q-/2D-boundary candidates")
  parser.add_argument("--rows", type=int, default=256, help="sampled query rows per sample for the recall")
  parser.add_argument("--dtype", default="float32", help="compute / parameter dtype (e.g. bfloat16 on GPU)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--backend", default="auto", help="block-sparse kernel backend (see block_sparse_attention)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> SparseAttentionConfig:
  args = _parse_args(argv)
  for name in ("frames", "height", "width", "samples", "block", "rows"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}: must be >= 1, got {getattr(args, name)}")
  budgets = tuple(float(f) for f in args.budgets.split(",") if f.strip())
  patterns = tuple(p.strip() for p in args.patterns.split(",") if p.strip())
  if not budgets or any(not 0 < f <= 1 for f in budgets) or not set(patterns) <= set(PATTERNS):
    raise ValueError(f"--budgets must be fractions in (0, 1] and --patterns among {PATTERNS}, got {args.budgets!r}, "
                     f"{args.patterns!r}")
  if not 0 < args.threshold <= 1:
    raise ValueError(f"--threshold: must be in (0, 1], got {args.threshold}")
  model, config, params, name = _load_model(args)
  encode = _text_encoder(args.checkpoint, config)
  all_scores, hashed, candidates, seq_len = None, [], None, None
  for index in tqdm(range(args.samples), desc="calibration samples", file=sys.stderr):
    frames = synthetic_video(args.frames, args.height, args.width, seed=args.seed * 1000 + index)
    sample = calibration_sample(config, encode, frames, args.block)
    strides = sample.pop("strides")
    inputs = prepare_inputs(config, sample["input_ids"], **{k: v for k, v in sample.items() if k != "input_ids"})
    hashed += [inputs.input_ids, sample["pixel_values_videos"], sample["video_grid_thw"]]
    q, k, v = attention_inputs(model, params, inputs)
    ids = modality_ids(inputs.input_ids, config)
    if candidates is None:
      seq_len = q.shape[2]
      candidates = default_candidates(seq_len, block=args.block, budgets=budgets, strides=strides,
                                      boundary=not args.no_boundary, patterns=patterns)
    elif q.shape[2] != seq_len:
      raise ValueError(f"sparse_search: calibration samples must share one length, got {q.shape[2]} and {seq_len}")
    layer_scores = [
      score_layer(q[layer], k[layer], v[layer], ids, candidates, num_rows=args.rows, block_q=args.block,
                  block_kv=args.block, backend=args.backend)
      for layer in tqdm(range(q.shape[0]), desc=f"sample {index}: layers", leave=False, file=sys.stderr)
    ]
    all_scores = layer_scores if all_scores is None else [a.merge(b) for a, b in zip(all_scores, layer_scores)]
    del q, k, v
  layer_entries = [choose(s, args.threshold, args.max_error) for s in all_scores]
  result = build_config(layer_entries, model=name, calib_hash=calibration_hash(hashed), block_q=args.block,
                        block_kv=args.block, num_modalities=2)
  result.save(args.out)
  print(f"{name}: S={seq_len}, {len(candidates)} candidates, {args.samples} samples, threshold "
        f"{args.threshold}; min_recall {result.min_recall:.4f}")
  print(f"{'layer':>5}  {'density':>7}  {'min rec':>7}  {'error':>7}  patterns")
  for layer, (entries, scores) in enumerate(zip(layer_entries, all_scores)):
    row = layer_summary(entries, scores)
    counts = " ".join(f"{p}:{n}" for p, n in row["patterns"].items())
    print(f"{layer:>5}  {row['density']:7.3f}  {row['min_recall']:7.4f}  {row['error']:7.4f}  {counts}")
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
