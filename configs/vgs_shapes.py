"""On-policy distillation with Visual Gradient Steering (VGS) on the shipped counting task, on CPU in minutes:
a larger tiny Qwen-VL teacher learns the task by SFT, the GRPO config's student gets a short SFT warm start, then
the student is distilled on its own rollouts (VGS, arXiv 2606.00564; jaxagents/tasks/onpolicy_distill.py).

  python -m jaxagents.train --config configs/vgs_shapes.py --workdir runs/vgs_shapes
  python -m jaxagents.train --config configs/vgs_shapes.py --workdir runs/opd_shapes \
    --config.rl.gamma=0 --config.rl.lam=0      # the baseline: standard on-policy distillation
  python -m jaxagents.train --config configs/vgs_shapes.py:test --workdir /tmp/vgs_test   # seconds: for tests

Writes runs/vgs_shapes/{metrics.jsonl, reward.png, before.json, after_teacher.json, after_sft.json,
final_metrics.json, checkpoints/}; final_metrics.json holds the teacher's held-out rewards as teacher/eval/*.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "onpolicy_distill"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.env = dict(grid=4, cell=14, colors=("red", "green", "blue"), max_count=4, fill=0.5,
               format="answer")  # "rows" for the multi-step format (then rl.max_new_tokens=11)
  # SFT rows without the image, so that p(.|x) (read by ℓ_Vis, ℓ_LP, VDS) is a prior
  c.data = dict(text_only_fraction=0.25)
  c.eval = dict(examples=256, samples=4)  # held-out prompts; sampled answers per prompt
  c.model = dict(hidden=64, layers=2, vision_depth=2, vision_width=32)  # the student: the GRPO config's model
  c.teacher = dict(model=dict(hidden=128, layers=3, vision_depth=2, vision_width=64),
                   steps=400, batch_size=32, learning_rate=3e-4)  # 1e-3 and 2e-3 did not learn to count
  c.sft = dict(steps=100, batch_size=32, learning_rate=3e-4)  # the student's warm start (0 skips it)
  c.rl = dict(
    steps=150, prompts_per_step=32, group_size=2, updates_per_batch=1, temperature=1.0,
    max_new_tokens=2,  # the "answer" format's digit + <eos> (envs.counting.CountingConfig.completion_length)
    learning_rate=3e-4, weight_decay=0.01,  # the paper: AdamW, wd 1e-2 (lr 1e-6 for a 2B student)
    gamma=2.0, lam=0.01,  # the paper's γ and λ; gamma=0, lam=0 is standard on-policy distillation
    eta=None,  # None: the per-step η of Eq. 15; a number: that constant (App. A: 0.41 for the 2B student)
    freeze_eta_after=None,  # with eta=None, freeze η at its running mean after this many steps (App. A)
    adaptive_gamma=False,  # App. E: γ_t = 0 / γ/2 / γ for VDS_t <= Q_0.4 / <= Q_0.7 / above
    project_conflicts=False,  # PCGrad's projection of g_Std against g_Vis (not the paper's method)
    quantile=0.7, low_quantile=0.4, agg="seq_mean_token_mean",  # the ℓ_LP gate (Eq. 16) and the 1/|τ| average
    alpha=0.0,  # Eq. 22: > 0 mixes in the clipped GRPO term (then set eta=1.0: η is dropped there)
    loss=dict(variant="grpo", beta=0.0),  # the GRPO term of Eq. 22 (no KL); unused when alpha = 0
  )
  c.log_every = 10
  c.eval_every = 150  # held-out evaluations after each phase and at the end
  c.tensorboard = False
  c.checkpoint = dict(save_every=50, keep=2)
  if arg == "test":  # the same job, small enough for the CPU test suite
    c.eval = dict(examples=16, samples=2)
    c.teacher.update(steps=3, batch_size=8)
    c.sft.update(steps=2, batch_size=8)
    c.rl.update(steps=3, prompts_per_step=8)
    c.log_every, c.eval_every = 1, 3
    c.checkpoint = dict(save_every=2, keep=2)
  elif arg:
    raise ValueError(f"configs/vgs_shapes.py: unknown variant {arg!r}; expected none or 'test'.")
  return c
