"""The shipped job configs, loaded as `python -m jaxagents.train --config configs/<name>.py:<arg>` loads them."""

import importlib.util
import os

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load(name: str, arg: str | None = None):
  """`configs/<name>.py`'s `get_config(arg)`."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(_CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
