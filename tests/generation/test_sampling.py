"""Sampling filters keep exactly the specified tokens, sampled frequencies follow the truncated tempered softmax,
and bad configurations are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.generation import SamplingConfig, choose, sampling_logits


def test_top_k_and_top_p_keep_exactly_the_specified_tokens():
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))
  kept = lambda **kw: np.isfinite(np.asarray(sampling_logits(logits, SamplingConfig(1, temperature=1.0, **kw))))
  np.testing.assert_array_equal(kept(top_k=2), [[True, True, False, False, False]])
  np.testing.assert_array_equal(kept(top_p=0.7), [[True, True, False, False, False]])  # 0.4 + 0.3 reaches 0.7
  np.testing.assert_array_equal(kept(top_p=0.71), [[True, True, True, False, False]])
  np.testing.assert_array_equal(kept(top_p=0.1), [[True, False, False, False, False]])


def test_suppressed_ids_are_never_chosen_even_greedily():
  logits = jnp.array([[0.0, 5.0, 1.0]])
  token, logprob = choose(logits, SamplingConfig(1, suppress_ids=(1,)), jax.random.key(0))
  assert int(token[0]) == 2
  np.testing.assert_allclose(float(logprob[0]), float(jax.nn.log_softmax(jnp.array([1.0, 0.0]))[0]), rtol=1e-6)


def test_sampling_frequencies_follow_the_truncated_tempered_softmax():
  logits = jnp.log(jnp.array([0.4, 0.3, 0.15, 0.1, 0.05]))
  sampling = SamplingConfig(1, temperature=2.0, top_k=3)
  expected = np.array([0.4, 0.3, 0.15]) ** 0.5
  expected = np.concatenate([expected / expected.sum(), [0, 0]])
  n = 20000
  tokens, logprobs = choose(jnp.broadcast_to(logits, (n, 5)), sampling, jax.random.key(0))
  frequencies = np.bincount(np.asarray(tokens), minlength=5) / n
  np.testing.assert_allclose(frequencies, expected, atol=0.015)  # ~4 standard errors at n = 20000
  np.testing.assert_allclose(np.exp(np.asarray(logprobs)), expected[np.asarray(tokens)], rtol=1e-5)


@pytest.mark.parametrize("bad,name", [(dict(max_new_tokens=0), "max_new_tokens"),
                                      (dict(max_new_tokens=1, top_p=0.0), "top_p"),
                                      (dict(max_new_tokens=1, top_k=-1), "top_k"),
                                      (dict(max_new_tokens=1, temperature=-1.0), "temperature")])
def test_bad_sampling_configs_are_refused_by_name(bad, name):
  with pytest.raises(ValueError, match=name):
    SamplingConfig(**bad)
