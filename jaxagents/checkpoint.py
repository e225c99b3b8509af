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
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE = "state"
DATA = "data"


class CheckpointError(RuntimeError):
  """A checkpoint directory exists but cannot be restored (truncated, corrupt, or of another model)."""


class CheckpointMismatchError(CheckpointError):
  """An intact checkpoint (or workdir) written by another config: another model, optimizer or job."""


class Checkpointer:
  """Saves every `save_every` steps, keeps the newest `keep`, and restores state and data position together.

  Args:
    directory: where step directories go (local path or a `gs://` bucket).
    save_every: save when `step % save_every == 0` (and whenever `save(..., force=True)`).
    keep: how many checkpoints to keep (None: all; at least 1, or a rerun would find nothing to resume from).
    async_save: write arrays in a background thread while training continues.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int | None = 3,
               async_save: bool = True):
    if save_every <= 0:
      raise ValueError(f"save_every must be a positive number of steps, got {save_every}.")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
      # orbax deletes every checkpoint when max_to_keep is 0: the run would end with none and a rerun start over.
      raise ValueError(f"checkpoint.keep: expected None (keep all) or an integer >= 1, got {keep!r} "
                       f"(checkpoints in {directory}).")
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

  def check_matches(self, step: int, abstract_state: Any) -> None:
    """Raises `CheckpointMismatchError` unless the `state` saved at `step` has the tree paths, shapes and dtypes
    of `abstract_state`; reads only the checkpoint's metadata, never its arrays.

    Restoring a mismatched tree fails deep inside orbax's reader threads, after some arrays were read, with one
    traceback per array; this check names the differences first.
    """
    path = self.directory / str(step)
    try:
      handler = ocp.StandardCheckpointHandler()
      try:
        stored = handler.metadata(path / STATE)
      finally:
        handler.close()
    except Exception as error:  # a missing or unreadable _METADATA file: the step directory is damaged
      raise CheckpointError(
        f"Checkpoint at {path} could not be read ({type(error).__name__}: {error}). It may be truncated or "
        f"corrupt. Remove {path} to resume from the previous checkpoint (steps present: {self.all_steps()}), "
        f"or point --workdir elsewhere."
      ) from error
    differences = tree_differences(_leaf_signatures(stored), _leaf_signatures(abstract_state))
    if differences:
      raise CheckpointMismatchError(
        f"Checkpoint at {path} holds another train state than this config builds ({len(differences)} "
        f"differences; saved vs expected: {'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}). "
        f"It was written by another model, optimizer or job and is left as it is: rerun with the config that "
        f"wrote it, or point --workdir elsewhere."
      )

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores `state` shaped and sharded like `abstract_state`; sets `data_iterator` to the saved position.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with `.sharding` set (e.g. from
    `jax.eval_shape` plus the mesh shardings), so arrays are read directly into their shards. A checkpoint of
    another tree, shape or dtype raises `CheckpointMismatchError` before any array is read.
    """
    path = self.directory / str(step)
    self.check_matches(step, abstract_state)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax/tensorstore raise many types; all mean the same thing to a user.
      raise CheckpointError(
        f"Checkpoint at {path} could not be restored ({type(error).__name__}: {error}). Its tree, shapes and "
        f"dtypes match this config, so its files are likely truncated or corrupt. Remove {path} to resume from "
        f"the previous checkpoint (steps present: {self.all_steps()}), or point --workdir elsewhere."
      ) from error
    return restored[STATE]

  def wait(self) -> None:
    """Blocks until any background save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _leaf_signatures(tree: Any) -> dict[str, tuple[tuple[int, ...], str | None]]:
  """{"opt_state.1.0.mu.embed": (shape, dtype name)} for the array leaves of a state or of orbax's metadata of one.

  Paths are spelled the way orbax names saved arrays (dict keys, sequence indices and named-tuple fields alike),
  because the metadata tree has lists and dicts where the state has tuples and named tuples."""
  signatures = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
      dtype = None  # PRNG key arrays: orbax stores their raw data, whose dtype is not the key's
    signatures[".".join(names)] = (tuple(getattr(leaf, "shape", ())), None if dtype is None else np.dtype(dtype).name)
  return signatures


def tree_differences(saved: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
  """Readable differences between two `{path: (shape, dtype)}` maps: shape/dtype changes, then paths only one has."""
  lines = []
  for path in sorted(saved.keys() & expected.keys()):
    (saved_shape, saved_dtype), (shape, dtype) = saved[path], expected[path]
    if saved_shape != shape or (None not in (saved_dtype, dtype) and saved_dtype != dtype):
      lines.append(f"{path} {saved_dtype}{list(saved_shape)} vs {dtype}{list(shape)}")
  lines += [f"{path} only saved" for path in sorted(saved.keys() - expected.keys())]
  lines += [f"{path} expected, not saved" for path in sorted(expected.keys() - saved.keys())]
  return lines


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or abstract values) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_trees(workdir: str | os.PathLike, abstract_trees: dict[str, Any],
                  step: int | None = None) -> dict[str, Any]:
  """Named top-level trees of the train state saved by another run (a teacher, a base model): `abstract_trees`
  maps names to `jax.ShapeDtypeStruct` trees (with shardings) and the arrays are read straight into them.

  Reads `workdir`/checkpoints/<step> (default: the latest) and nothing else of that run; the saved trees must have
  the paths, shapes and dtypes of `abstract_trees` (other trees in the checkpoint are ignored), else
  `CheckpointMismatchError` names the differences before any array is read.
  """
  directory = epath.Path(workdir if "://" in os.fspath(workdir) else os.path.abspath(workdir)) / "checkpoints"
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []
  if not steps:
    raise CheckpointError(f"{directory}: no checkpoint to read {sorted(abstract_trees)} from (expected the "
                          f"workdir of a finished run).")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(f"{directory}: no checkpoint at step {step}; steps present: {steps}.")
  path = directory / str(step) / STATE
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(path).item_metadata.tree
  missing = sorted(set(abstract_trees) - set(stored))
  if missing:
    raise CheckpointMismatchError(f"{path} holds no {missing} (it holds {sorted(stored)}).")
  differences = tree_differences(_leaf_signatures({name: stored[name] for name in abstract_trees}),
                                 _leaf_signatures(abstract_trees))
  if differences:
    raise CheckpointMismatchError(
      f"{path} holds other trees than this config builds ({len(differences)} differences; saved vs expected: "
      f"{'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}): was it written by another model?")
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                             dtype=x.dtype), abstract_trees)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=abstract_trees, restore_args=restore_args,
                                                                    partial_restore=True))
  return {name: restored[name] for name in abstract_trees}
