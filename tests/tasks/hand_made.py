"""Rollouts of hand-made completions, laid out as `rollouts.sample_groups` lays out sampled ones (tests replace the
sampler with them to know the answers a task's `prepare` scores)."""

import jax.numpy as jnp
import numpy as np

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.tasks import rollouts


def host_rollout(prompts, completions, group_size: int, width: int) -> rollouts.HostRollout:
  """`prompts` ([N] rows) with `group_size` completions each (`completions`: N * group_size token lists, padded to
  `width`), sharded like the sampler's output; the sampler's log-probs are zeros."""
  assert max(len(c) for c in completions) <= width
  tokens = np.full((len(completions), width), counting.PAD, np.int32)
  for row, completion in enumerate(completions):
    tokens[row, :len(completion)] = completion
  lengths = np.array([len(c) for c in completions], np.int32)
  repeated = prompts.repeat(group_size)
  inputs, mask = repeated.with_completions(tokens, lengths, counting.PAD)
  inputs, mask = sharding.shard_batch((inputs, np.asarray(mask, bool)))
  return rollouts.HostRollout(repeated, tokens, lengths, inputs, mask, jnp.zeros(tokens.shape, jnp.float32))
