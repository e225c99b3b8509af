"""GiGPO advantages: episode-level GRPO plus step-level groups of identical anchor states (Group-in-Group Policy
Optimization, arXiv 2505.10978, Sec. 3).

For a group of episodes played from the same initial state (one prompt group):

* Episode level (Eq. 3): A^E(tau_i) = (R(tau_i) - mean_group R) / F_norm, with R(tau) = sum_t r_t the undiscounted
  return of the episode: the GRPO advantage (`advantages.group_advantages`).
* Anchor-state grouping (Eq. 6): every environment state s~ that occurs in the group's episodes gathers the steps
  taken from it, G^S(s~) = {(a_t^(i), R_t^(i)) : s_t^(i) = s~}, across episodes and turns. States are compared
  exactly (by a hashable key, e.g. the observation text); the same state under another prompt group is another
  step group.
* Step level (Eqs. 5, 7): R_t^(i) = sum_{k >= t} gamma^(k - t) r_k^(i), the discounted return-to-go, and
  A^S(a_t^(i)) = (R_t^(i) - mean_{G^S} R) / F_norm within the anchor-state group.
* Combined (Eq. 8): A(a_t^(i)) = A^E(tau_i) + omega * A^S(a_t^(i)); the paper's defaults are gamma = 0.95 and
  omega = 1.

F_norm is the group std ("mean_std_norm" in verl-agent, `gigpo/core_gigpo.py` `compute_gigpo_outcome_advantage`)
or 1 (`std=None`, its "mean_norm"), for both levels at once as there. Where we differ from verl-agent: a group
whose values are all equal, a group of one included, gets 0 at that level (`group_advantages`), where verl-agent's
`step_norm_reward` gives a singleton step group mean 0 and std 1, i.e. its raw return-to-go; and the episode-level
statistics count each episode once (its `compute_mean_std_cross_steps` option counts each episode once per step).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.rl._checks import bool_mask, check_rank, check_shape, float_array
from jaxagents.rl.advantages import group_advantages
from jaxagents.rl.pdcr import process_returns

Array = jax.Array


def anchor_state_ids(
  state_keys: Sequence[Sequence[Hashable]], group_ids: Any, num_steps: int | None = None
) -> np.ndarray:
  """Step-group ids [E, T] int32: one id per distinct (episode group, state key); -1 after an episode's last step.

  Args:
    state_keys: E sequences, the state each step of episode e was taken from (ragged: len = that episode's steps).
    group_ids: [E] the prompt group of each episode.
    num_steps: T, the padded step count (default: the longest episode).
  """
  group_ids = np.asarray(group_ids)
  if group_ids.shape != (len(state_keys),):
    raise ValueError(f"group_ids: expected shape ({len(state_keys)},) (one per episode), got {group_ids.shape}.")
  longest = max((len(keys) for keys in state_keys), default=0)
  num_steps = longest if num_steps is None else num_steps
  if num_steps < longest:
    raise ValueError(f"num_steps: expected >= the longest episode ({longest} steps), got {num_steps}.")
  ids = np.full((len(state_keys), num_steps), -1, np.int32)
  table: dict[tuple[Any, Hashable], int] = {}
  for episode, keys in enumerate(state_keys):
    for step, key in enumerate(keys):
      ids[episode, step] = table.setdefault((group_ids[episode].item(), key), len(table))
  return ids


@functools.partial(jax.jit, static_argnames=("gamma", "omega", "std", "eps"))
def gigpo_advantages(
  step_rewards: Any,
  step_mask: Any,
  step_group_ids: Any,
  group_ids: Any,
  *,
  gamma: float = 0.95,
  omega: float = 1.0,
  std: str | None = "unbiased",
  eps: float = 1e-6,
) -> tuple[Array, dict[str, Array]]:
  """GiGPO advantages [E, T] of every step (module docstring), from integer step-group ids (`anchor_state_ids`).

  Args:
    step_rewards: [E, T] environment reward of each step r_t.
    step_mask: [E, T] bool, True at the steps an episode took (a prefix of each row).
    step_group_ids: [E, T] int anchor-state group of each step (any values off the mask).
    group_ids: [E] int prompt group of each episode.
    gamma: discount of the step-level return-to-go.
    omega: weight of the step-level advantage.
    std: F_norm: "unbiased" / "population" group std, or None for mean-centring only (both levels).
    eps: added to the std.
  Returns:
    (advantages [E, T] float32, 0 off the mask; metrics: "episode_advantages" [E], "step_advantages" [E, T],
    "returns_to_go" [E, T], "step_group_sizes" [E, T] (the size of each step's anchor-state group, 0 off the mask)).
  """
  step_rewards = float_array(step_rewards, "step_rewards")
  check_rank(step_rewards, "step_rewards", 2, "one reward per episode and step [E, T]")
  step_mask = bool_mask(step_mask, "step_mask", step_rewards.shape)
  step_group_ids = jnp.asarray(step_group_ids)
  check_shape(step_group_ids, "step_group_ids", step_rewards.shape)
  group_ids = jnp.asarray(group_ids)
  check_shape(group_ids, "group_ids", step_rewards.shape[:1])
  rewards = jnp.where(step_mask, step_rewards, 0.0)
  episode_returns = rewards.sum(axis=1)
  episode_advantages = group_advantages(episode_returns, group_ids, std=std, eps=eps)
  returns_to_go = process_returns(rewards, step_mask, gamma)
  flat_ids = jnp.where(step_mask, step_group_ids, -1).reshape(-1).astype(jnp.int32)
  step_advantages = group_advantages(returns_to_go.reshape(-1), flat_ids, std=std, eps=eps,
                                     valid=step_mask.reshape(-1)).reshape(step_rewards.shape)
  advantages = jnp.where(step_mask, episode_advantages[:, None] + omega * step_advantages, 0.0)
  same = (flat_ids[:, None] == flat_ids[None, :]) & step_mask.reshape(-1)[None, :]
  sizes = jnp.where(step_mask, same.sum(axis=1).reshape(step_rewards.shape), 0)
  return advantages, {"episode_advantages": episode_advantages, "step_advantages": step_advantages,
                      "returns_to_go": returns_to_go, "step_group_sizes": sizes}


def gigpo_step_advantages(
  state_keys: Sequence[Sequence[Hashable]],
  step_rewards: Any,
  group_ids: Any,
  *,
  gamma: float = 0.95,
  omega: float = 1.0,
  std: str | None = "unbiased",
  eps: float = 1e-6,
) -> tuple[Array, dict[str, Array]]:
  """GiGPO advantages [E, T] from hashable state keys (e.g. each step's observation text).

  Args:
    state_keys: E sequences, the anchor state of each step episode e took (ragged).
    step_rewards: [E, T] rewards, T >= the longest episode (entries after an episode's last step are ignored).
    group_ids: [E] int prompt group of each episode.
    gamma, omega, std, eps: as in `gigpo_advantages`.
  """
  step_rewards = np.asarray(step_rewards, np.float32)
  if step_rewards.ndim != 2 or step_rewards.shape[0] != len(state_keys):
    raise ValueError(f"step_rewards: expected [E={len(state_keys)}, T], got shape {step_rewards.shape}.")
  ids = anchor_state_ids(state_keys, group_ids, step_rewards.shape[1])
  return gigpo_advantages(step_rewards, ids >= 0, ids, np.asarray(group_ids), gamma=gamma, omega=omega, std=std,
                          eps=eps)
