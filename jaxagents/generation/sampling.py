"""How the next token is chosen from a decoder's logits: greedy, or sampled from a tempered, truncated softmax.

Sampling works on float32 logits: greedy when `temperature == 0`, else `softmax(logits / temperature)`
restricted by top-k and top-p (nucleus sampling, Holtzman et al. 2020, arXiv 1904.09751, Section 3.1).
`sampling_logits` is the one definition of that distribution: the decode loop draws from it and
`scoring.completion_logprobs` scores training tokens under it, so rollout and training agree on what was sampled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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
