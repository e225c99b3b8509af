"""Exports the counting task (`jaxagents.envs.counting`) as a JSONL dataset of VLM records, one PNG per board.

Each line is `{"id", "prompt", "images": ["images/<stem>_<index>.png"], "answer": "<count>"}` in the layout that
`jaxagents.data.vlm_records.open_dataset` reads (images relative to the JSONL file), so the generated task and a
user's own data go through the same reader. PNG is lossless: the reopened images equal the env's pixels exactly.

    python -m jaxagents.envs.counting_export --out examples/data/counting --examples 16
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

from PIL import Image

from jaxagents.envs import counting


def export_counting(env_config: counting.CountingConfig, path: str | os.PathLike, *, examples: int,
                    seed: int) -> pathlib.Path:
  """Writes examples `0..examples-1` of stream `seed` to the JSONL file `path` and their boards to
  `images/<stem>_<index>.png` beside it; returns the path. `answer` is the count as a string ("3")."""
  if not isinstance(env_config, counting.CountingConfig):
    raise TypeError(f"env_config: expected a CountingConfig, got {type(env_config).__name__}")
  if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
    raise ValueError(f"examples: expected a positive integer, got {examples!r}")
  path = pathlib.Path(path)
  if path.suffix != ".jsonl":
    raise ValueError(f"path: expected a .jsonl file name, got {path}")
  images_dir = path.parent / "images"
  images_dir.mkdir(parents=True, exist_ok=True)
  width = max(5, len(str(examples - 1)))
  lines = []
  for index in range(examples):
    example = counting.make_example(env_config, seed, index)
    image_name = f"images/{path.stem}_{index:0{width}d}.png"
    Image.fromarray(example["image"]).save(path.parent / image_name, optimize=True)
    record = {"id": f"counting-{seed}-{index}", "prompt": example["prompt"], "images": [image_name],
              "answer": str(example["count"])}
    lines.append(json.dumps(record) + "\n")
  partial = path.with_suffix(".jsonl.partial")  # a reader never sees a half-written file
  partial.write_text("".join(lines))
  partial.replace(path)
  return path


def main(argv: list[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output folder: <out>/<split>.jsonl and <out>/images/")
  parser.add_argument("--examples", type=int, required=True, help="number of examples")
  parser.add_argument("--split", default="train", help="file name stem (default: train)")
  parser.add_argument("--seed", type=int, default=0, help="example stream; held-out splits use another seed")
  defaults = counting.CountingConfig()
  parser.add_argument("--grid", type=int, default=defaults.grid, help="cells per board side")
  parser.add_argument("--cell", type=int, default=defaults.cell, help="pixels per cell side")
  parser.add_argument("--colors", default=",".join(defaults.colors), help="comma-separated colours")
  parser.add_argument("--max-count", type=int, default=defaults.max_count, help="most shapes of one colour")
  parser.add_argument("--fill", type=float, default=defaults.fill, help="probability that a cell holds a shape")
  args = parser.parse_args(argv)
  config = counting.CountingConfig(grid=args.grid, cell=args.cell, colors=tuple(args.colors.split(",")),
                                   max_count=args.max_count, fill=args.fill)
  path = export_counting(config, pathlib.Path(args.out) / f"{args.split}.jsonl", examples=args.examples,
                         seed=args.seed)
  print(f"wrote {args.examples} records to {path}")
  return path


if __name__ == "__main__":
  main()
