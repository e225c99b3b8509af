"""Dyna-GRPO (jaxagents/rl/dyna_grpo.py) against Dyna-Mind's definitions (arXiv 2510.09577), re-computed with
plain loops here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.rl import dyna_grpo, grpo


def np_refine_advantages(refine_success, standard_returns, refine_returns, standard_ids, refine_ids):
  """A = 1 iff the refined trajectory succeeds and R > max(mean standard R, mean refined R) of its group."""
  out = []
  for success, value, group in zip(refine_success, refine_returns, refine_ids):
    standard = [r for r, g in zip(standard_returns, standard_ids) if g == group]
    refined = [r for r, g in zip(refine_returns, refine_ids) if g == group]
    bar = max(np.mean(standard) if standard else -np.inf, np.mean(refined))
    out.append(float(success and value > bar))
  return np.array(out)


def test_episode_returns_follow_the_papers_reward_constants():
  # 3 steps and success: two non-terminal steps at -0.1, then +10; 4 steps and failure: -0.3 + 0; 1 step success: 10.
  got = dyna_grpo.episode_returns(np.array([3, 4, 1]), np.array([True, False, True]))
  np.testing.assert_allclose(got, [10.0 - 0.2, -0.3, 10.0], atol=1e-6)


def test_step_rewards_sum_to_the_episode_return_and_mask_the_episode():
  num_steps, success = np.array([3, 1, 5]), np.array([False, True, True])
  rewards, mask = dyna_grpo.step_rewards(num_steps, success, max_steps=6)
  expected = np.zeros((3, 6))
  for row, (n, ok) in enumerate(zip(num_steps, success)):
    expected[row, : n - 1] = -0.1
    expected[row, n - 1] = 10.0 if ok else 0.0
  np.testing.assert_allclose(rewards, expected, atol=1e-6)
  np.testing.assert_array_equal(mask, np.arange(6)[None, :] < num_steps[:, None])
  np.testing.assert_allclose(np.asarray(rewards).sum(1), dyna_grpo.episode_returns(num_steps, success), atol=1e-5)


def test_policy_advantages_are_grpo_z_scores_of_the_returns_and_sum_to_zero_per_group():
  returns = dyna_grpo.episode_returns(np.array([2, 5, 3, 3, 4, 4]), np.array([1, 0, 1, 1, 0, 0], bool))
  got = np.asarray(dyna_grpo.policy_advantages(returns, group_size=3))
  grouped = np.asarray(returns, np.float64).reshape(2, 3)
  expected = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(got, expected.ravel(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.reshape(2, 3).sum(1), 0.0, atol=1e-5)


def test_refine_advantages_are_binary_and_match_the_papers_filter():
  standard_returns = np.array([9.7, 0.0, -0.5, 9.9, 9.8, 9.9])
  standard_ids = np.array([0, 0, 0, 1, 1, 1])
  refine_returns = np.array([9.8, 9.9, -0.4, 9.95, 9.8, 9.9])
  refine_success = np.array([True, True, False, True, True, True])
  refine_ids = np.array([0, 0, 0, 1, 1, 2])  # group 2 has no standard rollouts
  got = np.asarray(dyna_grpo.dyna_refine_advantages(refine_success, standard_returns, refine_returns, standard_ids,
                                                    refine_ids))
  expected = np_refine_advantages(refine_success, standard_returns, refine_returns, standard_ids, refine_ids)
  np.testing.assert_array_equal(got, expected)
  # Group 0: standard mean 3.07, refined mean 6.43 -> both successes pass; group 1: refined mean 9.875 -> only 9.95;
  # group 2: a single refined rollout equals its own mean, and the comparison is strict -> 0.
  np.testing.assert_array_equal(got, [1, 1, 0, 1, 0, 0])


def test_refine_advantages_require_success_even_with_the_best_return():
  # Same layout for standard and refined rollouts (refine_group_ids omitted).
  got = dyna_grpo.dyna_refine_advantages([False, True], [0.0, 0.0], [5.0, 1.0], [0, 0])
  np.testing.assert_array_equal(got, [0.0, 0.0])  # the failure has the best return; the success is below the mean


def test_refined_rollouts_with_zero_advantage_get_no_policy_gradient():
  rng = np.random.default_rng(0)
  logp = np.log(rng.uniform(0.1, 0.9, (4, 3))).astype(np.float32)
  old = logp + 0.05
  adv = dyna_grpo.dyna_refine_advantages([True, False, True, True], [0.0, 9.0], [10.0, 0.0, 6.0, 9.5], [0, 0],
                                         [0, 0, 0, 0])
  np.testing.assert_array_equal(adv, [1, 0, 0, 1])  # refined mean 6.375 > 6.0, standard mean 4.5
  config = grpo.GRPOConfig(beta=0.0)
  grad = jax.grad(lambda x: grpo.grpo_loss(x, old, adv, np.ones((4, 3), bool), config=config)[0])(jnp.asarray(logp))
  grad = np.asarray(grad)
  assert np.all(grad[[1, 2]] == 0.0) and np.all(grad[[0, 3]] < 0.0)


def test_refine_context_interleaves_plan_actions_with_the_real_future_states():
  context = dyna_grpo.refine_context("s0", "think; plan a1 a2 a3", ["a1", "a2", "a3"], ["s1", "s2", "s3"],
                                     separator="|")
  assert context == "s0|think; plan a1 a2 a3|s1|a2|s2|a3|s3"
  early_end = dyna_grpo.refine_context("s0", "a", ["a1", "a2", "a3"], ["s1"], separator="|")
  assert early_end == "s0|a|s1"
  with pytest.raises(ValueError, match="plan_actions"):
    dyna_grpo.refine_context("s0", "a", ["x"] * 6, [])
  with pytest.raises(ValueError, match="future_states"):
    dyna_grpo.refine_context("s0", "a", ["a1"], ["s1", "s2"])


def test_refined_response_is_trained_against_the_plain_state_unless_asked():
  assert dyna_grpo.refine_training_prompt("s0", "s0|a|s1") == "s0"
  assert dyna_grpo.refine_training_prompt("s0", "s0|a|s1", condition_on_future=True) == "s0|a|s1"


def test_phases_alternate_simulation_first():
  phases = [dyna_grpo.dyna_phase(step, simulation_steps=2, policy_steps=1) for step in range(6)]
  assert phases == ["simulation", "simulation", "policy"] * 2
  with pytest.raises(ValueError, match="simulation_steps"):
    dyna_grpo.dyna_phase(0, simulation_steps=0, policy_steps=0)


def test_bad_inputs_raise_value_errors_naming_the_argument():
  with pytest.raises(ValueError, match="num_steps"):
    dyna_grpo.episode_returns(np.array([1.5, 2.0]), np.array([True, False]))
  with pytest.raises(ValueError, match="success"):
    dyna_grpo.episode_returns(np.array([1, 2]), np.array([True]))
  with pytest.raises(ValueError, match="refine_group_ids"):
    dyna_grpo.dyna_refine_advantages([True], [0.0], [1.0], [0], [0, 1])
  with pytest.raises(ValueError, match="group_ids"):
    dyna_grpo.dyna_refine_advantages([True], [0.0, 1.0], [1.0], [0])
