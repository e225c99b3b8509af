"""Supervised fine-tuning of a VLM on reference completions: teacher-forced cross-entropy on the completion tokens.

    python -m jaxagents.train --config configs/sft_counting.py --workdir runs/sft_counting

`sft_loss` is the loss every job's warm start uses (GRPO's SFT phase, the distillation teacher and student); the
task `VLMSFT` is that loss alone on the counting environment, one phase, with held-out rewards.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxagents.envs import counting
from jaxagents.generation import completion_logprobs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.tasks import accumulate, config_checks
from jaxagents.tasks import counting_vlm as cv
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients


def sft_loss(model, params, inputs, completion_mask, *, chunk: int | None = None, token_count=None):
  """Mean negative log-likelihood of the completion tokens (`completion_mask`) under the model; (loss, metrics).
  `chunk`: project the logits that many positions at a time (`generation.completion_logprobs`); `token_count`: the
  normaliser (default this batch's completion tokens; a micro-batch passes its whole batch's)."""
  logp, _ = completion_logprobs(model, {"params": params}, inputs, completion_mask, chunk=chunk)
  tokens = completion_mask.sum()
  normaliser = tokens if token_count is None else token_count
  loss = -logp.sum() / jnp.maximum(normaliser, 1)  # an all-empty batch gives 0, not NaN
  return loss, {"tokens": tokens}


def adamw(learning_rate: float | optax.Schedule, weight_decay: float = 0.0,
          clip: float = 1.0) -> optax.GradientTransformation:
  """The jobs' optimizer: global-norm clipping, then AdamW (a constant learning rate or a schedule)."""
  return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(learning_rate, weight_decay=weight_decay))


LR_SCHEDULES = ("constant", "cosine")


def check_schedule(config, phase: str) -> None:
  """`config.<phase>.lr_schedule` and `warmup_steps`, by field name."""
  if "warmup_steps" in config[phase]:
    config_checks.non_negative(config, f"{phase}.warmup_steps")
  schedule = config[phase].get("lr_schedule", "constant")
  if schedule not in LR_SCHEDULES:
    raise ValueError(f"config.{phase}.lr_schedule: expected one of {LR_SCHEDULES}, got {schedule!r}.")


def phase_optimizer(phase_config, steps: int, updates_per_step: int = 1) -> Optimizer:
  """The jobs' AdamW at `phase_config.learning_rate`: constant, or (`lr_schedule="cosine"`) a linear warmup over
  `warmup_steps` steps from 0, then a cosine decay to 0 at the phase's last step (SGDR, Loshchilov & Hutter, arXiv
  1608.03983, without restarts). The schedule counts optimizer updates, `updates_per_step` per loop step."""
  if phase_config.get("lr_schedule", "constant") == "constant":
    return Optimizer(adamw(phase_config.learning_rate))
  updates = max(steps * updates_per_step, 1)
  warmup = min(phase_config.get("warmup_steps", 0) * updates_per_step, updates - 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, phase_config.learning_rate, warmup, updates)
  return Optimizer(adamw(schedule), schedule=schedule)


def sft_update(model, state, batch, name: str, optimizer: Optimizer, *, micro_batches: int = 1,
               chunk: int | None = None):
  """One SFT step on {"inputs", "completion_mask"}: (state, {"sft/loss", "grad_norm"}); `micro_batches` and `chunk`
  as in `grpo.policy_update`."""

  def loss_fn(params, piece, totals):
    loss, metrics = sft_loss(model, params, piece["inputs"], piece["completion_mask"], chunk=chunk,
                             token_count=None if totals is None else totals["tokens"])
    return loss, {**metrics, "sft/loss": loss}

  grads, metrics = accumulate.accumulated_grads(loss_fn, state["params"], batch, count=micro_batches, group=1)
  return apply_gradients(state, grads, name, optimizer), {"sft/loss": metrics["sft/loss"],
                                                          "grad_norm": optax.tree.norm(grads)}


def sft_prepare(env, model_config, records):
  """Host batch of the SFT phases: the records' prompts + their reference completions."""
  examples = counting.examples_from_batch(env, records)
  inputs, completion_mask = cv.with_targets(env, cv.prompts(env, model_config, examples), examples)
  return {"inputs": inputs, "completion_mask": completion_mask}


class VLMSFT:
  """SFT of a tiny Qwen-VL on the counting environment: `config.sft.steps` steps of `config.sft.batch_size`."""

  plot_file = "loss.png"
  plot_keys = ("loss", "eval/reward", "eval/sampled_reward")

  def __init__(self, config):
    self.config = config
    config_checks.positive(config, "sft.steps", "sft.batch_size", "eval.examples")
    check_schedule(config, "sft")
    self.env = cv.env_config(config)
    self.model_config = cv.model_config(self.env, **dict(config.model))
    self.model = QwenVL(self.model_config)
    self.phases = (Phase("sft", config.sft.steps, config.sft.batch_size),)
    sampling = cv.sampling(self.env, self.env.completion_length, config.get("temperature", 1.0))
    self.held_out = cv.HeldOut(self.env, self.model_config, config.eval.examples, config.eval.samples, config.seed,
                               sampling)

  def init(self, rng):
    example = counting.make_example(self.env, self.config.seed, 0)
    return {"params": self.model.init(rng, *cv.prompts(self.env, self.model_config, [example]).model_args())["params"]}

  def optimizers(self):
    return {"main": phase_optimizer(self.config.sft, self.config.sft.steps)}

  def source(self, phase):
    del phase
    return counting.CountingSource(self.env, self.config.seed, cv.TRAIN_RECORDS)

  def prepare(self, state, records, rng, phase):
    del state, rng, phase
    return sft_prepare(self.env, self.model_config, records), {}

  def loss(self, params, batch, rng, phase):
    del rng, phase
    return sft_loss(self.model, params, batch["inputs"], batch["completion_mask"])

  def evaluate(self, state, step):
    del step
    return self.held_out(self.model, {"params": state["params"]})


class CheckpointSFT:
  """SFT of a Qwen-VL checkpoint on a dataset file (`checkpoint_vlm`; configs/sft_qwen2_5_vl.py): each record's
  final assistant turn, or its answer, is the target; held-out rewards by name (`config.reward`) on `data.eval`."""

  plot_file = "loss.png"
  plot_keys = ("sft/loss", "eval/reward", "eval/sampled_reward")
  progress_keys = ("sft/loss",)

  def __init__(self, config):
    from jaxagents.generation import SamplingConfig
    from jaxagents.rl import named_rewards
    from jaxagents.tasks import checkpoint_vlm as cvlm

    config_checks.positive(config, "sft.steps", "sft.batch_size", "eval.examples", "eval.max_new_tokens")
    check_schedule(config, "sft")
    self.config = config
    self.cvlm = cvlm
    self.model, self.processor = cvlm.build_model(config)
    self.train = cvlm.RecordBatches.from_config(config, self.processor, "train")
    if self.train is None:
      raise ValueError("config.data.train: expected a dataset path, got None.")
    self.phases = (Phase("sft", config.sft.steps, config.sft.batch_size),)
    self._optimizers = {"main": phase_optimizer(config.sft, config.sft.steps)}
    sampling = SamplingConfig(config.eval.max_new_tokens, config.eval.get("temperature", 1.0),
                              **self.processor.stop_options)
    held_out = cvlm.RecordBatches.from_config(config, self.processor, "eval") or self.train
    self.held_out = cvlm.HeldOutRecords(held_out, named_rewards.from_config(config.reward), config.eval.examples,
                                        config.eval.samples, sampling, config.seed)

  def init(self, rng):
    return {"params": self.model.init(rng, *self.train.prompts([self.train.dataset[0]]).model_args())["params"]}

  def pretrained(self, abstract_state):
    return {"params": self.cvlm.pretrained_params(self.config, abstract_state["params"])}

  def optimizers(self):
    return self._optimizers

  def source(self, phase):
    del phase
    return self.train.source()

  def prepare(self, state, records, rng, phase):
    del state, rng, phase
    inputs, completion_mask = self.train.sft(self.train.records(records))
    return {"inputs": inputs, "completion_mask": completion_mask}, {}

  def update(self, state, batch, rng, phase):
    del rng
    sft = self.config.sft
    return sft_update(self.model, state, batch, phase.optimizer, self._optimizers[phase.optimizer],
                      micro_batches=sft.get("micro_batches", 1), chunk=sft.get("logprob_chunk"))

  def evaluate(self, state, step):
    del step
    return self.held_out(self.model, {"params": state["params"]})
