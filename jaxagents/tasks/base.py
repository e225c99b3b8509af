"""What a trainable job gives the one loop in `jaxagents.train`: phases, named parameter sets, optimizers, data.

Data flows one way: config -> task -> loop -> checkpoints, metrics, samples. A task knows its models, data, losses
and rollouts; the loop owns the mesh, sharded initialisation, jit and donation, data order, checkpoints, NaN checks,
logging and evaluation cadence. It names no model family and no algorithm.

A job is a sequence of `Phase`s ("sft" -> "rl"; "teacher" -> "sft" -> "distill"). Its train state is a dict of named
parameter trees (`params`, `ref_params`, `teacher_params`, ...) plus one optimizer state per named `Optimizer`, all
created at the start, so a checkpoint has the same structure in every phase. Per step of a phase the loop draws a
batch of records from `task.source(phase)`, calls `task.prepare` (host code under the mesh: rollouts, rewards,
reference log-probs), then the jitted `task.update` `phase.updates_per_batch` times.

The simple case stays simple: a task with a `loss(params, batch, rng, phase)` and no `update` gets `loss_update`,
one optimizer named "main" over `params`, and the default phase (`single_phase`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import optax

State = dict[str, Any]
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a job.

  Attributes:
    name: used in metric file names (`after_<name>.json`) and progress bars.
    steps: loop steps in this phase (each one batch of records, `updates_per_batch` updates).
    batch_size: records per step, over all hosts.
    optimizer: the `Optimizer` (by name) whose parameters this phase trains.
    updates_per_batch: optimizer updates on each prepared batch (PPO-style epochs over a rollout batch).
    eval_every: evaluate every this many steps of the job (None: `config.eval_every`; 0: only at the end).
    evaluate_at_end: evaluate when the phase ends (and write `after_<name>.json` when a phase follows).
  """

  name: str
  steps: int
  batch_size: int
  optimizer: str = "main"
  updates_per_batch: int = 1
  eval_every: int | None = None
  evaluate_at_end: bool = True

  def __post_init__(self):
    for field in ("steps", "batch_size", "updates_per_batch"):
      value = getattr(self, field)
      minimum = 0 if field == "steps" else 1
      if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"phase {self.name!r}: {field} must be an integer >= {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation and the state entry (a parameter tree) it updates.

  Frozen subtrees are the transformation's business (`optax.multi_transform` with `optax.set_to_zero()`).
  `schedule`, when given, is logged as `learning_rate` (as a function of the optimizer's own update count).
  """

  tx: optax.GradientTransformation
  params: str = "params"
  schedule: Callable[[Any], Any] | None = None


class Task(Protocol):
  """The contract between a job and the loop. Array functions must be pure and jit-able; `prepare`, `evaluate`
  and `write_samples` are host code that may call jitted functions. Optional methods are marked so."""

  phases: Sequence[Phase]
  logical_rules: Sequence[tuple[str, Any]]  # added to `sharding.DEFAULT_RULES` (optional; default none)

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Named parameter trees with logical-axis metadata (boxed, as `Module.init` returns them)."""

  def optimizers(self) -> dict[str, Optimizer]:
    """Optimizers by name; each one's state is created at the start and kept in the train state."""

  def source(self, phase: Phase) -> Any:
    """Random-access source of this phase's records (dicts of numpy arrays), read through grain."""

  def evaluate(self, state: State, step: int) -> dict[str, float]:
    """Held-out metrics (called on every host; only process 0 writes them)."""


# Optional methods, looked up with getattr by the loop:
#   prepare(state, records, rng, phase) -> (batch, host_metrics)   default: (records, {})
#   update(state, batch, rng, phase) -> (state, metrics)            default: `loss_update(task.loss, ...)`
#   loss(params, batch, rng, phase) -> (loss, metrics)              for `loss_update`
#   begin_phase(state, phase) -> state                              jitted; at a phase's first step (e.g. freeze
#                                                                   the reference policy)
#   pretrained(abstract_state) -> {name: params} | None             weights restored into the born-sharded shells
#   write_samples(state, workdir, step) -> None                     PNG grids, GIFs, next to the metrics
#   dataset(phase, *, seed, shard_index, shard_count) -> grain.IterDataset
#                                                                   this host's batches, when the task batches its
#                                                                   own records (aspect-ratio buckets: one shape and
#                                                                   its own batch size per step); its iterator must
#                                                                   support get_state/set_state. Default:
#                                                                   `make_pipeline(source(phase), batch_size, ...)`
#   resumable(step) -> Sequence[str]                                config fields (or prefixes) that may differ
#                                                                   from the workdir's on resuming at `step`
#   plot_keys: Sequence[str]                                        curves in the final plot
#   summary_keys: Sequence[str]                                     held-out metrics printed at the end


def single_phase(config) -> tuple[Phase, ...]:
  """The default phase of a one-loss job: `config.total_steps` steps of `config.batch_size` records."""
  return (Phase("train", config.total_steps, config.batch_size),)


def apply_gradients(state: State, grads: Any, name: str, optimizer: Optimizer, **extra_args: Any) -> State:
  """One optimizer step of `optimizer` (named `name`) on `state[optimizer.params]` with `grads`."""
  params = state[optimizer.params]
  updates, opt_state = optimizer.tx.update(grads, state["opt_state"][name], params, **extra_args)
  return {**state, optimizer.params: optax.apply_updates(params, updates),
          "opt_state": {**state["opt_state"], name: opt_state}}


def loss_update(loss: Callable, optimizers: dict[str, Optimizer]) -> Callable:
  """The update of a task that only defines `loss(params, batch, rng, phase) -> (loss, metrics)`."""

  def update(state: State, batch: Any, rng: jax.Array, phase: Phase) -> tuple[State, Metrics]:
    optimizer = optimizers[phase.optimizer]
    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state[optimizer.params], batch, rng, phase)
    state = apply_gradients(state, grads, phase.optimizer, optimizer)
    return state, {**metrics, "loss": value, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(state[optimizer.params])}

  return update


def phase_starts(phases: Sequence[Phase]) -> list[int]:
  """The global step before each phase's first step: [0, steps_0, steps_0 + steps_1, ...] (one more than phases)."""
  starts = [0]
  for phase in phases:
    starts.append(starts[-1] + phase.steps)
  return starts


def phase_index(phases: Sequence[Phase], step: int) -> int:
  """The index of the phase that runs global step `step` (1-based, as the loop counts); the last phase past the end."""
  starts = phase_starts(phases)
  for index in range(len(phases)):
    if starts[index] < step <= starts[index + 1]:
      return index
  return len(phases) - 1
