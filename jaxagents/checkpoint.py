"""Checkpoints: train state and data-iterator state, saved together, atomically, with orbax.

A checkpoint is one orbax step directory holding two items: `state` (params, optimizer state, step; any
pytree of `jax.Array`s, restored straight into the sharded layout the caller asks for) and `data` (the grain
iterator state, one JSON file per process). Orbax writes each step into a temporary directory and renames it
when complete, so a run killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

STATE = "state"
DATA = "data"


class CheckpointError(RuntimeError):
  """A checkpoint directory exists but cannot be restored (truncated, corrupt, or of another model)."""


class Checkpointer:
  """Saves every `save_every` steps, keeps the newest `keep`, and restores state and data position together.

  Args:
    directory: where step directories go (local path or a `gs://` bucket).
    save_every: save when `step % save_every == 0` (and whenever `save(..., force=True)`).
    keep: how many checkpoints to keep (None: all).
    async_save: write arrays in a background thread while training continues.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int | None = 3,
               async_save: bool = True):
    if save_every <= 0:
      raise ValueError(f"save_every must be a positive number of steps, got {save_every}.")
    if "://" not in os.fspath(directory):
      directory = os.path.abspath(directory)  # orbax requires absolute paths; users type relative ones
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every,
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any | None = None, *, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save was started."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores `state` shaped and sharded like `abstract_state`; sets `data_iterator` to the saved position.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with `.sharding` set (e.g. from
    `jax.eval_shape` plus the mesh shardings), so arrays are read directly into their shards.
    """
    path = self.directory / str(step)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax/tensorstore raise many types; all mean the same thing to a user.
      raise CheckpointError(
        f"Checkpoint at {path} could not be restored ({type(error).__name__}: {error}). It may be truncated "
        f"or corrupt, or written by a different model/config. Remove {path} to resume from the previous "
        f"checkpoint (steps present: {self.all_steps()}), or point --workdir elsewhere."
      ) from error
    return restored[STATE]

  def wait(self) -> None:
    """Blocks until any background save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or abstract values) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
