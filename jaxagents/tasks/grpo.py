"""GRPO-family RL of a tiny Qwen-VL on the counting environment: an SFT warm start, then group-relative RL.

    python -m jaxagents.train --config configs/grpo_shapes.py --workdir runs/grpo_shapes

Phases (DeepSeekMath GRPO, arXiv 2402.03300, Algorithm 1; the loop of trl `GRPOTrainer`):
  1. "sft": teacher-forced cross-entropy on the reference answers (`vlm_sft.sft_loss`), so that sampled groups hold
     both right and wrong answers (a group with one reward value has zero advantage and teaches nothing).
  2. "rl": the reference policy is frozen at the phase's start (`begin_phase`) and the optimizer is a fresh one.
     Each step samples `rl.group_size` completions of `rl.prompts_per_step` prompts on the mesh
     (`rollouts.sample_groups`), scores them with the environment's verifier on each host, recomputes the sampling
     and reference log-probs with the training graph, computes advantages, and the loop takes
     `rl.updates_per_batch` optimizer steps of `grpo.grpo_loss` on the batch (PPO-style clipped ratio to the
     sampling policy, KL to the reference).
Advantages by name (`rl.advantage`): "grpo" (group-normalised outcome reward), "dr_grpo" (no std, Dr. GRPO arXiv
2503.20783), "rloo" (leave-one-out), "pdcr" and "pacr" (outcome plus a per-token process advantage from the policy's
confidence in the ground-truth answer after each step; `process_rewards.py`, for the environment's "rows" format).
Held-out greedy accuracy and sampled mean reward before training, after the warm start and every `eval_every` RL
steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.generation import completion_logprobs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.rl import grpo
from jaxagents.tasks import accumulate, config_checks, rollouts, vlm_sft
from jaxagents.tasks import counting_vlm as cv
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients
from jaxagents.tasks.process_rewards import ProcessReward, process_options

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "pdcr", "pacr")


def outcome_loss_config(loss_config: grpo.GRPOConfig, advantage: str) -> grpo.GRPOConfig:
  """The outcome-advantage estimator named `advantage` as a `GRPOConfig` (pdcr/pacr start from GRPO's)."""
  if advantage == "dr_grpo":
    return dataclasses.replace(loss_config, advantage="grpo", std=None)
  if advantage == "rloo":
    return dataclasses.replace(loss_config, advantage="rloo")
  return dataclasses.replace(loss_config, advantage="grpo")


def check_rl_config(config) -> None:
  """Every size, step count and group size of an RL config, by field name."""
  config_checks.non_negative(config, "sft.steps", "rl.steps")
  config_checks.positive(config, "sft.batch_size", "rl.prompts_per_step", "rl.group_size", "rl.updates_per_batch",
                         "rl.max_new_tokens", "eval.examples")
  config_checks.non_negative(config, "eval.samples", "eval_every", "log_every")
  config_checks.number(config, "rl.temperature", low=0.0)
  config_checks.number(config, "rl.learning_rate", low=0.0, low_open=True)
  config_checks.number(config, "sft.learning_rate", low=0.0, low_open=True)
  for name in ("sft", "rl"):
    vlm_sft.check_schedule(config, name)


class GRPO:
  """SFT warm start, then GRPO-family RL (see the module doc)."""

  plot_file = "reward.png"
  plot_keys = ("sft/loss", "reward/mean", "eval/reward", "eval/sampled_reward", "kl")
  progress_keys = ("sft/loss", "reward/mean")

  def __init__(self, config):
    check_rl_config(config)
    self.config = config
    rl = config.rl
    self.env = cv.env_config(config)
    self.model_config = cv.model_config(self.env, **dict(config.model))
    self.model = QwenVL(self.model_config)
    self.sampling = cv.sampling(self.env, rl.max_new_tokens, rl.temperature)
    self.advantage = rl.get("advantage", "grpo")
    if self.advantage not in ADVANTAGES:
      raise ValueError(f"config.rl.advantage: expected one of {ADVANTAGES}, got {self.advantage!r}.")
    self.loss_config = grpo.grpo_config(**dict(rl.loss))
    self.outcome_config = outcome_loss_config(self.loss_config, self.advantage)
    self.process = None
    if self.advantage in ("pdcr", "pacr"):
      options = process_options(dict(rl.get("process", {})), self.advantage)
      self.process = ProcessReward(self.env, self.model_config, self.model, self.sampling, options,
                                   group_size=rl.group_size)
    self.phases = (
      Phase("sft", config.sft.steps, config.sft.batch_size, optimizer="sft", eval_every=0),
      Phase("rl", rl.steps, rl.prompts_per_step, optimizer="rl", updates_per_batch=rl.updates_per_batch),
    )
    self.held_out = cv.HeldOut(self.env, self.model_config, config.eval.examples, config.eval.samples, config.seed,
                               self.sampling)
    # Two optimizers: RL starts from a fresh Adam state, not from the SFT moments.
    self._optimizers = {"sft": vlm_sft.phase_optimizer(config.sft, config.sft.steps),
                        "rl": vlm_sft.phase_optimizer(rl, rl.steps, rl.updates_per_batch)}

  # -- state -------------------------------------------------------------------------------------------------------
  def init(self, rng):
    example = counting.make_example(self.env, self.config.seed, 0)
    params = self.model.init(rng, *cv.prompts(self.env, self.model_config, [example]).model_args())["params"]
    return {"params": params, "ref_params": params}

  def optimizers(self):
    return self._optimizers

  def begin_phase(self, state, phase):
    if phase.name != "rl":
      return state
    return {**state, "ref_params": jax.tree.map(jnp.copy, state["params"])}  # the frozen reference

  def source(self, phase):
    del phase
    return counting.CountingSource(self.env, self.config.seed, cv.TRAIN_RECORDS)

  def resumable(self, step: int) -> tuple[str, ...]:
    """Before the first RL step all of `rl.*` may change on resume (the warm start does not depend on it:
    `scripts/compare_rl.py` starts each method from a copy of one warm start); after it, `rl.steps` may with a
    constant RL learning rate (the steps taken are those of a longer run), and nothing may with a decaying one."""
    if step <= self.config.sft.steps:
      return ("rl",)
    return ("rl.steps",) if self.config.rl.get("lr_schedule", "constant") == "constant" else ()

  # -- host side ---------------------------------------------------------------------------------------------------
  def prepare(self, state, records, rng, phase):
    if phase.name == "sft":
      return vlm_sft.sft_prepare(self.env, self.model_config, records), {}
    examples = counting.examples_from_batch(self.env, records)
    group = self.config.rl.group_size
    variables = {"params": state["params"]}
    sampled = rollouts.sample_groups(self.model, variables, cv.prompts(self.env, self.model_config, examples),
                                     group_size=group, sampling=self.sampling, key=rng)
    scores = sharding.shard_batch(cv.rewards(self.env, sampled.tokens, examples, group))
    old_logp, _ = rollouts.recompute_logprobs(variables, sampled.inputs, sampled.completion_mask, model=self.model,
                                              sampling=self.sampling)
    ref_logp, _ = rollouts.recompute_logprobs({"params": state["ref_params"]}, sampled.inputs,
                                              sampled.completion_mask, model=self.model, sampling=self.sampling)
    advantages = grpo.grpo_advantages(scores, self.outcome_config, group_size=group)
    metrics = {}
    if self.process is not None:
      advantages, metrics = self.process(variables, examples, sampled, old_logp, advantages)
    batch = {"inputs": sampled.inputs, "completion_mask": sampled.completion_mask, "old_logp": old_logp,
             "ref_logp": ref_logp, "advantages": advantages}
    metrics = {**metrics, **rollouts.reward_stats(scores),
               "response_length": cv.global_mean(sampled.lengths.astype("float32")),
               "rollout/logprob_gap": rollouts.logprob_gap(old_logp, sampled.sample_logprobs,
                                                           sampled.completion_mask)}
    return batch, metrics

  # -- the jitted update -------------------------------------------------------------------------------------------
  def update(self, state, batch, rng, phase):
    del rng
    name = phase.optimizer
    if phase.name == "sft":
      return vlm_sft.sft_update(self.model, state, batch, name, self._optimizers[name])
    return policy_update(self.model, self.sampling, self.loss_config, state, batch, name, self._optimizers[name])

  def evaluate(self, state, step):
    del step
    return self.held_out(self.model, {"params": state["params"]})


def policy_update(model, sampling, loss_config: grpo.GRPOConfig, state, batch, name: str, optimizer: Optimizer, *,
                  micro_batches: int = 1, group: int = 1, chunk: int | None = None,
                  response_length: int | None = None):
  """One `grpo.grpo_loss` step on a prepared rollout batch {"inputs", "completion_mask", "old_logp", "advantages",
  and "ref_logp" unless the KL weight is 0}; log-probs and entropies under the sampler's distribution. Memory at
  real sizes: gradients accumulated over `micro_batches` micro-batches of whole groups (`accumulate.py`), log-probs
  projected `chunk` positions at a time over the last `response_length` columns (`completion_logprobs`)."""

  def loss_fn(params, piece, totals):
    logp, entropy = completion_logprobs(model, {"params": params}, piece["inputs"], piece["completion_mask"],
                                        sampling, chunk=chunk, response_length=response_length)
    counts = {} if totals is None else {"global_token_count": totals["tokens"],
                                        "global_seq_count": totals["sequences"]}
    return grpo.grpo_loss(logp, piece["old_logp"], piece["advantages"], piece["completion_mask"],
                          ref_logp=piece.get("ref_logp"), entropy=entropy, config=loss_config, **counts)

  grads, metrics = accumulate.accumulated_grads(loss_fn, state["params"], batch, count=micro_batches, group=group)
  return apply_gradients(state, grads, name, optimizer), {**metrics, "grad_norm": optax.tree.norm(grads)}
