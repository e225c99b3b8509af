"""Batched prefill + decode of any cached decoder under one `jax.jit`: preallocated KV cache, static shapes.

The decoder protocol (the only things `generate` asks of a model; `QwenVL` and `CausalLM` implement it):

  model.init_cache(batch, max_length, dtype) -> KVCache
      an empty stacked cache, leaves [num_layers, B, S_max, Hk, D] (`layers.kv_cache`).
  model.apply(params, *inputs.model_args(), cache=, cache_index=0, kv_mask=) -> (logits [B, L, V], cache)
      the prefill: the L prompt tokens written at slots [0, L).
  model.apply(params, *inputs.decode_args(tokens [B, 1], step), cache=, cache_index=L + step, kv_mask=)
      -> (logits [B, 1, V], cache): one decode step.

`kv_mask` [B, S_max] is the prompt's attention mask followed by ones: generated slots are valid keys, and
causality by slot hides those not written yet. The inputs are a `PromptBatch` (`generation.inputs`): it alone
knows the model's argument order and positions (M-RoPE for Qwen-VL, 1-D RoPE for `TokenInputs`).

Layout: prompts are rolled to **left padding** inside the compiled program (`PromptBatch.left_padded`), so every
row writes its next token to the same cache slot L + s, and global (sharded, multi-host) arrays never come back to
the host. The decode loop is a `lax.while_loop` over a fixed-size state, so the step is compiled once as part of
`generate`, never per token, and the loop ends early when every row has stopped.

Each chosen token's log-prob is returned under the distribution it was drawn from (`sampling.sampling_logits`;
greedy: the untempered `log_softmax`). Rows stop at any of `eos_ids`; later slots hold `pad_id` with log-prob 0,
and `lengths` counts tokens up to and including the stop token.

`generate_continued` keeps a batch's cache across calls (`DecodeCache`): a call writes its prompt at the first free
slot `next_slot` (the prefill's `cache_index`) instead of slot 0, so a prompt that extends what the cache already
holds (the next turn of a conversation) prefills only its new tokens, as a chunked prefill (vLLM's automatic
prefix caching and SGLang's RadixAttention, arXiv 2312.07104, reuse a conversation's KV cache across turns the
same way). Slots a call did not feed (left padding, generated slots after a row stopped) stay out of `kv_mask`, so
a row's keys may have holes: causality is by slot and positions are the prompt's own, so holes change nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.generation.inputs import PromptBatch
from jaxagents.generation.sampling import SamplingConfig, choose
from jaxagents.layers.kv_cache import CACHE_AXES


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
  """tokens [B, T] int32, logprobs [B, T] float32, lengths [B] int32 (tokens up to and including a stop)."""

  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeCache:
  """A batch's KV cache kept across `generate_continued` calls.

  Attributes:
    cache: the model's stacked cache, leaves [num_layers, B, S_max, Hk, D].
    kv_mask: [B, S_max] bool, True at the slots that hold a key the row attends to.
    next_slot: int32 scalar, the first free slot (shared by all rows).
  """

  cache: Any
  kv_mask: jax.Array
  next_slot: jax.Array

  @classmethod
  def empty(cls, model: Any, batch: int, slots: int, cache_dtype: Any = None) -> DecodeCache:
    """An empty cache of `slots` slots per row (dtype as in `generate`)."""
    cache = model.init_cache(batch, slots, jnp.dtype(_cache_dtype(model, cache_dtype)))
    return cls(cache, jnp.zeros((batch, slots), bool), jnp.int32(0))

  def cleared(self) -> DecodeCache:
    """The same buffers with no valid slot: the next call starts at slot 0."""
    return DecodeCache(self.cache, jnp.zeros_like(self.kv_mask), jnp.int32(0))

  @property
  def slots(self) -> int:
    return self.kv_mask.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  """The loop state after step `step`: tokens/logprobs [B, T] written up to column `step`, lengths [B], done [B];
  `prompt_end` is the slot after the prompt (where generated token 0 is fed)."""

  step: jax.Array
  cache: Any
  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  done: jax.Array
  key: jax.Array
  kv_mask: jax.Array
  prompt_end: jax.Array


def prefill(params, inputs: PromptBatch, key, *, model, sampling: SamplingConfig, cache_dtype,
            past: DecodeCache | None = None) -> DecodeState:
  """Runs the prompt through the model and chooses token 0 (`inputs` already left-padded).

  Without `past` the prompt fills slots [0, L) of a fresh cache; with it, slots [next_slot, next_slot + L) of
  `past.cache`, attending to the keys `past.kv_mask` keeps.
  """
  batch, prompt_length = inputs.input_ids.shape
  steps = sampling.max_new_tokens
  new_mask = jnp.concatenate([inputs.attention_mask.astype(bool), jnp.ones((batch, steps), bool)], axis=1)
  if past is None:
    cache = model.init_cache(batch, prompt_length + steps, cache_dtype)
    kv_mask, start = new_mask, 0  # a Python 0: a sparse prefill (Qwen-VL) is recognised by its static slot
  else:
    cache, start = past.cache, jnp.asarray(past.next_slot, jnp.int32)
    kv_mask = jax.lax.dynamic_update_slice_in_dim(past.kv_mask, new_mask, start, axis=1)
  # Under a mesh and `nn.logical_axis_rules`, the cache is born sharded like the attention heads; else a no-op.
  cache = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("layers", *CACHE_AXES)), cache)
  if hasattr(model, "project"):  # project the last position only: [B, L, V] prompt logits never exist
    _, cache, hidden = model.apply(params, *inputs.model_args(), cache=cache, cache_index=start, kv_mask=kv_mask,
                                   return_hidden=True)
    logits = model.apply(params, hidden[:, -1:], method="project")
  else:
    logits, cache = model.apply(params, *inputs.model_args(), cache=cache, cache_index=start, kv_mask=kv_mask)
  key, step_key = jax.random.split(key)
  token, logprob = choose(logits[:, -1], sampling, step_key)
  tokens = jnp.full((batch, steps), sampling.pad_id, jnp.int32).at[:, 0].set(token)
  logprobs = jnp.zeros((batch, steps), jnp.float32).at[:, 0].set(logprob)
  done = jnp.isin(token, _eos(sampling))
  return DecodeState(jnp.int32(0), cache, tokens, logprobs, jnp.ones((batch,), jnp.int32), done, key, kv_mask,
                     jnp.asarray(start + prompt_length, jnp.int32))


def decode_step(params, inputs: PromptBatch, state: DecodeState, *, model, sampling: SamplingConfig) -> DecodeState:
  """Feeds token `state.step` and chooses token `step + 1` (rows already done get `pad_id`, log-prob 0)."""
  step = state.step
  fed = state.tokens[:, step][:, None]
  logits, cache = model.apply(params, *inputs.decode_args(fed, step), cache=state.cache,
                              cache_index=state.prompt_end + step, kv_mask=state.kv_mask)
  key, step_key = jax.random.split(state.key)
  token, logprob = choose(logits[:, -1], sampling, step_key)
  token = jnp.where(state.done, sampling.pad_id, token)
  logprob = jnp.where(state.done, 0.0, logprob)
  return DecodeState(step + 1, cache, state.tokens.at[:, step + 1].set(token),
                     state.logprobs.at[:, step + 1].set(logprob), state.lengths + (~state.done).astype(jnp.int32),
                     state.done | jnp.isin(token, _eos(sampling)), key, state.kv_mask, state.prompt_end)


def _eos(sampling: SamplingConfig) -> jax.Array:
  return jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)


def _decode(params, inputs: PromptBatch, key, past, *, model, sampling: SamplingConfig, cache_dtype) -> DecodeState:
  inputs = inputs.left_padded()
  state = prefill(params, inputs, key, model=model, sampling=sampling, cache_dtype=cache_dtype, past=past)
  steps = sampling.max_new_tokens

  def cond(state):
    return (state.step < steps - 1) & ~jnp.all(state.done)

  return jax.lax.while_loop(cond, functools.partial(decode_step, params, inputs, model=model, sampling=sampling),
                            state)


@functools.partial(jax.jit, static_argnames=("model", "sampling", "cache_dtype"))
def _generate(params, inputs: PromptBatch, key, *, model, sampling: SamplingConfig, cache_dtype) -> Generation:
  state = _decode(params, inputs, key, None, model=model, sampling=sampling, cache_dtype=cache_dtype)
  return Generation(state.tokens, state.logprobs, state.lengths)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("past",))
def _generate_continued(params, inputs: PromptBatch, key, past: DecodeCache, *, model, sampling: SamplingConfig):
  state = _decode(params, inputs, key, past, model=model, sampling=sampling, cache_dtype=None)
  # Generated token s was fed (its key written at prompt_end + s) for s < length - 1 at least; the last one was
  # not, or only by a batch that ran on after the row stopped, like the pad tokens after it.
  fed = jnp.arange(sampling.max_new_tokens)[None, :] < state.lengths[:, None] - 1
  kv_mask = jax.lax.dynamic_update_slice_in_dim(state.kv_mask, fed, state.prompt_end, axis=1)
  return (Generation(state.tokens, state.logprobs, state.lengths),
          DecodeCache(state.cache, kv_mask, state.prompt_end + sampling.max_new_tokens))


def _cache_dtype(model: Any, cache_dtype: Any) -> Any:
  if cache_dtype is None:
    cache_dtype = getattr(model, "dtype", None)
  return jnp.float32 if cache_dtype is None else cache_dtype


def generate(
  model: Any,
  params: Any,
  inputs: PromptBatch,
  *,
  sampling: SamplingConfig,
  key: jax.Array | None = None,
  cache_dtype: Any = None,
) -> Generation:
  """Generates up to `sampling.max_new_tokens` tokens per prompt row.

  Args:
    model: a linen module with the decoder protocol (module docstring); static: its config and dtype are part of
      the compiled program.
    params: the variables, `{'params': ...}` (sharded or not: the program follows their shardings).
    inputs: a `PromptBatch` (Qwen-VL `ModelInputs`, `TokenInputs`) of numpy or jax arrays, left- or right-padded.
    sampling: `SamplingConfig`.
    key: PRNG key (required unless greedy).
    cache_dtype: KV cache storage dtype; None: the model's compute dtype (`model.dtype`; float32 when that is
      None), so a float32 model decodes exactly what a float32 forward pass computes.
  Returns:
    `Generation(tokens [B, T], logprobs [B, T], lengths [B])`.
  """
  _check_inputs(inputs)
  key = _key(key, sampling)
  return _generate(params, inputs, key, model=model, sampling=sampling,
                   cache_dtype=jnp.dtype(_cache_dtype(model, cache_dtype)))


def generate_continued(
  model: Any,
  params: Any,
  inputs: PromptBatch,
  past: DecodeCache,
  *,
  sampling: SamplingConfig,
  key: jax.Array | None = None,
) -> tuple[Generation, DecodeCache]:
  """`generate` whose prompt continues what `past` holds: written at `past.next_slot`, attending to its keys.

  Each row's positions must continue that row's sequence (`TokenInputs` built with explicit positions). `past` is
  donated: use the returned cache, whose `kv_mask` keeps the prompt and the generated tokens that were fed (all
  but each row's last one, which the next call's prompt must start with) and whose `next_slot` follows the T
  generated slots.

  Args:
    model, params, sampling, key: as in `generate`.
    inputs: [B, L] the new tokens of every row (B = the cache's rows), left- or right-padded.
    past: `DecodeCache` with at least L + max_new_tokens free slots after `next_slot`.
  Returns:
    (`Generation`, the updated `DecodeCache`).
  """
  _check_inputs(inputs)
  key = _key(key, sampling)
  batch, length = inputs.input_ids.shape
  if past.kv_mask.shape[0] != batch:
    raise ValueError(f"inputs: expected {past.kv_mask.shape[0]} rows like the cache, got {batch}")
  end = int(past.next_slot) + length + sampling.max_new_tokens  # a host call, like `generate`: never traced
  if end > past.slots:
    raise ValueError(f"past: {length} prompt + {sampling.max_new_tokens} generated slots from slot "
                     f"{int(past.next_slot)} need {end} slots, the cache has {past.slots}")
  return _generate_continued(params, inputs, key, past, model=model, sampling=sampling)


def _check_inputs(inputs: PromptBatch) -> None:
  input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
  if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
    raise ValueError(
      f"inputs.input_ids / inputs.attention_mask: expected matching [B, L], got {input_ids.shape} and "
      f"{attention_mask.shape}"
    )


def _key(key: jax.Array | None, sampling: SamplingConfig) -> jax.Array:
  if key is None:
    if sampling.temperature != 0:
      raise ValueError("key: a PRNG key is required when sampling (temperature > 0)")
    key = jax.random.key(0)
  return key
