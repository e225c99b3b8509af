"""GiGPO advantages (arXiv 2505.10978, Eqs. 3-8) against hand-computed numbers.

Group 0: episode A visits states s0, s1 with rewards 0, 1; episode B visits s0, s2, s1 with rewards 0, 0, 0.5.
Group 1: episode C visits s0 with reward 1 (alone: every advantage 0; its s0 is not group 0's s0).
With gamma = 0.5 the returns-to-go are A: 0.5, 1; B: 0.125, 0.25, 0.5; the episode returns are A 1, B 0.5.
"""

import numpy as np
import pytest

from jaxagents.rl.gigpo import anchor_state_ids, gigpo_step_advantages

STATES = [["s0", "s1"], ["s0", "s2", "s1"], ["s0"]]
REWARDS = np.array([[0, 1, 9], [0, 0, 0.5], [1, 9, 9]], np.float32)  # 9: after the episode ended, ignored
GROUPS = np.array([0, 0, 1])


def test_anchor_state_groups_are_identical_states_within_a_prompt_group():
  ids = anchor_state_ids(STATES, GROUPS)
  assert ids.shape == (3, 3)
  assert ids[0, 0] == ids[1, 0] and ids[0, 1] == ids[1, 2]  # s0 and s1 shared by A and B
  assert len({ids[0, 0], ids[0, 1], ids[1, 1], ids[2, 0]}) == 4  # s0 of group 1 is its own group
  np.testing.assert_array_equal(ids[1:, :] < 0, [[False, False, False], [False, True, True]])


def test_mean_centred_advantages_equal_hand_computed_numbers():
  advantages, metrics = gigpo_step_advantages(STATES, REWARDS, GROUPS, gamma=0.5, omega=0.5, std=None)
  # A^E: A +0.25, B -0.25. A^S: s0 {0.5, 0.125} -> +-0.1875; s1 {1, 0.5} -> +-0.25; s2 alone -> 0.
  expected = [[0.25 + 0.5 * 0.1875, 0.25 + 0.5 * 0.25, 0], [-0.25 - 0.5 * 0.1875, -0.25, -0.25 - 0.5 * 0.25],
              [0, 0, 0]]
  np.testing.assert_allclose(advantages, expected, atol=1e-6)
  np.testing.assert_allclose(metrics["returns_to_go"], [[0.5, 1, 0], [0.125, 0.25, 0.5], [1, 0, 0]], atol=1e-6)
  np.testing.assert_array_equal(metrics["step_group_sizes"], [[2, 2, 0], [2, 1, 2], [1, 0, 0]])


def test_z_scored_advantages_equal_hand_computed_numbers():
  advantages, metrics = gigpo_step_advantages(STATES, REWARDS, GROUPS, gamma=0.5, omega=1.0, std="unbiased", eps=0.0)
  # Two-member groups: (x - mean) / unbiased std = +-1/sqrt(2) at both levels.
  z = 1 / np.sqrt(2)
  np.testing.assert_allclose(metrics["episode_advantages"], [z, -z, 0], atol=1e-6)
  np.testing.assert_allclose(advantages, [[2 * z, 2 * z, 0], [-2 * z, -z, -2 * z], [0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("std", [None, "unbiased"])
def test_omega_zero_is_the_episode_advantage_on_every_step(std):
  advantages, metrics = gigpo_step_advantages(STATES, REWARDS, GROUPS, gamma=0.9, omega=0.0, std=std)
  steps = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
  np.testing.assert_allclose(advantages, np.where(steps, np.asarray(metrics["episode_advantages"])[:, None], 0))


def test_bad_shapes_raise_named_errors():
  with pytest.raises(ValueError, match="step_rewards"):
    gigpo_step_advantages(STATES, REWARDS[:2], GROUPS)
  with pytest.raises(ValueError, match="num_steps"):
    gigpo_step_advantages(STATES, REWARDS[:, :2], GROUPS)
  with pytest.raises(ValueError, match="group_ids"):
    gigpo_step_advantages(STATES, REWARDS, GROUPS[:2])
