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
class DecodeState:
  """The loop state after step `step`: tokens/logprobs [B, T] written up to column `step`, lengths [B], done [B]."""

  step: jax.Array
  cache: Any
  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  done: jax.Array
  key: jax.Array
  kv_mask: jax.Array


def prefill(params, inputs: PromptBatch, key, *, model, sampling: SamplingConfig, cache_dtype) -> DecodeState:
  """Runs the prompt through the model into a fresh cache and chooses token 0 (`inputs` already left-padded)."""
  batch, prompt_length = inputs.input_ids.shape
  steps = sampling.max_new_tokens
  cache = model.init_cache(batch, prompt_length + steps, cache_dtype)
  # Under a mesh and `nn.logical_axis_rules`, the cache is born sharded like the attention heads; else a no-op.
  cache = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("layers", *CACHE_AXES)), cache)
  kv_mask = jnp.concatenate([inputs.attention_mask.astype(bool), jnp.ones((batch, steps), bool)], axis=1)
  # cache_index stays a Python 0 here: a sparse prefill (Qwen-VL) is recognised by its static slot.
  if hasattr(model, "project"):  # project the last position only: [B, L, V] prompt logits never exist
    _, cache, hidden = model.apply(params, *inputs.model_args(), cache=cache, cache_index=0, kv_mask=kv_mask,
                                   return_hidden=True)
    logits = model.apply(params, hidden[:, -1:], method="project")
  else:
    logits, cache = model.apply(params, *inputs.model_args(), cache=cache, cache_index=0, kv_mask=kv_mask)
  key, step_key = jax.random.split(key)
  token, logprob = choose(logits[:, -1], sampling, step_key)
  tokens = jnp.full((batch, steps), sampling.pad_id, jnp.int32).at[:, 0].set(token)
  logprobs = jnp.zeros((batch, steps), jnp.float32).at[:, 0].set(logprob)
  done = jnp.isin(token, _eos(sampling))
  return DecodeState(jnp.int32(0), cache, tokens, logprobs, jnp.ones((batch,), jnp.int32), done, key, kv_mask)


def decode_step(params, inputs: PromptBatch, state: DecodeState, *, model, sampling: SamplingConfig) -> DecodeState:
  """Feeds token `state.step` and chooses token `step + 1` (rows already done get `pad_id`, log-prob 0)."""
  step = state.step
  fed = state.tokens[:, step][:, None]
  logits, cache = model.apply(params, *inputs.decode_args(fed, step), cache=state.cache,
                              cache_index=inputs.input_ids.shape[1] + step, kv_mask=state.kv_mask)
  key, step_key = jax.random.split(state.key)
  token, logprob = choose(logits[:, -1], sampling, step_key)
  token = jnp.where(state.done, sampling.pad_id, token)
  logprob = jnp.where(state.done, 0.0, logprob)
  return DecodeState(step + 1, cache, state.tokens.at[:, step + 1].set(token),
                     state.logprobs.at[:, step + 1].set(logprob), state.lengths + (~state.done).astype(jnp.int32),
                     state.done | jnp.isin(token, _eos(sampling)), key, state.kv_mask)


def _eos(sampling: SamplingConfig) -> jax.Array:
  return jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "sampling", "cache_dtype"))
def _generate(params, inputs: PromptBatch, key, *, model, sampling: SamplingConfig, cache_dtype) -> Generation:
  inputs = inputs.left_padded()
  state = prefill(params, inputs, key, model=model, sampling=sampling, cache_dtype=cache_dtype)
  steps = sampling.max_new_tokens

  def cond(state):
    return (state.step < steps - 1) & ~jnp.all(state.done)

  state = jax.lax.while_loop(cond, functools.partial(decode_step, params, inputs, model=model, sampling=sampling),
                             state)
  return Generation(state.tokens, state.logprobs, state.lengths)


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
  input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
  if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
    raise ValueError(
      f"inputs.input_ids / inputs.attention_mask: expected matching [B, L], got {input_ids.shape} and "
      f"{attention_mask.shape}"
    )
  if key is None:
    if sampling.temperature != 0:
      raise ValueError("key: a PRNG key is required when sampling (temperature > 0)")
    key = jax.random.key(0)
  if cache_dtype is None:
    cache_dtype = getattr(model, "dtype", None)
    cache_dtype = jnp.float32 if cache_dtype is None else cache_dtype
  return _generate(params, inputs, key, model=model, sampling=sampling, cache_dtype=jnp.dtype(cache_dtype))
