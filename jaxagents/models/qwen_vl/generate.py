"""Batched prefill + decode for `QwenVL` under one `jax.jit`: preallocated KV cache, static shapes, one compile.

Design: prompts are **left-padded** to a common length L (`generate` rolls
right-padded rows into that layout), so every row writes its
next token to the same cache slot L + s. The prefill runs the vision tower once and fills slots [0, L); each
decode step feeds one token per row at slot L + s with M-RoPE position `decode_base + 1 + s` on all three axes
(`positions.rope_index` returns `decode_base`; it lives in the loop state, never on the module, so batches of
any composition are safe). The decode loop is a `lax.while_loop` over a fixed-size state, so the step is
compiled once as part of `generate` and never per token.

Sampling works on float32 logits: greedy when `temperature == 0`, else `softmax(logits / temperature)`
restricted by top-k and top-p (nucleus, Holtzman et al. 2020, arXiv 1904.09751). Each chosen token's log-prob
is returned under the distribution it was drawn from (greedy: the untempered `log_softmax`). Rows stop at any
of `eos_ids`; later slots hold `pad_id` with log-prob 0, and `lengths` counts tokens up to and including the
stop token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.kv_cache import CACHE_AXES
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.vision_layout import VisionInputs


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How tokens are chosen. Hashable: it is a static argument of the compiled loop.

  Attributes:
    max_new_tokens: T, the number of decode slots (the output shape).
    temperature: 0 for greedy argmax, else the softmax temperature.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1.0: all).
    eos_ids: token ids that end a row (e.g. Qwen's 151645 <|im_end|> and 151643 <|endoftext|>).
    pad_id: written after a row has stopped.
    suppress_ids: token ids never generated (transformers' `suppress_tokens`), e.g. the image/video placeholders,
      which would otherwise start a vision span with no image behind it.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  suppress_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature: must be >= 0 (0 is greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k: must be >= 0 (0 keeps every token), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
  """tokens [B, T] int32, logprobs [B, T] float32, lengths [B] int32 (tokens up to and including a stop)."""

  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array


def sampling_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """float32 logits [..., V] of the distribution tokens are drawn from: /temperature, then top-k and top-p masks.

  Masked tokens get -inf. Greedy (temperature 0) returns the logits unchanged, except for `suppress_ids`.
  """
  logits = logits.astype(jnp.float32)
  if sampling.suppress_ids:
    logits = logits.at[..., jnp.asarray(sampling.suppress_ids)].set(-jnp.inf)
  if sampling.temperature == 0:
    return logits
  logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The nucleus: tokens before the first one at which the cumulative probability reaches top_p, plus it.
    keep = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, jnp.minimum(keep, logits.shape[-1] - 1), axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def choose(logits: jax.Array, sampling: SamplingConfig, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One token per row from logits [B, V]: (token [B] int32, its log-prob [B] float32)."""
  masked = sampling_logits(logits, sampling)
  if sampling.temperature == 0:
    token = jnp.argmax(masked, axis=-1)
  else:
    token = jax.random.categorical(key, masked, axis=-1)
  logprob = jnp.take_along_axis(jax.nn.log_softmax(masked, axis=-1), token[:, None], axis=-1)[:, 0]
  return token.astype(jnp.int32), logprob


@functools.partial(jax.jit, static_argnames=("model", "sampling", "cache_dtype"))
def _generate(params, input_ids, attention_mask, positions, decode_base, vision, key, *, model: QwenVL,
              sampling: SamplingConfig, cache_dtype) -> Generation:
  batch, prompt_length = input_ids.shape
  steps = sampling.max_new_tokens
  cache = model.init_cache(batch, prompt_length + steps, cache_dtype)
  # Under a mesh and `nn.logical_axis_rules`, the cache is born sharded like the attention heads; else a no-op.
  cache = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("layers", *CACHE_AXES)), cache)
  # Generated slots are valid keys; causality (by slot) hides the ones not written yet.
  kv_mask = jnp.concatenate([attention_mask.astype(bool), jnp.ones((batch, steps), bool)], axis=1)
  logits, cache = model.apply(params, input_ids, positions, attention_mask, vision, cache=cache, cache_index=0,
                              kv_mask=kv_mask)
  key, step_key = jax.random.split(key)
  token, logprob = choose(logits[:, -1], sampling, step_key)
  eos = jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)
  tokens = jnp.full((batch, steps), sampling.pad_id, jnp.int32).at[:, 0].set(token)
  logprobs = jnp.zeros((batch, steps), jnp.float32).at[:, 0].set(logprob)
  done = jnp.isin(token, eos)
  lengths = jnp.ones((batch,), jnp.int32)

  def cond(state):
    step, *_, done, _ = state
    return (step < steps - 1) & ~jnp.all(done)

  def body(state):
    step, cache, tokens, logprobs, lengths, done, key = state
    fed = tokens[:, step]
    step_positions = (decode_base + 1 + step)[:, :, None]  # [3, B, 1]
    logits, cache = model.apply(params, fed[:, None], step_positions, jnp.ones((batch, 1), bool), None,
                                cache=cache, cache_index=prompt_length + step, kv_mask=kv_mask)
    key, step_key = jax.random.split(key)
    token, logprob = choose(logits[:, -1], sampling, step_key)
    token = jnp.where(done, sampling.pad_id, token)
    logprob = jnp.where(done, 0.0, logprob)
    tokens = tokens.at[:, step + 1].set(token)
    logprobs = logprobs.at[:, step + 1].set(logprob)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(token, eos)
    return step + 1, cache, tokens, logprobs, lengths, done, key

  state = (jnp.int32(0), cache, tokens, logprobs, lengths, done, key)
  _, _, tokens, logprobs, lengths, _, _ = jax.lax.while_loop(cond, body, state)
  return Generation(tokens, logprobs, lengths)


def to_left_padding(input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray):
  """Rolls every row so its last real token sits in the last column (right- or un-padded rows become left-padded).

  Rolling keeps each row's tokens in order, and rows stay in order, so the vision features that
  `scatter_features` assigns by row-major placeholder order are unchanged. Positions travel with their tokens.
  Rows without any real token are left as they are. Returns (input_ids, attention_mask, positions).
  """
  valid = np.asarray(attention_mask).astype(bool)
  length = valid.shape[1]
  last = np.where(valid.any(axis=1), length - 1 - np.argmax(valid[:, ::-1], axis=1), length - 1)
  shift = length - 1 - last
  if not shift.any():
    return input_ids, attention_mask, positions
  columns = (np.arange(length)[None, :] - shift[:, None]) % length  # out[:, c] = in[:, c - shift]
  rows = np.arange(valid.shape[0])[:, None]
  return input_ids[rows, columns], attention_mask[rows, columns], positions[:, rows, columns]


def generate(
  model: QwenVL,
  params: Any,
  input_ids: np.ndarray,
  attention_mask: np.ndarray,
  positions: np.ndarray,
  decode_base: np.ndarray,
  vision: VisionInputs | None = None,
  *,
  sampling: SamplingConfig,
  key: jax.Array | None = None,
  cache_dtype: Any = jnp.bfloat16,
) -> Generation:
  """Generates up to `sampling.max_new_tokens` tokens per row.

  Args:
    model: the `QwenVL` module (static: its config and dtype are part of the compiled program).
    params: `{'params': ...}`.
    input_ids: [B, L] int prompts, left- or right-padded (right-padded rows are rolled to left padding, the
      layout the cache needs: every row then continues at slot L).
    attention_mask: [B, L] 1 at real tokens.
    positions: [3, B, L] M-RoPE positions and decode_base: [3, B] from `positions.rope_index`.
    vision: `VisionInputs` of the prompts' images and videos, or None.
    sampling: `SamplingConfig`.
    key: PRNG key (required unless greedy).
    cache_dtype: KV cache storage dtype (bfloat16; float32 for exact comparisons).
  Returns:
    `Generation(tokens [B, T], logprobs [B, T], lengths [B])`.
  """
  input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
  if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
    raise ValueError(
      f"input_ids / attention_mask: expected matching [B, L], got {input_ids.shape} and {attention_mask.shape}"
    )
  positions, decode_base = np.asarray(positions), np.asarray(decode_base)
  if positions.shape != (3, *input_ids.shape) or decode_base.shape != (3, input_ids.shape[0]):
    raise ValueError(
      f"positions / decode_base: expected [3, B, L] = {(3, *input_ids.shape)} and [3, B] = "
      f"{(3, input_ids.shape[0])} (from positions.rope_index), got {positions.shape} and {decode_base.shape}"
    )
  input_ids, attention_mask, positions = to_left_padding(input_ids, attention_mask, positions)
  if key is None:
    if sampling.temperature != 0:
      raise ValueError("key: a PRNG key is required when sampling (temperature > 0)")
    key = jax.random.key(0)
  return _generate(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, bool),
                   jnp.asarray(positions, jnp.int32), jnp.asarray(decode_base, jnp.int32), vision, key,
                   model=model, sampling=sampling, cache_dtype=cache_dtype)
