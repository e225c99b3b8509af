"""Text-to-image training on the one loop: a FLUX.2-architecture VAE, then a Lens-architecture MMDiT by flow matching.

Phases (each with its own optimizer and parameter tree; the loop runs them in order):
  1. "autoencoder" (optimizer "vae", tree "vae"): the KL autoencoder of `models.vae` (diffusers
     `AutoencoderKLFlux2`'s architecture) on the training images, loss |x - D(z)|_1 + |x - D(z)|_2^2 (means over
     pixels) + kl_weight KL(q(z|x) | N(0, I)), z ~ q(z|x): the LDM autoencoder objective (arXiv 2112.10752 Sec. 3,
     App. G) without its perceptual and adversarial terms, which flat synthetic images do not need; the squared
     term is ours (with L1 alone the mostly black images first train a VAE that drops the shapes). FLUX.2
     normalises the patchified latents with the frozen statistics of a batch norm; here they are the exponential
     moving average of the batch statistics of the posterior means (tree "latent_stats"), which the next phase
     reads frozen.
  2. "flow" (optimizer "main", tree "params" = {"dit", "text"}): the MMDiT and a small Qwen3 text encoder trained
     together by rectified flow (`diffusion.losses`) on the frozen VAE's normalised tokens; sigmas logit-normal
     (SD3, arXiv 2403.03206 Sec. 3.1), optionally shifted by the token count (a reconstruction: Lens does not
     publish its training density); captions dropped at `caption_dropout` so that one network also learns the
     unconditional velocity of classifier-free guidance; an EMA of the weights (tree "ema") that samples use.
     Lens feeds its DiT several hidden layers of a frozen GPT-OSS; here every layer of the tiny encoder is fed
     (its RMSNorms and projector as Lens's), and the encoder trains, having no pretrained weights to keep.
  3. "distill" (optional, `config.distill.steps` > 0; optimizers "student" and "fake", trees of the same names): a
     few-step student distilled from the EMA teacher by distribution matching (`diffusion.distillation`, DMD2 with
     backward simulation; a reconstruction of Lens-Turbo, whose method is unpublished). Student and fake-score DiTs
     start as copies of the teacher's (`begin_phase`) and read the teacher's frozen text features; per step the fake
     score takes `fake_updates` flow-matching steps on the student's samples, then the student one step along the
     score difference between the CFG-guided teacher and the fake score. The student samples at CFG 1. The teacher
     comes from this job's "flow" phase, or from another run's checkpoint (`distill.teacher_workdir`).

Data: `data.shapes_captions` rendered at several aspect ratios, batched by `data.buckets.bucketed_pipeline` (one
shape per batch, batch size inversely proportional to its token count, buckets mixed in proportion to their
records) through the task's `dataset` hook.

Evaluation (`evaluate`, `write_samples`): the held-out prompts of `data.shapes_captions.HELDOUT_SCENES` (colour,
kind and region combinations that training never shows) sampled with the EMA weights (Euler with CFG and Lens's
norm rescale) and scored by reading the pixels (`data.prompt_following`), beside the unconditional baseline: the
same sampler with every caption dropped, scored against the same prompts. During the autoencoder phase the same
scorer reads the reconstructions of the held-out scenes (what the VAE lets the DiT reach at best).
"""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from jaxagents import checkpoint, optim, sharding
from jaxagents.data import prompt_following
from jaxagents.data import shapes_captions as shapes
from jaxagents.data.buckets import Bucket, bucketed_pipeline
from jaxagents.diffusion import (
  backward_simulation,
  batched_cfg,
  caption_dropout,
  clean_prediction,
  distribution_matching_loss,
  ema_update,
  euler_sample,
  few_step_sample,
  flow_matching_loss,
  inference_sigmas,
  noised,
  sample_training_sigmas,
)
from jaxagents.layers.multi_axis_rope import msrope_position_ids
from jaxagents.models import mmdit, vae
from jaxagents.models.qwen_vl.config import TextConfig
from jaxagents.models.text_encoders.qwen3_text import Qwen3Text
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients

_LATENT_STATS_MOMENTUM = 0.98  # ~the last 50 autoencoder steps set the statistics the DiT's tokens are normalised by


def _to_pixels(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def _to_uint8(images: jax.Array) -> np.ndarray:
  return np.asarray(jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


class TextToImage:
  """Task: train a tiny VAE, then a tiny MMDiT that follows captions of rendered shapes (module docstring)."""

  def __init__(self, config):
    self.config = config
    data = config.data
    self.sizes = tuple(tuple(size) for size in data.image_sizes)
    self.train_source = shapes.ShapesCaptionsSource(
      data.num_records, config.seed, image_sizes=self.sizes, max_groups=data.max_groups, max_len=data.max_len
    )
    self.vae_config = vae.Flux2VAEConfig(**config.vae)
    self.vae = vae.Flux2VAE(self.vae_config)
    self.token_pixels = self.vae_config.token_stride[0]
    for height, width in self.sizes:
      if height % self.token_pixels or width % self.token_pixels:
        raise ValueError(f"data.image_sizes: every side must be a multiple of the VAE's {self.token_pixels} "
                         f"pixels per token, got {(height, width)}")
    self.buckets = tuple(Bucket(h, w, f"{h}x{w}") for h, w in self.sizes)
    text = config.text
    self.text_config = TextConfig(
      vocab_size=len(shapes.VOCABULARY), hidden_size=text.hidden, intermediate_size=text.mlp, num_layers=text.layers,
      num_heads=text.heads, num_kv_heads=text.heads, head_dim=text.head_dim, qkv_bias=False, qk_norm=True,
      mrope_section=(text.head_dim // 2, 0, 0), rope_theta=1e4,
    )
    self.text_encoder = Qwen3Text(self.text_config)
    dit = config.dit
    self.dit_config = mmdit.get_config("lens").replace(
      in_channels=self.vae_config.token_channels, out_channels=self.vae_config.token_channels // 4, patch_size=2,
      num_heads=dit.heads, head_dim=dit.head_dim, num_double_layers=dit.layers, mlp_dim=dit.mlp,
      text_dim=text.hidden, text_layers=text.layers, rope_axes=tuple(dit.rope_axes), time_channels=dit.time_channels,
      remat_policy=dit.get("remat_policy", "none"),
    )
    # Mixed precision: the optimizers keep float32 weights; the DiT computes in `dit.compute_dtype` (flax's module
    # dtype) and its velocities are cast back to float32, so losses, EMA and samplers stay float32.
    compute_dtype = jnp.dtype(dit.get("compute_dtype", "float32"))
    if compute_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f"dit.compute_dtype: expected 'float32' or 'bfloat16', got {dit.compute_dtype!r}.")
    self.dit = mmdit.MMDiT(self.dit_config, dtype=compute_dtype)
    ae, flow = config.autoencoder, config.flow
    # A phase's batch_size is nominal here (the first bucket's): `dataset` sizes every batch by its bucket.
    nominal = lambda step: max(1, step.tokens_per_batch // self._tokens(*self.sizes[0]))  # noqa: E731
    self.phases = (
      Phase("autoencoder", ae.steps, nominal(ae), optimizer="vae"),
      Phase("flow", flow.steps, nominal(flow), optimizer="main"),
    )
    distill = config.get("distill", None)
    self.distill = distill if distill is not None and distill.steps > 0 else None
    if self.distill is not None:
      self.phases += (Phase("distill", distill.steps, nominal(distill), optimizer="student"),)
      if distill.sampler not in ("euler", "renoise"):
        raise ValueError(f"distill.sampler: expected 'euler' or 'renoise', got {distill.sampler!r}.")
      if not distill.get("teacher_workdir", "") and (ae.steps == 0 or flow.steps == 0):
        raise ValueError(f"distill.teacher_workdir: a job without its own autoencoder and flow phases (steps "
                         f"{ae.steps}, {flow.steps}) distils the teacher of a finished run; pass its workdir.")
      if distill.student_steps < 1:
        raise ValueError(f"distill.student_steps: expected >= 1, got {distill.student_steps}.")
      # The student's sigmas: its sampler's steps, the terminal 0 last.
      self.student_sigmas = np.asarray(inference_sigmas(distill.student_steps, shift=1.0)[0], np.float32)
    self.logical_rules = vae.VAE_RULES
    self.plot_keys = ("loss", "eval/prompt_following", "eval/unconditional_baseline")
    if self.distill is not None:
      self.plot_keys += ("eval/student_prompt_following",)
    self.eval_scenes = tuple(scene for scene in shapes.HELDOUT_SCENES if len(scene.groups) <= data.max_groups)
    self._optimizers = self._build_optimizers()

  def _tokens(self, height: int, width: int) -> int:
    return (height // self.token_pixels) * (width // self.token_pixels)

  # ----------------------------------------------------------------------------------------------- state
  def init(self, rng):
    vae_key, text_key, dit_key = jax.random.split(rng, 3)
    height, width = self.sizes[0]
    vae_variables = self.vae.init(vae_key, jnp.zeros((1, height, width, 3)))
    length = self.config.data.max_len
    text_params = self.text_encoder.init(text_key, jnp.zeros((1, length), jnp.int32))["params"]
    rows, cols = height // self.token_pixels, width // self.token_pixels
    img_ids, txt_ids = msrope_position_ids(rows, cols, length)
    txt = [jnp.zeros((1, length, self.text_config.hidden_size))] * self.text_config.num_layers
    dit_params = self.dit.init(dit_key, jnp.zeros((1, rows * cols, self.dit_config.in_channels)), txt,
                               jnp.zeros((1,)), img_ids, txt_ids)["params"]
    params = {"dit": dit_params, "text": text_params}
    state = {"params": params, "ema": params, "vae": vae_variables["params"],
             "latent_stats": vae_variables["batch_stats"]}
    if self.distill is not None:  # overwritten by the teacher's DiT when the phase begins
      state |= {"student": {"dit": dit_params}, "fake": {"dit": dit_params}}
    return state

  def pretrained(self, abstract_state):
    """The teacher's run (`distill.teacher_workdir`): its VAE, latent statistics, weights and EMA weights, and the
    EMA DiT as the student's and the fake score's starting point (as `begin_phase` sets them)."""
    workdir = self.distill.get("teacher_workdir", "") if self.distill is not None else ""
    if not workdir:
      return None
    trees = checkpoint.restore_trees(workdir, {name: abstract_state[name]
                                               for name in ("vae", "latent_stats", "params", "ema")})
    return trees | {"student": {"dit": trees["ema"]["dit"]}, "fake": {"dit": trees["ema"]["dit"]}}

  def begin_phase(self, state, phase):
    if phase.name != "distill":
      return state
    teacher = state["ema"]["dit"]
    return {**state, "student": {"dit": jax.tree.map(jnp.copy, teacher)},
            "fake": {"dit": jax.tree.map(jnp.copy, teacher)}}

  def optimizers(self):
    return self._optimizers

  def _build_optimizers(self):
    ae, flow = self.config.autoencoder, self.config.flow
    vae_tx, vae_schedule = optim.make_optimizer(ae.optimizer, ae.steps)
    main_tx, main_schedule = optim.make_optimizer(flow.optimizer, flow.steps)
    optimizers = {"vae": Optimizer(vae_tx, params="vae", schedule=vae_schedule),
                  "main": Optimizer(main_tx, params="params", schedule=main_schedule)}
    if self.distill is not None:
      student_tx, student_schedule = optim.make_optimizer(self.distill.optimizer, self.distill.steps)
      fake_tx, fake_schedule = optim.make_optimizer(self.distill.fake_optimizer,
                                                    self.distill.steps * self.distill.fake_updates)
      optimizers |= {"student": Optimizer(student_tx, params="student", schedule=student_schedule),
                     "fake": Optimizer(fake_tx, params="fake", schedule=fake_schedule)}
    return optimizers

  # ------------------------------------------------------------------------------------------------ data
  def source(self, phase):
    del phase
    return self.train_source

  def dataset(self, phase: Phase, *, seed: int, shard_index: int, shard_count: int):
    """Aspect-ratio buckets: record i is rendered at sizes[i % len(sizes)], so bucket k holds the residue class k."""
    step = {"autoencoder": self.config.autoencoder, "flow": self.config.flow}.get(phase.name, self.distill)
    count = len(self.sizes)
    indices = [np.arange(k, len(self.train_source), count) for k in range(count)]
    # Every batch splits evenly over this host's share of the data-parallel devices (the loop's mesh).
    local_shards = max(1, sharding.data_parallel_size() // shard_count)
    return bucketed_pipeline(
      self.train_source, indices, self.buckets, tokens_per_batch=step.tokens_per_batch // shard_count,
      patch_size=self.token_pixels, seed=seed, image_key=None, shard_index=shard_index, shard_count=shard_count,
      batch_multiple=local_shards,
    )

  def prepare(self, state, records, rng, phase):
    del state, rng, phase
    return {"image": records["image"], "caption_ids": records["caption_ids"],
            "caption_mask": records["caption_mask"]}, {}

  # --------------------------------------------------------------------------------------------- updates
  def update(self, state, batch, rng, phase):
    if phase.name == "autoencoder":
      return self._autoencoder_update(state, batch, rng, phase)
    if phase.name == "distill":
      return self._distill_update(state, batch, rng)
    return self._flow_update(state, batch, rng, phase)

  def _autoencoder_update(self, state, batch, rng, phase):
    images = _to_pixels(batch["image"])
    kl_weight = self.config.autoencoder.kl_weight
    stats = state["latent_stats"]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": stats}
      mean, logvar = self.vae.apply(variables, images, method="encode")
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
      reconstruction = self.vae.apply(variables, z, method="decode")
      l1 = jnp.mean(jnp.abs(reconstruction - images))
      l2 = jnp.mean(jnp.square(reconstruction - images))
      kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
      return l1 + l2 + kl_weight * kl, {"reconstruction_l1": l1, "reconstruction_l2": l2, "kl": kl,
                                        "posterior_mean": mean}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["vae"])
    tokens = vae.patchify_latents(jax.lax.stop_gradient(metrics.pop("posterior_mean")), self.vae_config.patch_size)
    tokens = tokens.reshape(-1, tokens.shape[-1])
    momentum = _LATENT_STATS_MOMENTUM
    bn = stats["bn"]
    stats = {"bn": {"running_mean": momentum * bn["running_mean"] + (1 - momentum) * tokens.mean(0),
                    "running_var": momentum * bn["running_var"] + (1 - momentum) * tokens.var(0)}}
    state = apply_gradients(state, grads, phase.optimizer, self._optimizers[phase.optimizer])
    return {**state, "latent_stats": stats}, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

  def _text_features(self, text_params, ids, mask):
    out = self.text_encoder.apply({"params": text_params}, ids, mask)
    return [out["layer_outputs"][i] for i in range(self.text_config.num_layers)]

  def _velocity(self, params, x, sigma, ids, caption_mask, dit_mask, rows, cols):
    """The DiT's velocity; the encoder reads the caption (caption_mask), the DiT its tokens where dit_mask (all
    False: a dropped caption, the unconditional model)."""
    features = self._text_features(params["text"], ids, caption_mask)
    return self._dit_velocity(params["dit"], x, sigma, features, dit_mask, rows, cols)

  def _dit_velocity(self, dit_params, x, sigma, features, dit_mask, rows, cols):
    img_ids, txt_ids = msrope_position_ids(rows, cols, features[0].shape[1])
    v = self.dit.apply({"params": dit_params}, x, features, sigma, img_ids, txt_ids, dit_mask)
    return v.astype(jnp.float32)

  def encode(self, state, images: jax.Array) -> jax.Array:
    """uint8 images [B, H, W, 3] -> the frozen VAE's normalised tokens [B, h, w, C] (posterior mode)."""
    variables = {"params": state["vae"], "batch_stats": state["latent_stats"]}
    return self.vae.apply(variables, _to_pixels(images), method="encode_to_tokens")

  def _flow_update(self, state, batch, rng, phase):
    flow = self.config.flow
    grid = jax.lax.stop_gradient(self.encode(state, batch["image"]))
    batch_size, rows, cols, channels = grid.shape
    x0 = grid.reshape(batch_size, rows * cols, channels)
    sigma_key, noise_key, drop_key = jax.random.split(rng, 3)
    sigma = sample_training_sigmas(sigma_key, batch_size, rows * cols if flow.resolution_shift else None,
                                   loc=flow.sigma_loc, scale=flow.sigma_scale)
    noise = jax.random.normal(noise_key, x0.shape)
    text_mask, dropped = caption_dropout(drop_key, batch["caption_mask"], flow.caption_dropout)

    def loss_fn(params):
      velocity = self._velocity(params, noised(x0, noise, sigma), sigma, batch["caption_ids"], batch["caption_mask"],
                                text_mask, rows, cols)
      return flow_matching_loss(velocity, x0, noise)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    state = apply_gradients(state, grads, phase.optimizer, self._optimizers[phase.optimizer])
    state = {**state, "ema": ema_update(state["ema"], state["params"], flow.ema_decay)}
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "captions_dropped": jnp.mean(dropped),
                   "sigma_mean": jnp.mean(sigma), "loss_high_noise": _mean_where(metrics["per_sample"], sigma > 0.5)}

  def _distill_update(self, state, batch, rng):
    """One DMD2 step (module docstring): `fake_updates` steps of the fake score on the student's samples, then one
    student step along the normalised score difference."""
    distill = self.distill
    height, width = batch["image"].shape[1:3]
    rows, cols = height // self.token_pixels, width // self.token_pixels
    ids, mask = batch["caption_ids"], batch["caption_mask"]
    teacher = state["ema"]
    features = jax.lax.stop_gradient(self._text_features(teacher["text"], ids, mask))
    batch_size = ids.shape[0]
    shape = (batch_size, rows * cols, self.dit_config.in_channels)
    noise_key, steps_key, simulation_key, fake_key, tau_key, eps_key = jax.random.split(rng, 6)

    def velocity(dit_params, x, sigma):
      return self._dit_velocity(dit_params, x, sigma, features, mask, rows, cols)

    student = jax.lax.stop_gradient(state["student"]["dit"])
    steps = jax.random.randint(steps_key, (batch_size,), 0, distill.student_steps)
    x, sigma = backward_simulation(functools.partial(velocity, student), jax.random.normal(noise_key, shape),
                                   self.student_sigmas, steps, simulation_key, method=distill.sampler)
    samples = jax.lax.stop_gradient(clean_prediction(x, velocity(student, x, sigma), sigma))

    def draw_tau(key):
      return jax.random.uniform(key, (batch_size,), minval=distill.min_sigma, maxval=distill.max_sigma)

    fake_optimizer = self._optimizers["fake"]

    def fake_step(carry, key):
      params, opt_state = carry
      tau_key, eps_key = jax.random.split(key)
      tau, eps = draw_tau(tau_key), jax.random.normal(eps_key, shape)

      def loss_fn(params):
        return flow_matching_loss(velocity(params["dit"], noised(samples, eps, tau), tau), samples, eps)

      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = fake_optimizer.tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (fake, fake_opt_state), fake_losses = jax.lax.scan(
      fake_step, (state["fake"], state["opt_state"]["fake"]), jax.random.split(fake_key, distill.fake_updates))
    state = {**state, "fake": fake, "opt_state": {**state["opt_state"], "fake": fake_opt_state}}

    tau, eps = draw_tau(tau_key), jax.random.normal(eps_key, shape)
    both_features = [jnp.concatenate([f, f]) for f in features]
    both_masks = jnp.concatenate([mask, jnp.zeros_like(mask)])  # the conditional rows, then the captions dropped
    guided = batched_cfg(lambda z, t: self._dit_velocity(teacher["dit"], z, jnp.concatenate([t, t]), both_features,
                                                         both_masks, rows, cols), distill.teacher_guidance)

    def loss_fn(params):
      x0 = clean_prediction(x, velocity(params["dit"], x, sigma), sigma)
      x_tau = jax.lax.stop_gradient(noised(x0, eps, tau))
      x0_real = clean_prediction(x_tau, guided(x_tau, tau), tau)
      x0_fake = clean_prediction(x_tau, velocity(fake["dit"], x_tau, tau), tau)
      return distribution_matching_loss(x0, x0_real, x0_fake)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["student"])
    state = apply_gradients(state, grads, "student", self._optimizers["student"])
    return state, {**metrics, "loss": loss, "fake_loss": jnp.mean(fake_losses), "grad_norm": optax.tree.norm(grads)}

  # ------------------------------------------------------------------------------------------ evaluation
  def sample(self, params, state, ids, mask, height: int, width: int, key, *, guidance: float | None = None,
             num_steps: int | None = None, unconditional: bool = False) -> np.ndarray:
    """uint8 [B, H, W, 3] images of the captions (ids, mask), Euler from seeded noise. `guidance` None: the
    config's; <= 1: one velocity per step. `unconditional`: every caption dropped (the baseline)."""
    evaluation = self.config.eval
    guidance = evaluation.guidance if guidance is None else guidance
    num_steps = evaluation.steps if num_steps is None else num_steps
    images = self._sample_images(params, state["vae"], state["latent_stats"], jnp.asarray(ids), jnp.asarray(mask),
                                 key, height, width, float(guidance), int(num_steps), bool(unconditional))
    return _to_uint8(images)

  @functools.partial(jax.jit, static_argnums=(0, 7, 8, 9, 10, 11))
  def _sample_images(self, params, vae_params, latent_stats, ids, mask, key, height, width, guidance, num_steps,
                     unconditional):
    rows, cols = height // self.token_pixels, width // self.token_pixels
    noise = jax.random.normal(key, (ids.shape[0], rows * cols, self.dit_config.in_channels))
    sigmas, timesteps = inference_sigmas(num_steps, shift=1.0)  # trained without a resolution shift
    times = np.asarray(timesteps, np.float32) / np.float32(1000.0)

    dropped = jnp.zeros_like(mask)

    def single(x, t):
      dit_mask = dropped if unconditional else mask
      return self._velocity(params, x, jnp.broadcast_to(t, (x.shape[0],)), ids, mask, dit_mask, rows, cols)

    def pair(x, t):  # the conditional rows and the caption-dropped rows in one call
      return self._velocity(params, x, jnp.broadcast_to(t, (x.shape[0],)), jnp.concatenate([ids, ids]),
                            jnp.concatenate([mask, mask]), jnp.concatenate([mask, dropped]), rows, cols)

    field = batched_cfg(pair, guidance) if guidance > 1.0 and not unconditional else single
    tokens = euler_sample(field, noise, sigmas, times=times)
    variables = {"params": vae_params, "batch_stats": latent_stats}
    grid = tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1])
    return self.vae.apply(variables, grid, method="decode_from_tokens")

  def sample_student(self, state, ids, mask, height: int, width: int, key) -> np.ndarray:
    """uint8 [B, H, W, 3] images from the distilled student: `distill.student_steps` steps of its sampler at CFG 1,
    on the teacher's (frozen) text features."""
    return _to_uint8(self._sample_student(state["student"]["dit"], state["ema"]["text"], state["vae"],
                                          state["latent_stats"], jnp.asarray(ids), jnp.asarray(mask), key, height,
                                          width))

  @functools.partial(jax.jit, static_argnums=(0, 8, 9))
  def _sample_student(self, student, text_params, vae_params, latent_stats, ids, mask, key, height, width):
    rows, cols = height // self.token_pixels, width // self.token_pixels
    noise_key, sampler_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, (ids.shape[0], rows * cols, self.dit_config.in_channels))
    features = self._text_features(text_params, ids, mask)

    def velocity(x, t):
      return self._dit_velocity(student, x, jnp.broadcast_to(t, (x.shape[0],)), features, mask, rows, cols)

    tokens = few_step_sample(velocity, noise, self.student_sigmas, method=self.distill.sampler, key=sampler_key)
    grid = tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1])
    return self.vae.apply({"params": vae_params, "batch_stats": latent_stats}, grid, method="decode_from_tokens")

  def _eval_prompts(self):
    """(ids [N, L], mask [N, L], scenes): every held-out scene `eval.samples_per_prompt` times."""
    scenes = [scene for scene in self.eval_scenes for _ in range(self.config.eval.samples_per_prompt)]
    tokenized = [shapes.tokenize(shapes.caption(scene), self.config.data.max_len) for scene in scenes]
    return np.stack([t[0] for t in tokenized]), np.stack([t[1] for t in tokenized]), scenes

  def evaluate(self, state, step) -> dict[str, float]:
    """Held-out prompts: the DiT's samples and the VAE's reconstructions, scored by reading pixels (every phase
    reports every key, so the summary shows each one before training, after the autoencoder and at the end)."""
    ids, mask, scenes = self._eval_prompts()
    height, width = self.sizes[0]
    key = jax.random.key(self.config.seed + 17)
    rendered = np.stack([shapes.render(scene, height, width) for scene in scenes])
    reconstructed = _to_uint8(self._reconstruct(state["vae"], state["latent_stats"], jnp.asarray(rendered)))
    images = self.sample(state["ema"], state, ids, mask, height, width, key)
    baseline = self.sample(state["ema"], state, ids, mask, height, width, key, unconditional=True)
    score = prompt_following.prompt_following_score(images, scenes)
    unconditional = prompt_following.prompt_following_score(baseline, scenes)
    upper = prompt_following.prompt_following_score(reconstructed, scenes)
    l1 = float(np.mean(np.abs(reconstructed.astype(np.float32) - rendered.astype(np.float32)))) / 127.5
    metrics = {"eval/prompt_following": score["total"], "eval/unconditional_baseline": unconditional["total"],
               "eval/colour_in_region": score["colour_in_region"], "eval/count": score["count"],
               "eval/baseline_colour_in_region": unconditional["colour_in_region"],
               "eval/reconstruction_l1": l1, "eval/reconstruction_prompt_following": upper["total"]}
    self._last_samples = (step, [images])
    if self.distill is not None:
      student = self.sample_student(state, ids, mask, height, width, key)
      student_score = prompt_following.prompt_following_score(student, scenes)
      # The teacher at the student's step count (with CFG: twice its evaluations): what distilling adds.
      few_steps = self.sample(state["ema"], state, ids, mask, height, width, key, num_steps=self.distill.student_steps)
      metrics |= {"eval/student_prompt_following": student_score["total"],
                  "eval/student_colour_in_region": student_score["colour_in_region"],
                  "eval/student_count": student_score["count"],
                  "eval/teacher_few_step_prompt_following":
                    prompt_following.prompt_following_score(few_steps, scenes)["total"]}
      self._last_samples[1].append(student)
    return metrics

  @functools.partial(jax.jit, static_argnums=0)
  def _reconstruct(self, vae_params, latent_stats, images):
    variables = {"params": vae_params, "batch_stats": latent_stats}
    tokens = self.vae.apply(variables, _to_pixels(images), method="encode_to_tokens")
    return self.vae.apply(variables, tokens, method="decode_from_tokens")

  def write_samples(self, state, workdir, step) -> None:
    """A PNG grid of the held-out prompts at every evaluation: a column per prompt (in the order of
    `HELDOUT_SCENES`), the first row a rendering of what the prompt says, then a row of samples per seed (and, when
    distilling, a row per seed of the few-step student's)."""
    last = getattr(self, "_last_samples", None)
    if last is None or last[0] != step or jax.process_index() != 0:
      return
    per_prompt = self.config.eval.samples_per_prompt
    height, width = last[1][0].shape[1:3]
    rendered = np.concatenate([shapes.render(scene, height, width) for scene in self.eval_scenes], axis=1)
    rows = [rendered] + [np.concatenate(list(images[seed::per_prompt]), axis=1)
                         for images in last[1] for seed in range(per_prompt)]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
    (workdir / "samples").mkdir(parents=True, exist_ok=True)
    (workdir / "samples" / f"step_{step:06d}.png").write_bytes(buffer.getvalue())


def _mean_where(values: jax.Array, where: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)
