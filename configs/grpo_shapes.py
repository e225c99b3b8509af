"""GRPO on the shipped counting task: a tiny Qwen2-VL-shaped VLM, SFT warm start then GRPO, on CPU in minutes.

  python -m jaxagents.train --config configs/grpo_shapes.py --workdir runs/grpo_shapes
  python -m jaxagents.train --config configs/grpo_shapes.py:test --workdir /tmp/grpo_test   # seconds: for tests

Writes runs/grpo_shapes/{metrics.jsonl, reward.png, before.json, after_sft.json, final_metrics.json, checkpoints/}.
`rl.advantage` picks the estimator: grpo, dr_grpo, rloo (and pdcr/pacr with the "rows" format: pdcr_shapes.py).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "grpo"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.env = dict(grid=4, cell=14, colors=("red", "green", "blue"), max_count=4, fill=0.5, format="answer")
  c.model = dict(hidden=64, layers=2, vision_depth=2, vision_width=32)
  c.eval = dict(examples=256, samples=4)  # held-out prompts; sampled answers per prompt
  c.sft = dict(steps=300, batch_size=32, learning_rate=3e-3)
  c.rl = dict(
    steps=200, prompts_per_step=16, group_size=8, updates_per_batch=2, max_new_tokens=2, temperature=1.0,
    learning_rate=1e-4,  # a fresh Adam: 5e-4 and above undid the SFT accuracy in our runs
    advantage="grpo",
    loss=dict(variant="grpo", beta=0.04),  # DeepSeekMath GRPO: clip 0.2, k3 KL to the SFT policy
  )
  c.log_every = 10
  c.eval_every = 50
  c.tensorboard = False
  c.checkpoint = dict(save_every=50, keep=2)
  if arg == "test":  # the same job, small enough for the CPU test suite
    c.eval = dict(examples=16, samples=2)
    c.sft.update(steps=4, batch_size=8)
    c.rl.update(steps=4, prompts_per_step=4, group_size=4)
    c.log_every, c.eval_every = 2, 2
    c.checkpoint = dict(save_every=2, keep=2)
  elif arg:
    raise ValueError(f"configs/grpo_shapes.py: unknown variant {arg!r}; expected none or 'test'.")
  return c
