"""Text to image from a checkpoint folder (`python -m jaxagents.sample` takes this path when the folder holds a
diffusers pipeline layout: transformer/ and vae/, plus text_encoder/ and tokenizer/ unless --text-features).

    python -m jaxagents.sample --checkpoint Lens --prompt "a red cube on a blue floor" --size 1024x1024 \
        --steps 20 --cfg 5.0 --seed 0 --out samples --dtype bfloat16
    python -m jaxagents.sample --checkpoint Lens --prompts-file prompts.txt --aspect 16:9 --steps 4 --cfg 1.0

Writes one PNG per prompt (`<out>/<index>_<seed>.png`) and `<out>/grid.png`, and prints the time of text encoding,
compilation, sampling (with the time per step) and VAE decoding. The text encoder is GPT-OSS for Lens (layers
5/11/17/23, the Harmony-wrapped prompt with its first 97 tokens dropped) and Qwen3 for FLUX.2-klein; a file of
precomputed features (`models.text_encoders.save_features`) replaces it with --text-features.
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Lens's aspect-ratio buckets at base 1024 (width x height), all sides multiples of 16.
ASPECTS = {"1:1": (1024, 1024), "2:1": (1472, 736), "16:9": (1376, 768), "3:2": (1248, 832), "4:3": (1152, 864),
           "1:2": (736, 1472), "9:16": (768, 1376), "2:3": (832, 1248), "3:4": (864, 1152)}


def is_image_checkpoint(directory: str) -> bool:
  return all(os.path.isdir(os.path.join(directory, part)) for part in ("transformer", "vae"))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m jaxagents.sample", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="diffusers-layout folder: transformer/, vae/, ...")
  parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  parser.add_argument("--prompts-file", help="a text file, one prompt per line")
  parser.add_argument("--negative-prompt", default="")
  parser.add_argument("--size", help="WxH in pixels, multiples of 16 (default 1024x1024)")
  parser.add_argument("--aspect", choices=sorted(ASPECTS), help="one of Lens's buckets at base 1024")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale; <= 1 samples without CFG")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--text-features", action="append", default=[], help="precomputed features file(s)")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
  parser.add_argument("--out", default="samples", help="output folder")
  args = parser.parse_args(argv)
  prompts = list(args.prompt)
  if args.prompts_file:
    with open(args.prompts_file) as f:
      prompts += [line.strip() for line in f if line.strip()]
  if not prompts:
    parser.error("give at least one --prompt or a --prompts-file")
  args.prompts = prompts
  if args.size and args.aspect:
    parser.error("give --size or --aspect, not both")
  width, height = ASPECTS[args.aspect] if args.aspect else (1024, 1024)
  if args.size:
    try:
      width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
      parser.error(f"--size must be WxH with integers, got {args.size!r}")
  args.width, args.height = width, height
  return args


def text_encoder(args: argparse.Namespace, family: str, dtype):
  """The encoder the checkpoint's transformer expects, or the precomputed features."""
  from jaxagents.models import text_encoders

  if args.text_features:
    return text_encoders.PrecomputedTextEncoder(args.text_features)
  encoder_dir = os.path.join(args.checkpoint, "text_encoder")
  tokenizer_dir = os.path.join(args.checkpoint, "tokenizer")
  if not os.path.isdir(encoder_dir):
    raise FileNotFoundError(f"--checkpoint {args.checkpoint!r} has no text_encoder/ folder; pass --text-features")
  tokenizer = text_encoders.load_tokenizer(tokenizer_dir if os.path.isdir(tokenizer_dir) else encoder_dir)
  if family == "lens":
    from jaxagents.models.text_encoders import gpt_oss_convert

    config, params = gpt_oss_convert.load_params(encoder_dir, dtype=dtype)
    return text_encoders.GptOssTextEncoder(tokenizer, config, params, dtype=dtype)
  from jaxagents.models.text_encoders import qwen3_text

  config, params = qwen3_text.load_params(encoder_dir, dtype=dtype)
  return text_encoders.Qwen3TextEncoder(tokenizer, config, params, dtype=dtype)


def image_grid(images: np.ndarray) -> np.ndarray:
  """uint8 [B, H, W, 3] -> one near-square grid, white gaps of 4 pixels."""
  count, height, width = images.shape[:3]
  cols = int(np.ceil(np.sqrt(count)))
  rows = -(-count // cols)
  grid = np.full((rows * (height + 4) - 4, cols * (width + 4) - 4, 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * (height + 4):r * (height + 4) + height, c * (width + 4):c * (width + 4) + width] = image
  return grid


def main(argv=None) -> int:
  from PIL import Image

  from jaxagents.models import mmdit
  from jaxagents.pipelines import TextToImage

  args = parse_args(argv)
  dtype = DTYPES[args.dtype]
  family = mmdit.load_config(os.path.join(args.checkpoint, "transformer")).family
  pipeline = TextToImage.from_pretrained(args.checkpoint, text_encoder(args, family, dtype), dtype=dtype)
  timings: dict = {}
  images = pipeline(args.prompts, height=args.height, width=args.width, num_steps=args.steps, guidance=args.cfg,
                    negative_prompt=args.negative_prompt, seed=args.seed, timings=timings)
  os.makedirs(args.out, exist_ok=True)
  paths = []
  for index, image in enumerate(images):
    paths.append(os.path.join(args.out, f"{index:03d}_{args.seed}.png"))
    Image.fromarray(image).save(paths[-1])
  Image.fromarray(image_grid(images)).save(os.path.join(args.out, "grid.png"))
  with open(os.path.join(args.out, "prompts.json"), "w") as f:
    json.dump({"prompts": args.prompts, "images": paths, "seed": args.seed, "steps": args.steps, "cfg": args.cfg,
               "size": [args.width, args.height], "timings": timings}, f, indent=2)
  print(f"{len(images)} image(s) of {args.width}x{args.height} in {args.out}/: text {timings['text']:.2f} s, "
        f"compile {timings['compile']:.2f} s, sampling {timings['sampling']:.2f} s ({timings['per_step'] * 1e3:.1f} "
        f"ms/step over {args.steps} steps), decode {timings['decode']:.2f} s")
  return 0
