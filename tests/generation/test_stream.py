"""`stream` yields, token by token, exactly what `generate` returns (greedy and sampled, same key)."""

import jax
import numpy as np
import pytest

from jaxagents.generation import SamplingConfig, generate
from jaxagents.generation.stream import stream


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_tokens_are_the_generated_tokens(qwen3, temperature):
  sampling = SamplingConfig(6, temperature=temperature, eos_ids=(7,), pad_id=0)
  key = jax.random.key(3)
  expected = generate(qwen3.model, qwen3.params, qwen3.prompts, sampling=sampling, key=key)
  columns, actives = zip(*stream(qwen3.model, qwen3.params, qwen3.prompts, sampling=sampling, key=key))
  tokens = np.stack(columns, 1)
  np.testing.assert_array_equal(tokens, np.asarray(expected.tokens)[:, :tokens.shape[1]])
  np.testing.assert_array_equal(np.stack(actives, 1).sum(1), np.asarray(expected.lengths))


def test_stream_stops_when_every_row_has_stopped(qwen3):
  first = next(stream(qwen3.model, qwen3.params, qwen3.prompts, sampling=SamplingConfig(5)))[0]
  steps = list(stream(qwen3.model, qwen3.params, qwen3.prompts, sampling=SamplingConfig(5, eos_ids=tuple(first))))
  assert len(steps) == 1
