"""Trainable jobs, one file each, looked up by the config's `task` name."""

from __future__ import annotations

import importlib

from jaxagents.tasks.base import Task

# name -> "module:Class"; imported lazily so a job pulls in only what it needs.
TASKS = {
  "sorting_lm": "jaxagents.tasks.sorting_lm:SortingLM",
}


def get_task(name: str, config) -> Task:
  """Builds the task registered under `name` from its config."""
  if name not in TASKS:
    raise ValueError(f"task: unknown task {name!r}; registered tasks are {sorted(TASKS)}.")
  module_name, class_name = TASKS[name].split(":")
  return getattr(importlib.import_module(module_name), class_name)(config)
