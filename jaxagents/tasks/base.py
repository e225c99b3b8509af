"""What a trainable job provides to the generic loop in `jaxagents.train`.

Data flows one way: config -> task (model + loss) -> loop -> checkpoints/metrics. A task knows its model,
data and loss; the loop owns jit, sharding, optimizer, checkpointing, logging and NaN detection.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

Params = Any
Batch = dict[str, Any]


class Task(Protocol):
  """The contract between a job and the train loop (all array functions must be jit-able and pure)."""

  def init_params(self, rng: jax.Array) -> Params:
    """Parameters with logical-axis metadata (boxed, as `Module.init` returns them)."""

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss to minimise and a dict of scalar metrics to log."""

  def train_source(self) -> Any:
    """Random-access source (`__len__`, `__getitem__`) of training records (dicts of numpy arrays)."""

  def evaluate(self, params: Params) -> dict[str, float]:
    """Held-out metrics for the current parameters (called by the loop every `eval_every` steps)."""
