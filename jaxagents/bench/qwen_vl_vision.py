"""Qwen-VL vision cost: one tower call grows linearly with its images, and an image prefill keeps up with
transformers.

    python -m jaxagents.bench.qwen_vl_vision

(a) The tower of a tiny RL task model (Qwen2-VL layout, width 32, depth 2, 4x4 patches of 14 px per image) on
`--images` images in one call vs in `--images / --chunk` calls of `--chunk` images, once with one image per
prompt (GRPO prompts) and once with every image in one prompt. Attention runs per image on packed rows
(`layers.SegmentPacking`), so the ratio stays near 1; one mask over every patch of a call made it grow with the
images (138x at 1024 images).
(b) A `--prefill-images`-image Qwen2.5-VL prefill (window attention, `--image-size` px images), ours (jit, fp32)
vs transformers' `Qwen2_5_VLForConditionalGeneration` (its default attention) on the same random weights;
ratio < 1 means ours is faster. Needs torch and transformers, else the row says n/a. A and B are timed
alternately, `--repeats` pairs after a warm-up each; the table gives the median time of each and the median of
the per-pair ratios (a shared machine's load then slows both sides of a pair alike). transformers computes its
M-RoPE positions inside the timed call, ours come from the host (`prepare_inputs`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxagents.bench.report import cell, publish
from jaxagents.models.qwen_vl.config import QwenVLConfig, VisionConfig
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.vision import VisionTower
from jaxagents.models.qwen_vl.vision_layout import vision_inputs

# The counting task's tower: 56 px boards cut into 4x4 patches of 14 px.
TASK_TOWER = VisionConfig(depth=2, width=32, num_heads=2, mlp_dim=64, out_dim=64, patch_size=14)
TASK_GRID = (1, 4, 4)
IMAGE, VIDEO, VISION_START, VISION_END = 1020, 1021, 1018, 1019


def paired_times(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
  """Median seconds of fn_a and fn_b, timed alternately after a warm-up each, and the median of their per-pair
  ratios: a load that comes and goes on a shared machine then slows both sides of a pair alike."""
  jax.block_until_ready(fn_a())
  jax.block_until_ready(fn_b())
  pairs = []
  for _ in range(repeats):
    times = []
    for fn in (fn_a, fn_b):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
    pairs.append(times)
  a, b = np.array(pairs).T
  return float(np.median(a)), float(np.median(b)), float(np.median(a / b))


def _tower_inputs(patches, grid, config, start: int, n: int, one_per_prompt: bool):
  """The device-resident `VisionInputs` of images [start, start + n): one prompt each, or one prompt for all."""
  size = len(patches) // len(grid)
  counts = np.ones(n, int) if one_per_prompt else [n]
  return jax.device_put(vision_inputs(patches[start * size:(start + n) * size], grid[start:start + n], config,
                                      items_per_prompt=counts))


LAYOUTS = {"per-image": ("1 image per prompt", True), "one-prompt": ("all images in 1 prompt", False)}


def tower_rows(images: int, chunk: int, repeats: int, layouts: Sequence[str] = tuple(LAYOUTS), seed: int = 0
               ) -> list[dict]:
  """(a): one call on `images` images vs images / chunk calls, for each of `layouts` (keys of LAYOUTS)."""
  if images % chunk:
    raise ValueError(f"--images {images} must be a multiple of --chunk {chunk}")
  config = TASK_TOWER
  tower = VisionTower(config)
  grid = np.tile(TASK_GRID, (images, 1))
  size = int(np.prod(TASK_GRID))
  patches = np.random.default_rng(seed).standard_normal((images * size, config.patch_dim)).astype(np.float32)
  params = jax.jit(tower.init)(jax.random.key(0), vision_inputs(patches[:size], grid[:1], config))
  run = jax.jit(tower.apply)
  rows = []
  for layout, one_per_prompt in (LAYOUTS[name] for name in layouts):
    # The same images either way (a loop over one chunk would run from a warm cache), on the device: the
    # transfer is not the tower's cost.
    whole = _tower_inputs(patches, grid, config, 0, images, one_per_prompt)
    parts = [_tower_inputs(patches, grid, config, start, chunk, one_per_prompt) for start in range(0, images, chunk)]
    one_call, chunked, ratio = paired_times(lambda whole=whole: run(params, whole),
                                            lambda parts=parts: [run(params, part) for part in parts], repeats)
    rows.append(dict(case=f"tower, {layout}", a=f"1 call x {images} images", a_s=one_call,
                     b=f"{images // chunk} calls x {chunk}", b_s=chunked, ratio=ratio))
  return rows


def prefill_hf_config(hidden: int, layers: int, vision_depth: int, vision_width: int) -> dict:
  """A small Qwen2.5-VL in transformers' config form (window 112 px, the last ViT block full attention)."""
  heads = max(hidden // 64, 1)
  half = hidden // heads // 2
  section = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]  # Qwen2.5-VL's 16:24:24 split
  text = dict(vocab_size=1024, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-6,
              max_position_embeddings=4096, pad_token_id=0, bos_token_id=0, eos_token_id=1,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
  vision = dict(depth=vision_depth, hidden_size=vision_width, intermediate_size=4 * vision_width,
                num_heads=max(vision_width // 64, 1), out_hidden_size=hidden, patch_size=14, temporal_patch_size=2,
                spatial_merge_size=2, in_channels=3, window_size=112, fullatt_block_indexes=[vision_depth - 1],
                tokens_per_second=2, hidden_act="silu")
  return dict(model_type="qwen2_5_vl", tie_word_embeddings=False, image_token_id=IMAGE, video_token_id=VIDEO,
              vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, text_config=text,
              vision_config=vision)


def prefill_row(images: int, image_size: int, hidden: int, layers: int, vision_depth: int, vision_width: int,
                repeats: int, torch_threads: int = 0, seed: int = 0) -> dict:
  """(b): one row with `images` images of image_size^2 px, ours vs transformers on the same weights (torch on
  `torch_threads` threads; 0 keeps torch's default)."""
  hf_dict = prefill_hf_config(hidden, layers, vision_depth, vision_width)
  config = QwenVLConfig.from_hf(hf_dict)
  side = image_size // config.vision.patch_size
  tokens = side * side // config.vision.merge_size**2
  rng = np.random.default_rng(seed)
  row = [2, 3]
  for _ in range(images):
    row += [VISION_START, *[IMAGE] * tokens, VISION_END, *rng.integers(4, 1000, 3).tolist()]
  ids = np.array([row], np.int64)
  pixels = rng.standard_normal((images * side * side, config.vision.patch_dim)).astype(np.float32)
  grid = np.tile([1, side, side], (images, 1)).astype(np.int64)
  row = dict(case=f"Qwen2.5-VL prefill, {images} x {image_size}px", a="ours", b="transformers")
  # On a loaded machine torch's OpenMP threads wait on each other: check `--torch-threads 1` (and XLA on one
  # thread, XLA_FLAGS=--xla_cpu_multi_thread_eigen=false) before trusting a large gap.
  try:
    import torch
    import transformers
  except ImportError:
    return dict(row, a_s=None, b_s=None, ratio=None)
  from jaxagents.models.qwen_vl import convert

  if torch_threads:
    torch.set_num_threads(torch_threads)
  hf_config = transformers.Qwen2_5_VLConfig(**{k: v for k, v in hf_dict.items() if k != "model_type"})
  torch.manual_seed(seed)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()
  params = convert.hf_to_params({k: v.numpy() for k, v in hf.state_dict().items()}, config)
  inputs = prepare_inputs(config, ids, pixel_values=pixels, image_grid_thw=grid)
  model = QwenVL(config)
  forward = jax.jit(lambda params, inputs: model.apply({"params": params}, *inputs.model_args())[0])
  torch_inputs = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                      pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.from_numpy(grid))

  def reference():
    hf.model.rope_deltas = None
    with torch.no_grad():
      return hf(**torch_inputs).logits

  ours, theirs, ratio = paired_times(lambda: forward(params, inputs), reference, repeats)
  return dict(row, a_s=ours, b_s=theirs, ratio=ratio)


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"Qwen-VL vision cost on {device}", "", "| case | A | A s | B | B s | A / B |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['case']} | {r['a']} | {cell(r['a_s'], '.4f')} | {r['b']} | {cell(r['b_s'], '.4f')} | "
                 f"{cell(r['ratio'], '.3g')} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=1024, help="(a) images in the one-call run")
  parser.add_argument("--chunk", type=int, default=64, help="(a) images per call in the chunked run")
  parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"(a) comma-separated, of {sorted(LAYOUTS)}")
  parser.add_argument("--prefill-images", type=int, default=8)
  parser.add_argument("--image-size", type=int, default=224, help="(b) image side in px (a multiple of 28)")
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--vision-depth", type=int, default=4)
  parser.add_argument("--vision-width", type=int, default=128)
  parser.add_argument("--torch-threads", type=int, default=0, help="(b) torch.set_num_threads; 0: its default")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  rows = tower_rows(args.images, args.chunk, args.repeats, args.layouts.split(","))
  rows.append(prefill_row(args.prefill_images, args.image_size, args.hidden, args.layers, args.vision_depth,
                          args.vision_width, args.repeats, args.torch_threads))
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
