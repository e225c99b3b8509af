"""PDCR / PACR process advantages for the counting environment's multi-step "rows" answers: the policy passes that
measure each step (confidence in the ground-truth answer, visual dependence) and the math of `jaxagents.rl.pdcr`.

PDCR (arXiv 2605.13467; its equations were read through secondary summaries, not the paper). The completion lists
the asked colour's count in each board row, then the total (`1 ; 0 ; 2 ; 0 ; = 3 <eos>`): each row count closed by
`;` is a step h_k and the answer `= Y <eos>` follows the last step. With the sampling policy π_old:
  1. Steps: `pdcr.segment_steps` on the delimiter over each rollout's tokens before its first `=` (K = max_steps).
  2. Confidence (PACR, arXiv 2510.22255, Eq. 4): c_k = log π_old(Y_gt | I, q, H_≤k) for k = 0..K, Y_gt the
     ground-truth answer `= Y <eos>` appended after the first k steps; the B·(K+1) teacher-forced queries run as one
     batch whose rows share their prompt's vision features (`ModelInputs.repeat`). Gains g_k = c_k - c_{k-1},
     returns G_k = sum_{m>=k} gamma^(m-k) g_m.
  3. Visual Dependence Score (Eq. 7): V_k = sum_{t in h_k} [log π_old(y_t | I, .) - log π_old(y_t | I_white, .)], with
     I_white a white board of the same size through the same preprocessing.
  4. Otsu split of V into perception (V > c*) and reasoning steps; min-max of G inside each cluster of each group
     (Eq. 12-13); A_total,k = λ_O·A_O + λ_P·A_dec,k (Eq. 14) on every token of step h_k. Tokens after the last step
     (the answer) get λ_O·A_O only. PACR (Eq. 5): one cluster, no V, no white-board pass.

Reconstructions (the summaries do not give these):
  * λ_O = 1, λ_P = 1 and γ = 1 are our defaults, not the paper's values.
  * The step delimiter is the environment's `;` token (PACR splits free text on a text pattern such as "\\n\\n").
  * Y_gt is the environment's answer template `= Y <eos>`. By default c_k scores `Y <eos>` given `=` (the marker is
    teacher-forced, not scored: `score_answer_marker=False`): π(`=` | k < K rows) is tiny and nearly the same for every
    rollout, so scoring it would hand every rollout's last step the same large gain.
  * c and V use π_old through the sampler's distribution (temperature, suppressed ids), as the rollout's log-probs.
  * Pools: Otsu per batch (`split_pool="batch"`), min-max per group (`pool="group"`); `center=False`.
  * Steps past `max_steps` (default grid + 1) are merged into the last one; a rollout with no `;` is one step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.rl import pdcr
from jaxagents.tasks import counting_vlm as cv
from jaxagents.tasks import rollouts

PROCESSES = ("pdcr", "pacr")


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
  """The process-advantage options (`config.rl.process`, absent keys keep these defaults).

  Attributes:
    process: "pdcr" or "pacr".
    lambda_o, lambda_p: weights of the outcome and process advantages (Eq. 14); our defaults, a reconstruction.
    gamma: discount of the confidence-gain returns (reconstruction).
    max_steps: K, the number of step slots (None: the board's rows + 1).
    delimiter: the vocabulary word that closes a step (reconstruction).
    pool: min-max pool, "group" (each prompt's rollouts) or "batch"; split_pool: Otsu pool, "batch" or "group".
    center: subtract each cluster's mean after min-max (reconstruction).
    score_answer_marker: include the `=` marker in c_k's log-prob (default: condition on it only; reconstruction).
  """

  process: str = "pdcr"
  lambda_o: float = 1.0
  lambda_p: float = 1.0
  gamma: float = 1.0
  max_steps: int | None = None
  delimiter: str = ";"
  pool: str = "group"
  split_pool: str = "batch"
  center: bool = False
  score_answer_marker: bool = False

  def __post_init__(self):
    if self.process not in PROCESSES:
      raise ValueError(f"config.rl.advantage: expected one of {PROCESSES} for a process reward, got {self.process!r}")
    if self.delimiter not in counting.TOKEN_ID:
      raise ValueError(f"config.rl.process.delimiter: expected a word of the vocabulary, got {self.delimiter!r}")
    if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
      raise ValueError(f"config.rl.process.max_steps: expected an integer >= 1 or None, got {self.max_steps}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"config.rl.process.gamma: expected a discount in [0, 1], got {self.gamma}")


def process_options(process: Mapping[str, Any], advantage: str) -> ProcessOptions:
  """`ProcessOptions` from the config's `rl.process` dict; `advantage` ("pdcr"/"pacr") names the process."""
  names = {field.name for field in dataclasses.fields(ProcessOptions)}
  unknown = sorted(set(process) - names)
  if unknown:
    raise ValueError(f"config.rl.process: unknown options {unknown}; expected some of {sorted(names - {'process'})}")
  return ProcessOptions(**{**process, "process": advantage})


def step_region(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """[B, N] bool: the sampled tokens that belong to steps, i.e. those before the row's first `=` (the answer and
  what follows it get the outcome advantage only). tokens: [B, N] right-padded completions; lengths: [B]."""
  positions = np.arange(tokens.shape[1])[None, :]
  valid = positions < np.asarray(lengths)[:, None]
  is_marker = valid & (tokens == counting.EQUALS)
  first_marker = np.where(is_marker.any(axis=1), is_marker.argmax(axis=1), tokens.shape[1])
  return valid & (positions < first_marker[:, None])


@functools.partial(jax.jit, static_argnames=("options", "group_size", "max_steps"))
def _advantages(outcome, confidence, vds, step_mask, step_of_token, *, options: ProcessOptions, group_size: int,
                max_steps: int):
  common = dict(group_size=group_size, lambda_o=options.lambda_o, lambda_p=options.lambda_p, gamma=options.gamma,
                pool=options.pool, center=options.center)
  if options.process == "pdcr":
    advantages, extra = pdcr.pdcr_advantages(outcome, confidence, vds, step_mask, step_of_token,
                                             split_pool=options.split_pool, **common)
  else:
    advantages, extra = pdcr.pacr_advantages(outcome, confidence, step_mask, step_of_token, **common)
  step_mask = step_mask.astype(bool)
  steps = jnp.maximum(jnp.sum(step_mask), 1)
  num_steps = jnp.sum(step_mask, axis=1)
  gains = pdcr.confidence_gains(confidence, step_mask)
  metrics = {
    "pdcr/steps": jnp.mean(num_steps.astype(jnp.float32)),
    "pdcr/confidence_start": jnp.mean(confidence[:, 0]),
    "pdcr/confidence_end": jnp.mean(jnp.take_along_axis(confidence, num_steps[:, None], axis=1)),
    "pdcr/confidence_gain": jnp.sum(jnp.where(step_mask, gains, 0.0)) / steps,
    "pdcr/process_advantage": jnp.sum(jnp.where(step_mask, extra["step_advantages"], 0.0)) / steps,
    "pdcr/fallback_clusters": extra["num_fallback_clusters"].astype(jnp.float32),
    "pdcr/perception_fraction": extra["perception_fraction"],
  }
  if options.process == "pdcr":
    visual = extra["is_visual"] & step_mask
    for name, cluster in (("perception", visual), ("reasoning", ~visual & step_mask)):
      metrics[f"pdcr/vds_{name}"] = jnp.sum(jnp.where(cluster, vds, 0.0)) / jnp.maximum(jnp.sum(cluster), 1)
    if options.split_pool == "batch":
      metrics["pdcr/otsu_threshold"] = extra["threshold"]
  return advantages, metrics


class ProcessReward:
  """Turns a GRPO step's outcome advantages [B] into PDCR/PACR token advantages [B, L + T] (see the module doc)."""

  def __init__(self, env, model_config, model, sampling, options: ProcessOptions, *, group_size: int):
    if env.format != "rows":
      raise ValueError("config.env.format: process rewards need the multi-step 'rows' format, got "
                       f"{env.format!r} (or set config.rl.advantage to 'grpo')")
    self.env, self.model_config, self.model, self.sampling = env, model_config, model, sampling
    self.options, self.group_size = options, group_size
    self.max_steps = options.max_steps or env.grid + 1
    self._segment = jax.jit(functools.partial(pdcr.segment_steps, delimiter_ids=(counting.TOKEN_ID[options.delimiter],),
                                              max_steps=self.max_steps))

  def __call__(self, variables, examples: Sequence[Mapping], sampled: rollouts.HostRollout, old_logp: jax.Array,
               outcome: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """variables: π_old's (the sampling policy's); examples: this host's prompts; old_logp: [B, L + T] global."""
    tokens, lengths = sampled.tokens, sampled.lengths
    segmentation = jax.tree.map(np.asarray, self._segment(tokens, step_region(tokens, lengths)))
    confidence = self.confidence(variables, examples, tokens, segmentation)
    local_steps = (segmentation.step_mask, segmentation.step_of_token)
    step_mask, step_of_token = sharding.shard_batch(local_steps)
    length = tokens.shape[1]
    if self.options.process == "pdcr":
      vds = self.visual_dependence(variables, examples, sampled, old_logp, step_of_token, length)
    else:
      vds = jnp.zeros(step_mask.shape, jnp.float32)
    token_advantages, metrics = _advantages(outcome, confidence, vds, step_mask, step_of_token, options=self.options,
                                            group_size=self.group_size, max_steps=self.max_steps)
    advantages = jnp.zeros(old_logp.shape, jnp.float32).at[:, -length:].set(token_advantages)
    return advantages, metrics

  def confidence(self, variables, examples, tokens: np.ndarray, segmentation) -> jax.Array:
    """c [B, K+1] (global): the log-prob of each rollout's ground-truth answer after its first k steps."""
    group = self.group_size
    answers = np.array([counting.answer_template_ids(e["count"]) for e in examples for _ in range(group)], np.int32)
    queries = jax.tree.map(np.asarray, pdcr.confidence_queries(tokens, segmentation, answers,
                                                               np.ones(answers.shape, bool), pad_id=counting.PAD))
    answer_mask = queries["answer_mask"]
    if not self.options.score_answer_marker:
      # The marker is the answer's first token: keep it in the query, drop it from the score.
      starts = answer_mask & ~np.pad(answer_mask, ((0, 0), (0, 0), (1, 0)))[..., :-1]
      answer_mask = answer_mask & ~starts
    batch, num_queries, length = queries["tokens"].shape
    # Query row b·(K+1) + k belongs to rollout b, whose prompt is b // G: the prompts repeated G·(K+1) times.
    prompts = cv.prompts(self.env, self.model_config, examples).repeat(group * num_queries)
    flat = queries["tokens"].reshape(batch * num_queries, length)
    inputs, mask = prompts.with_completions(flat, np.full(flat.shape[0], length, np.int32), counting.PAD)
    inputs, mask, answer_mask = sharding.shard_batch((inputs, np.asarray(mask, bool), answer_mask))
    logp, _ = rollouts.recompute_logprobs(variables, inputs, mask, model=self.model, sampling=self.sampling)
    return _confidence(logp, answer_mask, length)

  def visual_dependence(self, variables, examples, sampled, old_logp, step_of_token, length: int) -> jax.Array:
    """V [B, K] (global): each step's log-prob with the real board minus with a white board (same rows, tokens)."""
    white = [{**e, "image": np.full_like(e["image"], 255)} for e in examples]
    prompts = cv.prompts(self.env, self.model_config, white).repeat(self.group_size)
    inputs, _ = prompts.with_completions(sampled.tokens, sampled.lengths, counting.PAD)
    inputs = sharding.shard_batch(inputs)
    logp_white, _ = rollouts.recompute_logprobs(variables, inputs, sampled.completion_mask, model=self.model,
                                                sampling=self.sampling)
    return _vds(old_logp, logp_white, step_of_token, length=length, max_steps=self.max_steps)


@functools.partial(jax.jit, static_argnames=("length",))
def _confidence(logp, answer_mask, length: int):
  batch, num_queries, _ = answer_mask.shape
  return pdcr.confidence_from_logprobs(logp[:, -length:].reshape(batch, num_queries, length), answer_mask)


@functools.partial(jax.jit, static_argnames=("length", "max_steps"))
def _vds(old_logp, logp_white, step_of_token, *, length: int, max_steps: int):
  return pdcr.visual_dependence_scores(old_logp[:, -length:], logp_white[:, -length:], step_of_token,
                                       max_steps=max_steps)
