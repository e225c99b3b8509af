"""Token-by-token generation for interactive use: the same prefill and decode step as `generate`, one jitted call
per token, so a caller can print each token as it is chosen.

`generate` runs its decode loop inside one compiled `lax.while_loop` (fast, nothing comes back until the end);
`stream` runs the same two functions (`decode.prefill`, `decode.decode_step`) from Python, so with the same key it
yields exactly the tokens `generate` returns. Use it for a command line or a notebook, not for rollouts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.generation.decode import decode_step, prefill
from jaxagents.generation.inputs import PromptBatch
from jaxagents.generation.sampling import SamplingConfig


@functools.partial(jax.jit, static_argnames=("model", "sampling", "cache_dtype"))
def _prefill(params, inputs, key, *, model, sampling, cache_dtype):
  return prefill(params, inputs, key, model=model, sampling=sampling, cache_dtype=cache_dtype)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("state",))
def _step(params, inputs, state, *, model, sampling):
  return decode_step(params, inputs, state, model=model, sampling=sampling)


def stream(model: Any, params: Any, inputs: PromptBatch, *, sampling: SamplingConfig, key: jax.Array | None = None,
           cache_dtype: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (tokens [B] int32, active [B] bool) per step: step s's chosen token of every row, and which rows had
  not stopped before it (a row's stop token is yielded as active; later slots are `pad_id` and inactive).

  Arguments as `generation.generate`.
  """
  if key is None:
    if sampling.temperature != 0:
      raise ValueError("key: a PRNG key is required when sampling (temperature > 0)")
    key = jax.random.key(0)
  if cache_dtype is None:
    cache_dtype = getattr(model, "dtype", None) or jnp.float32
  inputs = inputs.left_padded()
  state = _prefill(params, inputs, key, model=model, sampling=sampling, cache_dtype=jnp.dtype(cache_dtype))
  active = np.ones(inputs.input_ids.shape[0], bool)
  for step in range(sampling.max_new_tokens):
    if step:
      state = _step(params, inputs, state, model=model, sampling=sampling)
    tokens, done = jax.device_get((state.tokens[:, step], state.done))
    yield tokens, active
    active = active & ~done
    if not active.any():
      return
