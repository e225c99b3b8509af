"""PDCR post-training on the shipped counting task: `ShapesGRPO` with the process advantage of PDCR (or PACR).

    python -m jaxagents.train --config configs/pdcr_shapes.py --workdir runs/pdcr_shapes

PDCR (arXiv 2605.13467; its equations were read through secondary summaries, not the paper); the math is
`jaxagents.rl.pdcr`. The task must use the multi-step "rows" format (`shapes.ShapesConfig(format="rows")`,
`1 ; 0 ; 2 ; 0 ; = 3 <eos>`): each row count closed by `;` is a step h_k, and the answer `= Y <eos>` follows the last
step. Per RL step, with the sampling policy π_old (the parameters that drew the rollouts, stop-gradient):

  1. Steps: `pdcr.segment_steps` on the delimiter over each rollout's tokens before its first `=` (K = `max_steps`).
  2. Confidence (PACR, Eq. 4): c_k = log π_old(Y_gt | I, q, H_≤k) for k = 0..K, with Y_gt the ground-truth answer
     template `= Y <eos>` appended after the first k steps; the B·(K+1) teacher-forced queries run as one batch.
     Gains g_k = c_k − c_{k−1}, returns G_k = Σ_{m≥k} γ^{m−k} g_m.
  3. Visual Dependence Score (Eq. 7): V_k = Σ_{t∈h_k} [log π_old(y_t | I, ·) − log π_old(y_t | I_white, ·)], with
     I_white a white board of the same size run through the same preprocessing and the same model batch.
  4. Otsu split of V over the batch into perception (V > c*) and reasoning steps; min-max of G inside each cluster
     of each group (Eq. 12–13); A_total,k = λ_O·A_O + λ_P·A_dec,k (Eq. 14) on every token of step h_k, where A_O is
     the GRPO group-normalised outcome advantage. Tokens after the last step (the answer) get λ_O·A_O only. The
     per-token advantages [B, L] go to `grpo.grpo_loss` unchanged.

On this task every step is a row count (perception in the task's sense); the summing happens in the answer, which
gets A_O only, so Otsu splits the row steps by how much the board moves their log-prob (a row the model reads as
empty scores about the same on a white board). In the shipped config's run about 37% of steps were "perception"
(the paper reports 31.4%).

`process` picks the advantage: "pdcr" (above), "pacr" (PACR, Eq. 5: one cluster, no V, no white-image pass) or
"none" (plain outcome-only GRPO, exactly `ShapesGRPO.advantages`, for the comparison on the same task).

Reconstructions (the summaries do not give these):
  * λ_O = 1, λ_P = 1 and γ = 1 are our defaults, not the paper's values (its hyperparameter table was not read).
  * The step delimiter is the task's `;` token (PACR splits free text on a text pattern such as "\\n\\n").
  * Y_gt is the task's answer template `= Y <eos>`. By default c_k scores `Y <eos>` given `=` (the marker is
    teacher-forced, not scored: `score_answer_marker=False`): π(`=` | k < K rows) is tiny and nearly the same for every
    rollout, so scoring it would hand every rollout's last step the same large gain.
  * c and V use π_old through the sampler's distribution (`sampling_logits`: temperature, suppressed ids), the same
    distribution as the rollout's old log-probs; V_k sums the token log-prob differences of the step.
  * Pools: Otsu per batch (`split_pool="batch"`), min-max per group (`pool="group"`); `center=False` (the equations
    as written, so the process term is in [0, 1]).
  * Steps past `max_steps` (default grid + 1) are merged into the last one; a rollout with no `;` is one step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.data import shapes
from jaxagents.models.qwen_vl.vision import VisionTower
from jaxagents.rl import pdcr
from jaxagents.rl.trainer import Rollout, ShapesGRPO, completion_logprobs

PROCESSES = ("pdcr", "pacr", "none")


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
  """The process-advantage options, read from `config.rl` (keys of the same name; absent keys keep these defaults).

  Attributes:
    process: "pdcr", "pacr" or "none" (outcome-only GRPO).
    lambda_o, lambda_p: weights of the outcome and process advantages (Eq. 14); our defaults, a reconstruction.
    gamma: discount of the confidence-gain returns (reconstruction).
    max_steps: K, the number of step slots (None: the board's rows + 1, so one over-long row list keeps its rows).
    delimiter: the vocabulary word that closes a step (reconstruction).
    pool: min-max pool, "group" (each prompt's rollouts) or "batch"; split_pool: Otsu pool, "batch" or "group".
    center: subtract each cluster's mean after min-max (the summaries' "zero-centred"; reconstruction).
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
      raise ValueError(f"config.rl.process: expected one of {PROCESSES}, got {self.process!r}")
    if self.delimiter not in shapes.TOKEN_ID:
      raise ValueError(f"config.rl.delimiter: expected a word of the shapes vocabulary, got {self.delimiter!r}")
    if self.max_steps is not None and self.max_steps < 1:
      raise ValueError(f"config.rl.max_steps: expected an integer >= 1 or None, got {self.max_steps}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"config.rl.gamma: expected a discount in [0, 1], got {self.gamma}")


def process_options(rl: dict) -> ProcessOptions:
  """The `ProcessOptions` named in the config's rl dict (its other keys belong to the GRPO job)."""
  names = {field.name for field in dataclasses.fields(ProcessOptions)}
  return ProcessOptions(**{name: value for name, value in rl.items() if name in names})


def step_region(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """[B, N] bool: the sampled tokens that belong to steps, i.e. those before the row's first `=` (the answer and
  what follows it get the outcome advantage only). tokens: [B, N] right-padded completions; lengths: [B]."""
  positions = np.arange(tokens.shape[1])[None, :]
  valid = positions < np.asarray(lengths)[:, None]
  is_marker = valid & (tokens == shapes.EQUALS)
  first_marker = np.where(is_marker.any(axis=1), is_marker.argmax(axis=1), tokens.shape[1])
  return valid & (positions < first_marker[:, None])


def _repeat_vision_features(row_image: jax.Array, units: int):
  """A flax method interceptor: `VisionTower` outputs for U distinct images [U·units, D] become the features of
  the rows [R·units, D], row r showing image row_image[r] (row_image: [R] int; each image is `units` tokens)."""

  def interceptor(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, VisionTower):
      return outputs
    features, deepstack = outputs

    def expand(f):
      per_image = f[:f.shape[0] // units * units].reshape(-1, units, f.shape[-1])
      return per_image[row_image].reshape(-1, f.shape[-1])

    return expand(features), tuple(expand(f) for f in deepstack)

  return interceptor


class ShapesPDCR(ShapesGRPO):
  """`ShapesGRPO` whose `advantages` add PDCR's (or PACR's) per-token process advantage; see the module doc."""

  def __init__(self, config):
    super().__init__(config)
    self.process = process_options(self.rl)
    if self.process.process != "none" and self.task.format != "rows":
      raise ValueError("config.data.task.format: process rewards need the multi-step 'rows' format, got "
                       f"{self.task.format!r} (or set config.rl.process='none')")
    self.max_steps = self.process.max_steps or self.task.grid + 1
    self.progress_name = f"sft+{'grpo' if self.process.process == 'none' else self.process.process}"
    self.plot_title = f"SFT warm start, then {self.progress_name[4:].upper()} (rows format)"

  def compile(self) -> None:
    super().compile()
    options = self.process
    self._segment = jax.jit(functools.partial(
      pdcr.segment_steps, delimiter_ids=(shapes.TOKEN_ID[options.delimiter],), max_steps=self.max_steps))
    self._queries = jax.jit(functools.partial(pdcr.confidence_queries, pad_id=shapes.PAD))
    # The options are static arguments given at call time, so a copy of the job with other `process` options
    # reuses every compiled policy pass.
    common = ("group_size", "lambda_o", "lambda_p", "gamma", "pool", "center")
    self._pdcr = jax.jit(pdcr.pdcr_advantages, static_argnames=(*common, "split_pool"))
    self._pacr = jax.jit(pdcr.pacr_advantages, static_argnames=common)
    units = (self.task.grid // self.model_config.vision.merge_size) ** 2

    def shared_image_logprobs(params, inputs, mask, row_image):
      # The tower attends over all patches of a batch at once (a block-diagonal mask, quadratic in the patch
      # count), so the B·(K+1) query rows run it on the B/G distinct boards only and copy each board's features
      # to its rows; the rest is the model's own forward and `completion_logprobs`.
      with nn.intercept_methods(_repeat_vision_features(row_image, units)):
        return completion_logprobs(self.model, params, inputs, mask, self.sampling)

    self._shared_image_logprobs = jax.jit(shared_image_logprobs)

  # -- the two policy passes ----------------------------------------------------------------------------------
  def confidence(self, params, batch: Rollout, segmentation: pdcr.StepSegmentation) -> jax.Array:
    """c [B, K+1]: the log-prob of each rollout's ground-truth answer after its first k steps, one batched forward."""
    group = self.rl["group_size"]
    answers = np.array([shapes.answer_template_ids(e["count"]) for e in batch.examples for _ in range(group)],
                       np.int32)
    queries = self._queries(jnp.asarray(batch.tokens), segmentation, jnp.asarray(answers),
                            jnp.ones(answers.shape, bool))
    if not self.process.score_answer_marker:
      # The marker is the answer's first token: keep it in the query, drop it from the score.
      answer_mask = queries["answer_mask"]
      starts = answer_mask & ~jnp.pad(answer_mask, ((0, 0), (0, 0), (1, 0)))[..., :-1]
      queries = {**queries, "answer_mask": answer_mask & ~starts}
    repeat = group * (self.max_steps + 1)
    # Query row b·(K+1) + k belongs to rollout b, whose prompt is b // G: row r shows image r // (G·(K+1)).
    row_image = jnp.arange(len(batch.examples) * repeat, dtype=jnp.int32) // repeat
    images, _ = shapes.model_batch(self.task, self.model_config, batch.examples)

    def logprob_fn(params, flat):
      rows = np.asarray(flat["tokens"])
      inputs, mask = shapes.model_batch(self.task, self.model_config, batch.examples, list(rows), repeat=repeat)
      inputs = dataclasses.replace(inputs, vision=images.vision)
      logp, _ = self._shared_image_logprobs(params, inputs, mask, row_image)
      return logp[:, -rows.shape[1]:]

    return pdcr.confidence_from_model(logprob_fn, params, queries)

  def visual_dependence(self, params, batch: Rollout, segmentation: pdcr.StepSegmentation) -> jax.Array:
    """V [B, K]: each step's log-prob with the real board minus with a white board (the same rows and tokens)."""
    white = [{**e, "image": np.full_like(e["image"], 255)} for e in batch.examples]
    inputs, _ = shapes.model_batch(self.task, self.model_config, white, list(batch.tokens),
                                   repeat=self.rl["group_size"])
    logp_white, _ = self._logprobs(params, inputs, batch.completion_mask)
    length = batch.tokens.shape[1]
    return pdcr.visual_dependence_scores(batch.old_logp[:, -length:], logp_white[:, -length:],
                                         segmentation.step_of_token, max_steps=self.max_steps)

  # -- advantages ---------------------------------------------------------------------------------------------
  def advantages(self, state, batch: Rollout) -> tuple[Any, dict[str, float]]:
    """[B, L] per-token advantages λ_O·A_O + λ_P·A_dec (or [B] A_O for process="none") and metrics."""
    outcome, metrics = super().advantages(state, batch)
    if self.process.process == "none":
      return outcome, metrics
    params = state["params"]  # the sampling policy π_old: `rollout` updates only after this
    region = step_region(batch.tokens, batch.lengths)
    segmentation = self._segment(jnp.asarray(batch.tokens), jnp.asarray(region))
    confidence = self.confidence(params, batch, segmentation)
    step_mask, step_of_token = segmentation.step_mask, segmentation.step_of_token
    if self.process.process == "pdcr":
      vds = self.visual_dependence(params, batch, segmentation)
      token_advantages, extra = self._pdcr(outcome, confidence, vds, step_mask, step_of_token,
                                           split_pool=self.process.split_pool, **self._advantage_options())
    else:
      vds = None
      token_advantages, extra = self._pacr(outcome, confidence, step_mask, step_of_token,
                                           **self._advantage_options())
    length = batch.tokens.shape[1]
    advantages = jnp.zeros(batch.old_logp.shape, jnp.float32).at[:, -length:].set(token_advantages)
    return advantages, {**metrics, **self._metrics(confidence, vds, step_mask, extra)}

  def _advantage_options(self) -> dict[str, Any]:
    options = self.process
    return dict(group_size=self.rl["group_size"], lambda_o=options.lambda_o, lambda_p=options.lambda_p,
                gamma=options.gamma, pool=options.pool, center=options.center)

  def _metrics(self, confidence, vds, step_mask, extra) -> dict[str, float]:
    step_mask = np.asarray(step_mask)
    confidence = np.asarray(confidence)
    num_steps = step_mask.sum(axis=1)
    gains = np.asarray(pdcr.confidence_gains(confidence, step_mask))
    metrics = {
      "pdcr/steps": float(num_steps.mean()),
      "pdcr/confidence_start": float(confidence[:, 0].mean()),
      "pdcr/confidence_end": float(np.take_along_axis(confidence, num_steps[:, None], axis=1).mean()),
      "pdcr/confidence_gain": float(gains[step_mask].mean()) if step_mask.any() else 0.0,
      "pdcr/process_advantage": float(np.asarray(extra["step_advantages"])[step_mask].mean())
      if step_mask.any() else 0.0,
      "pdcr/fallback_clusters": float(extra["num_fallback_clusters"]),
      "pdcr/perception_fraction": float(extra["perception_fraction"]),
    }
    if vds is not None:
      vds, visual = np.asarray(vds), np.asarray(extra["is_visual"])
      for name, cluster in (("perception", visual & step_mask), ("reasoning", ~visual & step_mask)):
        metrics[f"pdcr/vds_{name}"] = float(vds[cluster].mean()) if cluster.any() else 0.0
      if self.process.split_pool == "batch":
        metrics["pdcr/otsu_threshold"] = float(extra["threshold"])
    return metrics
