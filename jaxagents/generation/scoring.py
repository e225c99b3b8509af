"""Teacher-forced log-probs of completion tokens: the training side of a rollout (one forward pass, no cache).

The quantity policy-gradient losses ratio against the sampler's log-probs (PPO, arXiv 1707.06347, Eq. 7; GRPO,
arXiv 2402.03300, Eq. 3). It goes through the sampler's own `sampling_logits`, so that training scores exactly the
distribution the rollout drew from; a recompute that forgets the temperature or the top-k/p mask biases every
ratio (volcengine/verl GitHub issues #2996 and #6780).
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
) -> tuple[jax.Array, jax.Array]:
  """Log-probs [B, L] and entropies [B, L] of each token under the model, at completion positions.

  Args:
    model: a linen module called as `model.apply(params, *inputs.model_args())`, returning logits [B, L, V] or a
      tuple that starts with them (`QwenVL` returns (logits, None)).
    params: `{'params': ...}`.
    inputs: prompt + completion rows (`PromptBatch.with_completions`).
    completion_mask: [B, L] bool, True at the tokens to score.
    sampling: the sampler's `SamplingConfig`, or None for the model's own (untempered, unmasked) distribution.
  Returns:
    (logp, entropy), both [B, L] float32: position l holds the log-prob of token l given tokens < l, from the
    logits at l - 1, and the entropy of that distribution; 0 off the completion.
  """
  out = model.apply(params, *inputs.model_args())
  logits = out[0] if isinstance(out, tuple) else out
  logits = logits[:, :-1]
  if sampling is not None:
    logits = sampling_logits(logits, sampling)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = jnp.asarray(inputs.input_ids)[:, 1:]
  chosen = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.where(jnp.isfinite(log_probs), jnp.exp(log_probs) * log_probs, 0.0), axis=-1)
  pad = jnp.zeros((chosen.shape[0], 1), chosen.dtype)
  mask = jnp.asarray(completion_mask).astype(bool)
  chosen = jnp.where(mask, jnp.concatenate([pad, chosen], 1), 0.0)
  entropy = jnp.where(mask, jnp.concatenate([pad, entropy], 1), 0.0)
  return chosen, entropy
