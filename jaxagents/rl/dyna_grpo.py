"""Dyna-GRPO rewards and advantages (Dyna-Mind, arXiv 2510.09577, ICLR 2026). The three
items below come from summaries of the paper.

Stage 2 of Dyna-Mind alternates two phases; this module holds their pure math, the trainer runs the rollouts.

* Rewards: -0.1 per non-terminal step, +10 on success, 0 on failure (`episode_returns`, `step_rewards`).
* Policy improvement: plain GRPO (group z-score of the episode return, beta-weighted KL) on the standard
  rollouts (`policy_advantages`, then `grpo.grpo_loss`).
* Simulation improvement (SimRollout): at state s_t the policy samples a response a whose reasoning holds a plan
  a_1..a_d (d <= 5). The plan is executed in the real environment, giving the intermediate states s'_{t+1..t+d};
  the refine context s_t^refine = s_t + a + s'_{t+1} + a_2 + s'_{t+2} + ... (`refine_context`) conditions a
  refined response a^refine. Refined rollouts get the binary, filtered advantage (`dyna_refine_advantages`)
      A_refine(tau_i) = 1  if tau_i succeeds and R(tau_i) > max(mean R_standard, mean R_refined) of its group,
                        0  otherwise.

Reconstructions (the paper's code is not available, and the summaries leave these open):
* "Non-terminal step" counts every step but the last of the episode; a failed episode that ends by running out of
  steps therefore gets -0.1 * (n - 1) + 0.
* The phase schedule: `dyna_phase` alternates `simulation_steps` simulation-improvement updates with
  `policy_steps` policy-improvement updates, simulation first.
* Which context a^refine is trained against: the plain state s_t by default (future states stripped), s_t^refine
  when `condition_on_future=True` (`refine_training_prompt`).
* A group with no standard (or no refined) rollouts leaves that mean out of the max; a group with neither gives 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxagents.rl import advantages

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DynaGRPOConfig:
  """Dyna-GRPO constants; the reward values are the paper's, the rest are reconstructions."""

  step_penalty: float = 0.1
  success_reward: float = 10.0
  failure_reward: float = 0.0
  max_plan_depth: int = 5
  simulation_steps: int = 1
  policy_steps: int = 1
  condition_on_future: bool = False


def _steps_and_success(num_steps: Any, success: Any) -> tuple[Array, Array]:
  num_steps = jnp.asarray(num_steps)
  if num_steps.ndim != 1 or not jnp.issubdtype(num_steps.dtype, jnp.integer):
    raise ValueError(f"num_steps: expected an integer array [B], got shape {num_steps.shape}, dtype {num_steps.dtype}.")
  success = jnp.asarray(success)
  if success.shape != num_steps.shape:
    raise ValueError(f"success: expected shape {num_steps.shape}, got {success.shape}.")
  return num_steps, success.astype(bool)


def episode_returns(num_steps: Any, success: Any, config: DynaGRPOConfig = DynaGRPOConfig()) -> Array:  # noqa: B008
  """Undiscounted episode return `[B]`: -step_penalty * (num_steps - 1) + (success_reward | failure_reward).

  num_steps: [B] int, the number of agent steps in each episode (>= 1); success: [B] bool.
  """
  num_steps, success = _steps_and_success(num_steps, success)
  non_terminal = jnp.maximum(num_steps - 1, 0).astype(jnp.float32)
  outcome = jnp.where(success, config.success_reward, config.failure_reward)
  return -config.step_penalty * non_terminal + outcome


def step_rewards(
  num_steps: Any, success: Any, max_steps: int, config: DynaGRPOConfig = DynaGRPOConfig(),  # noqa: B008
) -> tuple[Array, Array]:
  """Per-step rewards `[B, max_steps]` and their mask `[B, max_steps]` (True on the episode's steps).

  Step k < n - 1 gets -step_penalty, the last step n - 1 gets the outcome reward; each row sums to
  `episode_returns`. max_steps: static width, at least the longest episode.
  """
  num_steps, success = _steps_and_success(num_steps, success)
  step = jnp.arange(max_steps)[None, :]
  last = (num_steps - 1)[:, None]
  outcome = jnp.where(success, config.success_reward, config.failure_reward)[:, None]
  rewards = jnp.where(step < last, -config.step_penalty, jnp.where(step == last, outcome, 0.0))
  return rewards.astype(jnp.float32), step <= last


def policy_advantages(returns: Any, group_ids: Any = None, *, group_size: int | None = None, **options: Any) -> Array:
  """Policy-improvement advantages `[B]`: GRPO's group z-score of the episode returns `[B]`.

  `options` go to `advantages.group_advantages` (std, eps, scale, valid).
  """
  return advantages.group_advantages(returns, group_ids, group_size=group_size, **options)


def _group_means(values: Array, ids: Array, query_ids: Array) -> tuple[Array, Array]:
  """Mean of `values` over the rows of `ids` equal to each query id, and whether that group is non-empty."""
  same = (query_ids[:, None] == ids[None, :]).astype(jnp.float32)
  count = same.sum(axis=1)
  return (same @ values) / jnp.maximum(count, 1.0), count > 0


def dyna_refine_advantages(
  success: Any,
  returns: Any,
  refine_returns: Any,
  group_ids: Any,
  refine_group_ids: Any = None,
) -> Array:
  """Binary SimRollout advantages `[Br]` in {0, 1} for the refined rollouts (A_refine above).

  Args:
    success: [Br] bool, whether each refined trajectory succeeded.
    returns: [Bs] episode returns of the standard rollouts.
    refine_returns: [Br] episode returns R(tau_refine) of the refined rollouts.
    group_ids: [Bs] int group (prompt/state) of each standard rollout.
    refine_group_ids: [Br] int group of each refined rollout; None when the refined rollouts use the same layout
      as the standard ones (Br = Bs, `group_ids` for both).

  Returns:
    [Br] float32: 1 where the refined trajectory succeeded and its return beats (strictly) both its group's mean
    standard return and its group's mean refined return, else 0.
  """
  refine_returns = jnp.asarray(refine_returns, jnp.float32)
  if refine_returns.ndim != 1:
    raise ValueError(f"refine_returns: expected [Br], got shape {refine_returns.shape}.")
  returns = jnp.asarray(returns, jnp.float32)
  group_ids = jnp.asarray(group_ids)
  if returns.ndim != 1 or group_ids.shape != returns.shape:
    raise ValueError(f"group_ids: expected shape {returns.shape} matching returns [Bs], got {group_ids.shape}.")
  refine_group_ids = group_ids if refine_group_ids is None else jnp.asarray(refine_group_ids)
  success = jnp.asarray(success).astype(bool)
  for name, value in (("success", success), ("refine_group_ids", refine_group_ids)):
    if value.shape != refine_returns.shape:
      raise ValueError(f"{name}: expected shape {refine_returns.shape} matching refine_returns, got {value.shape}.")
  standard_mean, has_standard = _group_means(returns, group_ids, refine_group_ids)
  refine_mean, has_refine = _group_means(refine_returns, refine_group_ids, refine_group_ids)
  threshold = jnp.maximum(
    jnp.where(has_standard, standard_mean, -jnp.inf), jnp.where(has_refine, refine_mean, -jnp.inf)
  )
  return (success & (refine_returns > threshold)).astype(jnp.float32)


def refine_context(
  state: str,
  response: str,
  plan_actions: Sequence[str],
  future_states: Sequence[str],
  *,
  max_plan_depth: int = DynaGRPOConfig.max_plan_depth,
  separator: str = "\n",
) -> str:
  """s_t^refine = s_t + a + s'_{t+1} + a_2 + s'_{t+2} + ... + a_k + s'_{t+k}, joined by `separator`.

  `response` (a) already contains the first planned action a_1, whose execution gave s'_{t+1}; `plan_actions` is
  the whole plan a_1..a_d; `future_states` the k <= d real states reached by executing it (fewer than d when the
  episode ended early).
  """
  if len(plan_actions) > max_plan_depth:
    raise ValueError(
      f"plan_actions: expected at most max_plan_depth={max_plan_depth} actions, got {len(plan_actions)}."
    )
  if len(future_states) > len(plan_actions):
    raise ValueError(f"future_states: expected at most one state per planned action ({len(plan_actions)}), "
                     f"got {len(future_states)}.")
  parts = [state, response]
  for k, future_state in enumerate(future_states):
    if k > 0:
      parts.append(plan_actions[k])
    parts.append(future_state)
  return separator.join(parts)


def refine_training_prompt(state: str, refined_context: str, *, condition_on_future: bool = False) -> str:
  """The context a^refine is trained against: s_t (default; a reconstruction) or s_t^refine."""
  return refined_context if condition_on_future else state


def dyna_phase(step: int, *, simulation_steps: int = 1, policy_steps: int = 1) -> str:
  """"simulation" or "policy" for training step `step` (0-based), alternating, simulation first (a reconstruction)."""
  if simulation_steps < 0 or policy_steps < 0 or simulation_steps + policy_steps == 0:
    raise ValueError(f"simulation_steps/policy_steps: expected non-negative counts with a positive sum, got "
                     f"{simulation_steps}, {policy_steps}.")
  return "simulation" if step % (simulation_steps + policy_steps) < simulation_steps else "policy"
