"""Packed segments for `jaxagents.layers.attention.attention(packing=...)`: self-attention where tokens attend only
within their segment (ViT blocks per image, windows) without a [S, S] score matrix. The host groups the segments of
each sequence into R rows of W slots (a segment never split across rows); the tokens are gathered into those rows,
attention runs on [B * R, W] with a segment mask inside each row, and the outputs are gathered back. The cost is B R
W^2 instead of B S^2: linear in the number of segments where the dense mask is quadratic. On the tokens of a segment
it equals the dense call with `q_segment_ids = kv_segment_ids` = the segments (tokens in no segment output zeros),
as transformers' loop over `cu_seqlens` does (`Qwen2VisionTransformerPretrainedModel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SegmentPacking:
  """Where the tokens of a [B, S] sequence sit when its segments are packed into B x R rows of W slots.

  Built on the host (e.g. `jaxagents.models.qwen_vl.vision_layout.pack_segments`); leaves are numpy or jax.

  Attributes:
    token_index: [B, R, W] int, the token (in [0, S)) in each slot; any valid index at empty slots.
    segment_ids: [B, R, W] int, the segment of each slot (equal ids attend to each other); -1 at empty slots.
    slot_index: [B, S] int, the slot r * W + w of each token; -1 for a token in no segment (its output is 0).
  """

  token_index: Any
  segment_ids: Any
  slot_index: Any


def pack_tokens(x: jax.Array, token_index: jax.Array) -> jax.Array:
  """x [B, S, ...] -> [B * R, W, ...] gathered by token_index [B, R, W]."""
  batch, rows, width = token_index.shape
  flat = jax.vmap(lambda row, index: jnp.take(row, index, axis=0, mode="clip"))(
    x, token_index.reshape(batch, rows * width)
  )
  return flat.reshape(batch * rows, width, *x.shape[2:])


def unpack_tokens(packed: jax.Array, slot_index: jax.Array) -> jax.Array:
  """packed [B * R, W, ...] -> [B, S, ...] read back at slot_index [B, S]; zeros where slot_index < 0."""
  batch = slot_index.shape[0]
  flat = packed.reshape(batch, -1, *packed.shape[2:])
  out = jax.vmap(lambda row, index: jnp.take(row, index, axis=0, mode="clip"))(flat, jnp.maximum(slot_index, 0))
  valid = (slot_index >= 0).reshape(*slot_index.shape, *(1,) * (out.ndim - 2))
  return jnp.where(valid, out, jnp.zeros((), out.dtype))


def validate_packing(q, k, packing, *, causal, mask_kwargs) -> None:
  """Raises a ValueError naming the argument unless `packing` fits self-attention of q [B, S, ...] on k."""
  if not isinstance(packing, SegmentPacking):
    raise _error("packing", "a SegmentPacking", type(packing).__name__)
  if q.shape[1] != k.shape[1]:
    raise _error("k", f"length S={q.shape[1]} like q with `packing` (self-attention)", k.shape)
  given = [name for name, value in mask_kwargs.items() if value is not None]
  if causal or given:
    raise _error(
      "packing", "used without causal or other masks (its segments are the mask)", f"causal={causal} and {given}"
    )
  token_index, segment_ids, slot_index = (
    jnp.asarray(x) for x in (packing.token_index, packing.segment_ids, packing.slot_index)
  )
  batch, length = q.shape[:2]
  if token_index.ndim != 3 or token_index.shape[0] != batch or segment_ids.shape != token_index.shape:
    raise _error(
      "packing.token_index / segment_ids",
      f"equal shapes [B={batch}, R, W]",
      f"{token_index.shape} and {segment_ids.shape}",
    )
  if slot_index.shape != (batch, length):
    raise _error("packing.slot_index", f"shape [B, S] = {(batch, length)}", slot_index.shape)
  for name, x in (("token_index", token_index), ("segment_ids", segment_ids), ("slot_index", slot_index)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise _error(f"packing.{name}", "an integer array", x.dtype)


def _error(name: str, expected: str, actual: Any) -> ValueError:
  return ValueError(f"attention: `{name}` must be {expected}, got {actual}")
