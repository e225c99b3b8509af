"""PDCR (jaxagents/rl/pdcr.py) against independent numpy/python-loop references, hand-worked cases and planted
perception/reasoning steps."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.rl import pdcr

DELIM = 9

# Jitted once per shape and static configuration: much faster on CPU than op-by-op dispatch.
_STATIC = ("group_size", "pool", "split_pool", "center")
_pdcr_advantages = jax.jit(pdcr.pdcr_advantages, static_argnames=_STATIC)
_pacr_advantages = jax.jit(pdcr.pacr_advantages, static_argnames=("group_size", "pool", "center"))
_segment_steps = jax.jit(pdcr.segment_steps, static_argnames=("delimiter_ids", "max_steps"))
_otsu_split = jax.jit(pdcr.otsu_split)
_clusterwise_minmax = jax.jit(pdcr.clusterwise_minmax, static_argnames=("num_clusters", "center"))
_confidence_queries = jax.jit(pdcr.confidence_queries, static_argnames=("pad_id",))
_confidence_from_model = jax.jit(pdcr.confidence_from_model, static_argnums=0)
_visual_dependence_from_model = jax.jit(
  pdcr.visual_dependence_from_model, static_argnums=0, static_argnames="max_steps"
)


# ---------------------------------------------------------------- independent references (python loops, float64)


def _ref_segment(ids, mask, delimiters, max_steps):
  """The segmentation rule written token by token: a step starts at the first non-delimiter after a delimiter."""
  batch, length = ids.shape
  step_of_token = np.full((batch, length), -1)
  for b in range(batch):
    step, seen_content, pending = 0, False, False
    for t in range(length):
      if not mask[b, t]:
        continue
      if ids[b, t] in delimiters:
        pending = pending or seen_content
      else:
        if pending:
          step, pending = step + 1, False
        seen_content = True
      step_of_token[b, t] = min(step, max_steps - 1)
  step_mask = np.zeros((batch, max_steps), bool)
  step_end = np.full((batch, max_steps), -1)
  for b, t in zip(*np.nonzero(step_of_token >= 0)):
    step_mask[b, step_of_token[b, t]] = True
    step_end[b, step_of_token[b, t]] = max(step_end[b, step_of_token[b, t]], t)
  return step_of_token, step_mask, step_end


def _ref_otsu(values):
  """Brute force over every split of the sorted values: (threshold, within-class SSE), or None if degenerate."""
  v = np.sort(np.asarray(values, np.float64))
  if len(v) < 2 or v[-1] - v[0] < 1e-8:
    return None
  sse = [((v[:k] - v[:k].mean()) ** 2).sum() + ((v[k:] - v[k:].mean()) ** 2).sum() for k in range(1, len(v))]
  k = int(np.argmin(sse))
  return v[k], sse[k]


def _ref_minmax(values, empty_value=0.0, center=False):
  v = np.asarray(values, np.float64)
  if len(v) < 2 or v.max() - v.min() < 1e-8:
    return np.full(len(v), empty_value)
  out = (v - v.min()) / (v.max() - v.min())
  return out - out.mean() if center else out


def _ref_pdcr(outcome_adv, conf, vds, step_mask, step_of_token, *, group_size, lambda_o, lambda_p, gamma,
              pool="group", is_visual=None, center=False):
  batch, max_steps = step_mask.shape
  gains = np.where(step_mask, conf[:, 1:] - conf[:, :-1], 0.0)
  returns = np.zeros((batch, max_steps))
  for b, k in itertools.product(range(batch), range(max_steps)):
    if step_mask[b, k]:
      returns[b, k] = sum(gamma ** (m - k) * gains[b, m] for m in range(k, max_steps) if step_mask[b, m])
  if is_visual is None:
    split = _ref_otsu(vds[step_mask])
    is_visual = np.zeros_like(step_mask) if split is None else step_mask & (vds > split[0])
  clusters = {}
  for b, k in zip(*np.nonzero(step_mask)):
    key = (b // group_size if pool == "group" else 0, bool(is_visual[b, k]))
    clusters.setdefault(key, []).append((b, k))
  step_adv = np.zeros((batch, max_steps))
  for members in clusters.values():
    normalised = _ref_minmax([returns[b, k] for b, k in members], center=center)
    for (b, k), value in zip(members, normalised):
      step_adv[b, k] = value
  tokens = np.zeros(step_of_token.shape)
  for b, t in itertools.product(range(step_of_token.shape[0]), range(step_of_token.shape[1])):
    s = step_of_token[b, t]
    tokens[b, t] = lambda_o * outcome_adv[b] + (lambda_p * step_adv[b, s] if s >= 0 else 0.0)
  return tokens, step_adv, is_visual


def _zscore(rewards, group_size):
  r = np.asarray(rewards, np.float64).reshape(-1, group_size)
  return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)).ravel()


# ---------------------------------------------------------------- segmentation


def test_segment_steps_hand_example():
  ids = np.array([[5, 6, DELIM, 7, DELIM, DELIM, 8, 0], [DELIM, 1, 2, 3, DELIM, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])
  mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
  seg = _segment_steps(ids, mask, delimiter_ids=(DELIM,), max_steps=4)
  # Row 0: a run of two delimiters closes step 1; row 1: leading/trailing delimiters stay in the only step;
  # row 2: no delimiter at all is one step.
  np.testing.assert_array_equal(seg.step_of_token, [[0, 0, 0, 1, 1, 1, 2, -1], [0, 0, 0, 0, 0, -1, -1, -1], [0] * 8])
  np.testing.assert_array_equal(seg.step_mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(seg.step_end, [[2, 5, 6, -1], [4, -1, -1, -1], [7, -1, -1, -1]])


@pytest.mark.parametrize("max_steps", [2, 6])
def test_segment_steps_matches_token_loop_on_random_rollouts(max_steps):
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 6, size=(6, 17))
  mask = rng.random((6, 17)) < 0.85
  mask[0] = False  # an empty rollout has no steps
  delimiters = (0, 3)
  seg = _segment_steps(ids, mask, delimiter_ids=delimiters, max_steps=max_steps)
  step_of_token, step_mask, step_end = _ref_segment(ids, mask, delimiters, max_steps)
  np.testing.assert_array_equal(seg.step_of_token, step_of_token)
  np.testing.assert_array_equal(seg.step_mask, step_mask)
  np.testing.assert_array_equal(seg.step_end, step_end)


def test_segment_steps_merges_overflow_into_last_step():
  ids = np.array([[1, DELIM, 2, DELIM, 3, DELIM, 4]])
  seg = _segment_steps(ids, np.ones_like(ids), delimiter_ids=(DELIM,), max_steps=2)
  np.testing.assert_array_equal(seg.step_of_token, [[0, 0, 1, 1, 1, 1, 1]])


def test_segment_steps_rejects_bad_inputs():
  ids = np.zeros((2, 4), np.int32)
  with pytest.raises(ValueError, match="mask"):
    _segment_steps(ids, np.ones((2, 3)), delimiter_ids=(1,), max_steps=2)
  with pytest.raises(ValueError, match="token_ids"):
    _segment_steps(ids.astype(np.float32), np.ones((2, 4)), delimiter_ids=(1,), max_steps=2)
  with pytest.raises(ValueError, match="delimiter_ids"):
    _segment_steps(ids, np.ones((2, 4)), delimiter_ids=(), max_steps=2)
  with pytest.raises(ValueError, match="max_steps"):
    _segment_steps(ids, np.ones((2, 4)), delimiter_ids=(1,), max_steps=0)


# ---------------------------------------------------------------- confidence and visual dependence


def test_confidence_queries_append_answer_after_each_step_prefix():
  ids = np.array([[5, 6, DELIM, 7, DELIM, 8, 0], [4, 4, 4, 0, 0, 0, 0]])
  mask = np.array([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])
  seg = _segment_steps(ids, mask, delimiter_ids=(DELIM,), max_steps=3)
  answer = np.array([[21, 22, 0], [23, 0, 0]])
  answer_mask = np.array([[1, 1, 0], [1, 0, 0]])
  q = _confidence_queries(ids, seg, answer, answer_mask, pad_id=-1)
  assert q["tokens"].shape == (2, 4, 10)
  expected = {
    (0, 0): [21, 22], (0, 1): [5, 6, DELIM, 21, 22], (0, 2): [5, 6, DELIM, 7, DELIM, 21, 22],
    (0, 3): [5, 6, DELIM, 7, DELIM, 8, 21, 22], (1, 0): [23], (1, 1): [4, 4, 4, 23], (1, 2): [23], (1, 3): [23],
  }
  for (b, k), seq in expected.items():
    row = np.asarray(q["tokens"][b, k])
    np.testing.assert_array_equal(row[: len(seq)], seq)
    assert (row[len(seq):] == -1).all()
    np.testing.assert_array_equal(q["mask"][b, k], np.arange(10) < len(seq))
    n_answer = int(answer_mask[b].sum())
    np.testing.assert_array_equal(
      q["answer_mask"][b, k], (np.arange(10) >= len(seq) - n_answer) & (np.arange(10) < len(seq))
    )
  np.testing.assert_array_equal(q["rollout_index"], [[0] * 4, [1] * 4])


def test_confidence_from_model_sums_answer_logprobs_per_query():
  ids = np.array([[5, DELIM, 7, DELIM, 8], [1, 2, DELIM, 3, 0]])
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
  seg = _segment_steps(ids, mask, delimiter_ids=(DELIM,), max_steps=3)
  answer, answer_mask = np.array([[30, 31], [32, 0]]), np.array([[1, 1], [1, 0]])
  queries = _confidence_queries(ids, seg, answer, answer_mask)

  def logprob_fn(scale, batch):  # depends on the token, its position and the rollout
    pos = jnp.arange(batch["tokens"].shape[1])
    return -scale * (batch["tokens"] + 0.5 * pos + 10.0 * batch["rollout_index"][:, None])

  conf = _confidence_from_model(logprob_fn, 0.01, queries)
  ends = [[-1, 1, 3, 4], [-1, 2, 3, -1]]
  for b, k in itertools.product(range(2), range(4)):
    prefix = ends[b][k] + 1 if (k == 0 or ends[b][k] >= 0) else 0
    expected = sum(
      -0.01 * (answer[b, j] + 0.5 * (prefix + j) + 10.0 * b) for j in range(int(answer_mask[b].sum()))
    )
    np.testing.assert_allclose(conf[b, k], expected, rtol=1e-6)


def test_visual_dependence_sums_logprob_gap_over_each_step():
  rng = np.random.default_rng(2)
  ids = np.array([[1, DELIM, 2, 3, DELIM, 4], [1, 2, 3, 4, 5, 6]])
  mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  seg = _segment_steps(ids, mask, delimiter_ids=(DELIM,), max_steps=3)
  logp_image, logp_white = -rng.random((2, 6)), -rng.random((2, 6))
  vds = _visual_dependence_from_model(
    lambda params, batch: batch * params, 1.0, logp_image, logp_white, seg.step_of_token, max_steps=3
  )
  expected = np.zeros((2, 3))
  for b, t in zip(*np.nonzero(mask)):
    expected[b, seg.step_of_token[b, t]] += logp_image[b, t] - logp_white[b, t]
  np.testing.assert_allclose(vds, expected, rtol=1e-6, atol=1e-7)


def test_gains_and_discounted_returns_hand_numbers():
  conf = np.array([[-5.0, -4.0, -2.0, 2.0], [-1.0, -3.0, 0.0, 0.0]])
  step_mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
  gains = pdcr.confidence_gains(conf, step_mask)
  np.testing.assert_allclose(gains, [[1.0, 2.0, 4.0], [-2.0, 0.0, 0.0]])
  # γ = 0.5: G_3 = 4, G_2 = 2 + 0.5·4, G_1 = 1 + 0.5·2 + 0.25·4.
  np.testing.assert_allclose(pdcr.process_returns(gains, step_mask, 0.5), [[3.0, 4.0, 4.0], [-2.0, 0.0, 0.0]])


def test_process_returns_with_unit_gamma_is_reverse_cumsum():
  rng = np.random.default_rng(3)
  gains = rng.standard_normal((3, 5)).astype(np.float32)
  step_mask = np.arange(5)[None, :] < np.array([[5], [3], [1]])
  returns = pdcr.process_returns(gains, step_mask, 1.0)
  masked = np.where(step_mask, gains, 0.0)
  expected = np.where(step_mask, np.cumsum(masked[:, ::-1], axis=1)[:, ::-1], 0.0)
  np.testing.assert_allclose(returns, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Otsu split and min-max


def test_otsu_splits_a_bimodal_sample_at_the_gap():
  scores = np.array([0.05, 0.1, 0.15, 0.2, 1.8, 2.0, 2.5], np.float32)
  is_visual, threshold = _otsu_split(scores, np.ones(7, bool))
  np.testing.assert_allclose(threshold, 0.2, rtol=1e-7)
  np.testing.assert_array_equal(is_visual, [0, 0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("seed", range(4))
def test_otsu_minimises_within_class_sse_like_brute_force(seed):
  rng = np.random.default_rng(seed)
  scores = np.concatenate([rng.normal(0, 1, 9), rng.normal(3, 1.5, 5)]).astype(np.float32)
  mask = rng.random(14) < 0.8
  is_visual, threshold = _otsu_split(scores, mask)
  best_threshold, best_sse = _ref_otsu(scores[mask])
  valid = np.sort(scores[mask].astype(np.float64))
  low, high = valid[valid <= float(threshold)], valid[valid > float(threshold)]
  sse = ((low - low.mean()) ** 2).sum() + ((high - high.mean()) ** 2).sum()
  np.testing.assert_allclose(sse, best_sse, rtol=1e-5)
  np.testing.assert_allclose(threshold, best_threshold, rtol=1e-6)
  np.testing.assert_array_equal(is_visual, mask & (scores > float(threshold)))


def test_otsu_ties_at_threshold_go_to_reasoning_and_degenerate_pools_have_no_perception():
  is_visual, threshold = _otsu_split(np.array([0.0, 0.0, 0.0, 1.0, 1.0]), np.ones(5, bool))
  assert float(threshold) == 0.0
  np.testing.assert_array_equal(is_visual, [0, 0, 0, 1, 1])
  for scores, mask in [([1.0, 1.0, 1.0], [1, 1, 1]), ([0.3, 5.0, 7.0], [0, 1, 0]), ([0.3, 5.0], [0, 0])]:
    is_visual, threshold = _otsu_split(np.array(scores), np.array(mask, bool))
    assert not np.asarray(is_visual).any()
    assert np.isfinite(threshold)


def test_clusterwise_minmax_matches_per_cluster_loop():
  rng = np.random.default_rng(4)
  values = rng.standard_normal(20).astype(np.float32)
  ids = rng.integers(0, 4, 20)
  ids[ids == 3] = 2
  ids[5] = 3  # a singleton cluster
  pool_mask = rng.random(20) < 0.9
  pool_mask[5] = True
  for center in (False, True):
    out, fallback = _clusterwise_minmax(values, ids, pool_mask, num_clusters=5, empty_value=-7.0, center=center)
    expected = np.zeros(20)
    for c in range(5):
      members = np.nonzero(pool_mask & (ids == c))[0]
      if len(members):
        expected[members] = _ref_minmax(values[members], empty_value=-7.0, center=center)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fallback, [False, False, False, True, False])
  out, _ = _clusterwise_minmax(values, ids, pool_mask, num_clusters=5, empty_value=0.0)
  for c in range(3):
    members = pool_mask & (ids == c)
    assert np.isclose(out[members].min(), 0.0) and np.isclose(out[members].max(), 1.0)
  assert float(out[5]) == 0.0


def test_clusterwise_minmax_constant_cluster_falls_back():
  out, fallback = _clusterwise_minmax(
    np.array([2.0, 2.0, 1.0, 3.0]), np.array([0, 0, 1, 1]), np.ones(4, bool), num_clusters=2, empty_value=0.5
  )
  np.testing.assert_allclose(out, [0.5, 0.5, 0.0, 1.0])
  np.testing.assert_array_equal(fallback, [True, False])


# ---------------------------------------------------------------- PDCR advantages


def _pdcr_inputs(seed=5):
  rng = np.random.default_rng(seed)
  batch, max_steps, length = 4, 4, 12
  num_steps = np.array([4, 3, 2, 4])
  step_mask = np.arange(max_steps)[None, :] < num_steps[:, None]
  conf = np.cumsum(rng.normal(0.3, 1.0, (batch, max_steps + 1)), axis=1).astype(np.float32) - 4.0
  planted = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], bool) & step_mask
  vds = np.where(planted, rng.normal(3.0, 0.3, planted.shape), rng.normal(0.2, 0.1, planted.shape))
  vds = np.where(step_mask, vds, 0.0).astype(np.float32)
  # Three tokens per step; the last tokens of row 1 are outside any step (e.g. the answer).
  step_of_token = np.repeat(np.arange(max_steps), 3)[None, :].repeat(batch, 0)
  step_of_token = np.where(step_of_token < num_steps[:, None], step_of_token, -1)
  outcome = _zscore([1.0, 0.0, 0.0, 1.0], group_size=2).astype(np.float32)
  return outcome, conf, vds, step_mask, step_of_token.astype(np.int32), planted, length


@pytest.mark.parametrize("pool", ["group", "batch"])
@pytest.mark.parametrize("center", [False, True])
def test_pdcr_advantages_match_reference_loop(pool, center):
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  kwargs = dict(group_size=2, lambda_o=1.0, lambda_p=0.5, gamma=0.9, pool=pool, center=center)
  adv, metrics = _pdcr_advantages(outcome, conf, vds, step_mask, step_of_token, **kwargs)
  expected, step_adv, is_visual = _ref_pdcr(outcome, conf, vds, step_mask, step_of_token, **kwargs)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["step_advantages"], step_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(metrics["is_visual"], is_visual)


def test_pdcr_recovers_planted_perception_steps_from_token_logprobs():
  rng = np.random.default_rng(6)
  batch, length, max_steps = 6, 24, 5
  ids = rng.integers(10, 20, (batch, length))
  ids[:, 4::5] = DELIM  # five-token steps
  mask = np.ones((batch, length), bool)
  seg = _segment_steps(ids, mask, delimiter_ids=(DELIM,), max_steps=max_steps)
  planted = rng.random((batch, max_steps)) < 0.3
  planted[0, 0], planted[1, 2] = True, False
  # Perception tokens lose ~1 nat each when the image is whitened; reasoning tokens ~0.02.
  step_tokens = np.asarray(seg.step_of_token)
  token_gap = np.where(planted[np.arange(batch)[:, None], step_tokens], 1.0, 0.02)
  token_gap += rng.normal(0, 0.01, (batch, length))
  logp_image = -rng.random((batch, length))
  vds = jax.jit(pdcr.visual_dependence_scores, static_argnames="max_steps")(
    logp_image, logp_image - token_gap, seg.step_of_token, max_steps=max_steps
  )
  conf = np.cumsum(rng.normal(0.2, 1.0, (batch, max_steps + 1)), axis=1)
  _, metrics = _pdcr_advantages(
    np.zeros(batch), conf, vds, seg.step_mask, seg.step_of_token, group_size=3, lambda_o=1.0, lambda_p=1.0, gamma=1.0
  )
  np.testing.assert_array_equal(metrics["is_visual"], planted & np.asarray(seg.step_mask))
  np.testing.assert_allclose(metrics["perception_fraction"], planted.mean(), rtol=1e-6)


def test_pdcr_with_zero_process_weight_equals_grpo_outcome_advantage():
  outcome, conf, vds, step_mask, step_of_token, _, length = _pdcr_inputs()
  adv, _ = _pdcr_advantages(
    outcome, conf, vds, step_mask, step_of_token, group_size=2, lambda_o=1.0, lambda_p=0.0, gamma=1.0
  )
  np.testing.assert_array_equal(adv, np.broadcast_to(outcome[:, None], (4, length)))
  a = 0.5 / (np.sqrt(0.5) + 1e-6)  # (1 − 0.5) / (unbiased std of {1, 0} + eps)
  np.testing.assert_allclose(outcome, [a, -a, -a, a], rtol=1e-6)


def test_pdcr_tokens_outside_steps_get_outcome_term_only():
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  adv, _ = _pdcr_advantages(
    outcome, conf, vds, step_mask, step_of_token, group_size=2, lambda_o=0.7, lambda_p=3.0, gamma=1.0
  )
  outside = step_of_token < 0
  assert outside.any()
  np.testing.assert_allclose(np.asarray(adv)[outside], (0.7 * outcome[:, None] * np.ones_like(adv))[outside])


def test_pdcr_process_term_lies_in_unit_interval_per_cluster():
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  _, metrics = _pdcr_advantages(
    outcome, conf, vds, step_mask, step_of_token, group_size=4, lambda_o=1.0, lambda_p=1.0, gamma=1.0, pool="batch"
  )
  step_adv, is_visual = np.asarray(metrics["step_advantages"]), np.asarray(metrics["is_visual"])
  for cluster in (is_visual & step_mask, ~is_visual & step_mask):
    assert np.isclose(step_adv[cluster].min(), 0.0) and np.isclose(step_adv[cluster].max(), 1.0)


def test_pdcr_singleton_cluster_falls_back_and_is_reported():
  outcome = np.zeros(2, np.float32)
  conf = np.array([[0.0, 1.0, 3.0, 2.0], [0.0, 2.0, 2.5, 0.0]], np.float32)
  step_mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
  vds = np.array([[0.1, 5.0, 0.2], [0.15, 0.1, 0.0]], np.float32)  # one perception step in the batch
  step_of_token = np.array([[0, 1, 2], [0, 1, -1]], np.int32)
  adv, metrics = _pdcr_advantages(
    outcome, conf, vds, step_mask, step_of_token, group_size=2, lambda_o=1.0, lambda_p=1.0, gamma=1.0,
    empty_value=0.0,
  )
  assert int(metrics["num_fallback_clusters"]) == 1
  assert float(adv[0, 1]) == 0.0
  expected, _, _ = _ref_pdcr(outcome, conf, vds, step_mask, step_of_token, group_size=2, lambda_o=1.0,
                             lambda_p=1.0, gamma=1.0)
  np.testing.assert_allclose(adv, expected, rtol=1e-6, atol=1e-6)


def test_pdcr_random_decomposition_ablation_uses_given_labels_deterministically():
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  labels = pdcr.random_step_clusters(jax.random.key(0), step_mask)
  np.testing.assert_array_equal(labels, pdcr.random_step_clusters(jax.random.key(0), step_mask))
  assert not np.asarray(labels)[~step_mask].any()
  kwargs = dict(group_size=2, lambda_o=1.0, lambda_p=1.0, gamma=0.95)
  adv, metrics = _pdcr_advantages(outcome, conf, vds, step_mask, step_of_token, is_visual=labels, **kwargs)
  expected, _, _ = _ref_pdcr(outcome, conf, vds, step_mask, step_of_token, is_visual=np.asarray(labels), **kwargs)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
  assert np.isnan(metrics["threshold"])


def test_pacr_is_one_minmax_pool_per_group():
  outcome, conf, _, step_mask, step_of_token, _, _ = _pdcr_inputs()
  kwargs = dict(group_size=2, lambda_o=1.0, lambda_p=1.0, gamma=1.0)
  adv, _ = _pacr_advantages(outcome, conf, step_mask, step_of_token, **kwargs)
  expected, _, _ = _ref_pdcr(
    outcome, conf, np.zeros(step_mask.shape), step_mask, step_of_token, is_visual=np.zeros_like(step_mask), **kwargs
  )
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


def test_pdcr_group_split_pool_runs_otsu_per_group():
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  _, metrics = _pdcr_advantages(
    outcome, conf, vds, step_mask, step_of_token, group_size=2, lambda_o=1.0, lambda_p=1.0, gamma=1.0,
    split_pool="group",
  )
  for g in range(2):
    rows = slice(2 * g, 2 * g + 2)
    threshold, _ = _ref_otsu(vds[rows][step_mask[rows]])
    np.testing.assert_array_equal(metrics["is_visual"][rows], step_mask[rows] & (vds[rows] > threshold))


def test_pdcr_rejects_bad_arguments():
  outcome, conf, vds, step_mask, step_of_token, _, _ = _pdcr_inputs()
  kwargs = dict(group_size=2, lambda_o=1.0, lambda_p=1.0, gamma=1.0)
  with pytest.raises(ValueError, match="group_size"):
    _pdcr_advantages(outcome, conf, vds, step_mask, step_of_token, **{**kwargs, "group_size": 3})
  with pytest.raises(ValueError, match="confidence"):
    _pdcr_advantages(outcome, conf[:, :-1], vds, step_mask, step_of_token, **kwargs)
  with pytest.raises(ValueError, match="pool"):
    _pdcr_advantages(outcome, conf, vds, step_mask, step_of_token, pool="prompt", **kwargs)
  with pytest.raises(ValueError, match="outcome_advantages"):
    _pdcr_advantages(outcome[:3], conf, vds, step_mask, step_of_token, **kwargs)
