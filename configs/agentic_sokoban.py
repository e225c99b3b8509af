"""Dyna-Mind on Sokoban (arXiv 2510.09577): a tiny text policy, ReSim SFT then Dyna-GRPO (or GRPO), on CPU.

  python -m jaxagents.train --config configs/agentic_sokoban.py --workdir runs/agentic_sokoban          # Dyna-GRPO
  python -m jaxagents.train --config configs/agentic_sokoban.py:grpo --workdir runs/agentic_sokoban_grpo
  python -m jaxagents.train --config configs/agentic_sokoban.py:test --workdir /tmp/agentic_test      # seconds
  python -m jaxagents.scripts.compare_agentic --seeds 0 1 --workdir runs/compare_agentic  # sft / grpo / dyna

Writes metrics.jsonl, success.png, before.json, after_sft.json (the ReSim SFT policy) and final_metrics.json.
Levels are small so that a tiny model can learn them: a (6, 6) room (4 x 4 inside the wall ring), one box, at most
2 pushes, 10 steps per episode (Dyna-Mind plays (6, 6) rooms with one box and more steps).

Measured, seed 0, 64 held-out levels, greedy, 2 shared CPU cores (one run each; noisy, no claim beyond this):
  ReSim SFT (300 steps, ~4-7 min): success 0.141, return 0.62, valid actions 0.63.
  + GRPO 20 steps: 0.141 (return 0.63); + GRPO 40 steps: 0.141 (return 0.61).
  + Dyna-GRPO 20 steps, a^refine trained against s_t (the default): 0.047 (return -0.40, valid actions 0.30):
    successful refined episodes also reinforce their invalid a^refine turns under the plain context.
  + Dyna-GRPO 20 steps, rl.condition_on_future=True: 0.156 (return 0.79, valid 0.68).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "agentic_rl"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.env = dict(dim=(6, 6), num_boxes=1, max_pushes=2, max_steps=10)
  c.model = dict(num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=256)
  c.prompt_length = 64  # prompt rows are padded to a multiple of this (a board is 19 tokens, a refusal adds ~20)
  c.resim = dict(levels=400, random_walks=2, walk_length=3, depth=1, plan_depth=3)  # training levels: seeds 0..399
  c.sft = dict(steps=300, batch_size=32, learning_rate=1e-3)
  c.rl = dict(
    algorithm="dyna",  # "grpo": policy improvement only; "dyna": alternated with simulation improvement
    steps=20, prompts_per_step=4, group_size=4, updates_per_batch=1, max_new_tokens=128, temperature=1.0,
    learning_rate=1e-4,
    simulation_steps=1, policy_steps=1, condition_on_future=False, max_plan_depth=5,  # Dyna-GRPO: d <= 5
    loss=dict(variant="grpo", beta=0.0),  # clip 0.2; no KL term (no reference pass on CPU)
  )
  c.eval = dict(levels=64, seed_offset=1_000_000)  # held-out levels: another seed range
  c.log_every = 5
  c.eval_every = 10
  c.evaluate_before = False
  c.tensorboard = False
  c.checkpoint = dict(save_every=1000, keep=1)
  if arg == "grpo":
    c.rl.algorithm = "grpo"
  elif arg == "test":  # the whole job in seconds, for the tests
    c.model = dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
    c.resim.update(levels=8, random_walks=1)
    c.sft.update(steps=2, batch_size=8)
    c.rl.update(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=128)
    c.env.update(max_steps=3)
    c.eval = dict(levels=4, seed_offset=1_000_000)
    c.log_every, c.eval_every = 1, 0
  elif arg:
    raise ValueError(f"configs/agentic_sokoban.py: unknown variant {arg!r}; expected none, 'grpo' or 'test'.")
  return c
