"""Gradient accumulation over micro-batches of one prepared batch, inside the jitted update (`lax.scan`).

A rollout batch of P prompts x G samples is too big to differentiate at once at real sizes (activations grow with
rows x tokens). `accumulated_grads` splits it into `count` micro-batches and scans over them, so the update holds
one micro-batch's activations. Micro-batch k takes the prompts p = k (mod count) with all their rows: with rows
laid out prompt-major and sharded contiguously over the devices, each device keeps its own rows (no communication
when `count` divides its prompts), a group never straddles micro-batches, and a row's prompt index p becomes p //
count (`ModelInputs.row_prompt`), so the vision tower runs once per prompt per micro-batch.

Exactness: each micro-batch's loss is normalised by the whole batch's counts (`totals`: its completion tokens and
non-empty rows, what `grpo.grpo_loss` takes as `global_token_count` / `global_seq_count`), so the micro-batch losses
and gradients sum to the whole batch's for every aggregation. Metrics: `loss` and `num_*` are summed, `*_max` /
`*_min` take the max / min, the rest the token-weighted mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxagents.models.qwen_vl.inputs import ModelInputs


def _split(x: jax.Array, count: int, group: int, axis: int) -> jax.Array:
  """[.., P * group, ..] (axis `axis`) -> [count, .., P / count * group, ..]: micro k holds prompts p = k mod count."""
  shape = x.shape
  prompts = shape[axis] // group
  x = x.reshape(*shape[:axis], prompts // count, count, group, *shape[axis + 1:])
  x = jnp.moveaxis(x, axis + 1, 0)
  return x.reshape(count, *shape[:axis], prompts // count * group, *shape[axis + 1:])


def split_inputs(inputs: ModelInputs, count: int, group: int) -> ModelInputs:
  """`ModelInputs` of P prompts x `group` rows -> the same with a leading [count] axis on every field."""
  rows = lambda x, axis=0: _split(x, count, group, axis)  # noqa: E731
  vision = None if inputs.vision is None else jax.tree.map(lambda x: _split(x, count, 1, 0), inputs.vision)
  row_prompt = None if inputs.row_prompt is None else rows(inputs.row_prompt // count)
  return dataclasses.replace(inputs, input_ids=rows(inputs.input_ids), attention_mask=rows(inputs.attention_mask),
                             positions=rows(inputs.positions, 1), decode_base=rows(inputs.decode_base, 1),
                             vision=vision, row_prompt=row_prompt)


def split_batch(batch: dict[str, Any], count: int, group: int) -> dict[str, Any]:
  """A batch {"inputs": ModelInputs, <row arrays [B, ...]>} -> each entry with a leading [count] axis."""
  prompts = batch["inputs"].input_ids.shape[0] // group
  if batch["inputs"].input_ids.shape[0] % group or prompts % count:
    raise ValueError(f"micro_batches: {count} must divide the batch's {prompts} prompts (rows "
                     f"{batch['inputs'].input_ids.shape[0]}, group {group}).")
  return {key: split_inputs(value, count, group) if key == "inputs" else _split(value, count, group, 0)
          for key, value in batch.items()}


def batch_totals(completion_mask: jax.Array) -> dict[str, jax.Array]:
  """The whole batch's completion tokens and non-empty rows, from its mask [B, L]."""
  mask = jnp.asarray(completion_mask, jnp.float32)
  return {"tokens": mask.sum(), "sequences": jnp.any(mask > 0, axis=-1).sum().astype(jnp.float32)}


def accumulated_grads(loss_fn: Callable, params: Any, batch: dict[str, Any], *, count: int, group: int
                      ) -> tuple[Any, dict[str, jax.Array]]:
  """(grads, metrics) of `loss_fn(params, piece, totals) -> (loss, metrics)` summed over `count` micro-batches
  (module docstring). With count 1 the whole batch is `piece` and `totals` is None (the loss counts its own)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if count == 1:
    (_, metrics), grads = grad_fn(params, batch, None)
    return grads, metrics
  totals = batch_totals(batch["completion_mask"])
  micro = split_batch(batch, count, group)

  def step(grad_sum, piece):
    (_, metrics), grads = grad_fn(params, piece, totals)
    weight = jnp.asarray(piece["completion_mask"], jnp.float32).sum() / jnp.maximum(totals["tokens"], 1.0)
    return jax.tree.map(jnp.add, grad_sum, grads), (metrics, weight)

  grads, (metrics, weights) = jax.lax.scan(step, jax.tree.map(jnp.zeros_like, params), micro)
  return grads, {key: _combine(key, values, weights) for key, values in metrics.items()}


def _combine(key: str, values: jax.Array, weights: jax.Array) -> jax.Array:
  if key.endswith("_max"):
    return jnp.max(values)
  if key.endswith("_min"):
    return jnp.min(values)
  if key.startswith("num_") or key in ("tokens", "loss", "pg_loss", "kl_loss", "sft/loss"):
    return jnp.sum(values)
  return jnp.sum(values * weights)
