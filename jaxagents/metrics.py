"""Metrics a person can read and look at: JSONL (always), TensorBoard (when installed), PNG curves.

Only process 0 writes; other hosts get a writer that does nothing, so callers never branch on the host.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends `{"step": s, **scalars}` lines to `workdir/metrics.jsonl` and TensorBoard events.

  The JSONL file is appended to, so a resumed run continues the same file; `read_metrics` keeps the last
  record per step, so steps repeated after a crash are not counted twice. `workdir` may be a bucket path
  (`gs://...`, through `etils.epath`): object stores cannot append, so there the file is rewritten whole on
  each write (logging is infrequent and the file small).
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self.path = epath.Path(workdir) / METRICS_FILE
    self._local = _is_local(workdir)
    self._lines: list[str] = []
    self._file = None
    self._tb = None
    if not self._active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self._local:
      self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
    elif self.path.exists():
      self._lines = self.path.read_text().splitlines(keepends=True)
    if tensorboard:
      try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
      except ImportError:  # TensorBoard is optional: JSONL is the record of truth.
        EventFileWriter = None
      if EventFileWriter is not None:
        self._tb = EventFileWriter(os.fspath(self.path.parent / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    record = {"step": int(step), **{key: float(value) for key, value in scalars.items()}}
    line = json.dumps(record) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))
    if self._tb is not None:
      from tensorboard.compat.proto.event_pb2 import Event
      from tensorboard.compat.proto.summary_pb2 import Summary

      values = [Summary.Value(tag=key, simple_value=float(value)) for key, value in scalars.items()]
      self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def _is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
  """Records of a metrics.jsonl file, one per step (the last written wins), sorted by step."""
  by_step: dict[int, dict[str, float]] = {}
  for line in epath.Path(path).read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      by_step[record["step"]] = {**by_step.get(record["step"], {}), **record}
  return [by_step[step] for step in sorted(by_step)]


def plot_curves(records: Sequence[Mapping[str, float]], keys: Sequence[str], path: str | os.PathLike,
                *, title: str = "") -> None:
  """Writes one PNG with a panel per metric key (steps on x); keys absent from every record are skipped."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [key for key in keys if any(key in r for r in records)]
  if not keys:
    return
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    points = [(r["step"], r[key]) for r in records if key in r]
    ys = [p[1] for p in points]
    ax.plot([p[0] for p in points], ys, marker="." if len(points) < 40 else None)
    if min(ys) > 0 and max(ys) > 100 * min(ys):  # losses that fall by orders of magnitude read better in log
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # local or bucket path alike
    fig.savefig(f, dpi=110, format="png")
  plt.close(fig)
