"""`rollout`: groups of sampled completions laid out for training, whose sampler log-probs equal a teacher-forced
recompute with `completion_logprobs` (the rollout/training mismatch of volcengine/verl GitHub issues #2996 and
#6780), for Qwen-VL and `CausalLM`."""

import jax
import numpy as np
import pytest

from jaxagents.generation import SamplingConfig, completion_logprobs, rollout


@pytest.mark.parametrize("group_size", [2])
def test_rollout_logprobs_equal_a_teacher_forced_recompute(decoder, group_size):
  model, params, prompts = decoder.model, decoder.params, decoder.prompts
  # A stop token that some rows sample, so the masks and padding after a stop are exercised.
  eos = (1,) if decoder.name == "causal_lm" else (234,)
  sampling = SamplingConfig(6, temperature=0.7, top_k=8, eos_ids=eos, pad_id=0)
  out = rollout(model, params, prompts, group_size=group_size, sampling=sampling, key=jax.random.key(3))
  rows, prompt_length = prompts.input_ids.shape[0] * group_size, prompts.input_ids.shape[1]
  assert out.tokens.shape == (rows, 6) and isinstance(out.tokens, np.ndarray)
  assert (out.lengths < 6).any() and (out.lengths == 6).any()
  assert out.inputs.input_ids.shape == (rows, prompt_length + 6)
  np.testing.assert_array_equal(out.prompts.input_ids, np.repeat(prompts.input_ids, group_size, axis=0))
  np.testing.assert_array_equal(out.completion_mask[:, prompt_length:],
                                np.arange(6)[None] < out.lengths[:, None])
  np.testing.assert_array_equal(out.inputs.input_ids[:, prompt_length:][out.completion_mask[:, prompt_length:]],
                                out.tokens[out.completion_mask[:, prompt_length:]])

  recomputed, _ = jax.jit(completion_logprobs, static_argnums=(0, 4))(model, params, out.inputs,
                                                                       out.completion_mask, sampling)
  recomputed = np.asarray(recomputed)[:, prompt_length:]
  np.testing.assert_allclose(recomputed, out.sample_logprobs, rtol=0, atol=1e-5)
  # Groups sample independently: the copies of a prompt do not all draw the same completion.
  assert any(not np.array_equal(out.tokens[g], out.tokens[g + 1]) for g in range(0, rows, group_size))
