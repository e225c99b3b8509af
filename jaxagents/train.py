"""The one training loop: `python -m jaxagents.train --config configs/<name>.py --workdir DIR`.

The task (chosen by `config.task`) provides the model, data and loss; this loop owns the rest: the mesh,
parameters born sharded, the jitted update, data order, checkpoints, metrics, progress and NaN detection.

Order of a run (and of a resumed run, which must end bitwise identical to an uninterrupted one):
  1. Mesh from `config.mesh`; `jax.distributed` first when launched on several hosts.
  2. Abstract train state via `jax.eval_shape`; shardings from the logical axis names.
  3. Data pipeline (grain), deterministic in `config.seed`.
  4. If `DIR/checkpoints` has a step: refuse a config that differs from `DIR/config.json` outside `RESUMABLE`, or
     a checkpoint of another tree, shape or dtype, before writing anything; restore state and data position (or,
     when the run is finished, return its summary). Else: init the state, sharded.
  5. Loop: batch -> update (the step's RNG is `fold_in(seed, step)`), log, eval, save.
  6. Final checkpoint, metrics plot (`DIR/loss.png`).

Testing hook: `JAXAGENTS_SIGKILL_AFTER_STEP=k` makes the process SIGKILL itself right after step k (and its
checkpoint save, possibly still in flight), to test that an interrupted run resumes to the same state.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from etils import epath

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import optim, sharding
from jaxagents import workdir as workdir_lib
from jaxagents.data import make_pipeline
from jaxagents.tasks import get_task

_KILL_ENV = "JAXAGENTS_SIGKILL_AFTER_STEP"
# Config fields that may differ from the workdir's config.json on resume; any other difference is refused. None of
# these changes the train state's structure, the data order or the learning-rate schedule's shape: logging and
# checkpoint cadence, the mesh (checkpoints restore into any sharding), and the two knobs for resuming a diverged
# run from its last good checkpoint (turning clipping on or off changes the optimizer state, which the checkpoint's
# structure check refuses). `total_steps` must match: the cosine schedule decays over it.
RESUMABLE = ("log_every", "eval_every", "checkpoint", "tensorboard", "plot_keys", "mesh",
             "optimizer.learning_rate", "optimizer.grad_clip_norm")


def _mesh_context(mesh):
  """Makes `mesh` current, so `nn.with_logical_constraint` inside models becomes a sharding constraint."""
  set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
  return set_mesh(mesh) if set_mesh is not None else mesh


def _check_finite(step_metrics: list[tuple[int, dict[str, float]]], checkpointer, optimizer_config) -> None:
  for step, values in step_metrics:
    bad = {key: value for key, value in values.items() if not math.isfinite(value)}
    if bad:
      checkpointer.wait()
      raise FloatingPointError(
        f"Non-finite training metrics at step {step}: {bad}. Training stopped before saving this state. "
        + _divergence_advice(checkpointer.latest_step(), checkpointer.directory, optimizer_config)
      )


def _divergence_advice(last_good_step: int | None, directory, optimizer_config) -> str:
  """Where a rerun after a divergence starts, and which optimizer settings to lower (given what the config has on)."""
  learning_rate = optimizer_config.learning_rate
  clip = optimizer_config.get("grad_clip_norm", None)
  if last_good_step is None:
    where = f"No checkpoint was saved yet in {directory}, so a rerun with the same --workdir starts from scratch."
  else:
    where = (f"The last good checkpoint is step {last_good_step} in {directory}; a rerun with the same --workdir "
             f"resumes from it.")
  resumable = "" if last_good_step is None else " (both may change on resume)"
  if clip:
    fix = (f"Lower optimizer.learning_rate (now {learning_rate:g}) or optimizer.grad_clip_norm "
           f"(now {clip:g}){resumable}.")
  elif last_good_step is None:
    fix = (f"Lower optimizer.learning_rate (now {learning_rate:g}) or enable gradient clipping "
           f"(optimizer.grad_clip_norm).")
  else:  # clipping adds an optimizer state, which the saved checkpoints do not have
    fix = (f"Lower optimizer.learning_rate (now {learning_rate:g}; it may change on resume). Enabling gradient "
           f"clipping (optimizer.grad_clip_norm) changes the optimizer state, so it needs a new --workdir.")
  return f"{where} {fix}"


def train(config, workdir: str, *, devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the job described by `config` in `workdir`; returns the final metrics.

  `devices` restricts the mesh to a subset of the local devices (default: all devices of all hosts).
  Configs with `trainer = "rl"` run the RL post-training job instead (`jaxagents.rl.trainer`).
  """
  if config.get("trainer") == "rl":
    from jaxagents.rl import trainer as rl_trainer

    return rl_trainer.train(config, workdir)
  # 1. Mesh.
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.DEFAULT_RULES
  is_main = jax.process_index() == 0
  workdir_path = epath.Path(workdir)  # a local directory or a bucket path (gs://...)
  if is_main:
    workdir_path.mkdir(parents=True, exist_ok=True)

  task = get_task(config.task, config)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  seed_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(seed_key)

  def init_state(key):
    params = task.init_params(key)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  with _mesh_context(mesh), nn.logical_axis_rules(list(rules)):
    # 2. Abstract state and shardings: params are never materialised unsharded.
    boxed_abstract = jax.eval_shape(init_state, init_key)
    state_shardings = sharding.logical_to_sharding(boxed_abstract, mesh, rules)
    abstract_state = checkpoint_lib.abstract_with_shardings(sharding.unbox(boxed_abstract), state_shardings)

    # 3. Data.
    if config.batch_size % jax.process_count():
      raise ValueError(
        f"batch_size: {config.batch_size} is not divisible by the number of hosts {jax.process_count()}."
      )
    dataset = make_pipeline(
      task.train_source(), batch_size=config.batch_size // jax.process_count(), seed=config.seed,
      worker_count=config.data.get("worker_count", 0),
    )
    data_iterator = iter(dataset)

    # 4. Restore or initialise.
    checkpointer = checkpoint_lib.Checkpointer(
      workdir_path / "checkpoints", save_every=config.checkpoint.save_every,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
    )
    start_step = checkpointer.latest_step()
    try:
      if start_step is not None:  # the same run, or nothing is written
        changed = workdir_lib.check_config(workdir_path, config, step=start_step, may_change=RESUMABLE)
        checkpointer.check_matches(start_step, abstract_state)
      if start_step is not None and start_step >= config.total_steps:
        checkpointer.close()
        print(f"The run in {workdir} is complete (step {start_step} of {config.total_steps}); nothing to do.",
              file=sys.stderr)
        return workdir_lib.summary(workdir_path)
      if start_step is not None:
        state = checkpointer.restore(start_step, abstract_state, data_iterator)
    except BaseException:
      checkpointer.close()  # an open manager's threads otherwise print their own tracebacks at exit
      raise
    workdir_lib.write_config(workdir_path, config)
    if start_step is not None:
      print(f"Resumed from step {start_step} in {checkpointer.directory}{workdir_lib.describe_changes(changed)}.",
            file=sys.stderr)
    else:
      start_step = 0
      state = jax.jit(lambda key: nn.meta.unbox(init_state(key)), out_shardings=state_shardings)(init_key)

    def train_step(state, batch):
      step = state["step"]
      grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
      (loss, measurements), grads = grad_fn(state["params"], batch, jax.random.fold_in(step_key, step))
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      measurements = {
        **measurements, "loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(step),
      }
      return {"step": step + 1, "params": params, "opt_state": opt_state}, measurements

    train_step = jax.jit(
      train_step, donate_argnums=0,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
    )

    # 5. Loop.
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))

    def evaluate(step):
      eval_metrics = task.evaluate(state["params"])
      writer.write(step, eval_metrics)
      if is_main:
        tqdm.tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
      return eval_metrics

    if start_step == 0:
      evaluate(0)  # the "before" point of every curve
    kill_after = int(os.environ.get(_KILL_ENV, "-1"))
    pending: list[tuple[int, Any]] = []
    final_metrics: dict[str, Any] = {}
    progress = tqdm.tqdm(
      total=config.total_steps, initial=start_step, disable=not is_main, desc=config.task, dynamic_ncols=True
    )
    for step in range(start_step + 1, config.total_steps + 1):
      batch = sharding.shard_batch(next(data_iterator), mesh, rules)
      state, step_metrics = train_step(state, batch)
      pending.append((step, step_metrics))
      is_last = step == config.total_steps
      save_due = is_last or step % config.checkpoint.save_every == 0
      if save_due or step % config.log_every == 0:
        fetched = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
        pending.clear()
        _check_finite(fetched, checkpointer, config.optimizer)
        averaged = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        writer.write(step, averaged)
        final_metrics.update(averaged)
        progress.set_postfix(loss=f"{averaged['loss']:.4f}", refresh=False)
      if is_last or step % config.eval_every == 0:
        final_metrics.update(evaluate(step))
      if save_due:
        checkpointer.save(step, state, data_iterator, force=is_last)
      progress.update(1)
      if step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    progress.close()

  # 6. Finish.
  checkpointer.close()
  writer.close()
  if is_main:
    records = metrics_lib.read_metrics(writer.path)
    metrics_lib.plot_curves(records, list(config.plot_keys), workdir_path / "loss.png", title=config.task)
    (workdir_path / "final_metrics.json").write_text(json.dumps(final_metrics, indent=2))
  return final_metrics


def main(argv):
  del argv
  from absl import flags, logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; keep the progress bar readable

  config = flags.FLAGS.config
  train(config, flags.FLAGS.workdir)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots are written.")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
