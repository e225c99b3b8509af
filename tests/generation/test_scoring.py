"""`completion_logprobs`: position l scores token l with the logits at l - 1, under the sampler's distribution when
one is given, with its entropy; everything off the completion is 0."""

import jax
import numpy as np
import pytest

from jaxagents.generation import SamplingConfig, completion_logprobs, sampling_logits


def test_token_l_is_scored_by_the_logits_at_l_minus_1_under_the_sampling_distribution(causal):
  model, params, prompts = causal.model, causal.params, causal.prompts
  tokens = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], np.int32)
  inputs, completion_mask = prompts.with_completions(tokens, np.array([3, 1, 2, 0]), pad_id=0)
  logits = np.asarray(model.apply(params, *inputs.model_args()))
  sampling = SamplingConfig(3, temperature=0.7, top_k=5)
  mask = completion_mask[:, 1:]
  targets = inputs.input_ids[:, 1:]
  for given in (None, sampling):
    logp, entropy = completion_logprobs(model, params, inputs, completion_mask, given)
    logp, entropy = np.asarray(logp), np.asarray(entropy)
    assert not completion_mask[:, 0].any() and (logp[~completion_mask] == 0).all()
    assert (entropy[~completion_mask] == 0).all() and np.isfinite(entropy).all()
    scores = logits[:, :-1] if given is None else np.asarray(sampling_logits(logits[:, :-1], sampling))
    log_probs = np.asarray(jax.nn.log_softmax(scores))  # [B, L - 1, V]: the distribution of token l + 1
    expected = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(logp[:, 1:][mask], expected[mask], rtol=0, atol=1e-5)
    finite = np.isfinite(log_probs)
    terms = np.where(finite, np.exp(log_probs) * np.where(finite, log_probs, 0.0), 0.0)
    np.testing.assert_allclose(entropy[:, 1:][mask], -terms.sum(-1)[mask], rtol=0, atol=1e-5)
    if given is not None:
      assert np.isinf(log_probs).any()  # top-k really masked tokens, and their entropy terms count as 0
  assert completion_mask.sum() == 3 + 1 + 2


@pytest.mark.slow  # in CI after the suite (.ci/run): ~20 s of compilation
def test_chunked_response_only_scoring_equals_the_full_pass_in_value_and_gradient(qwen3):
  model, params, prompts = qwen3.model, qwen3.params, qwen3.prompts
  tokens = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0], [13, 0, 0, 0, 0], [14, 15, 16, 17, 0]], np.int32)
  inputs, completion_mask = prompts.with_completions(tokens, np.array([5, 3, 1, 4]), pad_id=0)
  sampling = SamplingConfig(5, temperature=0.7, top_k=20)
  weights = np.random.default_rng(0).standard_normal(completion_mask.shape).astype(np.float32)

  def objective(p, **kwargs):
    logp, entropy = completion_logprobs(model, p, inputs, completion_mask, sampling, **kwargs)
    return (weights * logp).sum() + 0.1 * entropy.sum(), (logp, entropy)

  (full, (logp, entropy)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  for kwargs in (dict(chunk=3, response_length=5),):  # chunks that do not divide the window; completions at the end
    (value, (logp_c, entropy_c)), grads_c = jax.jit(jax.value_and_grad(
      lambda p, kwargs=kwargs: objective(p, **kwargs), has_aux=True))(params)
    np.testing.assert_allclose(logp_c, logp, rtol=1e-5, atol=1e-5, err_msg=str(kwargs))
    np.testing.assert_allclose(entropy_c, entropy, rtol=1e-5, atol=1e-5, err_msg=str(kwargs))
    np.testing.assert_allclose(value, full, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_c, grads)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))  # top-k-masked tokens add no NaN gradient
