"""JAX's persistent compilation cache, on for every job and test: a restarted or resumed run, and the next test
process, reuse compiled programs from disk instead of compiling them again (seconds per program on a CPU).

The directory is `$JAXAGENTS_COMPILATION_CACHE` when set (an empty value turns the cache off), else
`~/.cache/jaxagents/xla`. Programs that compile in under `min_compile_seconds` are not stored.

The cache stays off in a CPU process with several (fake) devices: on XLA:CPU, jax 0.10.2 programs with collectives
loaded from the cache deadlocked in a "rendezvous" (an 8-device decode, a 4-device training step; compiled afresh
they ran fine). One-device CPU processes and accelerators use it.
"""

from __future__ import annotations

import os

import jax

ENV = "JAXAGENTS_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "jaxagents", "xla")


def enable(directory: str | None = None, *, min_compile_seconds: float = 0.5) -> str | None:
  """Points JAX's persistent cache at `directory` (default: see the module doc); returns it, or None when off
  (also on a multi-device CPU, see the module doc). Call it after `jax.distributed.initialize`.

  A cache directory set already (e.g. by `JAX_COMPILATION_CACHE_DIR`) is kept.
  """
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if directory is None:
    directory = os.environ.get(ENV, DEFAULT_DIR)
  if not directory:
    return None
  if jax.default_backend() == "cpu" and jax.local_device_count() > 1:
    return None
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
