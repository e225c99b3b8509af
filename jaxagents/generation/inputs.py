"""What generation needs from a batch of prompts (`PromptBatch`), and `TokenInputs`, the batch of a plain decoder.

`generate`, `completion_logprobs` and `rollout` never look inside a model's inputs: a batch knows the positional
arguments of its model's call (`model_args`), those of a one-token decode step (`decode_args`), how to move its
rows to left padding (`left_padded`), how to repeat its rows into groups (`repeat`) and how to append sampled
completions (`with_completions`). Qwen-VL's `ModelInputs` (M-RoPE positions, vision inputs) implements the same
protocol as `TokenInputs` below (1-D positions, text only).

Layout: prompts are left-padded to a common length L in the decode loop, so that every row writes its next token
to the same cache slot (as the prompt batches of vLLM and transformers' `generate` for decoder-only models). Rows
roll to that layout inside `jit` (`layers.padding.roll_to_left_padding`, numpy or jax arrays alike), so a global,
sharded batch never has to come back to the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Self, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.padding import array_module, completion_layout, roll_to_left_padding


@runtime_checkable
class PromptBatch(Protocol):
  """A batch of B prompt rows of length L for a decoder (leaves numpy or jax arrays; a registered pytree).

  Attributes:
    input_ids: [B, L] int token ids, left- or right-padded.
    attention_mask: [B, L], 1 (True) at real tokens.
  """

  input_ids: Any
  attention_mask: Any

  def model_args(self) -> tuple:
    """The positional arguments of the model's call on these rows (prefill, scoring, training)."""
    ...

  def decode_args(self, tokens: jax.Array, step: jax.Array) -> tuple:
    """The positional arguments of decode step `step` (0: the first generated token), feeding tokens [B, 1].

    Traced inside the decode loop; positions continue each row's prompt: the token generated at step s sits
    1 + s after the prompt's last position.
    """
    ...

  def left_padded(self) -> Self:
    """The same rows rolled so that each row's last real token is in the last column (jit-safe)."""
    ...

  def repeat(self, n: int) -> Self:
    """Every row repeated n times consecutively (a group of n samples per prompt)."""
    ...

  def with_completions(self, tokens: Any, lengths: Any, pad_id: int) -> tuple[Self, Any]:
    """Prompt + completion rows [B, L + T] and completion_mask [B, L + T] (bool, True at the first lengths[b]
    completion tokens); completion t of row b gets the position a decode step s = t gave it."""
    ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenInputs:
  """Prompts of a plain decoder (`CausalLM`): input_ids / attention_mask / positions [B, L] (1-D RoPE positions).

  Its model call is `model(input_ids, positions, attention_mask)`. Build one with `TokenInputs.from_ids`, which
  numbers each row's real tokens 0, 1, ... (padding at 0), so a prompt's positions do not depend on its padding.
  """

  input_ids: Any
  attention_mask: Any
  positions: Any

  @classmethod
  def from_ids(cls, input_ids: Any, attention_mask: Any | None = None) -> TokenInputs:
    """Positions counted over the real tokens of each row (attention_mask default: all ones)."""
    host = lambda x: x if isinstance(x, jax.Array) else np.asarray(x)
    input_ids = host(input_ids)
    xp = array_module(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids: expected [B, L], got {input_ids.shape}")
    attention_mask = xp.ones(input_ids.shape, np.int32) if attention_mask is None else host(attention_mask)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask: expected {input_ids.shape} like input_ids, got {attention_mask.shape}")
    mask = attention_mask.astype(bool)
    positions = xp.where(mask, xp.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return cls(input_ids, attention_mask, positions)

  def _check(self):
    if self.input_ids.ndim != 2 or self.attention_mask.shape != self.input_ids.shape:
      raise ValueError(f"TokenInputs: expected input_ids and attention_mask [B, L], got {self.input_ids.shape} and "
                       f"{self.attention_mask.shape}")
    if self.positions.shape != self.input_ids.shape:
      raise ValueError(f"TokenInputs.positions: expected [B, L] = {self.input_ids.shape}, got {self.positions.shape}")

  # The `PromptBatch` methods (see there).

  def model_args(self) -> tuple:
    """`CausalLM.__call__(tokens, positions, mask)` arguments."""
    self._check()
    return self.input_ids, self.positions, self.attention_mask

  def decode_base(self) -> Any:
    """[B] the position of each row's last real token (-1 for an empty row: its first token sits at 0)."""
    xp = array_module(self.positions, self.attention_mask)
    return xp.max(xp.where(self.attention_mask.astype(bool), self.positions, -1), axis=1)

  def decode_args(self, tokens: jax.Array, step: jax.Array) -> tuple:
    """Tokens [B, 1] at position decode_base + 1 + step (the mask is unused with a cache: `kv_mask` is)."""
    self._check()
    positions = (self.decode_base() + 1 + step)[:, None].astype(jnp.int32)
    return tokens, positions, jnp.ones(tokens.shape, bool)

  def left_padded(self) -> TokenInputs:
    self._check()
    attention_mask, input_ids, positions = roll_to_left_padding(self.attention_mask, self.input_ids, self.positions)
    return TokenInputs(input_ids, attention_mask, positions)

  def repeat(self, n: int) -> TokenInputs:
    if n < 1:
      raise ValueError(f"repeat: n must be >= 1, got {n}")
    return jax.tree.map(lambda x: array_module(x).repeat(x, n, axis=0), self)

  def with_completions(self, tokens: Any, lengths: Any, pad_id: int) -> tuple[TokenInputs, Any]:
    self._check()
    if array_module(self.input_ids) is np:
      tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    xp = array_module(self.input_ids, tokens, lengths)
    prompts = self.left_padded()
    tokens, valid = completion_layout(tokens, lengths, pad_id)
    if tokens.shape[0] != self.input_ids.shape[0]:
      raise ValueError(f"tokens: expected {self.input_ids.shape[0]} rows like the prompts, got {tokens.shape[0]}")
    steps = xp.arange(tokens.shape[1])[None, :]
    positions = xp.where(valid, prompts.decode_base()[:, None] + 1 + steps, 0).astype(np.int32)
    inputs = TokenInputs(
      xp.concatenate([prompts.input_ids, tokens.astype(prompts.input_ids.dtype)], axis=1),
      xp.concatenate([prompts.attention_mask, valid.astype(prompts.attention_mask.dtype)], axis=1),
      xp.concatenate([prompts.positions.astype(np.int32), positions], axis=1),
    )
    completion_mask = xp.concatenate([xp.zeros(prompts.input_ids.shape, bool), valid], axis=1)
    return inputs, completion_mask
