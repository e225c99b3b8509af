"""Ask a Qwen-VL checkpoint a question about images or videos from the command line, streaming the answer.

    python -m jaxagents.sample --checkpoint runs/grpo_qwen/export --image board.png --prompt "How many red shapes?"
    python -m jaxagents.sample --checkpoint Qwen2.5-VL-3B-Instruct --image a.png --image b.png \
        --prompt "What changed?" --temperature 0.7 --max-new-tokens 256 --dtype bfloat16

`--checkpoint` is a local Hugging Face directory (a released checkpoint, or the export of a training run,
`models/qwen_vl/export.py`). Images and videos are put before the prompt in one user turn, rendered by the
checkpoint's chat template (`models/qwen_vl/processor.py`); `--video` takes a GIF, a folder of frames, or frame files
separated by commas. Tokens are printed as they are chosen (`generation/stream.py`).

A `--checkpoint` folder in a diffusers pipeline layout (transformer/, vae/) is a text-to-image model instead: see
`jaxagents/sample_image.py` (prompts, size or aspect bucket, steps, CFG, seed; PNGs and a grid). `--run` with the
workdir of a DynaVid job samples flow and video from a caption and a first frame: see `jaxagents/sample_video.py`
(GIFs of the generated flow and of the video with and without the flow ControlNet).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m jaxagents.sample", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="local HF checkpoint directory")
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
  parser.add_argument("--video", action="append", default=[], help="a GIF, a frame folder, or comma-separated frames")
  parser.add_argument("--system", default=None, help="a system message")
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
  parser.add_argument("--max-pixels", type=int, default=None, help="image pixel budget (fewer visual tokens)")
  return parser.parse_args(argv)


def conversation(args: argparse.Namespace) -> dict:
  """The command line as one dataset record (`data.vlm_records` normalises it: images decoded, parts in order)."""
  from jaxagents.data.vlm_records import normalise_record

  videos = [v.split(",") if "," in v else v for v in args.video]
  raw = {"prompt": args.prompt, "images": list(args.image), "videos": videos}
  if args.system:
    raw["system"] = args.system
  return normalise_record(raw, pathlib.Path.cwd(), "command line")


def main(argv=None) -> int:
  from jaxagents import sample_image, sample_video

  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a == "--run" or a.startswith("--run=") for a in argv):
    return sample_video.main(argv)
  checkpoint = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--checkpoint"), None)
  checkpoint = checkpoint or next((a.split("=", 1)[1] for a in argv if a.startswith("--checkpoint=")), None)
  if checkpoint and sample_image.is_image_checkpoint(checkpoint):
    return sample_image.main(argv)
  return answer(argv)


def answer(argv=None) -> int:
  from jaxagents.generation import SamplingConfig
  from jaxagents.generation.stream import stream
  from jaxagents.models.qwen_vl import QwenVL, load_params
  from jaxagents.models.qwen_vl.processor import Processor

  args = parse_args(argv)
  dtype = DTYPES[args.dtype]
  config, params = load_params(args.checkpoint, dtype=dtype)
  processor = Processor.from_pretrained(args.checkpoint, config=config, max_pixels=args.max_pixels)
  record = conversation(args)
  inputs = processor([record["messages"]], images=[record["images"]], videos=[record["videos"]])
  sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, **processor.stop_options)
  model = QwenVL(config, dtype=dtype)
  tokens: list[int] = []
  printed = ""
  for column, active in stream(model, {"params": params}, inputs, sampling=sampling, key=jax.random.key(args.seed)):
    if not active[0]:
      break
    tokens.append(int(column[0]))
    text = processor.decode([tokens])[0]
    if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
      sys.stdout.write(text[len(printed):])
      sys.stdout.flush()
      printed = text
  sys.stdout.write(processor.decode([tokens])[0][len(printed):] + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
