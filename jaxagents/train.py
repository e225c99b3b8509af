"""The one training loop: `python -m jaxagents.train --config configs/<name>.py --workdir DIR`.

The task (chosen by `config.task`, `jaxagents.tasks`) provides phases, named parameter trees and optimizers, data,
the host-side `prepare` step and the update; this loop owns the rest and names no model family and no algorithm.

Order of a run (and of a resumed run, which must end bitwise identical to an uninterrupted one):
  1. `jax.distributed` when launched on several hosts; the mesh from `config.mesh`; the logical-axis rules
     (the task's first, then the defaults); the persistent compilation cache.
  2. The abstract train state via `jax.eval_shape`: {"step", "phase", <parameter trees>, "opt_state": {name: ...}};
     its shardings from the logical axis names.
  3. If `DIR/checkpoints` has a step: refuse a config that differs from `DIR/config.json` outside `RESUMABLE`, or
     a checkpoint of another tree, shape or dtype, before writing anything; restore the state and, unless the step
     ends a phase, the data position of its phase (or, when the run is finished, return its summary). Else: init
     the state sharded (`jit(init, out_shardings)`), transplant the task's pretrained weights, evaluate ("before").
  4. For each step s of each phase: at the phase's first step a fresh grain iterator over `task.source(phase)` (or
     the task's own `task.dataset(phase, ...)`) and `task.begin_phase`; records -> `task.prepare` (host, under
     the mesh; RNG `fold_in(prepare_key, s)`) -> the jitted, donated update `updates_per_batch` times (RNG
     `fold_in(fold_in(update_key, s), k)`); metrics checked for NaN/inf, logged, evaluated, checkpointed.
  5. Final checkpoint; the summary (`final_metrics.json`, rebuilt from `metrics.jsonl`, so a resumed run's equals
     an uninterrupted one's), the plot, and one line per held-out metric: before, after each phase, final.

Testing hook: `JAXAGENTS_SIGKILL_AFTER_STEP=k` makes the process SIGKILL itself right after step k (and its
checkpoint save, possibly still in flight), to test that an interrupted run resumes to the same state.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import signal
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import compilation_cache, sharding
from jaxagents import metrics as metrics_lib
from jaxagents import workdir as workdir_lib
from jaxagents.data import make_pipeline
from jaxagents.tasks import base, get_task

_KILL_ENV = "JAXAGENTS_SIGKILL_AFTER_STEP"
_RESERVED = ("step", "phase", "opt_state")
# Config fields that may differ from the workdir's config.json on resume; any other difference is refused. None of
# these changes the train state's structure or the data order: logging and checkpoint cadence, the mesh
# (checkpoints restore into any sharding), and the learning rate and clip norm for resuming a diverged run from
# its last good checkpoint (turning clipping on or off changes the optimizer state, which the structure check
# refuses). Step counts must match: schedules decay over them and phases start at them.
RESUMABLE = ("log_every", "eval_every", "checkpoint", "tensorboard", "plot_keys", "mesh",
             "optimizer.learning_rate", "optimizer.grad_clip_norm")


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
  if last_good_step is None:
    where = f"No checkpoint was saved yet in {directory}, so a rerun with the same --workdir starts from scratch."
  else:
    where = (f"The last good checkpoint is step {last_good_step} in {directory}; a rerun with the same --workdir "
             f"resumes from it.")
  if optimizer_config is None:  # a task with optimizers of its own: their settings are the task's config
    return f"{where} Lower the learning rate of the phase that diverged, or clip its gradients harder."
  learning_rate = optimizer_config.learning_rate
  clip = optimizer_config.get("grad_clip_norm", None)
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


def _phase_seed(seed: int, index: int) -> int:
  """The data seed of phase `index`: phases draw independent streams from one config seed."""
  digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _validate(task, phases, optimizers, trees) -> None:
  if not phases:
    raise ValueError(f"task {type(task).__name__}: expected at least one phase, got none.")
  for name in trees:
    if name in _RESERVED:
      raise ValueError(f"task {type(task).__name__}.init: {name!r} is reserved for the loop; rename that tree.")
  for name, optimizer in optimizers.items():
    if optimizer.params not in trees:
      raise ValueError(f"task {type(task).__name__}: optimizer {name!r} updates {optimizer.params!r}, which init "
                       f"does not return (it returns {sorted(trees)}).")
  for phase in phases:
    if phase.optimizer not in optimizers:
      raise ValueError(f"phase {phase.name!r}: optimizer {phase.optimizer!r} is not one of {sorted(optimizers)}.")
    if phase.batch_size % jax.process_count():
      raise ValueError(f"phase {phase.name!r}: batch_size {phase.batch_size} is not divisible by the number of "
                       f"hosts {jax.process_count()}.")


def _worker_count(config) -> int:
  data = config.get("data", None)
  return int(data.get("worker_count", 0)) if data is not None and hasattr(data, "get") else 0


def _as_float(value) -> float:
  return float(np.asarray(value))


def initial_state(task, optimizers: dict[str, base.Optimizer], key: jax.Array) -> dict[str, Any]:
  """The train state of every job: {"step", "phase", <the task's parameter trees>, "opt_state": {name: ...}}, boxed
  as `task.init` returns it (the loop takes `jax.eval_shape` of it, then initialises it sharded)."""
  trees = task.init(key)
  opt_states = {name: optimizer.tx.init(trees[optimizer.params]) for name, optimizer in optimizers.items()}
  return {"step": jnp.zeros((), jnp.int32), "phase": jnp.zeros((), jnp.int32), **trees, "opt_state": opt_states}


def train(config, workdir: str, *, devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the job described by `config` in `workdir`; returns the final metrics.

  `devices` restricts the mesh to a subset of the local devices (default: all devices of all hosts).
  """
  # 1. Hosts, mesh, rules.
  sharding.maybe_initialize_distributed()
  compilation_cache.enable(config.get("compilation_cache_dir", None))
  mesh = sharding.make_mesh(config.mesh, devices)
  task = get_task(config.task, config)
  rules = (*getattr(task, "logical_rules", ()), *sharding.DEFAULT_RULES)  # the first matching rule wins
  phases = tuple(task.phases)
  optimizers = task.optimizers()
  starts = base.phase_starts(phases)
  total_steps = starts[-1]
  is_main = jax.process_index() == 0
  workdir_path = epath.Path(workdir)  # a local directory or a bucket path (gs://...)
  if is_main:
    workdir_path.mkdir(parents=True, exist_ok=True)
  seed_key = jax.random.key(config.seed)
  init_key, prepare_key, update_key = jax.random.split(seed_key, 3)
  update_fn = getattr(task, "update", None) or base.loss_update(task.loss, optimizers)
  prepare_fn = getattr(task, "prepare", None) or (lambda state, records, rng, phase: (records, {}))
  begin_fn = getattr(task, "begin_phase", None)
  dataset_fn = getattr(task, "dataset", None)

  init_state = functools.partial(initial_state, task, optimizers)

  with sharding.active(mesh, rules):
    # 2. Abstract state and shardings: parameters are never materialised unsharded.
    boxed_abstract = jax.eval_shape(init_state, init_key)
    _validate(task, phases, optimizers, {k: v for k, v in boxed_abstract.items() if k not in _RESERVED})
    state_shardings = sharding.logical_to_sharding(boxed_abstract, mesh, rules)
    abstract_state = checkpoint_lib.abstract_with_shardings(sharding.unbox(boxed_abstract), state_shardings)

    # 3. Restore or initialise.
    checkpointer = checkpoint_lib.Checkpointer(
      workdir_path / "checkpoints", save_every=config.checkpoint.save_every,
      keep=config.checkpoint.keep, async_save=config.checkpoint.get("async_save", True),
    )
    start_step = checkpointer.latest_step()
    data_iterator, iterator_phase = None, None

    def open_phase(index: int):
      if dataset_fn is not None:  # the task batches its own records (e.g. aspect-ratio buckets)
        dataset = dataset_fn(phases[index], seed=_phase_seed(config.seed, index),
                             shard_index=jax.process_index(), shard_count=jax.process_count())
      else:
        source = task.source(phases[index])
        dataset = make_pipeline(source, batch_size=phases[index].batch_size // jax.process_count(),
                                seed=_phase_seed(config.seed, index), worker_count=_worker_count(config))
      return iter(dataset)

    try:
      if start_step is not None:  # the same run, or nothing is written
        task_resumable = getattr(task, "resumable", None)
        may_change = RESUMABLE + (tuple(task_resumable(start_step)) if task_resumable is not None else ())
        changed = workdir_lib.check_config(workdir_path, config, step=start_step, may_change=may_change)
        checkpointer.check_matches(start_step, abstract_state)
        if start_step > total_steps:
          raise checkpoint_lib.CheckpointMismatchError(
            f"{workdir} holds a checkpoint at step {start_step}, past this config's last step {total_steps}; "
            f"nothing was changed. Point --workdir elsewhere or rerun with the config that wrote it.")
      if start_step is not None and start_step >= total_steps:
        checkpointer.close()
        print(f"The run in {workdir} is complete (step {start_step} of {total_steps}); nothing to do.",
              file=sys.stderr)
        return workdir_lib.summary(workdir_path, extra=_after_phase_metrics(workdir_path, phases))
      if start_step is not None:
        index = base.phase_index(phases, start_step + 1)
        mid_phase = start_step > starts[index]  # at a phase's end the next phase starts with fresh data
        if mid_phase:
          data_iterator, iterator_phase = open_phase(index), index
        state = checkpointer.restore(start_step, abstract_state, data_iterator)
    except BaseException:
      checkpointer.close()  # an open manager's threads otherwise print their own tracebacks at exit
      raise
    workdir_lib.write_config(workdir_path, config)
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))

    def evaluate(step: int, state) -> dict[str, float]:
      values = {key: _as_float(value) for key, value in task.evaluate(state, step).items()}
      _check_finite([(step, values)], checkpointer, config.get("optimizer", None))
      writer.write(step, values)
      if is_main:
        tqdm.tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
      write_samples = getattr(task, "write_samples", None)
      if write_samples is not None:
        write_samples(state, workdir_path, step)
      return values

    if start_step is not None:
      print(f"Resumed from step {start_step} in {checkpointer.directory}{workdir_lib.describe_changes(changed)}.",
            file=sys.stderr)
    else:
      start_step = 0
      state = jax.jit(lambda key: sharding.unbox(init_state(key)), out_shardings=state_shardings)(init_key)
      pretrained = getattr(task, "pretrained", None)
      weights = pretrained(abstract_state) if pretrained is not None else None
      for name, tree in (weights or {}).items():
        state[name] = jax.device_put(tree, state_shardings[name])
      if config.get("evaluate_before", True):
        before = evaluate(0, state)
        if is_main:
          (workdir_path / "before.json").write_text(json.dumps(before, indent=2))

    # 4. The jitted pieces, one per phase (the phase is static: its optimizer and its batch layout).
    def run_update(state, batch, rng, step, index, update_count, *, phase_index):
      phase = phases[phase_index]
      state, metrics = update_fn(state, batch, rng, phase)
      optimizer = optimizers[phase.optimizer]
      if optimizer.schedule is not None:
        metrics = {**metrics, "learning_rate": optimizer.schedule(update_count)}
      return {**state, "step": step, "phase": index}, metrics

    updates = [
      jax.jit(functools.partial(run_update, phase_index=i), donate_argnums=0,
              out_shardings=(state_shardings, sharding.replicated(mesh)))
      for i in range(len(phases))
    ]
    begins = [None if begin_fn is None else jax.jit(functools.partial(begin_fn, phase=phase), donate_argnums=0,
                                                    out_shardings=state_shardings) for phase in phases]

    # 5. Loop.
    kill_after = int(os.environ.get(_KILL_ENV, "-1"))
    pending: list[tuple[int, Any, dict[str, float]]] = []
    progress = tqdm.tqdm(total=total_steps, initial=start_step, disable=not is_main, desc=config.task,
                         dynamic_ncols=True)
    for step in range(start_step + 1, total_steps + 1):
      index = base.phase_index(phases, step)
      phase = phases[index]
      if step == starts[index] + 1:  # the phase's first step
        data_iterator, iterator_phase = open_phase(index), index
        if begins[index] is not None:
          state = begins[index](state)
      assert iterator_phase == index, (iterator_phase, index)
      records = next(data_iterator)
      batch, host_metrics = prepare_fn(state, records, jax.random.fold_in(prepare_key, step), phase)
      batch = sharding.shard_batch(batch, mesh, rules)
      step_key = jax.random.fold_in(update_key, step)
      first_update = (step - 1 - starts[index]) * phase.updates_per_batch
      for k in range(phase.updates_per_batch):
        state, step_metrics = updates[index](state, batch, jax.random.fold_in(step_key, k), jnp.int32(step),
                                             jnp.int32(index), jnp.int32(first_update + k))
      pending.append((step, step_metrics, {key: _as_float(value) for key, value in host_metrics.items()}))
      phase_end = step == starts[index + 1]
      save_due = phase_end or step % config.checkpoint.save_every == 0
      if save_due or step % config.log_every == 0:
        fetched = [(s, {**{k: _as_float(v) for k, v in jax.device_get(m).items()}, **h}) for s, m, h in pending]
        pending.clear()
        _check_finite(fetched, checkpointer, config.get("optimizer", None))
        keys = {key for _, values in fetched for key in values}
        averaged = {k: float(np.mean([m[k] for _, m in fetched if k in m])) for k in sorted(keys)}
        writer.write(step, averaged)
        progress.set_postfix({k: f"{averaged[k]:.4f}" for k in getattr(task, "progress_keys", ("loss",))
                              if k in averaged}, refresh=False)
      eval_every = config.eval_every if phase.eval_every is None else phase.eval_every
      if (phase_end and phase.evaluate_at_end) or (eval_every and (step - starts[index]) % eval_every == 0):
        values = evaluate(step, state)
        if phase_end and index + 1 < len(phases) and is_main:
          (workdir_path / f"after_{phase.name}.json").write_text(json.dumps(values, indent=2))
      if save_due:
        checkpointer.save(step, state, data_iterator, force=phase_end)
      progress.update(1)
      if step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    progress.close()

  # 6. Finish: the summary comes from metrics.jsonl, so a resumed run reports what an uninterrupted one does.
  checkpointer.close()
  writer.close()
  final = {**workdir_lib.summary_from_metrics(workdir_path), **_after_phase_metrics(workdir_path, phases)}
  if is_main:
    records = metrics_lib.read_metrics(writer.path)
    plot_keys = config.get("plot_keys", None) or getattr(task, "plot_keys", ("loss",))
    metrics_lib.plot_curves(records, list(plot_keys), workdir_path / getattr(task, "plot_file", "loss.png"),
                            title=getattr(task, "plot_title", config.task))
    (workdir_path / workdir_lib.SUMMARY_FILE).write_text(json.dumps(final, indent=2))
    _print_summary(workdir_path, phases, final)
  return final


def _after_phase_metrics(path: epath.Path, phases) -> dict[str, float]:
  """The evaluations at the end of every phase but the last, as `<key>_after_<phase>` (part of the summary)."""
  out = {}
  for phase in phases[:-1]:
    file = path / f"after_{phase.name}.json"
    if file.exists():
      out.update({f"{key}_after_{phase.name}": value for key, value in json.loads(file.read_text()).items()})
  return out


def _print_summary(path: epath.Path, phases, final: dict[str, float]) -> None:
  """One line per held-out metric: before training, after each phase but the last, and at the end."""
  before = path / "before.json"
  if not before.exists():
    return
  points = [("before training", json.loads(before.read_text()))]
  for phase in phases[:-1]:
    file = path / f"after_{phase.name}.json"
    if file.exists():
      points.append((f"after {phase.name}", json.loads(file.read_text())))
  points.append(("final", final))
  for key in json.loads(before.read_text()):
    values = ", ".join(f"{name} {values[key]:.3f}" for name, values in points if key in values)
    print(f"held-out {key}: {values}", file=sys.stderr)


def restore_trees(config, workdir: str, names: tuple[str, ...] = ("params",), step: int | None = None):
  """(task, {name: tree}, step) of a run's checkpoint (default its latest), restored onto this process's mesh as
  the loop lays them out: what an export or an offline evaluation of a finished (or interrupted) run needs."""
  mesh = sharding.make_mesh(config.mesh)
  task = get_task(config.task, config)
  rules = (*getattr(task, "logical_rules", ()), *sharding.DEFAULT_RULES)
  optimizers = task.optimizers()
  checkpointer = checkpoint_lib.Checkpointer(epath.Path(workdir) / "checkpoints", save_every=1, keep=None)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"workdir: {workdir} holds no checkpoint")
  with sharding.active(mesh, rules):
    boxed = jax.eval_shape(functools.partial(initial_state, task, optimizers), jax.random.key(0))
    shardings = sharding.logical_to_sharding(boxed, mesh, rules)
    abstract = checkpoint_lib.abstract_with_shardings(sharding.unbox(boxed), shardings)
    checkpointer.check_matches(step, abstract)
    state = checkpointer.restore(step, abstract)
  checkpointer.close()
  missing = [name for name in names if name not in state]
  if missing:
    raise ValueError(f"names: {missing} are not trees of the run's state (it has {sorted(state)})")
  return task, {name: state[name] for name in names}, step


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
