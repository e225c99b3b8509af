"""Test-wide settings: CPU only, eight fake devices for the sharding tests, deterministic seeds, and one persistent
compilation cache for the one-device processes the tests launch (jobs, entry points), so a program compiled by one
test is read from disk by the next; the eight-device workers themselves run without it (`jaxagents.compilation_cache`
says why)."""

import os
import tempfile

# Must run before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# Subprocesses (the entry-point tests) inherit the variable; this process enables the cache below.
os.environ.setdefault("JAXAGENTS_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "jaxagents-tests-xla"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxagents import compilation_cache  # noqa: E402

compilation_cache.enable()


@pytest.fixture(autouse=True)
def _seed_numpy():
  np.random.seed(0)  # noqa: NPY002 (tests should use Generators; this pins any legacy global use)


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run tests marked slow (long learning runs; not part of the default CI suite)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
