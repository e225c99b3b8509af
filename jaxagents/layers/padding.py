"""Row layouts of batched sequences for a KV cache with one write slot per step (`kv_cache`): left padding and
appended completions.

A decode step writes every row's token to the same cache slot, so prompts must end in the same column: left
padding (as the prompt batches of vLLM and transformers' `generate` for decoder-only models). These functions move
rows to that layout and append sampled completions to it. They take numpy or jax arrays alike (`array_module`):
host batches stay on the host, and global (sharded) arrays or tracers are rolled on the devices, inside `jit`.
Shared by the models' input batches and by `jaxagents.generation`, which must not import each other.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def array_module(*arrays):
  """numpy for host arrays (the result stays on the host), jax.numpy as soon as one is a jax array or tracer."""
  return np if all(isinstance(a, np.ndarray | np.generic | int) for a in arrays) else jnp


def left_padding_shift(attention_mask: Any) -> Any:
  """[B] int: how far each row of attention_mask [B, L] must move right for its last real token to end the row.

  Rows without any real token do not move.
  """
  xp = array_module(attention_mask)
  valid = attention_mask.astype(bool)
  trailing_pads = xp.argmax(valid[:, ::-1], axis=1)  # 0 for a row that already ends with a real token
  return xp.where(valid.any(axis=1), trailing_pads, 0).astype(np.int32)


def roll_rows(x: Any, shift: Any) -> Any:
  """x [..., B, L] with row b rolled right by shift[b] along the last axis: out[..., b, c] = x[..., b, c - shift[b]].

  Rolling keeps each row's tokens in order and rows in order, so anything that reads tokens in row-major order
  (Qwen-VL's vision feature scatter) sees them in the same order.
  """
  xp = array_module(x, shift)
  length = x.shape[-1]
  columns = (xp.arange(length)[None, :] - shift[:, None]) % length
  columns = xp.broadcast_to(columns, x.shape)
  return xp.take_along_axis(x, columns, axis=-1)


def roll_to_left_padding(attention_mask: Any, *rows: Any) -> tuple:
  """Rolls attention_mask [B, L] and every array of `rows` ([..., B, L]) to left padding; returns them in order."""
  shift = left_padding_shift(attention_mask)
  return tuple(roll_rows(x, shift) for x in (attention_mask, *rows))


def completion_layout(tokens: Any, lengths: Any, pad_id: int) -> tuple[Any, Any]:
  """(tokens [B, T] with pad_id after each row's length, valid [B, T] bool: True at the first lengths[b])."""
  xp = array_module(tokens, lengths)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(f"tokens / lengths: expected [B, T] and [B], got {tokens.shape} and {lengths.shape}")
  valid = xp.arange(tokens.shape[1])[None, :] < lengths[:, None]
  return xp.where(valid, tokens, pad_id).astype(np.int32), valid
