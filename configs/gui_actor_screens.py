"""GUI-Actor (arXiv 2506.03143, §3) on rendered click tasks: a tiny Qwen2-VL-family backbone + action head trained
with the multi-patch and LM losses, then a grounding verifier (§3.3) that re-ranks the head's candidates; held-out
point-in-box accuracy beside the screen-centre and random-element baselines.

  python -m jaxagents.train --config configs/gui_actor_screens.py --workdir runs/gui_actor_screens
  python -m jaxagents.train --config configs/gui_actor_screens.py:test --workdir /tmp/gui_actor_test  # seconds

Writes runs/gui_actor_screens/{metrics.jsonl, loss.png, before.json, after_grounding.json, final_metrics.json,
checkpoints/}; the held-out accuracies (head, verifier, both baselines, per role) are printed at the end.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "gui_grounding"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  # 480x320 renders (the renderer's smallest screen) resized to 240x160: a 12x8 grid of 20 px visual tokens.
  # Words are left out: 7 px glyph runs at 480x320, under 4 px after the resize.
  c.data = dict(image_size=(240, 160), roles=("button", "menu_button", "checkbox", "tab", "text_input",
                                              "canvas_shape", "image", "menu_item", "table_cell"))
  c.model = dict(hidden=64, layers=2, vision_depth=2, vision_width=32, patch_size=10)
  c.train_backbone = True  # False: GUI-Actor's warm-up, head only (the tiny backbone here starts from scratch)
  # Loss weights 1 and 1 as GUI-Actor's full SFT (scripts/train.sh); the learning rate is ours (from scratch).
  c.grounding = dict(steps=250, batch_size=32, learning_rate=1e-3, lm_weight=1.0, pointer_weight=1.0)
  # From the grounding backbone (from scratch it stays at chance in this budget); 32 records = 64 marked screens;
  # negatives at other elements' centres as GUI-Actor's verifier data ("head": the head's wrong candidates, ours).
  c.verifier = dict(steps=100, batch_size=32, learning_rate=3e-4, init_from_grounding=True, negatives="elements")
  c.eval = dict(examples=256, max_candidates=8, verifier_threshold=0.8)  # τ = 0.8: their ScreenSpot threshold
  c.log_every = 20
  c.eval_every = 0
  c.evaluate_before = False  # the untrained model's numbers are chance; the CPU budget goes to training
  c.tensorboard = False
  c.checkpoint = dict(save_every=300, keep=1)
  if arg == "test":  # the whole job, small enough for the CPU tests
    c.grounding.update(steps=4, batch_size=8)
    c.verifier.update(steps=2, batch_size=8)
    c.eval = dict(examples=16, max_candidates=4, verifier_threshold=0.8)
    c.log_every = 2
    c.checkpoint = dict(save_every=10, keep=1)
  elif arg:
    raise ValueError(f"configs/gui_actor_screens.py: unknown variant {arg!r}; expected none or 'test'.")
  return c
