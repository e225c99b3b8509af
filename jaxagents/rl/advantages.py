"""Group-relative outcome advantages of the GRPO family.

* GRPO (DeepSeekMath, arXiv 2402.03300): A_i = (R_i - mean_group R) / (std_group R + eps); Dr. GRPO (arXiv
  2503.20783): no std scaling; trl's `scale_rewards="batch"`: the std over the whole batch.
* RLOO (tunix "rloo"): A_i = R_i - mean of the other rows of the group.
* DAPO (arXiv 2503.14476): the dynamic-sampling keep mask and the soft overlong punishment.

`rewards`: [B], one per completion; groups are consecutive blocks of `group_size` rows or given by `group_ids`.
Choices where the references disagree (trl `trl/trainer/grpo_trainer.py`, verl `compute_grpo_outcome_advantage`,
tunix `compute_advantages`, maxtext `grpo_trainer.py`): std "unbiased" (trl, verl, tunix) or "population" (maxtext);
eps is an argument (trl 1e-4, verl/tunix 1e-6, maxtext 1e-8); a group whose rewards are all equal (a group of one
included) gets A = 0 exactly, where verl gives a group of one A = R.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.rl._checks import bool_mask, canonical, check_rank, check_shape, float_array

Array = jax.Array




def contiguous_group_ids(batch_size: int, group_size: int) -> np.ndarray:
  """Group ids `[B]` for a batch laid out as num_groups consecutive blocks of `group_size` completions."""
  if group_size < 1 or batch_size % group_size:
    raise ValueError(f"group_size: expected a positive divisor of the batch size {batch_size}, got {group_size}.")
  return np.arange(batch_size) // group_size


def _group_sum(x: Array, group_ids: Array | None, group_size: int | None) -> Array:
  """For every row, the sum of `x: [B]` over the rows of its group -> [B]."""
  if group_ids is None:
    return jnp.repeat(x.reshape(-1, group_size).sum(axis=1), group_size)
  # A [B, B] same-group matrix accepts any integer ids (no static group count needed under jit); B is a rollout
  # batch, a few thousand rows at most.
  same_group = (group_ids[:, None] == group_ids[None, :]).astype(x.dtype)
  return same_group @ x


def _group_max(x: Array, group_ids: Array | None, group_size: int | None) -> Array:
  """For every row, the max of `x: [B]` over the rows of its group -> [B]."""
  if group_ids is None:
    return jnp.repeat(x.reshape(-1, group_size).max(axis=1), group_size)
  same_group = group_ids[:, None] == group_ids[None, :]
  return jnp.max(jnp.where(same_group, x[None, :], -jnp.inf), axis=1)


def _grouping(rewards: Array, group_ids: Any, group_size: int | None) -> tuple[Array | None, int | None]:
  (batch,) = rewards.shape
  if (group_ids is None) == (group_size is None):
    raise ValueError("group_ids/group_size: expected exactly one of them, got "
                     f"group_ids={'None' if group_ids is None else 'an array'}, group_size={group_size}.")
  if group_ids is None:
    contiguous_group_ids(batch, group_size)  # validates the divisor
    return None, group_size
  group_ids = jnp.asarray(group_ids)
  check_shape(group_ids, "group_ids", (batch,))
  if not jnp.issubdtype(group_ids.dtype, jnp.integer):
    raise ValueError(f"group_ids: expected an integer array, got dtype {group_ids.dtype}.")
  return group_ids, None


def _rewards_and_valid(rewards: Any, valid: Any) -> tuple[Array, Array]:
  rewards = float_array(rewards, "rewards")
  check_rank(rewards, "rewards", 1, "one reward per completion [B]")
  valid = jnp.ones(rewards.shape, bool) if valid is None else bool_mask(valid, "valid", rewards.shape)
  # Unscorable rows may carry NaN; they are removed from every statistic rather than multiplied by 0.
  return jnp.where(valid, rewards, 0.0), valid


@functools.partial(jax.jit, static_argnames=("group_size", "std", "eps", "scale"))
def group_advantages(
  rewards: Any,
  group_ids: Any = None,
  *,
  group_size: int | None = None,
  std: str | None = "unbiased",
  eps: float = 1e-6,
  scale: str = "group",
  valid: Any = None,
) -> Array:
  """Group-relative outcome advantages `[B]`: (R - mean_group R) / (std + eps).

  Args:
    rewards: [B] scalar reward per completion.
    group_ids: [B] integer id of each completion's prompt (any values, any order); or give `group_size`.
    group_size: G, for a batch of consecutive groups (B = num_groups * G).
    std: "unbiased" (ddof 1: trl, verl, tunix), "population" (ddof 0: maxtext), or None for no scaling (Dr. GRPO).
    eps: added to the std (trl 1e-4, verl/tunix 1e-6, maxtext 1e-8).
    scale: where the std is taken: "group" (GRPO), "batch" (trl `scale_rewards="batch"`: the mean stays per
      group, the std is over the whole batch) or "none" (same as `std=None`).
    valid: optional [B] bool; invalid rows (unscorable, filtered) are left out of every statistic and get A = 0.

  Returns:
    [B] float32 advantages. In every group they sum to zero; a group whose valid rewards are all equal (a group of
    one included) gets exactly 0, never NaN.
  """
  rewards, valid = _rewards_and_valid(rewards, valid)
  group_ids, group_size = _grouping(rewards, group_ids, group_size)
  scale = canonical(scale)
  if scale not in ("group", "batch", "none"):
    raise ValueError(f"scale: expected 'group', 'batch' or 'none', got {scale!r}.")
  if std is not None and std not in ("unbiased", "population"):
    raise ValueError(f"std: expected 'unbiased', 'population' or None, got {std!r}.")
  valid_f = valid.astype(jnp.float32)
  count = _group_sum(valid_f, group_ids, group_size)
  mean = _group_sum(rewards, group_ids, group_size) / jnp.maximum(count, 1.0)
  centred = jnp.where(valid, rewards - mean, 0.0)
  # Exact test for a constant group (max == min over its valid rows): fp rounding can leave R - mean at 1 ulp,
  # which a small eps would blow up into a large advantage.
  group_max = _group_max(jnp.where(valid, rewards, -jnp.inf), group_ids, group_size)
  group_min = -_group_max(jnp.where(valid, -rewards, -jnp.inf), group_ids, group_size)
  constant_group = group_max == group_min
  if std is not None and scale != "none":
    ddof = 1.0 if std == "unbiased" else 0.0
    if scale == "group":
      sq_sum, n = _group_sum(jnp.square(centred), group_ids, group_size), count
    else:
      batch_mean = jnp.sum(rewards) / jnp.maximum(jnp.sum(valid_f), 1.0)
      sq_sum = jnp.sum(jnp.where(valid, jnp.square(rewards - batch_mean), 0.0))
      n = jnp.sum(valid_f)
    sigma = jnp.sqrt(sq_sum / jnp.maximum(n - ddof, 1.0))
    centred = centred / (sigma + eps)
  return jnp.where(valid & ~constant_group, centred, 0.0)


@functools.partial(jax.jit, static_argnames=("group_size",))
def rloo_advantages(rewards: Any, group_ids: Any = None, *, group_size: int | None = None, valid: Any = None) -> Array:
  """REINFORCE leave-one-out advantages `[B]`: A_i = R_i - mean_{j != i, same group} R_j (tunix "rloo").

  Groups with fewer than two valid rows get 0, as in verl `compute_rloo_vectorized_outcome_advantage`; verl's loop
  version `compute_rloo_outcome_advantage` gives a group of one A = R instead. Per-group sums are zero. Shapes as in
  `group_advantages`.
  """
  rewards, valid = _rewards_and_valid(rewards, valid)
  group_ids, group_size = _grouping(rewards, group_ids, group_size)
  count = _group_sum(valid.astype(jnp.float32), group_ids, group_size)
  total = _group_sum(rewards, group_ids, group_size)
  advantages = rewards - (total - rewards) / jnp.maximum(count - 1.0, 1.0)
  return jnp.where(valid & (count >= 2.0), advantages, 0.0)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Array]] = {
  "grpo": group_advantages,
  "rloo": rloo_advantages,
}


def dapo_group_keep_mask(rewards: Any, group_size: int) -> Array:
  """DAPO dynamic sampling: `[B / G]` bool, True for groups whose rewards are not all equal (0 < #correct < G)."""
  rewards = float_array(rewards, "rewards")
  check_rank(rewards, "rewards", 1, "one reward per completion [B]")
  contiguous_group_ids(rewards.shape[0], group_size)
  grouped = rewards.reshape(-1, group_size)
  return grouped.max(axis=1) > grouped.min(axis=1)


def soft_overlong_penalty(lengths: Any, max_len: int, cache_len: int, factor: float = 1.0) -> Array:
  """DAPO soft overlong punishment `[B]`, added to the reward (DAPO Eq. 13; trl `get_soft_overlong_punishment`).

  0 for |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache in between; -1 beyond L_max; times `factor`.
  lengths: [B] completion lengths in tokens.
  """
  if not 0 < cache_len <= max_len:
    raise ValueError(f"cache_len: expected 0 < cache_len <= max_len={max_len}, got {cache_len}.")
  lengths = float_array(lengths, "lengths")
  threshold = float(max_len - cache_len)
  ramp = (threshold - lengths) / float(cache_len)
  penalty = jnp.where(lengths <= threshold, 0.0, jnp.where(lengths <= max_len, ramp, -1.0))
  return factor * penalty
