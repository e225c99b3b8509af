"""Sample DynaVid's two stages from a training run: flow from a caption and a first frame, then the video it guides.

    python -m jaxagents.sample --run runs/dynavid --prompt "the camera pans" --frame first.png --out samples/
    python -m jaxagents.sample --run runs/dynavid --clips 4 --seed 3      # first frames of rendered held-out clips

`--run` is the workdir of a `dynavid` job (`configs/dynavid_shapes.py`): its config.json rebuilds the task and its
latest checkpoint gives the VAE, both generators and the ControlNet (`checkpoint.restore_trees`, nothing else of the
run). The first frame is a PNG resized to the run's resolution, or, with `--clips`, the first frames (and captions)
of clips rendered from `--seed`. Writes into `--out` (default `<run>/samples/cli`), per clip: `flow_<i>.gif` (the
generated flow on the colour wheel), `video_<i>.gif` (the video under that flow) and `video_uncontrolled_<i>.gif`
(the video DiT alone, same noise), and prints the paths.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np


def is_video_run(path: str) -> bool:
  """Whether `path` is the workdir of a DynaVid job (its config.json names the task)."""
  config = pathlib.Path(path) / "config.json"
  return config.is_file() and json.loads(config.read_text()).get("task") == "dynavid"


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m jaxagents.sample", description=__doc__.split("\n")[0])
  parser.add_argument("--run", required=True, help="the workdir of a dynavid training run")
  parser.add_argument("--prompt", default=None, help='a caption, e.g. "the camera zooms and rolls"')
  parser.add_argument("--frame", default=None, help="the first frame (an image file)")
  parser.add_argument("--clips", type=int, default=0, help="use the first frames of this many rendered clips")
  parser.add_argument("--seed", type=int, default=0, help="noise seed (and the rendered clips' stream)")
  parser.add_argument("--out", default=None, help="output folder (default <run>/samples/cli)")
  parser.add_argument("--fps", type=float, default=6.0)
  parser.add_argument("--scale", type=int, default=4, help="GIF pixels per video pixel")
  return parser.parse_args(argv)


def _inputs(task, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(first frames uint8 [B, 1, H, W, 3], caption ids [B, L], masks [B, L])."""
  from PIL import Image

  from jaxagents.data import motion_clips

  data = task.config.data
  if args.clips > 0:
    source = motion_clips.MotionClipsSource(args.clips, args.seed, task.motion_config, task.train_source.max_len)
    records = [source[i] for i in range(args.clips)]
    return (np.stack([r["frames"][:1] for r in records]), np.stack([r["caption_ids"] for r in records]),
            np.stack([r["caption_mask"] for r in records]))
  if not args.frame or not args.prompt:
    raise SystemExit("python -m jaxagents.sample --run: give --prompt and --frame, or --clips N")
  frame = np.asarray(Image.open(args.frame).convert("RGB").resize((data.width, data.height), Image.BICUBIC))
  try:
    ids, mask = motion_clips.tokenize(args.prompt, task.train_source.max_len)
  except ValueError as error:
    raise SystemExit(f"--prompt: {error}") from error
  return frame[None, None], ids[None], mask[None]


def main(argv=None) -> int:
  from jaxagents import checkpoint
  from jaxagents.data.motion_render import flow_to_color, save_gif
  from jaxagents.sharding import unbox
  from jaxagents.tasks.dynavid import DynaVid

  args = parse_args(argv)
  run = pathlib.Path(args.run)
  if not is_video_run(args.run):
    raise SystemExit(f"--run: {run} is not the workdir of a dynavid job (no config.json naming task 'dynavid')")
  task = DynaVid(ml_collections.ConfigDict(json.loads((run / "config.json").read_text())))
  abstract = jax.eval_shape(lambda: unbox(task.init(jax.random.key(0))))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  names = ("vae", "latent_stats", "motion_ema", "video_ema", "control")
  wanted = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        {name: abstract[name] for name in names})
  state = checkpoint.restore_trees(run, wanted)
  frames, ids, mask = _inputs(task, args)
  key = jax.random.key(args.seed)
  flow, video = task.generate_two_stage(state, frames, ids, mask, key)
  uncontrolled = task.generate_video(state, frames, ids, mask, jax.random.split(key)[1])
  out = pathlib.Path(args.out) if args.out else run / "samples" / "cli"
  out.mkdir(parents=True, exist_ok=True)
  scale = float(np.linalg.norm(flow, axis=-1).max()) or 1.0
  for i in range(video.shape[0]):
    paths = [save_gif(np.stack([flow_to_color(f, scale) for f in flow[i]]), out / f"flow_{i}.gif", args.fps,
                      args.scale),
             save_gif(video[i], out / f"video_{i}.gif", args.fps, args.scale),
             save_gif(uncontrolled[i], out / f"video_uncontrolled_{i}.gif", args.fps, args.scale)]
    print(" ".join(str(p) for p in paths))
  return 0


if __name__ == "__main__":
  sys.exit(main())
