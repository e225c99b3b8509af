"""On-policy distillation with Visual Gradient Steering (VGS, arXiv 2606.00564) on the shipped counting task.

    python -m jaxagents.train --config configs/vgs_shapes.py --workdir runs/vgs_shapes

The math is `jaxagents.rl.vgs`.
The job is self-contained on one device, in three phases over one global step counter:
  1. Teacher: a somewhat larger tiny Qwen-VL q_T (`config.teacher.model`) learns the task by SFT. It shares the
     student's tokenizer (the task's vocabulary); its parameters and optimizer live in the train state, so
     checkpoints and resumes cover it. Its held-out rewards are measured once it is final (`teacher/eval/*`).
  2. Student warm start: `config.sft.steps` of SFT of the student p_S (the GRPO config's model); 0 skips it.
  3. Distillation: each step samples `prompts_per_step x group_size` rollouts τ ~ p_S(·|I, x) with the jitted
     `generate`, runs four forwards (student and teacher, with the image and with the vision span dropped from the
     prompt), takes ℓ_Std, ℓ_Vis, ℓ_LP from `vgs.vgs_terms` (Eq. 3, 11, 16) and their gradients from one
     `jax.vjp` (vmapped over the cotangents), and applies
     `optax.chain(vgs_steering(γ, eta, lam), clip_by_global_norm(1), adamw)`: the update is
     η·(g_Std + γ g_Vis) + λ·η·g_LP (Eq. 13-15, 18), clipped after steering (the paper
     trains with TRL, which clips the update before AdamW).
     γ = 0 (with λ = 0) is standard on-policy distillation, the baseline.
Options (`config.rl`): `eta` None/"dynamic" (Eq. 15) or a constant (App. A); `freeze_eta_after`; `adaptive_gamma`
(γ_t = 0 / γ/2 / γ by VDS quantile, App. E); `project_conflicts` (PCGrad's projection of g_Std against g_Vis, not the
paper's method); `alpha` > 0 mixes in the clipped GRPO term of Eq. 22, J = (1-α)·O_GRPO - α·ℓ_VGS-LP, with η dropped
as the re-implementation does (so it needs eta = 1.0) and no KL term (so `loss.beta` must be 0).

Our choices: both SFT phases put a fraction `data.text_only_fraction` of their rows in the text-only view with the
true answer: models trained from scratch on image prompts only have no language prior, and their p(·|x), which ℓ_Vis,
ℓ_LP and the VDS read, would be an input never seen (in a first run without such rows, whose teacher had also not
learned to use the image, g_Vis was anti-parallel to g_Std, cos -0.999, and η grew to 24). All four views'
distributions are the sampler's (`sampling_logits`: temperature, suppressed ids), as TRL's GKD tempers both models'
logits. One optimizer step per rollout batch (strictly on-policy, so the GRPO ratio is 1 at the update). The Q_0.7
gate is taken over each step's batch.
"""

from __future__ import annotations

import copy
import json
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from jaxagents import metrics as metrics_lib
from jaxagents.data import shapes
from jaxagents.models.qwen_vl.generate import generate, sampling_logits
from jaxagents.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.rl import grpo, vgs
from jaxagents.rl.trainer import ShapesGRPO, completion_logprobs

_TEACHER_SEED_OFFSET = 2_000_003  # the teacher learns from its own stream of examples
_VISION_SPAN = (shapes.VISION_START, shapes.VISION_END, shapes.IMAGE_PAD, shapes.VIDEO_PAD)
# vgs.png; reward.png (the base's) holds the SFT loss and the rewards.
_PLOT_KEYS = ("teacher/sft_loss", "vgs/std", "vgs/vis", "vgs/vds_mean", "vgs/eta", "vgs/cos_std_vis")


def text_only_batch(task: shapes.ShapesConfig, model_config, examples: list[dict],
                    completions: list[list[int]] | None = None, repeat: int = 1):
  """`shapes.model_batch` for the text-only view x: each prompt without its vision span (vision start/end and the
  image placeholders: Eq. 6-7 drop the image), then its completion, left-padded; no vision inputs.

  Returns (`ModelInputs` with input_ids [B, L'] and vision None, completion_mask [B, L'] or None), like
  `shapes.model_batch`; completions of one length N fill the last N columns in both views.
  """
  prompts = [[t for t in shapes.prompt_ids(task, e, model_config.vision.merge_size) if t not in _VISION_SPAN]
             for e in examples for _ in range(repeat)]
  completion_rows = [[] for _ in prompts] if completions is None else [list(c) for c in completions]
  if len(completion_rows) != len(prompts):
    raise ValueError(f"completions: expected {len(prompts)} rows (examples x repeat), got {len(completion_rows)}")
  rows = [p + c for p, c in zip(prompts, completion_rows, strict=True)]
  length = max(len(r) for r in rows)
  ids = np.full((len(rows), length), shapes.PAD, np.int32)
  mask = np.zeros_like(ids)
  completion_mask = np.zeros_like(ids)
  for b, (row, completion) in enumerate(zip(rows, completion_rows, strict=True)):
    ids[b, length - len(row):] = row
    mask[b, length - len(row):] = 1
    completion_mask[b, length - len(completion):] = 1 if completion else 0
  return prepare_inputs(model_config, ids, mask), (completion_mask if completions is not None else None)


def response_logits(model: QwenVL, params, inputs: ModelInputs, length: int, sampling) -> jax.Array:
  """Logits [B, N, V] of the sampler's distribution (`sampling_logits`) at the N = `length` response tokens, which
  fill the last N columns of `inputs`: position t predicts response token t."""
  logits, _ = model.apply(params, inputs.input_ids, inputs.positions, inputs.attention_mask, inputs.vision)
  return sampling_logits(logits[:, -length - 1:-1], sampling)


def value_and_grads(losses_fn, params) -> tuple[jax.Array, Any, tuple]:
  """`vgs.value_and_two_grads` for K losses, with an aux output: one `jax.vjp` of losses_fn(params) -> ([K], aux),
  its pullback vmapped over the K unit cotangents. Returns (losses [K], aux, (g_1, ..., g_K))."""
  losses, pullback, aux = jax.vjp(losses_fn, params, has_aux=True)
  (stacked,) = jax.vmap(pullback)(jnp.eye(losses.shape[0], dtype=losses.dtype))
  return losses, aux, tuple(jax.tree.map(lambda g, k=k: g[k], stacked) for k in range(losses.shape[0]))


class DistillBatch(NamedTuple):
  """One distillation step's rollouts (B = prompts_per_step * group_size rows, N = max_new_tokens).

  Attributes:
    examples: the prompts' task examples. tokens: [B, N] sampled responses (pad after the end); lengths: [B].
    scores: [B] float32 verifiable rewards of the responses.
    image_inputs / text_inputs: `ModelInputs` of prompt + response rows with the image and without the vision span.
    response_mask: [B, N] bool, True at sampled tokens (up to and including the end token).
  """

  examples: list
  tokens: np.ndarray
  lengths: np.ndarray
  scores: np.ndarray
  image_inputs: ModelInputs
  text_inputs: ModelInputs
  response_mask: np.ndarray


class ShapesVGS(ShapesGRPO):
  """Teacher SFT, student SFT warm start, then on-policy distillation with VGS; `run(workdir)` as for GRPO."""

  progress_name = "teacher+sft+vgs"

  def __init__(self, config):
    super().__init__(config)
    if self.sampling.max_new_tokens < self.task.completion_length:
      raise ValueError(f"config.rl.max_new_tokens: the {self.task.format!r} format's completions take "
                       f"{self.task.completion_length} tokens, got {self.sampling.max_new_tokens}")
    teacher = config.teacher
    self.teacher_config = shapes.qwen_vl_config(self.task, **teacher.model)
    for field in ("patch_size", "merge_size", "temporal_patch_size"):
      if getattr(self.teacher_config.vision, field) != getattr(self.model_config.vision, field):
        raise ValueError(f"config.teacher.model: the teacher must read the student's inputs; vision.{field} "
                         f"{getattr(self.teacher_config.vision, field)} != {getattr(self.model_config.vision, field)}")
    self.teacher_model = QwenVL(self.teacher_config)
    self.teacher_tx = optax.chain(optax.clip_by_global_norm(1.0),
                                  optax.adamw(teacher.learning_rate, weight_decay=0.0))
    if teacher.steps < 1:
      raise ValueError(f"config.teacher.steps: expected >= 1 (the teacher is trained here), got {teacher.steps}")

    rl = self.rl
    eta = rl.get("eta")
    if eta in (None, "dynamic"):
      self.eta = "dynamic"
    elif isinstance(eta, int | float) and eta > 0:
      self.eta = float(eta)
    else:
      raise ValueError(f"config.rl.eta: expected None or 'dynamic' (Eq. 15) or a positive constant, got {eta!r}")
    self.gamma, self.lam, self.alpha = float(rl["gamma"]), float(rl.get("lam", 0.0)), float(rl.get("alpha", 0.0))
    self.adaptive = bool(rl.get("adaptive_gamma", False))
    if not 0.0 <= self.alpha < 1.0:
      raise ValueError(f"config.rl.alpha: expected a GRPO weight in [0, 1), got {self.alpha}")
    if self.alpha > 0 and (self.eta != 1.0 or rl.get("freeze_eta_after") is not None):
      raise ValueError(f"config.rl.eta: Eq. 22 (alpha > 0) drops η, so set eta=1.0 without freeze_eta_after; got "
                       f"eta={eta!r}, freeze_eta_after={rl.get('freeze_eta_after')}")
    if self.alpha > 0 and self.loss_config.beta != 0:
      raise ValueError(f"config.rl.loss.beta: Eq. 22's GRPO term has no KL, expected 0, got {self.loss_config.beta}")
    self.steering = vgs.vgs_steering(self.gamma, eta=self.eta, lam=self.lam,
                                     project_conflicts=bool(rl.get("project_conflicts", False)),
                                     freeze_eta_after=rl.get("freeze_eta_after"))
    # Steer, then clip the steered update, then AdamW (TRL, the paper's codebase, clips before the optimizer step).
    self.distill_tx = optax.chain(self.steering, optax.clip_by_global_norm(1.0),
                                  optax.adamw(rl["learning_rate"], weight_decay=rl.get("weight_decay", 0.0)))
    self.teacher_end = teacher.steps
    self.sft_end = self.teacher_end + config.sft.steps  # where distillation starts (`run` evaluates there)
    self.total_steps = self.sft_end + rl["steps"]
    self.text_only_fraction = float(config.data.get("text_only_fraction", 0.0))
    if not 0.0 <= self.text_only_fraction < 1.0:
      raise ValueError(f"config.data.text_only_fraction: expected a value in [0, 1), got {self.text_only_fraction}")
    self._teacher_eval: dict[str, float] = {}

  # -- state ------------------------------------------------------------------------------------------------
  def init_state(self, key):
    inputs, _ = shapes.model_batch(self.task, self.model_config, self.examples(self.config.seed, 0, 1))
    args = (inputs.input_ids, inputs.positions, inputs.attention_mask, inputs.vision)
    params = nn.meta.unbox(self.model.init(key, *args))
    teacher_params = nn.meta.unbox(self.teacher_model.init(jax.random.fold_in(key, 1), *args))
    # One optimizer state per phase, so the state's structure (what a checkpoint holds) never changes.
    return {"step": jnp.zeros((), jnp.int32), "params": params, "sft_opt_state": self.sft_tx.init(params),
            "opt_state": self.distill_tx.init(params), "teacher_params": teacher_params,
            "teacher_opt_state": self.teacher_tx.init(teacher_params)}

  # -- SFT phases -------------------------------------------------------------------------------------------
  def _sft(self, model, tx, params, opt_state, batches):
    """One step of teacher-forced cross-entropy on the completions of `batches`, [(inputs, completion_mask)],
    averaged over all their completion tokens."""
    def loss_fn(params):
      total = count = 0.0
      for inputs, completion_mask in batches:
        logp, _ = completion_logprobs(model, params, inputs, completion_mask)
        total, count = total + jnp.sum(logp), count + jnp.sum(completion_mask)
      return -total / jnp.maximum(count, 1)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

  def teacher_sft_step(self, state, batches):
    params, opt_state, loss, norm = self._sft(self.teacher_model, self.teacher_tx, state["teacher_params"],
                                              state["teacher_opt_state"], batches)
    return {**state, "step": state["step"] + 1, "teacher_params": params, "teacher_opt_state": opt_state}, {
      "teacher/sft_loss": loss, "teacher/grad_norm": norm}

  def sft_step(self, state, batches):
    params, opt_state, loss, norm = self._sft(self.model, self.sft_tx, state["params"], state["sft_opt_state"],
                                              batches)
    return {**state, "step": state["step"] + 1, "params": params, "sft_opt_state": opt_state}, {
      "sft/loss": loss, "grad_norm": norm}

  def sft_batches(self, examples: list[dict]) -> list:
    """SFT batches of `examples`: the first `data.text_only_fraction` of them as text-only rows (the vision span
    dropped, so that p(·|x), which ℓ_Lang, ℓ_Vis and the VDS read, is the task's language prior rather than an
    input never seen in training; our choice), the rest with the image. [(inputs, completion_mask)]."""
    targets = [self.target_ids(e) for e in examples]
    num_text = round(self.text_only_fraction * len(examples))
    batches = [shapes.model_batch(self.task, self.model_config, examples[num_text:], targets[num_text:])]
    if num_text:
      batches.append(text_only_batch(self.task, self.model_config, examples[:num_text], targets[:num_text]))
    return batches

  # -- distillation -----------------------------------------------------------------------------------------
  def sample(self, state, step: int) -> DistillBatch:
    """Draws the prompts of distillation step `step`, samples `group_size` responses to each from the student
    with the image, scores them, and builds both views of the prompt + response rows."""
    rl, group = self.rl, self.rl["group_size"]
    prompts = rl["prompts_per_step"]
    start = self.config.sft.steps * self.config.sft.batch_size + step * prompts  # after the student's SFT data
    examples = self.examples(self.config.seed, start, prompts)
    inputs, _ = shapes.model_batch(self.task, self.model_config, examples, repeat=group)
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    out = generate(self.model, state["params"], inputs.input_ids, inputs.attention_mask, inputs.positions,
                   inputs.decode_base, inputs.vision, sampling=self.sampling, key=key, cache_dtype=jnp.float32)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    image_inputs, _ = shapes.model_batch(self.task, self.model_config, examples, list(tokens), repeat=group)
    text_inputs, _ = text_only_batch(self.task, self.model_config, examples, list(tokens), repeat=group)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return DistillBatch(examples, tokens, lengths, self.score(tokens, examples, group), image_inputs, text_inputs,
                        mask)

  def advantages(self, state, batch: DistillBatch) -> tuple[Any, dict[str, float]]:
    """Group-normalised outcome advantages [B] for Eq. 22's GRPO term (zeros when alpha = 0: unused)."""
    del state
    if self.alpha == 0:
      return np.zeros(batch.scores.shape, np.float32), {}
    return grpo.grpo_advantages(batch.scores, self.loss_config, group_size=self.rl["group_size"]), {}

  def distill_grads(self, params, teacher_params, image_inputs, text_inputs, tokens, mask, advantages):
    """The per-term gradients of one rollout batch, from one vjp.

    tokens, mask: [B, N]; advantages: [B]. Returns (grads, terms): grads holds `std`, `vis`, `lp` (and `grpo` when
    alpha > 0), each a pytree like params; `vis` is the gradient of Σ_t w_t (γ_t/γ) ℓ_Vis,t under adaptive γ, so
    that γ·g_vis is always the visual part of Eq. 18. terms: `vgs.vgs_terms`' dict (+ `grpo` loss).
    """
    length = tokens.shape[1]
    t_img = response_logits(self.teacher_model, teacher_params, image_inputs, length, self.sampling)
    t_txt = response_logits(self.teacher_model, teacher_params, text_inputs, length, self.sampling)
    t_img, t_txt = jax.lax.stop_gradient(t_img), jax.lax.stop_gradient(t_txt)
    rl = self.rl

    def losses_fn(params):
      s_img = response_logits(self.model, params, image_inputs, length, self.sampling)
      s_txt = response_logits(self.model, params, text_inputs, length, self.sampling)
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
        grpo_loss, _ = grpo.grpo_loss(logp, jax.lax.stop_gradient(logp), advantages, mask, config=self.loss_config)
        losses.append(grpo_loss)
        terms = {**terms, "grpo": grpo_loss}
      return jnp.stack(losses), terms

    _, terms, grads = value_and_grads(losses_fn, params)
    names = ("std", "vis", "lp", "grpo")[:len(grads)]
    return dict(zip(names, grads, strict=True)), terms

  def distill_update(self, state, image_inputs, text_inputs, tokens, mask, advantages):
    """One optimizer step of on-policy distillation with VGS on a rollout batch; returns (state, metrics)."""
    params = state["params"]
    grads, terms = self.distill_grads(params, state["teacher_params"], image_inputs, text_inputs, tokens, mask,
                                      advantages)
    g_std, g_vis, g_lp = grads["std"], grads["vis"], grads["lp"] if self.lam else None
    if self.alpha > 0:  # Eq. 22 with η = 1: the transform returns (1-α)g_GRPO + α(g_Std + γ g_Vis + λ g_LP)
      alpha = self.alpha
      g_std = jax.tree.map(lambda s, r: alpha * s + (1 - alpha) * r, g_std, grads["grpo"])
      g_vis = jax.tree.map(lambda g: alpha * g, g_vis)
      g_lp = None if g_lp is None else jax.tree.map(lambda g: alpha * g, g_lp)
    _, stats = vgs.steer_gradients(grads["std"], grads["vis"], gamma=self.gamma, eta=self.eta, lam=self.lam,
                                   g_lp=grads["lp"], project_conflicts=bool(self.rl.get("project_conflicts", False)))
    steering_state = state["opt_state"][0]
    freeze = self.rl.get("freeze_eta_after")
    eta = stats["eta"] if freeze is None else jnp.where(steering_state.count >= freeze, steering_state.eta_ema,
                                                        stats["eta_dynamic"])
    updates, opt_state = self.distill_tx.update(g_std, state["opt_state"], params, g_vis=g_vis, g_lp=g_lp)
    new_steering = opt_state[0]
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
      "update_norm": optax.tree.norm(updates),
    }
    if self.alpha > 0:
      metrics["grpo/loss"] = terms["grpo"]
      metrics["grpo/grad_norm"] = optax.tree.norm(grads["grpo"])
    return {**state, "params": optax.apply_updates(params, updates), "opt_state": opt_state}, metrics

  def rollout(self, state, step: int) -> tuple[Any, dict[str, float]]:
    """Distillation step `step`: `sample`, `advantages`, one `distill_update`."""
    batch = self.sample(state, step)
    advantages, extra = self.advantages(state, batch)
    state, metrics = self._distill_update(state, batch.image_inputs, batch.text_inputs, batch.tokens,
                                          batch.response_mask, advantages)
    state = {**state, "step": state["step"] + 1}
    return state, {**{k: float(v) for k, v in metrics.items()}, **extra, "reward/mean": float(batch.scores.mean()),
                   "reward/std": float(batch.scores.std()), "response_length": float(batch.lengths.mean())}

  # -- the job ----------------------------------------------------------------------------------------------
  def train_step(self, state, step: int) -> tuple[Any, dict[str, float]]:
    """Global step `step` (0-based): a teacher SFT step, a student SFT step, or a distillation step."""
    if step >= self.sft_end:
      return self.rollout(state, step - self.sft_end)
    teacher = step < self.teacher_end
    sft = self.config.teacher if teacher else self.config.sft
    index = step if teacher else step - self.teacher_end
    seed = self.config.seed + (_TEACHER_SEED_OFFSET if teacher else 0)
    examples = self.examples(seed, index * sft.batch_size, sft.batch_size)
    step_fn = self._teacher_sft_step if teacher else self._sft_step
    state, metrics = step_fn(state, self.sft_batches(examples))
    if step + 1 == self.sft_end:
      # The teacher is final since the end of phase 1; measured here so that `evaluate` at the SFT -> distillation
      # hand-over logs it (a resumed run re-enters this step whenever it also re-enters that evaluation).
      self._teacher_eval = self.evaluate_teacher(state["teacher_params"])
    return state, {k: float(v) for k, v in metrics.items()}

  def evaluate_teacher(self, teacher_params) -> dict[str, float]:
    """The base `evaluate` (same held-out prompts and draws) on the teacher, as `teacher/eval/*`."""
    view = copy.copy(self)
    view.model, view.model_config = self.teacher_model, self.teacher_config
    return {f"teacher/{k}": v for k, v in ShapesGRPO.evaluate(view, teacher_params).items()}

  def evaluate(self, params) -> dict[str, float]:
    metrics = {**super().evaluate(params), **self._teacher_eval}
    self._teacher_eval = {}
    return metrics

  def compile(self) -> None:
    self._teacher_sft_step = jax.jit(self.teacher_sft_step, donate_argnums=0)
    self._sft_step = jax.jit(self.sft_step, donate_argnums=0)
    self._distill_update = jax.jit(self.distill_update, donate_argnums=0)

  @property
  def plot_title(self) -> str:
    name = "on-policy distillation" if self.gamma == 0 else f"VGS (γ={self.gamma:g}, λ={self.lam:g})"
    return f"Teacher SFT, student SFT, then {name}"

  def run(self, workdir: str) -> dict[str, float]:
    """`ShapesGRPO.run`, then the teacher's held-out rewards under their own names in the final metrics (the base
    files them with the student's after-SFT evaluation) and the distillation curves in vgs.png."""
    final = super().run(workdir)
    path = epath.Path(workdir)
    for key in [k for k in final if k.startswith("teacher/") and k.endswith("_after_sft")]:
      final[key.removesuffix("_after_sft")] = final.pop(key)
    (path / "final_metrics.json").write_text(json.dumps(final, indent=2))
    records = metrics_lib.read_metrics(path / metrics_lib.METRICS_FILE)
    metrics_lib.plot_curves(records, _PLOT_KEYS, path / "vgs.png", title=self.plot_title)
    return final
