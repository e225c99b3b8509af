"""Wall time of one GRPO step of a job config: the host-side `prepare` (rollouts, rewards, recomputed log-probs)
and the jitted updates, as the one loop runs them, after compilation.

    python -m jaxagents.bench.grpo_step --config configs/grpo_shapes.py --steps 20 [--devices N]

Prints a table: seconds per step for prepare, updates and the whole step (median over `--steps` after
`--warmup` steps), on the config's mesh (over all devices, or the first `--devices`).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from jaxagents import sharding
from jaxagents import train as train_lib
from jaxagents.data import make_pipeline
from jaxagents.scripts.compare_rl import load_config
from jaxagents.tasks import get_task


def time_steps(config, *, steps: int, warmup: int, devices=None) -> dict[str, float]:
  """Median seconds of prepare, of the updates and of the whole step over `steps` RL steps (after `warmup`)."""
  task = get_task(config.task, config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = (*getattr(task, "logical_rules", ()), *sharding.DEFAULT_RULES)
  phase = next(p for p in task.phases if p.name == "rl")
  optimizers = task.optimizers()
  with sharding.active(mesh, rules):
    init = functools.partial(train_lib.initial_state, task, optimizers)
    shardings = sharding.logical_to_sharding(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    state = jax.jit(lambda key: sharding.unbox(init(key)), out_shardings=shardings)(jax.random.key(0))
    update = jax.jit(lambda s, b, k: task.update(s, b, k, phase), donate_argnums=0)
    records = iter(make_pipeline(task.source(phase), batch_size=phase.batch_size // jax.process_count(), seed=0))
    timings = {"prepare": [], "updates": [], "step": []}
    for step in range(warmup + steps):
      start = time.perf_counter()
      batch, _ = task.prepare(state, next(records), jax.random.key(step), phase)
      batch = sharding.shard_batch(batch)
      jax.block_until_ready(batch)
      prepared = time.perf_counter()
      for k in range(phase.updates_per_batch):
        state, metrics = update(state, batch, jax.random.key(k))
      jax.block_until_ready((state, metrics))
      done = time.perf_counter()
      if step >= warmup:
        timings["prepare"].append(prepared - start)
        timings["updates"].append(done - prepared)
        timings["step"].append(done - start)
  return {name: float(np.median(values)) for name, values in timings.items()}


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/grpo_shapes.py", help="a config file, optionally with :arg")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--devices", type=int, default=None, help="the config's mesh over the first N devices")
  args = parser.parse_args(argv)
  config = load_config(args.config)
  devices = jax.devices()[:args.devices] if args.devices else None
  seconds = time_steps(config, steps=args.steps, warmup=args.warmup, devices=devices)
  rl = config.rl
  mesh = " ".join(f"{name}={size}" for name, size in sharding.make_mesh(config.mesh, devices).shape.items())
  lines = [f"GRPO step: {rl.prompts_per_step} prompts x {rl.group_size} samples, {rl.updates_per_batch} updates, "
           f"mesh {mesh}", "", "| part | seconds / step | fraction of the step |", "|---|---|---|"]
  lines += [f"| {name} | {value:.4f} | {value / seconds['step']:.2f} |" for name, value in seconds.items()]
  text = "\n".join(lines)
  print(text)
  return text


if __name__ == "__main__":
  main()
