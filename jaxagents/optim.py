"""Optimizers from config: AdamW with warmup + cosine decay and global-norm clipping (the usual LM recipe)."""

from __future__ import annotations

import optax


def make_schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `config.learning_rate` over `warmup_steps`, then cosine decay to `end_fraction`."""
  warmup_steps = min(int(config.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=config.learning_rate * config.get("end_fraction", 0.0),
  )


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by `config.name` ('adamw' or 'sgd') and returns it with its schedule."""
  schedule = make_schedule(config, total_steps)
  if config.name == "adamw":
    optimizer = optax.adamw(
      schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), eps=config.get("eps", 1e-8),
      weight_decay=config.get("weight_decay", 0.0),
    )
  elif config.name == "sgd":
    optimizer = optax.sgd(schedule, momentum=config.get("momentum", None))
  else:
    raise ValueError(f"optimizer.name: expected 'adamw' or 'sgd', got {config.name!r}.")
  clip = config.get("grad_clip_norm", None)
  if clip:
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optimizer)
  return optimizer, schedule
