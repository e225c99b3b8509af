"""PDCR: Perception-Decomposed Confidence Reward (arXiv 2605.13467, CVPR 2026), as pure array functions.

The paper's code is not public (hee-suk-yoon/PDCR holds a README only). Implemented:

* step segmentation of a rollout on delimiter token ids;
* the confidence c_k = log π(Y_gt | I, q, H_≤k) of PACR (arXiv 2510.22255): the query sequences that append the
  ground-truth answer after the first k steps, and the sum of the answer's token log-probs;
* the gains g_k = c_k − c_{k−1} (Eq. 4) and discounted returns G_k = Σ_{m≥k} γ^{m−k} g_m;
* the Visual Dependence Score V_k = log π(h_k | I, q, H_<k) − log π(h_k | I_white, q, H_<k) (Eq. 7);
* the Otsu two-way split of V into perception (V > c*) and reasoning steps. In one dimension Otsu's criterion is
  the 2-means objective and its optimal clusters are contiguous in sorted order, so the scan over all split points
  is the exact global 2-means solution: deterministic, with no seed and no iterations;
* min-max normalisation of G inside each cluster (Eq. 12–13) and A_total,k = λ_O·A_O + λ_P·A_dec,k (Eq. 14);
* the PACR baseline (Eq. 5, one min-max pool) and random cluster labels (the paper's random-decomposition ablation).

The paper was read through secondary summaries only, so these choices are reconstructions:

* Steps are split on a set of delimiter token ids (for free text, e.g. "\\n\\n"). A run of delimiters closes the step
  it follows and never forms a step of its own; a rollout with no delimiter is one step; steps beyond `max_steps`
  are merged into the last one, so every response token belongs to a step.
* V_k sums the token log-prob differences of the step; c and V come from the caller's π_old and are stop-gradient.
* The Otsu pool is the batch by default (`split_pool="group"` is offered); the min-max pool is the group of one
  prompt's rollouts by default (`pool="batch"` is offered).
* Tokens outside any step (mask them out of `segment_steps`, e.g. the final answer) get λ_O·A_O only.
* A cluster with fewer than 2 steps, or with max − min < `range_eps`, gets `empty_value` (reported in the metrics).
* `center=True` subtracts each cluster's mean after min-max (the summaries' "zero-centred"); the default follows the
  equations as written, whose process term lies in [0, 1].
* A_O is taken as an input: pass the group-normalised outcome advantage of your GRPO step.

Shapes: B rollouts (grouped as B/G prompts × G consecutive rollouts), T response tokens, K = `max_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_POOLS = ("group", "batch")


def _check_rank(name: str, x: jax.Array, rank: int, what: str) -> None:
  if x.ndim != rank:
    raise ValueError(f"{name}: expected rank {rank} {what}, got shape {tuple(x.shape)}.")


def _check_shape(name: str, x: jax.Array, shape: tuple[int, ...], what: str) -> None:
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name}: expected shape {tuple(shape)} {what}, got {tuple(x.shape)}.")


def _check_integer(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name}: expected an integer dtype, got {x.dtype}.")


class StepSegmentation(NamedTuple):
  """Steps of each rollout.

  step_of_token: [B, T] int32, the step index of each token, −1 where `mask` is 0.
  step_mask: [B, K] bool, whether step k exists.
  step_end: [B, K] int32, the position of the last token of step k (its last delimiter included), −1 if absent.
  """

  step_of_token: jax.Array
  step_mask: jax.Array
  step_end: jax.Array


def segment_steps(
  token_ids: jax.Array, mask: jax.Array, *, delimiter_ids: Sequence[int], max_steps: int
) -> StepSegmentation:
  """Splits each rollout into reasoning steps at delimiter tokens (jit-able; `delimiter_ids`, `max_steps` static).

  token_ids: [B, T] int response tokens; mask: [B, T], 1 on the tokens that may belong to a step (the response,
  minus anything that should get the outcome advantage only). A step starts at the first non-delimiter token after
  a delimiter, so delimiters stay with the step they close, leading delimiters with step 0, and masked positions
  are skipped. Steps past `max_steps` − 1 are merged into step `max_steps` − 1.
  """
  token_ids, mask = jnp.asarray(token_ids), jnp.asarray(mask)
  _check_rank("token_ids", token_ids, 2, "[B, T]")
  _check_integer("token_ids", token_ids)
  _check_shape("mask", mask, token_ids.shape, "(the shape of token_ids)")
  if not delimiter_ids:
    raise ValueError("delimiter_ids: expected at least one token id, got an empty sequence.")
  if int(max_steps) < 1:
    raise ValueError(f"max_steps: expected an integer >= 1, got {max_steps}.")
  batch, length = token_ids.shape
  valid = mask.astype(bool)
  is_delim = valid & jnp.isin(token_ids, jnp.asarray(tuple(delimiter_ids), token_ids.dtype))
  content = valid & ~is_delim
  delims_so_far = jnp.cumsum(is_delim, axis=1, dtype=jnp.int32)
  # Delimiter count seen at the latest content token before t (−1 if none): delims_so_far is non-decreasing,
  # so a running max over content positions picks it.
  at_content = jnp.where(content, delims_so_far, -1)
  last_content = jax.lax.cummax(at_content, axis=1)
  prev_content = jnp.concatenate([jnp.full((batch, 1), -1, jnp.int32), last_content[:, :-1]], axis=1)
  starts = content & (prev_content >= 0) & (delims_so_far > prev_content)
  step = jnp.minimum(jnp.cumsum(starts, axis=1, dtype=jnp.int32), max_steps - 1)
  step_of_token = jnp.where(valid, step, -1)

  segments = _flat_step_segments(step_of_token, max_steps)
  counts = jax.ops.segment_sum(valid.ravel().astype(jnp.int32), segments, num_segments=batch * max_steps + 1)
  step_mask = (counts[:-1] > 0).reshape(batch, max_steps)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)).ravel()
  ends = jax.ops.segment_max(positions, segments, num_segments=batch * max_steps + 1)[:-1].reshape(batch, max_steps)
  return StepSegmentation(step_of_token, step_mask, jnp.where(step_mask, ends, -1))


def _flat_step_segments(step_of_token: jax.Array, max_steps: int) -> jax.Array:
  """[B, T] step ids -> [B·T] ids of (row, step) segments; tokens outside steps go to the extra segment B·K."""
  batch = step_of_token.shape[0]
  rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
  return jnp.where(step_of_token >= 0, rows * max_steps + step_of_token, batch * max_steps).ravel()


def step_sums(token_values: jax.Array, step_of_token: jax.Array, max_steps: int) -> jax.Array:
  """Sums a per-token value over the tokens of each step. token_values, step_of_token: [B, T] -> [B, K] fp32."""
  token_values, step_of_token = jnp.asarray(token_values), jnp.asarray(step_of_token)
  _check_rank("step_of_token", step_of_token, 2, "[B, T]")
  _check_shape("token_values", token_values, step_of_token.shape, "(the shape of step_of_token)")
  batch = step_of_token.shape[0]
  segments = _flat_step_segments(step_of_token, max_steps)
  values = jnp.where(step_of_token >= 0, token_values.astype(jnp.float32), 0.0).ravel()
  sums = jax.ops.segment_sum(values, segments, num_segments=batch * max_steps + 1)
  return sums[:-1].reshape(batch, max_steps)


def visual_dependence_scores(
  logp_image: jax.Array, logp_white: jax.Array, step_of_token: jax.Array, *, max_steps: int
) -> jax.Array:
  """Visual Dependence Score per step (Eq. 7): V_k = Σ_{t∈h_k} [log π(y_t | I, ·) − log π(y_t | I_white, ·)].

  logp_image, logp_white: [B, T] log-probs of the response tokens with the real image and with a white image of the
  same size; step_of_token: [B, T] from `segment_steps`. Returns [B, K] fp32 (stop-gradient); absent steps are 0.
  """
  logp_image, logp_white = jnp.asarray(logp_image), jnp.asarray(logp_white)
  _check_shape("logp_white", logp_white, logp_image.shape, "(the shape of logp_image)")
  diff = jax.lax.stop_gradient(logp_image.astype(jnp.float32) - logp_white.astype(jnp.float32))
  return step_sums(diff, step_of_token, max_steps)


def visual_dependence_from_model(
  logprob_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch_image: Any,
  batch_white: Any,
  step_of_token: jax.Array,
  *,
  max_steps: int,
) -> jax.Array:
  """V [B, K] from two policy calls. `logprob_fn(params, batch) -> [B, T]` returns, for each response token, its
  log-prob under the policy given the prompt, the batch's image and the preceding tokens; `batch_white` is
  `batch_image` with every image replaced by a white one of the same size (in the model's pixel normalisation)."""
  logp_image = logprob_fn(params, batch_image)
  logp_white = logprob_fn(params, batch_white)
  return visual_dependence_scores(logp_image, logp_white, step_of_token, max_steps=max_steps)


def confidence_queries(
  response_ids: jax.Array,
  segmentation: StepSegmentation,
  answer_ids: jax.Array,
  answer_mask: jax.Array,
  *,
  pad_id: int = 0,
) -> dict[str, jax.Array]:
  """Token sequences H_≤k ⊕ Y_gt for k = 0..K, whose answer log-probs give the confidences c_k.

  response_ids: [B, T] right-padded responses; segmentation: `segment_steps` of them; answer_ids: [B, A] the
  ground-truth answer in the task's answer template (e.g. `</reason>\\boxed{Y}`), left-aligned, with answer_mask
  [B, A]. Query k of rollout b holds the response up to the end of step k (nothing for k = 0), then the answer.
  Returns, each with a leading [B, K+1]:
    tokens [.., T+A] int, mask [.., T+A] bool (real tokens), answer_mask [.., T+A] bool (where Y_gt sits),
    rollout_index [..] int32 (b, to pick the prompt and image of the query).
  Queries of absent steps hold the answer only; their c_k is ignored downstream.
  """
  response_ids, answer_ids, answer_mask = jnp.asarray(response_ids), jnp.asarray(answer_ids), jnp.asarray(answer_mask)
  _check_rank("response_ids", response_ids, 2, "[B, T]")
  _check_shape("segmentation.step_of_token", segmentation.step_of_token, response_ids.shape, "(response_ids' shape)")
  _check_rank("answer_ids", answer_ids, 2, "[B, A]")
  if answer_ids.shape[0] != response_ids.shape[0]:
    raise ValueError(f"answer_ids: expected {response_ids.shape[0]} rows (B), got shape {tuple(answer_ids.shape)}.")
  _check_shape("answer_mask", answer_mask, answer_ids.shape, "(the shape of answer_ids)")
  batch, length = response_ids.shape
  answer_len = answer_ids.shape[1]
  max_steps = segmentation.step_mask.shape[1]
  step_prefix = jnp.where(segmentation.step_mask, segmentation.step_end + 1, 0)
  prefix_len = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), step_prefix.astype(jnp.int32)], axis=1)
  num_answer = jnp.sum(answer_mask.astype(jnp.int32), axis=1)

  pos = jnp.arange(length + answer_len, dtype=jnp.int32)[None, None, :]
  prefix = prefix_len[:, :, None]
  in_prefix = pos < prefix
  answer_pos = pos - prefix
  in_answer = (answer_pos >= 0) & (answer_pos < num_answer[:, None, None])
  response_tok = jnp.take_along_axis(response_ids[:, None, :], jnp.clip(pos, 0, length - 1), axis=2)
  answer_tok = jnp.take_along_axis(answer_ids[:, None, :], jnp.clip(answer_pos, 0, answer_len - 1), axis=2)
  tokens = jnp.where(in_prefix, response_tok, jnp.where(in_answer, answer_tok, pad_id)).astype(response_ids.dtype)
  rollout_index = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, max_steps + 1))
  return {"tokens": tokens, "mask": in_prefix | in_answer, "answer_mask": in_answer, "rollout_index": rollout_index}


def confidence_from_logprobs(query_logp: jax.Array, answer_mask: jax.Array) -> jax.Array:
  """c_k = log π(Y_gt | ·, H_≤k) = Σ of the answer's token log-probs. query_logp, answer_mask: [B, K+1, L] ->
  [B, K+1] fp32 (stop-gradient)."""
  query_logp, answer_mask = jnp.asarray(query_logp), jnp.asarray(answer_mask)
  _check_rank("query_logp", query_logp, 3, "[B, K+1, L]")
  _check_shape("answer_mask", answer_mask, query_logp.shape, "(the shape of query_logp)")
  logp = jnp.where(answer_mask.astype(bool), query_logp.astype(jnp.float32), 0.0)
  return jax.lax.stop_gradient(jnp.sum(logp, axis=-1))


def confidence_from_model(
  logprob_fn: Callable[[Any, dict[str, jax.Array]], jax.Array], params: Any, queries: dict[str, jax.Array]
) -> jax.Array:
  """c [B, K+1] from one policy call on the flattened `confidence_queries`.

  `logprob_fn(params, batch) -> [N, L]` gets batch = {"tokens", "mask", "answer_mask": [N, L], "rollout_index": [N]}
  with N = B·(K+1) (row b·(K+1) + k is query k of rollout b) and returns the log-prob of each token given the prompt
  and image of rollout `rollout_index` and the tokens before it.
  """
  batch, num_queries, length = queries["tokens"].shape
  flat = {name: value.reshape((batch * num_queries,) + value.shape[2:]) for name, value in queries.items()}
  logp = logprob_fn(params, flat)
  _check_shape("logprob_fn(params, batch)", jnp.asarray(logp), (batch * num_queries, length), "([N, L])")
  return confidence_from_logprobs(logp.reshape(batch, num_queries, length), queries["answer_mask"])


def confidence_gains(confidence: jax.Array, step_mask: jax.Array) -> jax.Array:
  """g_k = c_k − c_{k−1} (Eq. 4). confidence: [B, K+1] (index 0 before any step); step_mask: [B, K] -> [B, K] fp32,
  0 on absent steps."""
  confidence, step_mask = jnp.asarray(confidence), jnp.asarray(step_mask)
  _check_rank("step_mask", step_mask, 2, "[B, K]")
  batch, max_steps = step_mask.shape
  _check_shape("confidence", confidence, (batch, max_steps + 1), "([B, K+1])")
  confidence = confidence.astype(jnp.float32)
  return jnp.where(step_mask.astype(bool), confidence[:, 1:] - confidence[:, :-1], 0.0)


def process_returns(step_gains: jax.Array, step_mask: jax.Array, gamma: float) -> jax.Array:
  """G_k = Σ_{m≥k, m present} γ^{m−k} g_m (reverse discounted cumsum). step_gains, step_mask: [B, K] -> [B, K]."""
  step_gains, step_mask = jnp.asarray(step_gains), jnp.asarray(step_mask)
  _check_rank("step_gains", step_gains, 2, "[B, K]")
  _check_shape("step_mask", step_mask, step_gains.shape, "(the shape of step_gains)")
  gains = jnp.where(step_mask.astype(bool), step_gains.astype(jnp.float32), 0.0)

  def back(carry, gain):
    carry = gain + gamma * carry
    return carry, carry

  _, returns = jax.lax.scan(back, jnp.zeros(gains.shape[0], jnp.float32), gains.T, reverse=True)
  return jnp.where(step_mask.astype(bool), returns.T, 0.0)


def otsu_split(scores: jax.Array, mask: jax.Array, *, range_eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
  """Otsu's two-way split of the masked scores: is_visual (same shape, bool) and the threshold c* (scalar).

  Sorts the M valid scores v_1 ≤ … ≤ v_M, takes k* = argmin_{1≤k<M} Σ_{i≤k}(v_i−μ_1)² + Σ_{i>k}(v_i−μ_2)² from prefix
  sums of v and v² (O(M log M)), and c* = v_{k*}; is_visual = valid & (score > c*), so ties at c* are reasoning.
  With M < 2 or max − min < `range_eps` nothing is visual and c* is the largest valid score (0 when M = 0).
  """
  scores, mask = jnp.asarray(scores), jnp.asarray(mask)
  _check_shape("mask", mask, scores.shape, "(the shape of scores)")
  valid = mask.astype(bool).ravel()
  values = scores.astype(jnp.float32).ravel()
  size = values.shape[0]
  count = jnp.sum(valid)
  safe_count = jnp.maximum(count, 1)
  # Centring first keeps the prefix-sum variances from cancelling catastrophically in fp32.
  mean = jnp.sum(jnp.where(valid, values, 0.0)) / safe_count
  ordered = jnp.sort(jnp.where(valid, values, jnp.inf))
  in_range = jnp.arange(size) < count
  centred = jnp.where(in_range, ordered - mean, 0.0)
  sum1, sum2 = jnp.cumsum(centred), jnp.cumsum(centred**2)
  total1, total2 = sum1[-1], sum2[-1]
  left = jnp.arange(1, size + 1, dtype=jnp.float32)
  right = count - left
  sse_left = sum2 - sum1**2 / left
  sse_right = (total2 - sum2) - (total1 - sum1) ** 2 / jnp.maximum(right, 1.0)
  objective = jnp.where(right >= 1, sse_left + sse_right, jnp.inf)
  split = jnp.argmin(objective)
  largest = jnp.where(count > 0, ordered[jnp.maximum(count - 1, 0)], 0.0)
  smallest = jnp.where(count > 0, ordered[0], 0.0)
  degenerate = (count < 2) | (largest - smallest < range_eps)
  threshold = jnp.where(degenerate, largest, ordered[split])
  is_visual = valid & (values > threshold) & ~degenerate
  return is_visual.reshape(scores.shape), threshold


def clusterwise_minmax(
  values: jax.Array,
  cluster_ids: jax.Array,
  pool_mask: jax.Array,
  *,
  num_clusters: int,
  empty_value: float = 0.0,
  center: bool = False,
  range_eps: float = 1e-8,
) -> tuple[jax.Array, jax.Array]:
  """Min-max normalisation inside each cluster (Eq. 12–13): (x − min_c x) / (max_c x − min_c x).

  values, cluster_ids (int in [0, num_clusters)), pool_mask: the same shape. Only entries with pool_mask take part.
  A cluster with fewer than 2 members or a range below `range_eps` maps to `empty_value`; `center` subtracts each
  cluster's mean afterwards (a reconstruction). Returns (normalised values, 0 outside pool_mask; fallback
  [num_clusters] bool, true for clusters with members that took the `empty_value` path).
  """
  values, cluster_ids, pool_mask = jnp.asarray(values), jnp.asarray(cluster_ids), jnp.asarray(pool_mask)
  _check_integer("cluster_ids", cluster_ids)
  _check_shape("cluster_ids", cluster_ids, values.shape, "(the shape of values)")
  _check_shape("pool_mask", pool_mask, values.shape, "(the shape of values)")
  valid = pool_mask.astype(bool).ravel()
  x = values.astype(jnp.float32).ravel()
  ids = jnp.where(valid, cluster_ids.ravel(), num_clusters)
  segments = num_clusters + 1
  count = jax.ops.segment_sum(valid.astype(jnp.int32), ids, num_segments=segments)
  low = jax.ops.segment_min(jnp.where(valid, x, jnp.inf), ids, num_segments=segments)
  high = jax.ops.segment_max(jnp.where(valid, x, -jnp.inf), ids, num_segments=segments)
  spread = high - low
  usable = (count >= 2) & (spread >= range_eps)
  safe_low = jnp.where(usable, low, 0.0)
  safe_spread = jnp.where(usable, spread, 1.0)
  normalised = (x - safe_low[ids]) / safe_spread[ids]
  if center:
    sums = jax.ops.segment_sum(jnp.where(valid, normalised, 0.0), ids, num_segments=segments)
    normalised = normalised - (sums / jnp.maximum(count, 1))[ids]
  out = jnp.where(valid, jnp.where(usable[ids], normalised, empty_value), 0.0)
  fallback = ((count >= 1) & ~usable)[:num_clusters]
  return out.reshape(values.shape), fallback


def random_step_clusters(key: jax.Array, step_mask: jax.Array, perception_fraction: float = 0.314) -> jax.Array:
  """Random perception labels [B, K] bool (the random-decomposition ablation); 0.314 is the paper's measured
  perception share. Deterministic given `key`; absent steps are False."""
  step_mask = jnp.asarray(step_mask)
  return jax.random.bernoulli(key, perception_fraction, step_mask.shape) & step_mask.astype(bool)


def pdcr_advantages(
  outcome_advantages: jax.Array,
  confidence: jax.Array,
  vds: jax.Array,
  step_mask: jax.Array,
  step_of_token: jax.Array,
  *,
  group_size: int,
  lambda_o: float,
  lambda_p: float,
  gamma: float,
  pool: str = "group",
  split_pool: str = "batch",
  is_visual: jax.Array | None = None,
  center: bool = False,
  empty_value: float = 0.0,
  range_eps: float = 1e-8,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PDCR token advantages A_total = λ_O·A_O + λ_P·A_dec (Eq. 14), the same on every token of a step.

  outcome_advantages: [B] A_O (the GRPO z-scored outcome advantage); confidence: [B, K+1] c_0..c_K; vds: [B, K]
  visual dependence scores; step_mask: [B, K]; step_of_token: [B, T] (−1 outside steps). The Otsu split runs over
  `split_pool` ("batch" or "group") unless `is_visual` [B, K] bool labels are given (e.g. `random_step_clusters`);
  min-max runs per cluster over `pool` ("group": each prompt's G rollouts; "batch").
  Returns (advantages [B, T] fp32, metrics) with metrics: returns, step_advantages (A_dec), is_visual [B, K];
  threshold (the batch Otsu c*; NaN with `split_pool="group"` or given labels), perception_fraction,
  num_fallback_clusters (scalars).
  """
  outcome_advantages, confidence, vds = jnp.asarray(outcome_advantages), jnp.asarray(confidence), jnp.asarray(vds)
  step_mask, step_of_token = jnp.asarray(step_mask).astype(bool), jnp.asarray(step_of_token)
  _check_rank("step_mask", step_mask, 2, "[B, K]")
  batch, max_steps = step_mask.shape
  _check_shape("outcome_advantages", outcome_advantages, (batch,), "([B])")
  _check_shape("confidence", confidence, (batch, max_steps + 1), "([B, K+1])")
  _check_shape("vds", vds, (batch, max_steps), "([B, K])")
  _check_rank("step_of_token", step_of_token, 2, "[B, T]")
  _check_integer("step_of_token", step_of_token)
  if step_of_token.shape[0] != batch:
    raise ValueError(f"step_of_token: expected {batch} rows (B), got shape {tuple(step_of_token.shape)}.")
  if group_size < 1 or batch % group_size:
    raise ValueError(f"group_size: expected a divisor of the batch size {batch}, got {group_size}.")
  for name, value in (("pool", pool), ("split_pool", split_pool)):
    if value not in _POOLS:
      raise ValueError(f"{name}: expected one of {_POOLS}, got {value!r}.")
  num_groups = batch // group_size

  returns = process_returns(confidence_gains(confidence, step_mask), step_mask, gamma)
  threshold = jnp.array(jnp.nan, jnp.float32)
  if is_visual is None:
    if split_pool == "batch":
      is_visual, threshold = otsu_split(vds, step_mask, range_eps=range_eps)
    else:
      per_group = (vds.reshape(num_groups, -1), step_mask.reshape(num_groups, -1))
      is_visual, _ = jax.vmap(lambda v, m: otsu_split(v, m, range_eps=range_eps))(*per_group)
      is_visual = is_visual.reshape(batch, max_steps)
  else:
    is_visual = jnp.asarray(is_visual)
    _check_shape("is_visual", is_visual, (batch, max_steps), "([B, K])")
  is_visual = is_visual.astype(bool) & step_mask

  cluster = is_visual.astype(jnp.int32)
  if pool == "group":
    group_of_row = jnp.arange(batch, dtype=jnp.int32) // group_size
    cluster = group_of_row[:, None] * 2 + cluster
  num_clusters = 2 * num_groups if pool == "group" else 2
  step_advantages, fallback = clusterwise_minmax(
    returns, cluster, step_mask, num_clusters=num_clusters, empty_value=empty_value, center=center,
    range_eps=range_eps,
  )

  in_step = step_of_token >= 0
  token_step = jnp.take_along_axis(step_advantages, jnp.clip(step_of_token, 0, max_steps - 1), axis=1)
  process = jnp.where(in_step, token_step, 0.0)
  advantages = lambda_o * outcome_advantages.astype(jnp.float32)[:, None] + lambda_p * process
  num_steps = jnp.maximum(jnp.sum(step_mask), 1)
  metrics = {
    "returns": returns,
    "step_advantages": step_advantages,
    "is_visual": is_visual,
    "threshold": threshold,
    "perception_fraction": jnp.sum(is_visual) / num_steps,
    "num_fallback_clusters": jnp.sum(fallback),
  }
  return advantages, metrics


def pacr_advantages(
  outcome_advantages: jax.Array,
  confidence: jax.Array,
  step_mask: jax.Array,
  step_of_token: jax.Array,
  *,
  group_size: int,
  lambda_o: float,
  lambda_p: float,
  gamma: float,
  pool: str = "group",
  center: bool = False,
  empty_value: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The PACR baseline (Eq. 5): `pdcr_advantages` with every step in one cluster, so min-max runs over all steps of
  the pool. Shapes as in `pdcr_advantages`."""
  step_mask = jnp.asarray(step_mask)
  no_visual = jnp.zeros(step_mask.shape, bool)
  return pdcr_advantages(
    outcome_advantages, confidence, jnp.zeros(step_mask.shape, jnp.float32), step_mask, step_of_token,
    group_size=group_size, lambda_o=lambda_o, lambda_p=lambda_p, gamma=gamma, pool=pool, is_visual=no_visual,
    center=center, empty_value=empty_value,
  )
