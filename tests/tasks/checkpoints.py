"""Reading a job's checkpoints back in tests (the jobs run in subprocesses)."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def saved_state(workdir, step: int | None = None):
  """(step, state) of the checkpoint of `step` (default: the latest) in `workdir`/checkpoints, as host numpy
  arrays."""
  checkpoints = workdir / "checkpoints"
  step = step or max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  path = os.fspath(checkpoints / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
  return step, checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
