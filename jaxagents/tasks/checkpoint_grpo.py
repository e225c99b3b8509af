"""GRPO on your own Qwen-VL checkpoint and dataset: an optional SFT warm start, then group-relative RL with rewards
by name and DAPO's dynamic sampling.

    python -m jaxagents.train --config configs/grpo_qwen2_5_vl.py --workdir runs/grpo_qwen2_5_vl

Phases: "sft" (`config.sft.steps` > 0: teacher-forced cross-entropy on the records' answers) then "rl" (DeepSeekMath
GRPO, arXiv 2402.03300, Algorithm 1, as `grpo.py` runs it on the counting task: groups sampled on the mesh, the
sampling and reference log-probs recomputed with the training graph, `rl.updates_per_batch` clipped-ratio updates
per rollout batch, KL to the policy frozen at the phase's start; with `rl.loss.beta` 0 no reference copy is kept).

Rewards (`config.reward`): `rl/named_rewards.py` by name with weights, optionally Argos-gated; a record's own
`reward` field replaces them for that record.

Dynamic sampling (DAPO, arXiv 2503.14476, Sec. 3.2, "over-sample and filter out prompts with the accuracy equal to
1 and 0"): each step draws `rl.dynamic_sampling.max_rounds` x `rl.prompts_per_step` records. Round r samples the
groups of the r-th slice; groups whose rewards are all equal (zero advantage, no gradient) are dropped, and rounds
continue until `prompts_per_step` groups with distinct rewards are kept or the records run out. A step that is
still short is filled with dropped groups (advantage 0: they only add KL), and `dapo/filled` says how many. The
decisions are per host on its own rows, so hosts never wait for each other. `max_rounds=1` is plain GRPO.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import sharding
from jaxagents.generation import SamplingConfig, generate
from jaxagents.rl import grpo, named_rewards
from jaxagents.tasks import checkpoint_vlm as cvlm
from jaxagents.tasks import config_checks, rollouts, vlm_sft
from jaxagents.tasks.base import Phase
from jaxagents.tasks.counting_vlm import global_mean
from jaxagents.tasks.grpo import check_rl_config, policy_update
from jaxagents.tasks.vlm_sft import sft_update


@dataclasses.dataclass(frozen=True)
class SampledGroup:
  """One prompt's G sampled completions on this host: tokens [G, T], lengths [G], rewards [G], each reward term's
  scores {name: [G]}, and the sampler's log-probs [G, T]."""

  record: dict
  tokens: np.ndarray
  lengths: np.ndarray
  scores: np.ndarray
  terms: dict
  sample_logp: np.ndarray


class CheckpointGRPO:
  """(SFT), then GRPO with dynamic sampling on a checkpoint and a dataset (module doc)."""

  plot_file = "reward.png"
  plot_keys = ("sft/loss", "reward/mean", "reward/sampled_mean", "eval/reward", "eval/sampled_reward", "kl")
  progress_keys = ("sft/loss", "reward/mean")

  def __init__(self, config):
    check_rl_config(config)
    rl = config.rl
    self.config = config
    self.rounds = int(rl.get("dynamic_sampling", {}).get("max_rounds", 1))
    if self.rounds < 1:
      raise ValueError(f"config.rl.dynamic_sampling.max_rounds: expected >= 1, got {self.rounds}.")
    config_checks.number(config, "rl.top_p", low=0.0, low_open=True, high=1.0)
    self.model, self.processor = cvlm.build_model(config)
    self.train = cvlm.RecordBatches.from_config(config, self.processor, "train")
    if self.train is None:
      raise ValueError("config.data.train: expected a dataset path, got None.")
    self.reward_fn = named_rewards.from_config(config.reward)
    self.sampling = SamplingConfig(rl.max_new_tokens, rl.temperature, top_p=rl.get("top_p", 1.0),
                                   **self.processor.stop_options)
    self.loss_config = grpo.grpo_config(**dict(rl.loss))
    self.advantage_config = dataclasses.replace(self.loss_config, advantage=rl.get("advantage", "grpo"))
    self.phases = tuple(p for p in (
      Phase("sft", config.sft.steps, config.sft.batch_size, optimizer="sft", eval_every=0),
      Phase("rl", rl.steps, rl.prompts_per_step * self.rounds, optimizer="rl",
            updates_per_batch=rl.updates_per_batch),
    ) if p.steps > 0)
    held_out = cvlm.RecordBatches.from_config(config, self.processor, "eval") or self.train
    self.held_out = cvlm.HeldOutRecords(held_out, self.reward_fn, config.eval.examples, config.eval.samples,
                                        self.sampling, config.seed)
    # Optimizer states and a reference policy only where used: each costs 8 (AdamW) / 4 bytes per parameter.
    self._optimizers = {p.optimizer: vlm_sft.phase_optimizer(config[p.optimizer], p.steps, p.updates_per_batch)
                        for p in self.phases}
    self.reference = self.loss_config.beta > 0

  # -- state -------------------------------------------------------------------------------------------------------
  def init(self, rng):
    example = self.train.prompts([self.train.dataset[0]])
    params = self.model.init(rng, *example.model_args())["params"]
    return {"params": params, "ref_params": params} if self.reference else {"params": params}

  def pretrained(self, abstract_state):
    params = cvlm.pretrained_params(self.config, abstract_state["params"])
    return {"params": params, "ref_params": params} if self.reference else {"params": params}

  def optimizers(self):
    return self._optimizers

  def begin_phase(self, state, phase):
    if phase.name != "rl" or not self.reference:
      return state
    return {**state, "ref_params": jax.tree.map(jnp.copy, state["params"])}

  def source(self, phase):
    del phase
    return self.train.source()

  # -- host side ---------------------------------------------------------------------------------------------------
  def prepare(self, state, records, rng, phase):
    records = self.train.records(records)
    if phase.name == "sft":
      inputs, completion_mask = self.train.sft(records)
      return {"inputs": inputs, "completion_mask": completion_mask}, {}
    group = self.config.rl.group_size
    variables = {"params": state["params"]}
    chosen, stats = self._sample_groups(variables, records, rng)
    tokens = np.concatenate([g.tokens for g in chosen])
    lengths = np.concatenate([g.lengths for g in chosen])
    scores = np.concatenate([g.scores for g in chosen]).astype(np.float32)
    prompts = self.train.prompts([g.record for g in chosen]).repeat(group)  # the same rows the sampler saw
    inputs, completion_mask = prompts.with_completions(tokens, lengths, self.sampling.pad_id)
    inputs, completion_mask = sharding.shard_batch((inputs, np.asarray(completion_mask, bool)))
    old_logp, _ = rollouts.recompute_logprobs(variables, inputs, completion_mask, model=self.model,
                                              sampling=self.sampling)
    global_scores = sharding.shard_batch(scores)
    batch = {"inputs": inputs, "completion_mask": completion_mask, "old_logp": old_logp,
             "advantages": grpo.grpo_advantages(global_scores, self.advantage_config, group_size=group)}
    if self.reference:
      batch["ref_logp"], _ = rollouts.recompute_logprobs({"params": state["ref_params"]}, inputs, completion_mask,
                                                         model=self.model, sampling=self.sampling)
    sample_logp = sharding.shard_batch(np.concatenate([g.sample_logp for g in chosen]))
    metrics = {**rollouts.reward_stats(global_scores), **stats,
               "rollout/logprob_gap": rollouts.logprob_gap(old_logp, sample_logp, completion_mask),
               "response_length": global_mean(lengths.astype(np.float32))}
    for name in chosen[0].terms:
      values = np.concatenate([g.terms.get(name, np.full(group, np.nan)) for g in chosen])
      if np.isfinite(values).any():
        metrics[f"reward/{name}"] = float(np.nanmean(values))
    return batch, metrics

  def _sample_groups(self, variables, records, rng) -> tuple[list[SampledGroup], dict[str, float]]:
    """Dynamic sampling (module doc): this host's groups for the step, and its statistics."""
    group = self.config.rl.group_size
    needed = len(records) // self.rounds
    kept, dropped, all_scores = [], [], []
    for r in range(self.rounds):
      chunk = records[r * needed:(r + 1) * needed]
      prompts = self.train.prompts(chunk).repeat(group)
      out = generate(self.model, variables, sharding.shard_batch(prompts), sampling=self.sampling,
                     key=jax.random.fold_in(rng, r))
      tokens, lengths, sample_logp = sharding.host_rows((out.tokens, out.lengths, out.logprobs))
      scores, terms = cvlm.rewards(self.reward_fn, self.processor, tokens, lengths, chunk, group)
      all_scores.append(scores)
      for g, record in enumerate(chunk):
        rows = slice(g * group, (g + 1) * group)
        sampled = SampledGroup(record, tokens[rows], lengths[rows], scores[rows],
                               {k: v[rows] for k, v in terms.items()}, sample_logp[rows])
        (kept if np.ptp(sampled.scores) > 0 or self.rounds == 1 else dropped).append(sampled)
      if len(kept) >= needed:
        break
    sampled_groups = sum(len(s) for s in all_scores) // group
    stats = {"reward/sampled_mean": global_mean(np.concatenate(all_scores)),
             "dapo/kept_fraction": global_mean(np.array([len(kept) / sampled_groups], np.float32)),
             "dapo/filled": global_mean(np.array([max(needed - len(kept), 0)], np.float32))}
    return (kept + dropped)[:needed], stats

  # -- the jitted update -------------------------------------------------------------------------------------------
  def update(self, state, batch, rng, phase):
    del rng
    name = phase.optimizer
    sft, rl = self.config.sft, self.config.rl
    if phase.name == "sft":
      return sft_update(self.model, state, batch, name, self._optimizers[name],
                        micro_batches=sft.get("micro_batches", 1), chunk=sft.get("logprob_chunk"))
    return policy_update(self.model, self.sampling, self.loss_config, state, batch, name, self._optimizers[name],
                         micro_batches=rl.get("micro_batches", 1), group=rl.group_size,
                         chunk=rl.get("logprob_chunk"), response_length=rl.max_new_tokens)

  def evaluate(self, state, step):
    del step
    return self.held_out(self.model, {"params": state["params"]})
