"""Teacher-forced log-probs of completion tokens: the training side of a rollout (one forward pass, no cache).

The quantity policy-gradient losses ratio against the sampler's log-probs (PPO, arXiv 1707.06347, Eq. 7; GRPO,
arXiv 2402.03300, Eq. 3). It goes through the sampler's own `sampling_logits`, so that training scores exactly the
distribution the rollout drew from; a recompute that forgets the temperature or the top-k/p mask biases every
ratio (volcengine/verl GitHub issues #2996 and #6780).

Memory: the full path materialises [B, L, V] float32 logits (V = 151k for Qwen: 0.6 MB per token). With `chunk`,
a model that exposes `project(hidden) -> logits` (`QwenVL`) is run for its hidden states only, and the output
projection, log-softmax and gathers run over `chunk` positions at a time under `jax.checkpoint`, so forward and
backward hold [B, chunk, V] at most; with `response_length` only the last T positions (where `with_completions`
puts the completions) are projected at all. Both give the full path's values and gradients (tested).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxagents.generation.inputs import PromptBatch
from jaxagents.generation.sampling import SamplingConfig, sampling_logits


def completion_logprobs(
  model: Any,
  params: Any,
  inputs: PromptBatch,
  completion_mask: Any,
  sampling: SamplingConfig | None = None,
  *,
  chunk: int | None = None,
  response_length: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Log-probs [B, L] and entropies [B, L] of each token under the model, at completion positions.

  Args:
    model: a linen module called as `model.apply(params, *inputs.model_args())`, returning logits [B, L, V] or a
      tuple that starts with them (`QwenVL` returns (logits, None)).
    params: `{'params': ...}`.
    inputs: prompt + completion rows (`PromptBatch.with_completions`).
    completion_mask: [B, L] bool, True at the tokens to score.
    sampling: the sampler's `SamplingConfig`, or None for the model's own (untempered, unmasked) distribution.
    chunk: project and score this many positions at a time (module docstring); None: all at once.
    response_length: T, score only the last T positions (the completion must lie there); None: every position.
  Returns:
    (logp, entropy), both [B, L] float32: position l holds the log-prob of token l given tokens < l, from the
    logits at l - 1, and the entropy of that distribution; 0 off the completion.
  """
  mask = jnp.asarray(completion_mask).astype(bool)
  targets = jnp.asarray(inputs.input_ids)[:, 1:]
  if chunk is None or not hasattr(model, "project"):
    out = model.apply(params, *inputs.model_args())
    logits = out[0] if isinstance(out, tuple) else out
    chosen, entropy = _score(logits[:, :-1], targets, sampling)
  else:
    hidden = model.apply(params, *inputs.model_args(), return_hidden=True)[2][:, :-1]
    chosen, entropy = _chunked_score(model, params, hidden, targets, sampling, chunk, response_length)
  pad = jnp.zeros((chosen.shape[0], 1), chosen.dtype)
  chosen = jnp.where(mask, jnp.concatenate([pad, chosen], 1), 0.0)
  entropy = jnp.where(mask, jnp.concatenate([pad, entropy], 1), 0.0)
  return chosen, entropy


def _score(logits: jax.Array, targets: jax.Array, sampling: SamplingConfig | None) -> tuple[jax.Array, jax.Array]:
  """Log-prob of each target and entropy, [B, S] each, from logits [B, S, V]."""
  if sampling is not None:
    logits = sampling_logits(logits, sampling)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  chosen = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  finite = jnp.isfinite(log_probs)
  safe = jnp.where(finite, log_probs, 0.0)  # masked tokens (top-k/p) give 0, not NaN, in value and gradient
  entropy = -jnp.sum(jnp.where(finite, jnp.exp(safe) * safe, 0.0), axis=-1)
  return chosen, entropy


def _chunked_score(model, params, hidden, targets, sampling, chunk: int, response_length: int | None):
  """`_score` of `model.project(hidden)` [B, S, D] -> [B, S], `chunk` positions at a time, rematerialised."""
  batch, length = targets.shape
  start = 0 if response_length is None else max(length - response_length, 0)
  hidden, targets = hidden[:, start:], targets[:, start:]
  count = -(-hidden.shape[1] // chunk)
  extra = count * chunk - hidden.shape[1]
  hidden = jnp.pad(hidden, ((0, 0), (0, extra), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, extra)))
  hidden = hidden.reshape(batch, count, chunk, -1).swapaxes(0, 1)
  targets = targets.reshape(batch, count, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def score(pieces):
    return _score(model.apply(params, pieces[0], method="project"), pieces[1], sampling)

  chosen, entropy = jax.lax.map(score, (hidden, targets))
  def unchunk(x):
    x = x.swapaxes(0, 1).reshape(batch, count * chunk)[:, :length - start]
    return jnp.pad(x, ((0, 0), (start, 0)))
  return unchunk(chosen), unchunk(entropy)
