"""What a workdir records about its run, for every train loop: the config its checkpoints were written under, and
the summary of a finished run.

A workdir's checkpoints continue one run. Before resuming (or reporting a finished run), a loop compares the config
it was given with `config.json`, the one the checkpoints were written under (`check_config`), and only then writes
its own (`write_config`); each loop names the fields that may change on resume (logging, checkpoint cadence and the
like), everything else must match. A finished run's summary is `final_metrics.json`; when a run was killed after its
last checkpoint but before writing it, `summary` rebuilds it from `metrics.jsonl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from etils import epath

from jaxagents import metrics as metrics_lib
from jaxagents.checkpoint import CheckpointMismatchError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "final_metrics.json"
_SHOWN_DIFFERENCES = 5


def config_fields(config) -> dict[str, Any]:
  """The config as {"dotted.field": value}, through the same JSON that `write_config` stores (tuples as lists)."""
  return _flatten(json.loads(config.to_json_best_effort()))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  fields = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      fields.update(_flatten(value, name + "."))
    else:
      fields[name] = value
  return fields


def _may_change(field: str, may_change: Sequence[str]) -> bool:
  return any(field == name or field.startswith(name + ".") for name in may_change)


def check_config(workdir: str | os.PathLike, config, *, step: int, may_change: Sequence[str] = ()
                 ) -> dict[str, tuple[Any, Any]]:
  """Refuses to go on with the checkpoints of `workdir` (latest `step`) under a config that differs from its
  `config.json` in a field outside `may_change` (a field name, or a prefix such as "checkpoint" for all of
  `checkpoint.*`); returns the fields that did change, {field: (stored, now)}.

  Raises `CheckpointMismatchError` naming the workdir and the first differing fields; nothing is written. A workdir
  without `config.json` (written by an older version) passes: the checkpoint's structure check still applies.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return {}
  stored = _flatten(json.loads(path.read_text()))
  now = config_fields(config)
  absent = "<absent>"
  changed = {field: (stored.get(field, absent), now.get(field, absent)) for field in sorted(stored.keys() | now.keys())
             if stored.get(field, absent) != now.get(field, absent)}
  refused = [field for field in changed if not _may_change(field, may_change)]
  if refused:
    shown = "; ".join(f"{field}: {changed[field][0]!r} there, {changed[field][1]!r} now"
                      for field in refused[:_SHOWN_DIFFERENCES])
    more = f" and {len(refused) - _SHOWN_DIFFERENCES} more" if len(refused) > _SHOWN_DIFFERENCES else ""
    raise CheckpointMismatchError(
      f"{workdir} holds the checkpoints (latest step {step}) of a run with another config, {path}: {shown}{more}. "
      f"Resuming would continue that run under a different one, so nothing was changed. Point --workdir elsewhere, "
      f"or rerun with the config in {path} (only {', '.join(may_change) or 'nothing'} may change on resume)."
    )
  return changed


def describe_changes(changed: Mapping[str, tuple[Any, Any]]) -> str:
  """A resume message's note on the fields that changed, " (with checkpoint.keep 2 -> 3)"; "" when none did."""
  if not changed:
    return ""
  return " (with " + ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in changed.items()) + ")"


def write_config(workdir: str | os.PathLike, config) -> None:
  """Stores `config` as the workdir's `config.json` (process 0; only when it differs, so that a resume with the
  same config leaves the file untouched while other hosts may be reading it)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  text = config.to_json_best_effort(indent=2)
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


def summary_from_metrics(workdir: str | os.PathLike) -> dict[str, float]:
  """The last logged value of every metric of the run in `workdir` (what the loops collect as their final
  metrics), from `metrics.jsonl`; the before-training evaluation at step 0 is not part of a summary."""
  final: dict[str, float] = {}
  for record in metrics_lib.read_metrics(epath.Path(workdir) / metrics_lib.METRICS_FILE):
    if record["step"] > 0:
      final.update({key: value for key, value in record.items() if key != "step"})
  return final


def summary(workdir: str | os.PathLike, *, extra: Mapping[str, float] | None = None) -> dict[str, float]:
  """The final metrics of the finished run in `workdir`: its `final_metrics.json`, or, when the run was killed
  between its last checkpoint and writing that file, `summary_from_metrics` plus `extra` (written, then returned)."""
  path = epath.Path(workdir) / SUMMARY_FILE
  if path.exists():
    return json.loads(path.read_text())
  if not (epath.Path(workdir) / metrics_lib.METRICS_FILE).exists():
    if jax.process_index() != 0:
      return {}  # only process 0 writes metrics: another host's local workdir has none to rebuild from
    raise FileNotFoundError(f"{workdir} holds a finished run but neither its {SUMMARY_FILE} nor the "
                            f"{metrics_lib.METRICS_FILE} to rebuild it from.")
  final = {**summary_from_metrics(workdir), **(extra or {})}
  if jax.process_index() == 0:
    path.write_text(json.dumps(final, indent=2))
  return final
