"""Group rollouts: `group_size` sampled completions of every prompt, laid out for a teacher-forced recompute.

The sampling half of GRPO-style training (DeepSeekMath, arXiv 2402.03300, Algorithm 1 step "sample G outputs
for each question"; the generation step of trl `GRPOTrainer._generate_and_score_completions`). Rewards, advantages
and the training-graph recompute of log-probs (`scoring.completion_logprobs` on `Rollout.inputs`) are the task's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxagents.generation.decode import generate
from jaxagents.generation.inputs import PromptBatch
from jaxagents.generation.sampling import SamplingConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
  """B = prompts x group_size rows, each prompt's group contiguous; T = max_new_tokens; L = prompt length.

  Attributes:
    prompts: the prompt rows, each repeated group_size times (`PromptBatch.repeat`).
    inputs: prompt + completion rows [B, L + T] (`PromptBatch.with_completions`): what training scores.
    completion_mask: [B, L + T] bool, True at the sampled tokens (up to and including a stop token).
    tokens: [B, T] int32 sampled tokens (pad_id after a stop); lengths: [B] int32 their counts.
    sample_logprobs: [B, T] float32 log-probs of the sampled tokens under the sampling distribution (0 after a
      stop); `completion_logprobs(model, params, inputs, completion_mask, sampling)[:, L:]` recomputes them.
  """

  prompts: PromptBatch
  inputs: PromptBatch
  completion_mask: Any
  tokens: Any
  lengths: Any
  sample_logprobs: Any


def rollout(
  model: Any,
  params: Any,
  prompts: PromptBatch,
  *,
  group_size: int,
  sampling: SamplingConfig,
  key: jax.Array,
  cache_dtype: Any = None,
) -> Rollout:
  """Samples `group_size` completions of every prompt row with `generate` and appends them to their prompts.

  With numpy prompts the record holds numpy arrays (host data, ready for rewards); with jax arrays (a global,
  sharded batch) it stays on the devices.
  """
  if group_size < 1:
    raise ValueError(f"group_size: must be >= 1, got {group_size}")
  repeated = prompts.repeat(group_size)
  out = generate(model, params, repeated, sampling=sampling, key=key, cache_dtype=cache_dtype)
  tokens, lengths, logprobs = out.tokens, out.lengths, out.logprobs
  if not isinstance(repeated.input_ids, jax.Array):
    tokens, lengths, logprobs = jax.device_get((tokens, lengths, logprobs))
  inputs, completion_mask = repeated.with_completions(tokens, lengths, sampling.pad_id)
  return Rollout(repeated, inputs, completion_mask, tokens, lengths, logprobs)
