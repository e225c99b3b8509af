"""Supervised fine-tuning alone on the shipped counting task: the GRPO job's warm start (configs/grpo_shapes.py: the
same task, model and learning rate; its docstring says why) as a job of its own, twice as long.

  python -m jaxagents.train --config configs/sft_counting.py --workdir runs/sft_counting
  python -m jaxagents.train --config configs/sft_counting.py:test --workdir /tmp/sft_test   # seconds: for tests

Writes runs/sft_counting/{metrics.jsonl, loss.png, before.json, final_metrics.json, checkpoints/}; the held-out
greedy accuracy and sampled mean reward are printed before and after training.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "vlm_sft"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.env = dict(grid=4, cell=14, colors=("red", "green", "blue"), max_count=4, fill=0.5, format="answer",
               color_last=True)
  c.model = dict(hidden=64, layers=2, vision_depth=2, vision_width=32, patch_size=7)  # 2x2 patches = one cell
  c.eval = dict(examples=256, samples=4)  # held-out prompts; sampled answers per prompt
  c.sft = dict(steps=200, batch_size=32, learning_rate=1e-3)
  c.temperature = 1.0  # of the sampled held-out answers
  c.log_every = 10
  c.eval_every = 50
  c.tensorboard = False
  c.checkpoint = dict(save_every=50, keep=2)
  if arg == "test":  # the same job, small enough for the CPU test suite
    c.eval = dict(examples=16, samples=2)
    c.sft.update(steps=40, batch_size=8)
    c.log_every, c.eval_every = 10, 20
    c.checkpoint = dict(save_every=20, keep=2)
  elif arg:
    raise ValueError(f"configs/sft_counting.py: unknown variant {arg!r}; expected none or 'test'.")
  return c
