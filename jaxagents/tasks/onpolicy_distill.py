"""On-policy distillation with Visual Gradient Steering (VGS, arXiv 2606.00564) on the counting environment.

    python -m jaxagents.train --config configs/vgs_shapes.py --workdir runs/vgs_shapes

The math is `jaxagents.rl.vgs`. Phases:
  1. "teacher": a larger tiny Qwen-VL q_T (`config.teacher.model`) learns the task by SFT from its own stream of
     examples. It shares the student's tokenizer (the environment's vocabulary); its parameters and optimizer live in
     the train state, so checkpoints and resumes cover it. Its held-out rewards are logged once it is final
     (`teacher/eval/*`).
  2. "sft": the student p_S's warm start (`config.sft.steps`; 0 skips it).
  3. "distill": each step samples `prompts_per_step x group_size` rollouts τ ~ p_S(.|I, x) on the mesh, runs four
     forwards (student and teacher, with the image and with the vision span dropped from the prompt), takes ℓ_Std,
     ℓ_Vis, ℓ_LP from `vgs.vgs_terms` (Eq. 3, 11, 16) and their gradients from one `jax.vjp` (vmapped over the
     cotangents), and applies `optax.chain(vgs_steering(γ, eta, lam), clip_by_global_norm(1), adamw)`: the update
     is η·(g_Std + γ g_Vis) + λ·η·g_LP (Eq. 13-15, 18), clipped after steering (the paper trains with TRL, which
     clips the update before AdamW). γ = 0 (with λ = 0) is standard on-policy distillation, the baseline.
Options (`config.rl`): `eta` None/"dynamic" (Eq. 15) or a constant (App. A); `freeze_eta_after`; `adaptive_gamma`
(γ_t = 0 / γ/2 / γ by VDS quantile, App. E); `project_conflicts` (PCGrad's projection of g_Std against g_Vis, not
the paper's method); `alpha` > 0 mixes in the clipped GRPO term of Eq. 22, J = (1-α)·O_GRPO - α·ℓ_VGS-LP, with η
dropped as the re-implementation does (so it needs eta = 1.0) and no KL term (so `loss.beta` must be 0).

Our choices: both SFT phases put a fraction `data.text_only_fraction` of their rows in the text-only view with the
true answer: models trained from scratch on image prompts only have no language prior, and their p(.|x), which ℓ_Vis,
ℓ_LP and the VDS read, would be an input never seen (in a first run without such rows, whose teacher had also not
learned to use the image, g_Vis was anti-parallel to g_Std, cos -0.999, and η grew to 24). All four views'
distributions are the sampler's (`sampling_logits`: temperature, suppressed ids), as TRL's GKD tempers both models'
logits. One optimizer step per rollout batch (strictly on-policy, so the GRPO ratio is 1 at the update). The Q_0.7
gate is taken over each step's batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.generation import sampling_logits
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.rl import grpo, vgs
from jaxagents.tasks import config_checks, rollouts, vlm_sft
from jaxagents.tasks import counting_vlm as cv
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients
from jaxagents.tasks.grpo import check_rl_config

_TEACHER_SEED_OFFSET = 2_000_003  # the teacher learns from its own stream of examples


def response_logits(model, params, inputs, length: int, sampling) -> jax.Array:
  """Logits [B, N, V] of the sampler's distribution at the N = `length` response tokens, which fill the last N
  columns of `inputs`: position t predicts response token t."""
  logits, _ = model.apply({"params": params}, *inputs.model_args())
  return sampling_logits(logits[:, -length - 1:-1], sampling)


def value_and_grads(losses_fn, params):
  """`vgs.value_and_two_grads` for K losses, with an aux output: one `jax.vjp` of losses_fn(params) -> ([K], aux),
  its pullback vmapped over the K unit cotangents. Returns (losses [K], aux, (g_1, ..., g_K))."""
  losses, pullback, aux = jax.vjp(losses_fn, params, has_aux=True)
  (stacked,) = jax.vmap(pullback)(jnp.eye(losses.shape[0], dtype=losses.dtype))
  return losses, aux, tuple(jax.tree.map(lambda g, k=k: g[k], stacked) for k in range(losses.shape[0]))


def _eta(rl) -> str | float:
  eta = rl.get("eta")
  if eta in (None, "dynamic"):
    return "dynamic"
  if isinstance(eta, int | float) and not isinstance(eta, bool) and eta > 0:
    return float(eta)
  raise ValueError(f"config.rl.eta: expected None or 'dynamic' (Eq. 15) or a positive constant, got {eta!r}")


class OnPolicyDistill:
  """Teacher SFT, student SFT warm start, then on-policy distillation with VGS (see the module doc)."""

  plot_file = "reward.png"
  plot_keys = ("teacher/sft_loss", "sft/loss", "reward/mean", "eval/reward", "eval/sampled_reward", "vgs/std",
               "vgs/vis", "vgs/eta", "vgs/cos_std_vis")
  progress_keys = ("teacher/sft_loss", "sft/loss", "reward/mean")

  def __init__(self, config):
    check_rl_config(config)
    config_checks.positive(config, "teacher.steps", "teacher.batch_size")
    config_checks.number(config, "teacher.learning_rate", low=0.0, low_open=True)
    self.config = config
    rl = config.rl
    self.env = cv.env_config(config)
    self.model_config = cv.model_config(self.env, **dict(config.model))
    self.teacher_config = cv.model_config(self.env, **dict(config.teacher.model))
    self.model, self.teacher = QwenVL(self.model_config), QwenVL(self.teacher_config)
    self.sampling = cv.sampling(self.env, rl.max_new_tokens, rl.temperature)
    if rl.max_new_tokens < self.env.completion_length:
      raise ValueError(f"config.rl.max_new_tokens: the {self.env.format!r} format's completions take "
                       f"{self.env.completion_length} tokens, got {rl.max_new_tokens}")
    self.eta = _eta(rl)
    self.gamma, self.lam, self.alpha = float(rl.gamma), float(rl.get("lam", 0.0)), float(rl.get("alpha", 0.0))
    self.adaptive = bool(rl.get("adaptive_gamma", False))
    self.project_conflicts = bool(rl.get("project_conflicts", False))
    self.freeze_eta_after = rl.get("freeze_eta_after")
    if not 0.0 <= self.alpha < 1.0:
      raise ValueError(f"config.rl.alpha: expected a GRPO weight in [0, 1), got {self.alpha}")
    self.loss_config = grpo.grpo_config(**dict(rl.loss))
    if self.alpha > 0 and (self.eta != 1.0 or self.freeze_eta_after is not None):
      raise ValueError(f"config.rl.eta: Eq. 22 (alpha > 0) drops η, so set eta=1.0 without freeze_eta_after; got "
                       f"eta={rl.get('eta')!r}, freeze_eta_after={self.freeze_eta_after}")
    if self.alpha > 0 and self.loss_config.beta != 0:
      raise ValueError(f"config.rl.loss.beta: Eq. 22's GRPO term has no KL, expected 0, got {self.loss_config.beta}")
    self.text_only_fraction = config_checks.number(config, "data.text_only_fraction", low=0.0, high=1.0)
    if self.text_only_fraction == 1.0:
      raise ValueError("config.data.text_only_fraction: expected a value in [0, 1), got 1.0")
    steering = vgs.vgs_steering(self.gamma, eta=self.eta, lam=self.lam, project_conflicts=self.project_conflicts,
                                freeze_eta_after=self.freeze_eta_after)
    # Steer, then clip the steered update, then AdamW (TRL, the paper's codebase, clips before the optimizer step).
    distill = optax.chain(steering, optax.clip_by_global_norm(1.0),
                          optax.adamw(rl.learning_rate, weight_decay=rl.get("weight_decay", 0.0)))
    self._optimizers = {
      "teacher": Optimizer(vlm_sft.adamw(config.teacher.learning_rate), params="teacher_params"),
      "sft": Optimizer(vlm_sft.adamw(config.sft.learning_rate)),
      "distill": Optimizer(distill),
    }
    self.phases = (
      Phase("teacher", config.teacher.steps, config.teacher.batch_size, optimizer="teacher", eval_every=0),
      Phase("sft", config.sft.steps, config.sft.batch_size, optimizer="sft", eval_every=0),
      Phase("distill", rl.steps, rl.prompts_per_step, optimizer="distill"),
    )
    self.teacher_end = config.teacher.steps
    self.held_out = cv.HeldOut(self.env, self.model_config, config.eval.examples, config.eval.samples, config.seed,
                               self.sampling)
    self.teacher_held_out = cv.HeldOut(self.env, self.teacher_config, config.eval.examples, config.eval.samples,
                                       config.seed, self.sampling)

  @property
  def plot_title(self) -> str:
    name = "on-policy distillation" if self.gamma == 0 else f"VGS (γ={self.gamma:g}, λ={self.lam:g})"
    return f"Teacher SFT, student SFT, then {name}"

  # -- state -------------------------------------------------------------------------------------------------------
  def init(self, rng):
    example = counting.make_example(self.env, self.config.seed, 0)
    args = cv.prompts(self.env, self.model_config, [example]).model_args()
    return {"params": self.model.init(rng, *args)["params"],
            "teacher_params": self.teacher.init(jax.random.fold_in(rng, 1), *args)["params"]}

  def optimizers(self):
    return self._optimizers

  def source(self, phase):
    seed = self.config.seed + (_TEACHER_SEED_OFFSET if phase.name == "teacher" else 0)
    return counting.CountingSource(self.env, seed, cv.TRAIN_RECORDS)

  # -- host side ---------------------------------------------------------------------------------------------------
  def prepare(self, state, records, rng, phase):
    examples = counting.examples_from_batch(self.env, records)
    if phase.name in ("teacher", "sft"):
      return self.sft_batch(examples), {}
    group = self.config.rl.group_size
    sampled = rollouts.sample_groups(self.model, {"params": state["params"]},
                                     cv.prompts(self.env, self.model_config, examples), group_size=group,
                                     sampling=self.sampling, key=rng)
    text_inputs, _ = cv.text_prompts(self.env, self.model_config, examples).repeat(group).with_completions(
      sampled.tokens, sampled.lengths, counting.PAD)
    response_mask = np.arange(sampled.tokens.shape[1])[None, :] < sampled.lengths[:, None]
    scores = cv.rewards(self.env, sampled.tokens, examples, group)
    text_inputs, tokens, response_mask, scores = sharding.shard_batch(
      (text_inputs, sampled.tokens, response_mask, scores))
    if self.alpha > 0:
      advantages = grpo.grpo_advantages(scores, self.loss_config, group_size=group)
    else:
      advantages = jnp.zeros(scores.shape, jnp.float32)  # Eq. 22's GRPO term is off
    batch = {"image_inputs": sampled.inputs, "text_inputs": text_inputs, "tokens": tokens,
             "response_mask": response_mask, "advantages": advantages}
    return batch, {**rollouts.reward_stats(scores),
                   "response_length": cv.global_mean(sampled.lengths.astype(np.float32))}

  def sft_batch(self, examples) -> dict:
    """SFT rows of `examples`: the first `data.text_only_fraction` of them in the text-only view (the vision span
    dropped, so that p(.|x), which ℓ_Lang, ℓ_Vis and the VDS read, is the task's language prior rather than an input
    never seen in training; our choice), the rest with the image."""
    num_text = round(self.text_only_fraction * len(examples))
    image, text = examples[num_text:], examples[:num_text]
    batch = {"image": cv.with_targets(self.env, cv.prompts(self.env, self.model_config, image), image)}
    if text:
      batch["text"] = cv.with_targets(self.env, cv.text_prompts(self.env, self.model_config, text), text)
    return batch

  # -- the jitted update -------------------------------------------------------------------------------------------
  def update(self, state, batch, rng, phase):
    del rng
    if phase.name in ("teacher", "sft"):
      return self.sft_update(state, batch, phase)
    return self.distill_update(state, batch)

  def sft_update(self, state, batch, phase):
    optimizer = self._optimizers[phase.optimizer]
    model = self.teacher if phase.name == "teacher" else self.model

    def loss_fn(params):
      total = count = 0.0
      for inputs, completion_mask in batch.values():
        loss, metrics = vlm_sft.sft_loss(model, params, inputs, completion_mask)
        total, count = total + loss * metrics["tokens"], count + metrics["tokens"]
      return total / jnp.maximum(count, 1)

    loss, grads = jax.value_and_grad(loss_fn)(state[optimizer.params])
    prefix = "teacher/" if phase.name == "teacher" else ""
    return apply_gradients(state, grads, phase.optimizer, optimizer), {
      f"{prefix}sft_loss" if prefix else "sft/loss": loss, f"{prefix}grad_norm": optax.tree.norm(grads)}

  def distill_grads(self, params, teacher_params, batch):
    """The per-term gradients of one rollout batch, from one vjp.

    Returns (grads, terms): grads holds `std`, `vis`, `lp` (and `grpo` when alpha > 0), each a pytree like params;
    `vis` is the gradient of sum_t w_t (γ_t/γ) ℓ_Vis,t under adaptive γ, so that γ·g_vis is always the visual part
    of Eq. 18. terms: `vgs.vgs_terms`' dict (+ `grpo` loss).
    """
    tokens, mask = batch["tokens"], batch["response_mask"]
    length = tokens.shape[1]
    t_img = response_logits(self.teacher, teacher_params, batch["image_inputs"], length, self.sampling)
    t_txt = response_logits(self.teacher, teacher_params, batch["text_inputs"], length, self.sampling)
    t_img, t_txt = jax.lax.stop_gradient(t_img), jax.lax.stop_gradient(t_txt)
    rl = self.config.rl

    def losses_fn(params):
      s_img = response_logits(self.model, params, batch["image_inputs"], length, self.sampling)
      s_txt = response_logits(self.model, params, batch["text_inputs"], length, self.sampling)
      terms = vgs.vgs_terms(s_img, s_txt, t_img, t_txt, mask, quantile=rl.get("quantile", 0.7),
                            low_quantile=rl.get("low_quantile", 0.4), agg=rl.get("agg", "seq_mean_token_mean"))
      visual = terms["vis"]
      if self.adaptive and self.gamma > 0:
        visual = (vgs.vgs_loss(terms, gamma=self.gamma, lam=0.0, adaptive=True) - terms["std"]) / self.gamma
      losses = [terms["std"], visual, terms["lp"]]
      if self.alpha > 0:
        log_probs = jax.nn.log_softmax(s_img, axis=-1)
        logp = jnp.where(mask, jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0], 0.0)
        # One update per batch: the rollout policy is these params, so old_logp is logp itself (ratio 1).
        grpo_loss, _ = grpo.grpo_loss(logp, jax.lax.stop_gradient(logp), batch["advantages"], mask,
                                      config=self.loss_config)
        losses.append(grpo_loss)
        terms = {**terms, "grpo": grpo_loss}
      return jnp.stack(losses), terms

    _, terms, grads = value_and_grads(losses_fn, params)
    names = ("std", "vis", "lp", "grpo")[:len(grads)]
    return dict(zip(names, grads, strict=True)), terms

  def distill_update(self, state, batch):
    """One optimizer step of on-policy distillation with VGS on a rollout batch; returns (state, metrics)."""
    grads, terms = self.distill_grads(state["params"], state["teacher_params"], batch)
    g_std, g_vis, g_lp = grads["std"], grads["vis"], grads["lp"] if self.lam else None
    if self.alpha > 0:  # Eq. 22 with η = 1: the transform returns (1-α)g_GRPO + α(g_Std + γ g_Vis + λ g_LP)
      alpha = self.alpha
      g_std = jax.tree.map(lambda s, r: alpha * s + (1 - alpha) * r, g_std, grads["grpo"])
      g_vis = jax.tree.map(lambda g: alpha * g, g_vis)
      g_lp = None if g_lp is None else jax.tree.map(lambda g: alpha * g, g_lp)
    # The statistics of the gradients the transform steers (Eq. 22's mix when alpha > 0), as its EMAs are.
    _, stats = vgs.steer_gradients(g_std, g_vis, gamma=self.gamma, eta=self.eta, lam=self.lam,
                                   g_lp=grads["lp"] if g_lp is None else g_lp, project_conflicts=self.project_conflicts)
    steering_state = state["opt_state"]["distill"][0]
    freeze = self.freeze_eta_after
    eta = stats["eta"] if freeze is None else jnp.where(steering_state.count >= freeze, steering_state.eta_ema,
                                                        stats["eta_dynamic"])
    new_state = apply_gradients(state, g_std, "distill", self._optimizers["distill"], g_vis=g_vis, g_lp=g_lp)
    new_steering = new_state["opt_state"]["distill"][0]
    mask = batch["response_mask"]
    mask_f = mask.astype(jnp.float32)
    vds = terms["vds"]
    metrics = {
      "vgs/std": terms["std"], "vgs/vis": terms["vis"], "vgs/lang": terms["lang"], "vgs/lp": terms["lp"],
      "vgs/eta": eta, "vgs/eta_dynamic": stats["eta_dynamic"], "vgs/norm_std": stats["norm_std"],
      "vgs/norm_vis": stats["norm_vis"], "vgs/cos_std_vis": stats["cos_std_vis"],
      "vgs/cos_out_vis": stats["cos_out_vis"], "vgs/norm_lp": optax.tree.norm(grads["lp"]),
      "vgs/eta_ema": new_steering.eta_ema, "vgs/norm_std_ema": new_steering.norm_std_ema,
      "vgs/norm_vis_ema": new_steering.norm_vis_ema, "vgs/cos_ema": new_steering.cos_ema,
      "vgs/vds_mean": jnp.sum(vds * mask_f) / jnp.maximum(jnp.sum(mask_f), 1.0),
      "vgs/vds_max": jnp.max(jnp.where(mask, vds, 0.0)), "vgs/vds_threshold": terms["vds_threshold"],
      "vgs/gate_fraction": jnp.sum(terms["gate"]) / jnp.maximum(jnp.sum(mask_f), 1.0),
      "update_norm": optax.tree.norm(jax.tree.map(jnp.subtract, new_state["params"], state["params"])),
    }
    if self.alpha > 0:
      metrics["grpo/loss"] = terms["grpo"]
      metrics["grpo/grad_norm"] = optax.tree.norm(grads["grpo"])
    return new_state, metrics

  def evaluate(self, state, step):
    """The student's held-out rewards; at the teacher's last step also the teacher's, as `teacher/eval/*`."""
    metrics = self.held_out(self.model, {"params": state["params"]})
    if step == self.teacher_end:
      metrics.update(self.teacher_held_out(self.teacher, {"params": state["teacher_params"]}, prefix="teacher/"))
    return metrics
