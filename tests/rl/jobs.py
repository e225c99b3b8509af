"""Helpers shared by the RL job tests: load a shipped config, restore a run's latest checkpointed state."""

import importlib.util
import os

import jax

from jaxagents import checkpoint as checkpoint_lib
from jaxagents.rl import trainer

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load_config(name: str):
  """`configs/<name>.py`'s `get_config()`."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(_CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def latest_state(workdir, config) -> dict:
  """The latest checkpointed train state of the job `config` describes, restored onto the first device."""
  job = trainer.job_class(config.get("algorithm", "grpo"))(config)
  abstract = jax.eval_shape(job.init_state, jax.random.key(config.seed))
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", save_every=1, async_save=False)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = checkpointer.restore(checkpointer.latest_step(), checkpoint_lib.abstract_with_shardings(
    abstract, jax.tree.map(lambda _: device, abstract)))
  checkpointer.close()
  return state
