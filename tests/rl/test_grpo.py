"""GRPO family math (jaxagents/rl/grpo.py) against hand-computed values, plain-numpy loops written here, and the
trl / verl / tunix / maxtext formulas re-written in numpy (trl `grpo_trainer.py`, verl `core_algos.py`, tunix
`algo_core.py`, maxtext `experimental/rl/grpo_trainer.py`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.rl import advantages, grpo

# ---------------------------------------------------------------------------------------------------------------------
# Independent references (numpy loops over the hand-made inputs)
# ---------------------------------------------------------------------------------------------------------------------


def np_group_advantages(rewards, group_ids, *, ddof=1, eps=1e-6, scale="group", valid=None):
  """Loop over groups: (R - mean) / (std + eps); ddof=None means Dr. GRPO (no std)."""
  rewards = np.asarray(rewards, np.float64)
  valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, bool)
  out = np.zeros(len(rewards))
  batch_std = np.std(rewards[valid], ddof=ddof) if ddof is not None and valid.sum() > ddof else 0.0
  for group in set(group_ids.tolist()):
    rows = [i for i in range(len(rewards)) if group_ids[i] == group and valid[i]]
    values = rewards[rows]
    if len(rows) == 0 or np.all(values == values[0]):
      continue
    centred = values - values.mean()
    if ddof is None or scale == "none":
      out[rows] = centred
    else:
      std = np.std(values, ddof=ddof) if scale == "group" else batch_std
      out[rows] = centred / (std + eps)
  return out


def np_rloo(rewards, group_ids):
  out = np.zeros(len(rewards))
  for i in range(len(rewards)):
    others = [rewards[j] for j in range(len(rewards)) if group_ids[j] == group_ids[i] and j != i]
    out[i] = rewards[i] - np.mean(others) if others else 0.0
  return out


def np_aggregate(loss, mask, mode, norm_len=None):
  rows = [i for i in range(loss.shape[0]) if mask[i].sum() > 0]
  if mode == "token_mean":
    tokens = [loss[i, t] for i in rows for t in range(loss.shape[1]) if mask[i, t]]
    return float(np.sum(tokens) / max(len(tokens), 1))
  sums = [sum(loss[i, t] for t in range(loss.shape[1]) if mask[i, t]) for i in rows]
  if mode == "seq_mean_token_mean":
    return float(np.sum([s / mask[i].sum() for s, i in zip(sums, rows)]) / max(len(rows), 1))
  if mode == "seq_mean_token_sum":
    return float(np.sum(sums) / max(len(rows), 1))
  norm_len = loss.shape[1] if norm_len is None else norm_len
  return float(np.sum(sums) / (max(len(rows), 1) * norm_len))


def trl_compute_loss(logp, old, ref, adv, mask, *, beta, eps_low, eps_high, loss_type, max_len=None, n_items=None):
  """trl `GRPOTrainer._compute_loss` (token-level IS), in numpy: returns (loss, low_clip, high_clip, clip_ratio)."""
  per_token_kl = np.exp(ref - logp) - (ref - logp) - 1
  coef_1 = np.exp(logp - old)
  coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
  per_token_loss = -np.minimum(coef_1 * adv[:, None], coef_2 * adv[:, None])
  if beta != 0.0:
    per_token_loss = per_token_loss + beta * per_token_kl
  if loss_type == "grpo":
    loss = ((per_token_loss * mask).sum(-1) / np.clip(mask.sum(-1), 1.0, None)).mean()
  elif loss_type == "bnpo":
    loss = (per_token_loss * mask).sum() / max(mask.sum(), 1.0)
  elif loss_type == "dr_grpo":
    loss = (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_len)
  elif loss_type == "dapo":
    loss = (per_token_loss * mask).sum() / n_items
  low = (coef_1 < 1 - eps_low) & (adv[:, None] < 0)
  high = (coef_1 > 1 + eps_high) & (adv[:, None] > 0)
  fraction = lambda x: (x * mask).sum() / mask.sum()
  return loss, fraction(low), fraction(high), fraction(low | high)


def verl_policy_loss_vanilla(old, logp, adv, mask, *, clip_low, clip_high, clip_ratio_c):
  """verl `compute_policy_loss_vanilla` with loss_agg_mode="token-mean", in numpy."""
  log_ratio = np.clip(logp - old, -20.0, 20.0)
  ratio = np.exp(log_ratio)
  pg_losses1 = -adv * ratio
  pg_losses2 = -adv * np.clip(ratio, 1 - clip_low, 1 + clip_high)
  clip_pg_losses1 = np.maximum(pg_losses1, pg_losses2)
  pg_losses3 = -adv * clip_ratio_c
  clip_pg_losses2 = np.minimum(pg_losses3, clip_pg_losses1)
  pg_losses = np.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
  lower = (clip_pg_losses1 > pg_losses3) & (adv < 0)
  return (pg_losses * mask).sum() / mask.sum(), (lower * mask).sum() / mask.sum()


def tunix_grpo_loss(logp, old, ref, adv, mask, *, beta, epsilon, epsilon_high, loss_algo):
  """tunix `grpo_loss_fn` (sequence-mean-token-mean aggregation, k3 KL), in numpy."""
  log_ratio = np.clip(logp - old, -20.0, 20.0)
  if loss_algo == "gspo-token":
    seq_mean = (log_ratio * mask).sum(-1) / np.clip(mask.sum(-1), 1, None)
    log_ratio = np.minimum(np.broadcast_to(seq_mean[:, None], logp.shape), 10.0)
  ratio = np.exp(log_ratio)
  per_token = np.maximum(-adv[:, None] * ratio, -adv[:, None] * np.clip(ratio, 1 - epsilon, 1 + epsilon_high))

  def seq_mean_token_mean(x):
    return ((x * mask).sum(-1) / np.clip(mask.sum(-1), 1, None)).mean()

  kl = np.exp(ref - logp) - (ref - logp) - 1
  return seq_mean_token_mean(per_token) + beta * seq_mean_token_mean(kl)


def _batch(seed=0, batch=6, length=5, spread=0.3):
  """Random log-probs with padding; every row keeps at least one token."""
  rng = np.random.default_rng(seed)
  logp = np.log(rng.uniform(0.05, 0.95, (batch, length))).astype(np.float32)
  old = (logp + rng.normal(0, spread, (batch, length))).astype(np.float32)
  ref = (logp + rng.normal(0, spread, (batch, length))).astype(np.float32)
  lengths = rng.integers(1, length + 1, batch)
  mask = np.arange(length)[None, :] < lengths[:, None]
  adv = rng.normal(0, 1, batch).astype(np.float32)
  return logp, old, ref, adv, mask


# ---------------------------------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "rewards, kwargs, expected",
  [
    ([1, 0, 0, 1], dict(std="unbiased", eps=1e-6), [0.8660239, -0.8660239, -0.8660239, 0.8660239]),
    ([1, 0, 0, 1], dict(std="unbiased", eps=1e-4), [0.8658754, -0.8658754, -0.8658754, 0.8658754]),
    ([1, 0, 0, 1], dict(std="population", eps=1e-8), [0.99999998, -0.99999998, -0.99999998, 0.99999998]),
    ([1, 0, 0, 0], dict(std="unbiased"), [1.499997, -0.499999, -0.499999, -0.499999]),
    ([0.3, 0.3, 0.3, 0.3], dict(std="unbiased"), [0.0, 0.0, 0.0, 0.0]),
    ([1, 0, 0, 0], dict(std=None), [0.75, -0.25, -0.25, -0.25]),
  ],
)
def test_group_advantages_match_hand_computed_values(rewards, kwargs, expected):
  np.testing.assert_allclose(advantages.group_advantages(rewards, group_size=4, **kwargs), expected, atol=1e-6)


@pytest.mark.parametrize("std, ddof", [("unbiased", 1), ("population", 0), (None, None)])
@pytest.mark.parametrize("scale", ["group", "batch"])
def test_group_advantages_match_numpy_loop_and_sum_to_zero_per_group(std, ddof, scale):
  rng = np.random.default_rng(1)
  rewards = rng.normal(size=12).astype(np.float32)
  rewards[4:8] = 2.5  # a zero-variance group
  ids = np.arange(12) // 4
  got = np.asarray(advantages.group_advantages(rewards, group_size=4, std=std, scale=scale))
  np.testing.assert_allclose(got, np_group_advantages(rewards, ids, ddof=ddof, scale=scale), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.reshape(3, 4).sum(axis=1), 0.0, atol=1e-5)
  assert np.all(got[4:8] == 0.0)


def test_group_ids_give_the_same_advantages_as_group_size_and_are_permutation_equivariant():
  rng = np.random.default_rng(2)
  rewards = rng.integers(0, 3, 12).astype(np.float32)
  by_size = np.asarray(advantages.group_advantages(rewards, group_size=3))
  ids = np.arange(12) // 3
  np.testing.assert_allclose(advantages.group_advantages(rewards, ids), by_size, atol=1e-6)
  perm = rng.permutation(12)
  shuffled = np.asarray(advantages.group_advantages(rewards[perm], ids[perm] * 7 + 100))  # arbitrary id values
  np.testing.assert_allclose(shuffled, by_size[perm], atol=1e-6)
  np.testing.assert_allclose(shuffled, np_group_advantages(rewards[perm], ids[perm]), atol=1e-5)


def test_group_advantages_are_shift_invariant_and_scale_invariant_up_to_eps():
  rng = np.random.default_rng(3)
  rewards = rng.normal(size=8).astype(np.float32)
  base = np.asarray(advantages.group_advantages(rewards, group_size=4))
  np.testing.assert_allclose(advantages.group_advantages(rewards + 5.0, group_size=4), base, atol=1e-5)
  np.testing.assert_allclose(advantages.group_advantages(rewards * 7.0, group_size=4), base, rtol=1e-4)


def test_zero_variance_and_singleton_groups_give_exact_zero_never_nan():
  # 0.1 * 3 / 3 != 0.1 in float32 arithmetic: the constant test must be exact, not R - mean.
  rewards = np.full(6, 0.1, np.float32)
  for kwargs in (dict(std="unbiased", eps=1e-8), dict(std="population", eps=1e-8), dict(std=None)):
    assert np.all(np.asarray(advantages.group_advantages(rewards, group_size=3, **kwargs)) == 0.0)
  singletons = np.asarray(advantages.group_advantages([3.0, -1.0, 7.0], group_size=1))
  assert np.all(singletons == 0.0)
  assert np.all(np.asarray(advantages.rloo_advantages([3.0, -1.0], group_size=1)) == 0.0)


def test_invalid_rows_are_left_out_of_the_statistics_and_get_zero():
  rewards = np.array([1.0, np.nan, 0.0, 0.0, 2.0, 2.0, 5.0, 1.0], np.float32)
  valid = np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)
  ids = np.arange(8) // 4
  got = np.asarray(advantages.group_advantages(rewards, group_size=4, valid=valid))
  assert np.all(np.isfinite(got)) and got[1] == 0.0
  np.testing.assert_allclose(got, np_group_advantages(np.nan_to_num(rewards), ids, valid=valid), atol=1e-6)
  np.testing.assert_allclose(got.reshape(2, 4).sum(1), 0.0, atol=1e-6)


def test_group_advantages_match_trl_verl_and_maxtext_formulas():
  rng = np.random.default_rng(4)
  rewards = rng.integers(0, 2, 16).astype(np.float32)  # binary, some groups constant
  grouped = rewards.reshape(-1, 4).astype(np.float64)
  mean = grouped.mean(1, keepdims=True)
  trl = ((grouped - mean) / (grouped.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()  # trl: torch.std + 1e-4
  verl = ((grouped - mean) / (grouped.std(1, ddof=1, keepdims=True) + 1e-6)).ravel()  # verl: torch.std + 1e-6
  maxtext = ((grouped - mean) / (grouped.std(1, keepdims=True) + 1e-8)).ravel()  # maxtext: jnp.std + 1e-8
  np.testing.assert_allclose(advantages.group_advantages(rewards, group_size=4, eps=1e-4), trl, atol=1e-6)
  np.testing.assert_allclose(advantages.group_advantages(rewards, group_size=4, eps=1e-6), verl, atol=1e-6)
  np.testing.assert_allclose(advantages.group_advantages(rewards, group_size=4, std="population", eps=1e-8), maxtext,
                             atol=1e-6)
  # trl scale_rewards="batch": group mean, batch std.
  trl_batch = ((grouped - mean) / (rewards.astype(np.float64).std(ddof=1) + 1e-4)).ravel()
  trl_batch_ours = advantages.group_advantages(rewards, group_size=4, eps=1e-4, scale="batch")
  np.testing.assert_allclose(trl_batch_ours, trl_batch, atol=1e-6)


def test_rloo_advantages_match_leave_one_out_loop_and_sum_to_zero():
  rng = np.random.default_rng(5)
  rewards = rng.normal(size=9).astype(np.float32)
  ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  got = np.asarray(advantages.rloo_advantages(rewards, ids))
  np.testing.assert_allclose(got, np_rloo(rewards, ids), atol=1e-5)
  for group in range(3):
    assert abs(got[ids == group].sum()) < 1e-5


def test_dapo_keep_mask_keeps_groups_with_mixed_outcomes():
  rewards = [1, 1, 1, 0, 0, 0, 0, 1, 1]
  np.testing.assert_array_equal(advantages.dapo_group_keep_mask(rewards, 3), [False, False, True])


def test_soft_overlong_penalty_is_zero_then_linear_then_minus_one():
  got = advantages.soft_overlong_penalty([16384, 18432, 20480, 20481], max_len=20480, cache_len=4096)
  np.testing.assert_allclose(got, [0.0, -0.5, -1.0, -1.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation and KL
# ---------------------------------------------------------------------------------------------------------------------

AGG_L = np.array([[1, 2, 3, 99], [4, 99, 99, 99]], np.float32)
AGG_M = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)


@pytest.mark.parametrize(
  "mode, expected",
  [("token_mean", 2.5), ("seq_mean_token_mean", 3.0), ("seq_mean_token_sum_norm", 1.25), ("seq_mean_token_sum", 5.0)],
)
def test_aggregation_matches_hand_computed_values_and_ignores_empty_rows(mode, expected):
  assert float(grpo.aggregate(AGG_L, AGG_M, mode)) == pytest.approx(expected, abs=1e-6)
  with_empty = np.concatenate([AGG_L, np.full((1, 4), np.nan, np.float32)])
  mask_empty = np.concatenate([AGG_M, np.zeros((1, 4), np.float32)])
  assert float(grpo.aggregate(with_empty, mask_empty, mode)) == pytest.approx(expected, abs=1e-6)
  assert float(grpo.aggregate(AGG_L, AGG_M, mode.replace("_", "-"))) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mode", sorted(grpo.AGGREGATIONS))
def test_aggregation_matches_numpy_loop_on_random_input(mode):
  _, _, _, _, mask = _batch(seed=6)
  loss = np.random.default_rng(6).normal(size=mask.shape).astype(np.float32)
  assert float(grpo.aggregate(loss, mask, mode)) == pytest.approx(np_aggregate(loss, mask, mode), rel=1e-5)


def test_all_masked_batch_aggregates_to_zero_without_dividing_by_zero():
  for mode in grpo.AGGREGATIONS:
    assert float(grpo.aggregate(np.ones((2, 3)), np.zeros((2, 3)), mode)) == 0.0


def test_gradient_accumulation_with_global_counts_equals_the_full_batch():
  logp, old, ref, adv, mask = _batch(seed=7, batch=6)
  mask[3] = False  # an empty row inside a microbatch
  halves = (slice(0, 3), slice(3, 6))
  # The full GRPO loss, token-mean (DAPO) with the global token count: microbatch losses sum to the batch loss.
  config = grpo.GRPOConfig(agg="token_mean", beta=0.1)
  full, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)
  parts = [grpo.grpo_loss(logp[h], old[h], adv[h], mask[h], ref_logp=ref[h], config=config,
                          global_token_count=mask.sum())[0] for h in halves]
  assert float(parts[0] + parts[1]) == pytest.approx(float(full), abs=1e-6)
  # The sequence modes with the global count of non-empty rows.
  loss = np.random.default_rng(7).normal(size=mask.shape).astype(np.float32)
  for mode in ("seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"):
    whole = float(grpo.aggregate(loss, mask, mode))
    summed = sum(float(grpo.aggregate(loss[h], mask[h], mode, global_seq_count=mask.any(-1).sum())) for h in halves)
    assert summed == pytest.approx(whole, abs=1e-6), mode


def test_kl_estimators_match_closed_form_values():
  logp, ref = np.log([[0.5]]), np.log([[0.25]])
  for kind, expected in (("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147), ("k3+", 0.193147)):
    assert float(grpo.kl_penalty(logp, ref, kind)[0, 0]) == pytest.approx(expected, abs=1e-6)


def test_k3_is_nonnegative_and_zero_iff_equal():
  rng = np.random.default_rng(8)
  logp = rng.normal(size=(4, 7)).astype(np.float32)
  ref = rng.normal(size=(4, 7)).astype(np.float32)
  k3 = np.asarray(grpo.kl_penalty(logp, ref, "k3"))
  assert np.all(k3 >= 0) and np.all(k3[np.abs(logp - ref) > 1e-2] > 0)
  assert np.all(np.asarray(grpo.kl_penalty(logp, logp, "k3")) == 0.0)


def test_k3_plus_has_k3_value_and_k2_gradient():
  logp, ref = jnp.array([[-0.3, -1.2]]), jnp.array([[-0.9, -0.1]])
  grad_plus = jax.grad(lambda x: grpo.kl_penalty(x, ref, "k3+").sum())(logp)
  np.testing.assert_allclose(grad_plus, logp - ref, rtol=1e-6)  # d/dx (x - ref)^2 / 2
  np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k3+"), grpo.kl_penalty(logp, ref, "k3"), rtol=1e-6)
  assert float(grpo.kl_penalty(jnp.array([[0.0]]), jnp.array([[-30.0]]), "k3", clamp=10.0)[0, 0]) == 10.0


def verl_kl_penalty(logprob, ref_logprob, kl_penalty):
  """verl 0.9.1 `verl/trainer/ppo/core_algos.py::kl_penalty` (with `kl_penalty_forward`), transcribed in torch."""
  import torch

  def forward(kind):
    if kind in ("kl", "k1"):
      return logprob - ref_logprob
    if kind == "abs":
      return (logprob - ref_logprob).abs()
    if kind in ("mse", "k2"):
      return 0.5 * (logprob - ref_logprob).square()
    assert kind in ("low_var_kl", "k3")
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)

  base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
  forward_score = forward(base)
  if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
    return forward_score
  backward_score = 0.5 * (logprob - ref_logprob).square()
  return backward_score - backward_score.detach() + forward_score.detach()


def test_k3_plus_clamp_keeps_the_k2_gradient():
  # pi = 0.05, pi_ref = 0.8: k3 = 12.23 > c = 10. verl gives the clamped value and the unclamped k2 gradient.
  logp, ref = jnp.log(jnp.array([[0.05]])), jnp.log(jnp.array([[0.8]]))
  value, grad = jax.value_and_grad(lambda x: grpo.kl_penalty(x, ref, "k3+", clamp=10.0).sum())(logp)
  assert float(value) == pytest.approx(10.0)
  assert float(grad[0, 0]) == pytest.approx(np.log(0.05 / 0.8), rel=1e-6)  # -2.7726


@pytest.mark.parametrize("kind", ["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl", "k3+", "low_var_kl+", "k1+"])
def test_kl_penalty_matches_verl_in_value_and_gradient(kind):
  """verl clips the log-ratio at +-20 inside k3 only and clamps k3's value at 10; k1/k2 and the "+" gradient see
  the raw log-ratio, so log-ratios of -24 and +23 keep their k1/k2 gradients."""
  import torch

  rng = np.random.default_rng(11)
  logp = np.concatenate([rng.normal(-2.0, 1.5, size=(2, 6)), [[-25.0, -1.0, -0.05, -3.0, -30.0, -0.5]]]).astype(
    np.float32)
  ref = np.concatenate([rng.normal(-2.0, 1.5, size=(2, 6)), [[-1.0, -24.0, -3.0, -0.05, -0.01, -0.7]]]).astype(
    np.float32)
  weights = rng.normal(size=logp.shape).astype(np.float32)  # a non-uniform upstream gradient
  clamp = 10.0 if kind.rstrip("+") in ("k3", "low_var_kl") else None
  ours, our_grad = jax.value_and_grad(
    lambda x: jnp.sum(weights * grpo.kl_penalty(x, ref, kind, clamp=clamp)))(jnp.asarray(logp))
  logp_t = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
  theirs = verl_kl_penalty(logp_t, torch.tensor(ref, dtype=torch.float64), kind)
  (torch.tensor(weights, dtype=torch.float64) * theirs).sum().backward()
  np.testing.assert_allclose(np.asarray(grpo.kl_penalty(logp, ref, kind, clamp=clamp)), theirs.detach().numpy(),
                             rtol=2e-5, atol=1e-5)
  assert float(ours) == pytest.approx(float((torch.tensor(weights, dtype=torch.float64) * theirs).sum().detach()),
                                      rel=1e-5)
  np.testing.assert_allclose(np.asarray(our_grad), logp_t.grad.numpy(), rtol=2e-5, atol=1e-5)


def test_kl_names_of_verl_are_aliases_and_unknown_names_are_refused():
  logp, ref = jnp.array([[-0.3, -2.0]]), jnp.array([[-0.9, -0.1]])
  for alias, name in (("mse", "k2"), ("low_var_kl", "k3"), ("kl", "k1"), ("low_var_kl+", "k3+")):
    np.testing.assert_array_equal(grpo.kl_penalty(logp, ref, alias), grpo.kl_penalty(logp, ref, name))
  with pytest.raises(ValueError, match=r"kind: expected one of .*'low_var_kl'.*got 'k4'"):
    grpo.kl_penalty(logp, ref, "k4")
  with pytest.raises(ValueError, match=r"kl: expected one of .*got 'k4\+'"):
    grpo.GRPOConfig(kl="k4+")


# ---------------------------------------------------------------------------------------------------------------------
# Policy loss
# ---------------------------------------------------------------------------------------------------------------------


def test_at_ratio_one_the_loss_is_minus_aggregated_advantage_and_the_gradient_is_minus_a_w():
  logp, _, _, adv, mask = _batch(seed=9)
  modes = sorted(grpo.AGGREGATIONS)
  # On-policy (old_logp=None: old = stop_gradient(logp)), per-token advantages that are NaN on padding.
  adv_padded = np.where(mask, adv[:, None], np.nan).astype(np.float32)
  # One compile for every mode: losses [modes] and their Jacobian [modes, B, T].
  losses_fn = lambda x: jnp.stack([grpo.policy_loss(x, None, adv_padded, mask, agg=mode)[0] for mode in modes])
  weights_fn = lambda x: jnp.stack([grpo.aggregate(x, mask, mode) for mode in modes])
  losses, grads = jax.jit(lambda x: (losses_fn(x), jax.jacrev(losses_fn)(x)))(jnp.asarray(logp))
  # w_t: the weight of token t under the aggregation (the gradient of aggregate wrt the per-token value).
  weights = jax.jit(jax.jacrev(weights_fn))(jnp.zeros(mask.shape))
  adv_tokens = np.broadcast_to(adv[:, None], mask.shape)
  for k, mode in enumerate(modes):
    assert float(losses[k]) == pytest.approx(-np_aggregate(adv_tokens, mask, mode), rel=1e-5, abs=1e-6), mode
    np.testing.assert_allclose(grads[k], -adv_tokens * np.asarray(weights[k]), rtol=1e-5, atol=1e-7, err_msg=mode)
    expected_weights = {"token_mean": 1 / mask.sum(), "seq_mean_token_sum": 1 / len(mask),
                        "seq_mean_token_sum_norm": 1 / (len(mask) * mask.shape[1])}.get(mode)
    if expected_weights is None:
      expected_weights = 1 / (mask.sum(-1, keepdims=True) * len(mask))
    np.testing.assert_allclose(weights[k], mask * expected_weights, rtol=1e-6, err_msg=mode)


def test_clip_higher_zeroes_the_gradient_beyond_one_plus_eps_high_for_positive_advantage():
  old = jnp.log(jnp.array([[0.4]]))
  clipped = jnp.log(jnp.array([[0.6]]))  # r = 1.5 > 1.28
  inside = jnp.log(jnp.array([[0.5]]))  # r = 1.25 < 1.28: not clipped by 0.28, clipped by the symmetric 0.2
  grad = lambda x, **kw: jax.grad(lambda y: grpo.policy_loss(y, old, jnp.array([1.0]), jnp.ones((1, 1)), **kw)[0])(x)
  assert float(grad(clipped, eps_low=0.2, eps_high=0.28)[0, 0]) == 0.0
  assert float(grad(inside, eps_low=0.2, eps_high=0.28)[0, 0]) == pytest.approx(-1.25, rel=1e-5)
  assert float(grad(inside, eps_low=0.2)[0, 0]) == 0.0


def test_dual_clip_caps_negative_advantage_loss_like_verl():
  old = jnp.log(jnp.array([[0.1]]))
  new = jnp.log(jnp.array([[0.5]]))  # r = 5
  one = jnp.ones((1, 1))
  capped, metrics = grpo.policy_loss(new, old, jnp.array([-1.0]), one, eps_low=0.2, dual_clip=3.0, agg="token_mean")
  uncapped, _ = grpo.policy_loss(new, old, jnp.array([-1.0]), one, eps_low=0.2, agg="token_mean")
  assert float(capped) == pytest.approx(3.0, rel=1e-6) and float(uncapped) == pytest.approx(5.0, rel=1e-6)
  assert float(metrics["dual_clip_frac"]) == 1.0
  logp, old_r, _, adv, mask = _batch(seed=10, spread=1.5)
  adv_tokens = np.broadcast_to(adv[:, None], mask.shape).astype(np.float32)
  ours, metrics = grpo.policy_loss(logp, old_r, adv_tokens, mask, eps_low=0.2, eps_high=0.28, dual_clip=3.0,
                                   agg="token_mean")
  verl, verl_lower = verl_policy_loss_vanilla(old_r, logp, adv_tokens, mask, clip_low=0.2, clip_high=0.28,
                                              clip_ratio_c=3.0)
  assert float(ours) == pytest.approx(verl, rel=1e-5)
  assert float(metrics["dual_clip_frac"]) == pytest.approx(verl_lower, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_matches_trl_compute_loss(loss_type):
  logp, old, ref, adv, mask = _batch(seed=11, spread=0.4)
  mask_f = mask.astype(np.float32)
  agg, extra = {
    "grpo": ("seq_mean_token_mean", {}),
    "bnpo": ("token_mean", {}),
    "dr_grpo": ("seq_mean_token_sum_norm", {}),
    "dapo": ("token_mean", {"global_token_count": 40.0}),
  }[loss_type]
  norm_len = 8 if loss_type == "dr_grpo" else None
  config = grpo.GRPOConfig(eps_low=0.2, eps_high=0.28, beta=0.04, agg=agg, norm_len=norm_len)
  loss, metrics = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config, **extra)
  trl_loss, low, high, region = trl_compute_loss(logp, old, ref, adv, mask_f, beta=0.04, eps_low=0.2, eps_high=0.28,
                                                 loss_type=loss_type, max_len=8, n_items=40.0)
  assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
  assert float(metrics["clip_frac_low"]) == pytest.approx(low, abs=1e-6)
  assert float(metrics["clip_frac_high"]) == pytest.approx(high, abs=1e-6)
  assert float(metrics["clip_frac"]) == pytest.approx(region, abs=1e-6)
  assert region > 0  # the inputs exercise the clip


@pytest.mark.parametrize("loss_type, agg", [("grpo", "seq_mean_token_mean"), ("dr_grpo", "seq_mean_token_sum_norm")])
def test_trl_counts_empty_rows_in_its_grpo_and_dr_grpo_losses_and_we_do_not(loss_type, agg):
  logp, old, ref, adv, mask = _batch(seed=13, spread=0.4)
  mask[1] = False  # an empty completion
  rows, nonempty = mask.shape[0], int(mask.any(-1).sum())
  config = grpo.GRPOConfig(eps_low=0.2, eps_high=0.28, beta=0.04, agg=agg, norm_len=8)
  trl_loss = trl_compute_loss(logp, old, ref, adv, mask.astype(np.float32), beta=0.04, eps_low=0.2, eps_high=0.28,
                              loss_type=loss_type, max_len=8)[0]
  ours, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)
  assert float(ours) * nonempty / rows == pytest.approx(trl_loss, rel=1e-5)
  counted, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config, global_seq_count=rows)
  assert float(counted) == pytest.approx(trl_loss, rel=1e-5)  # trl's count, given explicitly


def test_rloo_gives_a_group_of_one_zero_as_verls_vectorized_rloo_and_not_r_as_its_loop():
  rewards, ids = np.array([2.0, 1.0, 0.0, 5.0], np.float32), np.array([0, 0, 0, 1])
  ours = np.asarray(advantages.rloo_advantages(rewards, ids))
  counts = np.bincount(ids)[ids].astype(np.float32)
  sums = np.bincount(ids, weights=rewards)[ids]
  verl_vectorized = (counts * rewards - sums) / np.maximum(counts - 1, 1) * (counts > 1)
  np.testing.assert_allclose(ours, verl_vectorized, atol=1e-6)
  assert ours[3] == 0.0 and rewards[3] == 5.0  # verl's loop version keeps A = R = 5 for the lone row


@pytest.mark.parametrize("variant, loss_algo", [("grpo", "grpo"), ("gspo_token", "gspo-token")])
def test_grpo_loss_matches_tunix_grpo_loss_fn(variant, loss_algo):
  logp, old, ref, adv, mask = _batch(seed=12, spread=0.05)
  config = grpo.grpo_config(variant, eps_low=0.03, eps_high=0.05, beta=0.04)
  loss, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)
  expected = tunix_grpo_loss(logp, old, ref, adv, mask.astype(np.float32), beta=0.04, epsilon=0.03, epsilon_high=0.05,
                             loss_algo=loss_algo)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_gspo_sequence_ratio_is_the_geometric_mean_token_ratio():
  old = jnp.log(jnp.array([[0.5, 0.4, 0.9]]))
  new = jnp.log(jnp.array([[0.55, 0.4, 0.8]]))
  mask = jnp.ones((1, 3), bool)
  for level in ("sequence", "sequence_token"):
    _, metrics = grpo.policy_loss(new, old, jnp.array([1.0]), mask, level=level)
    assert float(metrics["ratio_mean"]) == pytest.approx(0.9925370, abs=1e-6)
  expected = np.exp(np.mean(np.log([0.55 / 0.5, 1.0, 0.8 / 0.9])))
  assert float(metrics["ratio_mean"]) == pytest.approx(expected, abs=1e-6)


def test_gspo_token_equals_gspo_in_value_and_gradient_for_sequence_advantages():
  logp, old, _, adv, mask = _batch(seed=13, spread=0.02)
  modes = sorted(grpo.AGGREGATIONS)

  def losses(level, x):
    return jnp.stack([
      grpo.policy_loss(x, old, adv, mask, eps_low=3e-3, eps_high=4e-3, level=level, agg=mode)[0] for mode in modes
    ])

  def values_and_jacobians(x):
    return [(losses(level, x), jax.jacrev(functools.partial(losses, level))(x)) for level in ("sequence",
                                                                                            "sequence_token")]

  (seq_values, seq_grads), (tok_values, tok_grads) = jax.jit(values_and_jacobians)(jnp.asarray(logp))
  np.testing.assert_allclose(seq_values, tok_values, rtol=1e-6)
  np.testing.assert_allclose(seq_grads, tok_grads, rtol=1e-5, atol=1e-7)
  assert np.any(np.asarray(seq_grads) == 0) and np.any(np.asarray(seq_grads) != 0)  # some sequences clipped, some not


def test_gspo_token_gives_each_token_its_own_advantage_while_gspo_averages_them():
  logp, old, _, _, mask = _batch(seed=18, spread=0.02)
  adv_tokens = np.random.default_rng(18).normal(size=mask.shape).astype(np.float32)

  def grads(x):
    loss = lambda level, y: grpo.policy_loss(y, old, adv_tokens, mask, level=level, agg="seq_mean_token_mean")[0]
    return jax.grad(functools.partial(loss, "sequence_token"))(x), jax.grad(functools.partial(loss, "sequence"))(x)

  token_grad, seq_grad = jax.jit(grads)(jnp.asarray(logp))
  lengths = mask.sum(-1, keepdims=True)
  s = np.exp(((logp - old) * mask).sum(-1, keepdims=True) / lengths)  # within 1 +- 0.2: nothing clipped
  w = mask / lengths / len(mask)
  np.testing.assert_allclose(token_grad, -w * adv_tokens * s, rtol=1e-5, atol=1e-8)
  # GSPO: d s_i / d logp_t = s_i / |y_i|, shared by every token of the sequence.
  np.testing.assert_allclose(seq_grad, -(mask * s) / lengths * (w * adv_tokens).sum(-1, keepdims=True), rtol=1e-5,
                             atol=1e-8)


def test_grpo_loss_gradient_matches_analytic_and_finite_difference():
  logp, old, ref, adv, mask = _batch(seed=14, batch=4, length=4, spread=0.3)
  config = grpo.GRPOConfig(eps_low=0.2, eps_high=0.28, beta=0.1, agg="seq_mean_token_mean")
  loss_fn = jax.jit(lambda x: grpo.grpo_loss(x, old, adv, mask, ref_logp=ref, config=config)[0])
  grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(logp)))
  # Analytic: w_t (-A r [unclipped branch active] + beta (1 - pi_ref / pi)), w_t = 1 / (B' |o_i|).
  ratio = np.exp(logp - old)
  a = adv[:, None]
  active = ~(((a > 0) & (ratio > 1.28)) | ((a < 0) & (ratio < 0.8)))
  weights = mask / mask.sum(-1, keepdims=True) / mask.any(-1).sum()
  analytic = weights * (-a * ratio * active + 0.1 * (1 - np.exp(ref - logp)))
  np.testing.assert_allclose(grad, analytic, rtol=1e-4, atol=1e-7)
  # Central finite differences on every completion token (none sits on a clip kink for this seed).
  assert np.all(np.minimum(np.abs(ratio - 1.28), np.abs(ratio - 0.8)) > 5e-3)
  h = 1e-3
  for i, t in zip(*np.nonzero(mask)):
    step = np.zeros_like(logp)
    step[i, t] = h
    numeric = (float(loss_fn(logp + step)) - float(loss_fn(logp - step))) / (2 * h)
    assert numeric == pytest.approx(grad[i, t], abs=2e-3)


def test_padding_values_never_reach_the_loss_or_its_gradient():
  logp, old, ref, adv, mask = _batch(seed=15)
  polluted = [np.where(mask, x, v).astype(np.float32) for x, v in ((logp, -np.inf), (old, np.nan), (ref, np.inf))]
  config = grpo.GRPOConfig(beta=0.2, eps_high=0.28)
  clean_loss, clean_metrics = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)
  loss_fn = lambda x: grpo.grpo_loss(x, polluted[1], adv, mask, ref_logp=polluted[2], config=config)
  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(polluted[0]))
  assert float(loss) == pytest.approx(float(clean_loss), rel=1e-6)
  assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[~mask] == 0.0)
  for key, value in clean_metrics.items():
    assert float(metrics[key]) == pytest.approx(float(value), rel=1e-6, abs=1e-7), key


def test_empty_completions_contribute_nothing_and_an_all_empty_batch_is_finite():
  logp, old, ref, adv, mask = _batch(seed=16)
  config = grpo.GRPOConfig(beta=0.1)
  base, _ = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)
  extra = lambda x, v: np.concatenate([x, np.full((1,) + x.shape[1:], v, np.float32)])
  mask_more = np.concatenate([mask, np.zeros((1, mask.shape[1]), bool)])
  more, metrics = grpo.grpo_loss(extra(logp, 0.3), extra(old, -5.0), extra(adv, 9.0), mask_more,
                                 ref_logp=extra(ref, 1.0), config=config)
  assert float(more) == pytest.approx(float(base), rel=1e-6)
  assert float(metrics["num_sequences"]) == mask.any(-1).sum()
  empty_mask = np.zeros_like(mask)
  loss, metrics = grpo.grpo_loss(logp, old, adv, empty_mask, ref_logp=ref, config=config)
  grad = jax.grad(lambda x: grpo.grpo_loss(x, old, adv, empty_mask, ref_logp=ref, config=config)[0])(logp)
  assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_metrics_report_clip_fractions_ratio_statistics_kl_and_entropy():
  old = jnp.log(jnp.full((1, 5), 0.4))
  new = jnp.log(jnp.array([[0.5, 0.2, 0.4, 0.6, 0.72]]))  # r = 1.25, 0.5, 1.0, 1.5, 1.8 (the last one padded)
  mask = jnp.array([[1, 1, 1, 1, 0]])
  adv = jnp.array([[1.0, -1.0, 1.0, 1.0, 1.0]])
  entropy = jnp.array([[1.0, 2.0, 3.0, 2.0, 100.0]])
  config = grpo.GRPOConfig(beta=0.0, eps_low=0.2, eps_high=0.28, entropy_coef=0.5)
  loss, m = grpo.grpo_loss(new, old, adv, mask, ref_logp=old, entropy=entropy, config=config)
  ratio = np.array([1.25, 0.5, 1.0, 1.5])
  # r = 1.25 with A > 0 lies inside 1 + eps_high = 1.28 (it would be clipped by the symmetric 1.2).
  assert float(m["clip_frac_high"]) == pytest.approx(1 / 4) and float(m["clip_frac_low"]) == pytest.approx(1 / 4)
  assert float(m["clip_frac"]) == pytest.approx(2 / 4)
  assert float(m["ratio_mean"]) == pytest.approx(ratio.mean(), rel=1e-6)
  assert float(m["ratio_min"]) == pytest.approx(0.5) and float(m["ratio_max"]) == pytest.approx(1.5)
  assert float(m["approx_kl"]) == pytest.approx(np.mean(ratio - 1 - np.log(ratio)), rel=1e-5)
  assert float(m["entropy"]) == pytest.approx(2.0)
  probs_new = np.array([0.5, 0.2, 0.4, 0.6])
  k3 = 0.4 / probs_new - np.log(0.4 / probs_new) - 1
  assert float(m["kl"]) == pytest.approx(k3.mean(), rel=1e-5)
  pg = np.mean([-1.25, 0.8, -1.0, -1.28])  # per-token max(-A r, -A clip(r, 0.8, 1.28)) on the four tokens
  assert float(m["pg_loss"]) == pytest.approx(pg, rel=1e-5)
  assert float(loss) == pytest.approx(pg - 0.5 * 2.0, rel=1e-5)


def test_variants_are_registered_by_name_and_jit_with_a_static_config():
  assert grpo.grpo_config("dapo").eps_high == 0.28 and grpo.grpo_config("dapo").agg == "token_mean"
  assert grpo.grpo_config("dr-grpo").std is None and grpo.grpo_config("dr_grpo").agg == "seq_mean_token_sum_norm"
  assert grpo.grpo_config("gspo").level == "sequence" and grpo.grpo_config("gspo").eps_low == 3e-4
  config = grpo.grpo_config(**{"variant": "dapo", "beta": 0.01})
  assert config.beta == 0.01 and config.eps_high == 0.28
  with pytest.raises(ValueError, match="variant"):
    grpo.grpo_config("ppo2")
  with pytest.raises(ValueError, match="unknown"):
    grpo.grpo_config("grpo", epsilon=0.1)
  with pytest.raises(ValueError, match="agg"):
    grpo.GRPOConfig(agg="sum")
  logp, old, ref, adv, mask = _batch(seed=17)
  config = grpo.grpo_config("dapo")
  outer = jax.jit(lambda *args: grpo.grpo_loss(*args, ref_logp=ref, config=config)[0])
  eager = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, config=config)[0]
  assert float(outer(logp, old, adv, mask)) == pytest.approx(float(eager), rel=1e-6)
  rewards = np.array([1.0, 0.0, 0.5, 0.5])
  np.testing.assert_allclose(grpo.grpo_advantages(rewards, grpo.grpo_config("dr_grpo"), group_size=2),
                             [0.5, -0.5, 0.0, 0.0])
  np.testing.assert_allclose(grpo.grpo_advantages(rewards, grpo.grpo_config(advantage="rloo"), group_size=2),
                             [1.0, -1.0, 0.0, 0.0])


def test_bad_inputs_raise_value_errors_naming_the_argument():
  logp = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="old_logp"):
    grpo.policy_loss(logp, np.zeros((2, 4)), np.zeros(2), np.ones((2, 3)))
  with pytest.raises(ValueError, match="advantages"):
    grpo.policy_loss(logp, logp, np.zeros(3), np.ones((2, 3)))
  with pytest.raises(ValueError, match="mask"):
    grpo.policy_loss(logp, logp, np.zeros(2), np.ones((3, 2)))
  with pytest.raises(ValueError, match="dual_clip"):
    grpo.policy_loss(logp, logp, np.zeros(2), np.ones((2, 3)), dual_clip=0.5)
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.grpo_loss(logp, logp, np.zeros(2), np.ones((2, 3)), config=grpo.GRPOConfig(beta=0.1))
  with pytest.raises(ValueError, match="group_size"):
    advantages.group_advantages(np.zeros(6), group_size=4)
  with pytest.raises(ValueError, match="group_ids"):
    advantages.group_advantages(np.zeros(6), np.zeros(5, int))
  with pytest.raises(ValueError, match="rewards"):
    advantages.group_advantages(np.zeros((2, 3)), group_size=3)
