"""What every benchmark shares: median wall-clock timing after a warm-up, table cells, and the printed/JSON report."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

# What a benchmark configuration that cannot run on this device raises: a backend refusing (NotImplementedError), XLA
# running out of memory or failing to compile (JaxRuntimeError), the host running out of memory. Such a row is
# reported as skipped, not a failure of the whole table.
SKIPPABLE = (NotImplementedError, jax.errors.JaxRuntimeError, MemoryError)


def skip_reason(error: Exception) -> str:
  """"skipped: <type>: <message>" on one line (a table cell), the message cut at 240 characters."""
  message = " ".join(line.strip() for line in str(error).splitlines())
  return f"skipped: {type(error).__name__}: {message[:240]}"


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of `repeats` calls of `fn` after one warm-up (compile) call, each ended by `block_until_ready`."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def cell(value: float | None, spec: str) -> str:
  """A table cell: `format(value, spec)`, or "n/a" for a quantity this device or run does not have."""
  return "n/a" if value is None else format(value, spec)


def publish(rows: list[dict], format_table: Callable[[list[dict], str], str], args: Any, out: str | None) -> None:
  """Prints the table for the first device and, with `out`, writes {device, args, rows} as JSON."""
  device = jax.devices()[0]
  print(format_table(rows, f"{device.device_kind} (jax {jax.__version__})"))
  if out:
    with open(out, "w") as f:
      json.dump({"device": device.device_kind, "args": vars(args), "rows": rows}, f, indent=2)
