"""Trainable jobs, one file each, looked up by the config's `task` name: the only job registry."""

from __future__ import annotations

import importlib

from jaxagents.tasks.base import Optimizer, Phase, Task

# name -> "module:Class"; imported lazily so a job pulls in only what it needs.
TASKS = {
  "sorting_lm": "jaxagents.tasks.sorting_lm:SortingLM",
  "vlm_sft": "jaxagents.tasks.vlm_sft:VLMSFT",
  "checkpoint_sft": "jaxagents.tasks.vlm_sft:CheckpointSFT",
  "checkpoint_grpo": "jaxagents.tasks.checkpoint_grpo:CheckpointGRPO",
  "grpo": "jaxagents.tasks.grpo:GRPO",
  "onpolicy_distill": "jaxagents.tasks.onpolicy_distill:OnPolicyDistill",
  "text_to_image": "jaxagents.tasks.text_to_image:TextToImage",
  "dynavid": "jaxagents.tasks.dynavid:DynaVid",
  "gui_grounding": "jaxagents.tasks.gui_grounding:GUIGrounding",
  "agentic_rl": "jaxagents.tasks.agentic_rl:AgenticRL",
}

__all__ = ["TASKS", "Optimizer", "Phase", "Task", "get_task"]


def get_task(name: str, config) -> Task:
  """Builds the task registered under `name` from its config."""
  if name not in TASKS:
    raise ValueError(f"config.task: unknown task {name!r}; registered tasks are {sorted(TASKS)}.")
  module_name, class_name = TASKS[name].split(":")
  return getattr(importlib.import_module(module_name), class_name)(config)
