"""GRPO-family post-training of a Qwen-VL model on the shipped counting task, on one device.

    python -m jaxagents.train --config configs/grpo_shapes.py --workdir runs/grpo_shapes

The job (outcome-supervised GRPO, DeepSeekMath arXiv 2402.03300; the loop of trl `GRPOTrainer`):
  1. SFT warm start: `sft_steps` of teacher-forced cross-entropy on the answers, so that sampled groups hold both
     right and wrong answers (a group with one reward value has zero advantage and teaches nothing).
  2. The reference policy is frozen at the end of SFT.
  3. Each RL step draws `prompts_per_step` prompts, samples `group_size` completions of each with the jitted
     `generate` (prefill + cached decode), scores them with a verifiable reward, computes group advantages, and
     takes `updates_per_batch` optimizer steps on `grpo_loss` (PPO-style clipped ratio to the sampling policy,
     k3 KL to the reference). The sampling log-probs are recomputed with the training graph before the updates;
     their gap to what `generate` returned is logged (`rollout/logprob_gap`): it is ~1e-6, not a silent bias.
  4. Held-out greedy accuracy and sampled mean reward before SFT, after SFT and every `eval_every` RL steps; to
     metrics.jsonl, curves to reward.png, checkpoints (params, optimizer, reference) every `save_every` steps. The
     prompts of step k are a pure function of (seed, k), so a resumed run sees the data it would have seen.
Multi-device (mesh) rollouts are not implemented yet: the job runs on the first local device.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from etils import epath

from jaxagents import checkpoint as checkpoint_lib
from jaxagents import metrics as metrics_lib
from jaxagents import workdir as workdir_lib
from jaxagents.data import shapes
from jaxagents.models.qwen_vl.generate import SamplingConfig, generate, sampling_logits
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.rl import grpo

_EVAL_SEED_OFFSET = 1_000_003


def completion_logprobs(model: QwenVL, params, inputs, completion_mask, sampling: SamplingConfig | None = None):
  """Teacher-forced log-probs [B, L] (and entropies) of each token under the model, at completion positions.

  `inputs` hold prompt + completion rows (`shapes.model_batch` with completions); position l's value is the
  log-prob of token l given tokens < l, from the logits at l - 1 passed through the sampler's own
  `sampling_logits` (temperature, top-k/p, suppressed ids) when `sampling` is given, so that training scores
  exactly the distribution the rollout drew from. Non-completion positions hold 0.
  """
  logits, _ = model.apply(params, inputs.input_ids, inputs.positions, inputs.attention_mask, inputs.vision)
  logits = logits[:, :-1]
  if sampling is not None:
    logits = sampling_logits(logits, sampling)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = inputs.input_ids[:, 1:]
  chosen = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.where(jnp.isfinite(log_probs), jnp.exp(log_probs) * log_probs, 0.0), axis=-1)
  pad = jnp.zeros((chosen.shape[0], 1), chosen.dtype)
  mask = completion_mask.astype(bool)
  chosen = jnp.where(mask, jnp.concatenate([pad, chosen], 1), 0.0)
  entropy = jnp.where(mask, jnp.concatenate([pad, entropy], 1), 0.0)
  return chosen, entropy


class Rollout(NamedTuple):
  """One RL step's sampled groups (B = prompts_per_step * group_size rows, L = prompt + completion length).

  Attributes:
    examples: the prompts' task examples (each repeated `group_size` times in the rows).
    tokens: [B, N] sampled completion tokens (pad after the end); lengths: [B] their lengths.
    scores: [B] float32 verifiable rewards.
    inputs: `ModelInputs` of prompt + completion rows; completion_mask: [B, L] bool, True at sampled tokens.
    old_logp, ref_logp: [B, L] log-probs of the sampled tokens under the sampling and reference policies
      (training graph recompute; 0 off the completion).
    logprob_gap: max |recompute - sampler log-prob| over completion tokens.
  """

  examples: list
  tokens: np.ndarray
  lengths: np.ndarray
  scores: np.ndarray
  inputs: Any
  completion_mask: np.ndarray
  old_logp: jax.Array
  ref_logp: jax.Array
  logprob_gap: float


class ShapesGRPO:
  """The job's pieces, built from the config; `run(workdir)` executes (or resumes) it.

  Subclasses (PDCR, VGS) override `advantages`, `rl_update`, `train_step` or `compile`; `progress_name` and
  `plot_title` name the job in its progress bar and its reward plot."""

  progress_name = "sft+grpo"
  plot_title = "SFT warm start, then GRPO"

  def __init__(self, config):
    self.config = config
    self.task = shapes.ShapesConfig(**config.data.task)
    self.model_config = shapes.qwen_vl_config(self.task, **config.model)
    self.model = QwenVL(self.model_config)
    rl = dict(config.rl)
    self.loss_config = grpo.grpo_config(**rl.pop("loss"))
    self.rl = rl
    self.sampling = SamplingConfig(max_new_tokens=rl["max_new_tokens"], temperature=rl["temperature"],
                                   eos_ids=(shapes.EOS,), pad_id=shapes.PAD, suppress_ids=shapes.NEVER_GENERATED)
    # Two optimizers with one state layout: RL starts from a fresh Adam state, not from the SFT moments.
    self.sft_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(config.sft.learning_rate, weight_decay=0.0))
    self.rl_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(rl["learning_rate"], weight_decay=0.0))
    self.sft_end = config.sft.steps  # the global step at which RL starts
    self.total_steps = self.sft_end + rl["steps"]

  # -- data -------------------------------------------------------------------------------------------------
  def examples(self, seed: int, start: int, count: int) -> list[dict]:
    return [shapes.make_example(self.task, seed, start + i) for i in range(count)]

  def score(self, tokens: np.ndarray, examples: list[dict], repeat: int) -> np.ndarray:
    """Exact-match reward of each row's answer (`shapes.parse_answer` in the task's format) against its example's
    count."""
    targets = [e["count"] for e in examples for _ in range(repeat)]
    return np.array([float(shapes.parse_answer(self.task, row) == target)
                     for row, target in zip(tokens, targets, strict=True)], np.float32)

  # -- state ------------------------------------------------------------------------------------------------
  def init_state(self, key):
    sample = self.examples(self.config.seed, 0, 1)
    inputs, _ = shapes.model_batch(self.task, self.model_config, sample)
    params = nn.meta.unbox(self.model.init(key, inputs.input_ids, inputs.positions, inputs.attention_mask,
                                           inputs.vision))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.sft_tx.init(params),
            "ref_params": params}

  # -- steps ------------------------------------------------------------------------------------------------
  def sft_step(self, state, inputs, completion_mask):
    def loss_fn(params):
      logp, _ = completion_logprobs(self.model, params, inputs, completion_mask)
      return -jnp.sum(logp) / jnp.maximum(jnp.sum(completion_mask), 1)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = self.sft_tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}, {
      "sft/loss": loss, "grad_norm": optax.tree.norm(grads)}

  def rl_update(self, state, inputs, completion_mask, old_logp, ref_logp, advantages):
    def loss_fn(params):
      logp, entropy = completion_logprobs(self.model, params, inputs, completion_mask, self.sampling)
      return grpo.grpo_loss(logp, old_logp, advantages, completion_mask, ref_logp=ref_logp, entropy=entropy,
                            config=self.loss_config)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = self.rl_tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {**state, "params": params, "opt_state": opt_state}, {**metrics, "grad_norm": optax.tree.norm(grads)}

  def evaluate(self, params) -> dict[str, float]:
    """Held-out rewards: greedy accuracy, and the mean reward of `eval_samples` sampled answers per prompt at the
    training temperature (the quantity GRPO maximises); the same prompts and draws at every evaluation.

    Runs in chunks of `config.data.eval_chunk` prompts (default 64), chunk i sampling with fold_in(eval key, i):
    the vision tower attends over all patches of a call at once (a block-diagonal mask, quadratic in the call's
    images), and 256 prompts x 4 samples in one call took ~20x the time of four 64-prompt calls."""
    n, samples = self.config.data.eval_examples, self.config.data.eval_samples
    chunk = self.config.data.get("eval_chunk", 64)
    examples = self.examples(self.config.seed + _EVAL_SEED_OFFSET, 0, n)
    greedy = SamplingConfig(self.sampling.max_new_tokens, eos_ids=(shapes.EOS,), pad_id=shapes.PAD,
                            suppress_ids=shapes.NEVER_GENERATED)
    key = jax.random.key(self.config.seed + _EVAL_SEED_OFFSET)  # the same draws at every evaluation
    greedy_scores, sampled_scores = [], []
    for index, start in enumerate(range(0, n, chunk)):
      part = examples[start:start + chunk]
      for repeat, sampling, scores in ((1, greedy, greedy_scores), (samples, self.sampling, sampled_scores)):
        if not repeat:
          continue
        inputs, _ = shapes.model_batch(self.task, self.model_config, part, repeat=repeat)
        out = generate(self.model, params, inputs.input_ids, inputs.attention_mask, inputs.positions,
                       inputs.decode_base, inputs.vision, sampling=sampling, key=jax.random.fold_in(key, index),
                       cache_dtype=jnp.float32)
        scores.append(self.score(np.asarray(out.tokens), part, repeat))
    metrics = {"eval/reward": float(np.concatenate(greedy_scores).mean())}
    if samples:
      metrics["eval/sampled_reward"] = float(np.concatenate(sampled_scores).mean())
    return metrics

  def sample(self, state, step: int) -> Rollout:
    """Draws the prompts of RL step `step`, samples `group_size` completions of each, scores them, and recomputes
    the sampling and reference log-probs with the training graph."""
    rl, group = self.rl, self.rl["group_size"]
    prompts = rl["prompts_per_step"]
    examples = self.examples(self.config.seed, step * prompts, prompts)
    inputs, _ = shapes.model_batch(self.task, self.model_config, examples, repeat=group)
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    out = generate(self.model, state["params"], inputs.input_ids, inputs.attention_mask,
                   inputs.positions, inputs.decode_base, inputs.vision, sampling=self.sampling, key=key,
                   cache_dtype=jnp.float32)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    scores = self.score(tokens, examples, group)
    train_inputs, completion_mask = shapes.model_batch(self.task, self.model_config, examples, list(tokens),
                                                       repeat=group)
    steps = np.arange(tokens.shape[1])
    completion_mask[:, -tokens.shape[1]:] = steps[None, :] < lengths[:, None]
    old_logp, _ = self._logprobs(state["params"], train_inputs, completion_mask)
    ref_logp, _ = self._logprobs(state["ref_params"], train_inputs, completion_mask)
    sampled = np.asarray(old_logp)[:, -tokens.shape[1]:]
    gap = np.abs(np.where(completion_mask[:, -tokens.shape[1]:], sampled - np.asarray(out.logprobs), 0)).max()
    return Rollout(examples, tokens, lengths, scores, train_inputs, completion_mask, old_logp, ref_logp, float(gap))

  def advantages(self, state, batch: Rollout) -> tuple[Any, dict[str, float]]:
    """Per-sequence [B] (or per-token [B, T]) advantages of a rollout, and metrics. GRPO: group-normalized
    outcome rewards (DeepSeekMath's outcome supervision); subclasses add process terms."""
    del state
    return grpo.grpo_advantages(batch.scores, self.loss_config, group_size=self.rl["group_size"]), {}

  def rollout(self, state, step: int) -> tuple[Any, dict[str, float]]:
    """RL step `step`: `sample`, `advantages`, then `updates_per_batch` optimizer steps of `rl_update`."""
    batch = self.sample(state, step)
    advantages, extra = self.advantages(state, batch)
    metrics = {}
    for _ in range(self.rl["updates_per_batch"]):
      state, metrics = self._rl_update(state, batch.inputs, batch.completion_mask, batch.old_logp, batch.ref_logp,
                                       advantages)
    state = {**state, "step": state["step"] + 1}
    return state, {**{k: float(v) for k, v in metrics.items()}, **extra, "reward/mean": float(batch.scores.mean()),
                   "reward/std": float(batch.scores.std()), "response_length": float(batch.lengths.mean()),
                   "rollout/logprob_gap": batch.logprob_gap}

  def train_step(self, state, step: int) -> tuple[Any, dict[str, float]]:
    """Global step `step` (0-based): an SFT step, the SFT -> RL hand-over, or an RL step."""
    sft = self.config.sft
    if step >= self.sft_end:
      return self.rollout(state, step - self.sft_end)
    examples = self.examples(self.config.seed, step * sft.batch_size, sft.batch_size)
    inputs, mask = shapes.model_batch(self.task, self.model_config, examples, [self.target_ids(e) for e in examples])
    state, metrics = self._sft_step(state, inputs, mask)
    if step + 1 == self.sft_end:
      state = {**state, "ref_params": jax.tree.map(jnp.copy, state["params"]),  # the frozen reference
               "opt_state": self.rl_tx.init(state["params"])}
    return state, {k: float(v) for k, v in metrics.items()}

  def target_ids(self, example: dict) -> list[int]:
    """The SFT target completion of an example, in the task's format."""
    return shapes.target_ids(self.task, example)

  def compile(self) -> None:
    """Jits the steps (called once by `run`; subclasses add theirs)."""
    self._sft_step = jax.jit(self.sft_step, donate_argnums=0)
    self._rl_update = jax.jit(self.rl_update, donate_argnums=0)
    self._logprobs = jax.jit(lambda params, inputs, mask: completion_logprobs(
      self.model, params, inputs, mask, self.sampling))

  # -- loop -------------------------------------------------------------------------------------------------
  # Config fields that may differ from the workdir's config.json on resume (any other difference is refused):
  # logging and checkpoint cadence, and `rl.steps`, which extends or shortens the RL phase (its learning rate is
  # constant, so the steps already taken are those of the longer run). Until the first RL step, all of `rl.*` may
  # change: the warm-start checkpoint does not depend on it (`jaxagents.rl.compare` starts each method from a copy).
  resumable_fields = ("log_every", "eval_every", "checkpoint", "tensorboard", "rl.steps")

  def check_workdir(self, workdir: str, checkpointer, step: int, abstract) -> dict:
    """Refuses (`CheckpointMismatchError`, nothing written) to continue the checkpoint at `step` under another
    config than the one that wrote it, or into another state; returns the config fields that changed."""
    may_change = self.resumable_fields + (("rl",) if step <= self.sft_end else ())
    changed = workdir_lib.check_config(workdir, self.config, step=step, may_change=may_change)
    checkpointer.check_matches(step, abstract)
    if step > self.total_steps:
      raise checkpoint_lib.CheckpointMismatchError(
        f"{workdir} holds a checkpoint at step {step}, past this config's last step {self.total_steps} "
        f"(warm start {self.sft_end} + rl.steps {self.rl['steps']}); its final metrics are not this config's, so "
        f"nothing was changed. Point --workdir elsewhere, or set rl.steps >= {step - self.sft_end}.")
    return changed

  @staticmethod
  def after_sft_metrics(path: epath.Path) -> dict[str, float]:
    """The held-out rewards measured at the end of the warm start, as `<key>_after_sft` (part of the summary)."""
    file = path / "after_sft.json"
    return {f"{key}_after_sft": value for key, value in json.loads(file.read_text()).items()} if file.exists() else {}

  def run(self, workdir: str) -> dict[str, float]:
    config = self.config
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    device = jax.local_devices()[0]
    init_key = jax.random.key(config.seed)
    abstract = jax.eval_shape(self.init_state, init_key)
    replicated = jax.sharding.SingleDeviceSharding(device)
    abstract = checkpoint_lib.abstract_with_shardings(abstract, jax.tree.map(lambda _: replicated, abstract))
    checkpointer = checkpoint_lib.Checkpointer(path / "checkpoints", save_every=config.checkpoint.save_every,
                                               keep=config.checkpoint.keep, async_save=False)
    start = checkpointer.latest_step()
    try:
      changed = {} if start is None else self.check_workdir(workdir, checkpointer, start, abstract)
      if start is not None and start >= self.total_steps:
        checkpointer.close()
        print(f"The run in {workdir} is complete (step {start}); nothing to do.", file=sys.stderr)
        return workdir_lib.summary(path, extra=self.after_sft_metrics(path))
      state = None if start is None else checkpointer.restore(start, abstract)
    except BaseException:
      checkpointer.close()  # an open manager's threads otherwise print their own tracebacks at exit
      raise
    workdir_lib.write_config(path, config)
    self.compile()
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.get("tensorboard", False))
    if start is None:
      start = 0
      state = jax.jit(self.init_state)(init_key)
      before = self.evaluate(state["params"])
      writer.write(0, before)
      (path / "before.json").write_text(json.dumps(before))
    else:
      print(f"Resumed from step {start} in {checkpointer.directory}{workdir_lib.describe_changes(changed)}.",
            file=sys.stderr)

    final: dict[str, float] = {}
    progress = tqdm.tqdm(total=self.total_steps, initial=start, desc=self.progress_name, dynamic_ncols=True)
    for step in range(start, self.total_steps):
      state, metrics = self.train_step(state, step)
      done = step + 1
      if done % config.log_every == 0 or done == self.total_steps:
        writer.write(done, metrics)
        final.update(metrics)
        progress.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k in ("sft/loss", "reward/mean")},
                             refresh=False)
      if done == self.sft_end or (done > self.sft_end and done % config.eval_every == 0) or done == self.total_steps:
        evaluation = self.evaluate(state["params"])
        writer.write(done, evaluation)
        final.update(evaluation)
        if done == self.sft_end:
          (path / "after_sft.json").write_text(json.dumps(evaluation))
        tqdm.tqdm.write(f"step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in evaluation.items()))
      checkpointer.save(done, state, force=done == self.total_steps)
      progress.update(1)
    progress.close()
    checkpointer.close()
    writer.close()
    records = metrics_lib.read_metrics(writer.path)
    metrics_lib.plot_curves(records, ["sft/loss", "reward/mean", "eval/reward", "eval/sampled_reward", "kl"],
                            path / "reward.png",
                            title=self.plot_title)
    final.update(self.after_sft_metrics(path))
    (path / workdir_lib.SUMMARY_FILE).write_text(json.dumps(final, indent=2))
    self._print_summary(path, final)
    return final

  @staticmethod
  def _print_summary(path: epath.Path, final: dict[str, float]) -> None:
    """One line per held-out reward: before training, after the warm start, at the end."""
    points = [("before training", path / "before.json"), ("after warm start", path / "after_sft.json")]
    rows = [(name, json.loads(file.read_text())) for name, file in points if file.exists()] + [("final", final)]
    for key, label in (("eval/reward", "greedy accuracy"), ("eval/sampled_reward", "sampled mean reward")):
      values = [f"{name} {values[key]:.3f}" for name, values in rows if key in values]
      print(f"held-out {label}: " + ", ".join(values), file=sys.stderr)


# `config.algorithm` -> "module:class" of the job (imported on use, so one trainer's imports do not burden another).
JOBS = {
  "grpo": "jaxagents.rl.trainer:ShapesGRPO",
  "pdcr": "jaxagents.rl.pdcr_trainer:ShapesPDCR",
  "vgs": "jaxagents.rl.vgs_trainer:ShapesVGS",
}


def job_class(algorithm: str) -> type:
  """The trainer class registered for `algorithm` in `JOBS`."""
  if algorithm not in JOBS:
    raise ValueError(f"config.algorithm: expected one of {sorted(JOBS)}, got {algorithm!r}")
  module, name = JOBS[algorithm].split(":")
  return getattr(importlib.import_module(module), name)


def train(config, workdir: str) -> dict[str, float]:
  """Entry point used by `python -m jaxagents.train` when `config.trainer == "rl"`; `config.algorithm` (default
  "grpo") picks the job from `JOBS`."""
  return job_class(config.get("algorithm", "grpo"))(config).run(workdir)
