"""DynaVid's two stages on the one loop: a Wan video VAE for frames and flow, a motion generator (stage 1) and the
image-to-video generator that stage 2 guides with motion.

DynaVid (arXiv 2604.01666) generates optical flow from text and the first frame with a video DiT (its motion
generator), then a video with a second DiT guided by that flow through a flow ControlNet. Its code is not public;
this task follows its published predecessor FloVD (arXiv 2502.08244; JinWonjoon/FloVD) on a Wan 2.1 DiT
(`models.wan_dit`) and VAE (`models.wan_vae`). What follows is our reconstruction at a size that trains on a CPU.

Phases (each with its own optimizer and parameter tree):
  1. "autoencoder" (tree "vae"): ONE Wan VAE for RGB clips and for flow clips turned into 3-channel videos by
     FloVD's codec (`data.flow_codec`; FloVD encodes flow with the RGB video VAE). Loss per clip |x - D(z)|_1 +
     |x - D(z)|_2^2 + kl_weight KL(q(z|x) | N(0, I)) with z ~ q(z|x) (the LDM objective, arXiv 2112.10752 Sec. 3,
     without perceptual and adversarial terms; the squared term as in our text-to-image job). Per-channel latent
     statistics of RGB and of flow latents are exponential moving averages of the batch statistics of the
     posterior means (tree "latent_stats"), the per-channel normalisation that Wan's pipelines apply with fixed
     released statistics.
  2. "motion" (tree "motion" = {"dit", "text"}, EMA "motion_ema"): stage 1. A Wan DiT generates the flow latents of a
     clip from its caption and first frame by rectified flow. The first frame enters as Wan 2.1 I2V's channel
     condition (`WanImageToVideoPipeline.prepare_latents`): the noisy latents concatenated with the first frame's
     latent at latent frame 0 (zeros after) and a mask channel (1 at latent frame 0); Wan's CLIP image tokens are
     left out. The causal VAE encodes frame 0 alone into latent frame 0, so the condition is exactly what encoding
     the first frame alone gives. Text: a small Qwen3 encoder trained with the DiT (no pretrained weights to keep);
     its padding positions are zeroed, as Wan's pipelines do with umT5 features, and a dropped caption (CFG) is
     all zeros.
  3. "video" (tree "video", EMA "video_ema"): the image-to-video DiT of stage 2, the same construction over RGB
     latents. It is the base that a flow ControlNet guides.
  4. "control" (tree "control"): stage 2's flow ControlNet (`models.wan_dit.controlnet`; FloVD's FVSM): copied at
     the phase's start from the EMA video DiT's first `control.blocks` blocks, with zero-initialised projections,
     and trained by the same rectified-flow loss on RGB latents while the video DiT and its text encoder stay frozen
     (ControlNet, arXiv 2302.05543, Sec. 3.1). Its condition is the clip's true flow, encoded as stage 1's targets
     are; residuals apply inside `control.sigma_window`.

Evaluation on held-out clips (another seed): stage 1's flow sampled from each clip's caption and first frame (Euler
with CFG), decoded and un-normalised, against the clip's true flow (Pearson correlation over frames 1.., pixels and
both axes; end-point error), beside the same sampler with the caption dropped; stage 2's video, its first frame
against the true one. Motion guidance: the videos sampled with the ControlNet fed each clip's true flow, and the
same videos without it (the video DiT alone, same noise), have their motion estimated from the generated frames
(`data.flow_estimate`, block matching) and correlated with the conditioning flow; the two-stage pipeline
(`generate_two_stage`: stage 1's flow, then the controlled video) is scored against the flow it was given.
`write_samples` writes GIFs: per clip, the true frames, the true flow, the generated flow, the video sampled without
and with the ControlNet (true flow) side by side.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxagents import optim
from jaxagents.data.flow_codec import FlowCodec
from jaxagents.data.flow_estimate import estimate_flow
from jaxagents.data.motion_clips import VOCABULARY, MotionClipsSource
from jaxagents.data.motion_render import MotionConfig, flow_to_color, save_gif
from jaxagents.diffusion import (
  batched_cfg,
  caption_dropout,
  ema_update,
  euler_sample,
  flow_matching_loss,
  inference_sigmas,
  noised,
  sample_training_sigmas,
)
from jaxagents.models import wan_dit, wan_vae
from jaxagents.models.qwen_vl.config import TextConfig
from jaxagents.models.text_encoders.qwen3_text import Qwen3Text
from jaxagents.models.wan_dit import controlnet as flow_controlnet
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients

_LATENT_STATS_MOMENTUM = 0.98
_STAGES = ("motion", "video")  # the generator phases, each a tree of the same name


def _to_pixels(frames: jax.Array) -> jax.Array:
  """uint8 [..., 3] -> float32 in [-1, 1]."""
  return frames.astype(jnp.float32) / 127.5 - 1.0


def _to_uint8(video: jax.Array) -> np.ndarray:
  return np.asarray(jnp.clip((video.astype(jnp.float32) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


def _motion(videos: np.ndarray) -> np.ndarray:
  """The flow from frame 0 estimated in each of videos uint8 [B, T, H, W, 3] (block matching)."""
  return np.stack([estimate_flow(video) for video in videos])


def flow_correlation(generated: np.ndarray, reference: np.ndarray) -> float:
  """Pearson correlation of two flows [N, T, H, W, 2] over frames 1.. (frame 0's flow is 0), pixels and both
  axes; 0 when either is constant."""
  a = np.asarray(generated, np.float64)[:, 1:].ravel()
  b = np.asarray(reference, np.float64)[:, 1:].ravel()
  a, b = a - a.mean(), b - b.mean()
  norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
  return float(np.sum(a * b) / norm) if norm > 0 else 0.0


class DynaVid:
  """Task: a tiny Wan VAE, then a motion generator and an image-to-video generator (module docstring)."""

  def __init__(self, config):
    self.config = config
    data = config.data
    self.motion_config = MotionConfig(height=data.height, width=data.width, num_frames=data.num_frames,
                                      camera_motions=tuple(data.camera_motions))
    self.train_source = MotionClipsSource(data.num_records, config.seed, self.motion_config)
    self.eval_source = MotionClipsSource(config.eval.clips, config.seed + 1, self.motion_config,
                                         max_len=self.train_source.max_len)
    vae_config = dict(config.vae)
    z_dim = vae_config["z_dim"]
    self.vae_config = wan_vae.WanVAEConfig(**vae_config, latents_mean=(0.0,) * z_dim, latents_std=(1.0,) * z_dim)
    self.vae = wan_vae.WanVAE(self.vae_config, attention_backend="xla")
    if wan_vae.usable_frames(data.num_frames) != data.num_frames:
      raise ValueError(f"data.num_frames: the Wan VAE reads 1 + 4k frames, got {data.num_frames}")
    factor = self.vae_config.spatial_factor
    if data.height % factor or data.width % factor:
      raise ValueError(f"data.height, data.width: expected multiples of the VAE's {factor} pixels per latent, got "
                       f"{data.height} x {data.width}")
    self.latent_shape = (1 + (data.num_frames - 1) // self.vae_config.temporal_factor, data.height // factor,
                         data.width // factor, z_dim)
    self.codec = FlowCodec.for_resolution(data.height, data.width, unit_range=True)
    text = config.text
    self.text_config = TextConfig(
      vocab_size=len(VOCABULARY), hidden_size=text.hidden, intermediate_size=text.mlp, num_layers=text.layers,
      num_heads=text.heads, num_kv_heads=text.heads, head_dim=text.head_dim, qkv_bias=False, qk_norm=True,
      mrope_section=(text.head_dim // 2, 0, 0), rope_theta=1e4,
    )
    self.text_encoder = Qwen3Text(self.text_config)
    dit = config.dit
    self.dit_config = wan_dit.WanDiTConfig(
      num_heads=dit.heads, head_dim=dit.head_dim, num_layers=dit.layers, ffn_dim=dit.mlp, text_dim=text.hidden,
      in_channels=2 * z_dim + 1, out_channels=z_dim, patch_size=tuple(dit.patch_size), freq_dim=dit.freq_dim,
      remat_policy=dit.get("remat_policy", "none"), attention_backend="xla",
    )
    self.dit = wan_dit.WanDiT(self.dit_config)
    control = config.control
    self.controlnet = flow_controlnet.WanFlowControlNet(self.dit_config, control.blocks)
    self.sigma_window = tuple(float(s) for s in control.sigma_window)
    self.phases = (
      Phase("autoencoder", config.autoencoder.steps, config.autoencoder.batch_size, optimizer="vae"),
      Phase("motion", config.motion.steps, config.motion.batch_size, optimizer="motion"),
      Phase("video", config.video.steps, config.video.batch_size, optimizer="video"),
      Phase("control", control.steps, control.batch_size, optimizer="control"),
    )
    self.logical_rules = wan_vae.WAN_VAE_RULES
    self.plot_keys = ("loss", "eval/motion_correlation", "eval/motion_unconditional_correlation",
                      "eval/controlled_motion_correlation", "eval/uncontrolled_motion_correlation")
    self.summary_keys = ("eval/motion_correlation", "eval/motion_unconditional_correlation",
                         "eval/motion_endpoint_error", "eval/video_first_frame_l1", "eval/reconstruction_l1",
                         "eval/controlled_motion_correlation", "eval/uncontrolled_motion_correlation",
                         "eval/two_stage_motion_correlation")
    self._optimizers = {}
    for name, tree in (("vae", "autoencoder"), *((stage, stage) for stage in (*_STAGES, "control"))):
      tx, schedule = optim.make_optimizer(config[tree].optimizer, config[tree].steps)
      self._optimizers[name] = Optimizer(tx, params=name, schedule=schedule)

  # ----------------------------------------------------------------------------------------------- state
  def init(self, rng):
    vae_key, *stage_keys = jax.random.split(rng, 1 + 2 * len(_STAGES))
    data = self.config.data
    vae_params = self.vae.init(vae_key, jnp.zeros((1, data.num_frames, data.height, data.width, 3)))["params"]
    z_dim = self.vae_config.z_dim
    stats = {"mean": jnp.zeros((z_dim,)), "var": jnp.ones((z_dim,))}
    state = {"vae": vae_params, "latent_stats": {"rgb": stats, "flow": stats}}
    length = self.train_source.max_len
    for index, stage in enumerate(_STAGES):
      text_key, dit_key = stage_keys[2 * index: 2 * index + 2]
      text_params = self.text_encoder.init(text_key, jnp.zeros((1, length), jnp.int32))["params"]
      dit_params = self.dit.init(dit_key, jnp.zeros((1, *self.latent_shape[:3], self.dit_config.in_channels)),
                                 jnp.zeros((1,)), jnp.zeros((1, length, self.text_config.hidden_size)))["params"]
      params = {"dit": dit_params, "text": text_params}
      state |= {stage: params, f"{stage}_ema": params}
    # Overwritten from the video DiT when the "control" phase begins (`begin_phase`).
    state["control"] = self._controlnet_from(state["video_ema"]["dit"])
    return state

  def _controlnet_from(self, base_params):
    return flow_controlnet.controlnet_params_from_base(base_params, self.dit_config, self.config.control.blocks,
                                                       key=jax.random.key(self.config.seed + 5))

  def begin_phase(self, state, phase):
    if phase.name != "control":
      return state
    return {**state, "control": self._controlnet_from(state["video_ema"]["dit"])}

  def optimizers(self):
    return self._optimizers

  # ------------------------------------------------------------------------------------------------ data
  def source(self, phase):
    del phase
    return self.train_source

  def prepare(self, state, records, rng, phase):
    del state, rng, phase
    return {key: records[key] for key in ("frames", "flow", "caption_ids", "caption_mask")}, {}

  # --------------------------------------------------------------------------------------------- updates
  def update(self, state, batch, rng, phase):
    if phase.name == "autoencoder":
      return self._autoencoder_update(state, batch, rng, phase)
    if phase.name == "control":
      return self._control_update(state, batch, rng, phase)
    return self._generator_update(state, batch, rng, phase)

  def flow_video(self, flow: jax.Array) -> jax.Array:
    """flow [B, T, H, W, 2] in pixels -> the VAE's 3-channel input in [-1, 1] (FloVD's codec, unit range)."""
    return self.codec.encode(jnp.asarray(flow, jnp.float32))

  def _autoencoder_update(self, state, batch, rng, phase):
    rgb, flow = _to_pixels(batch["frames"]), self.flow_video(batch["flow"])
    videos = jnp.concatenate([rgb, flow])
    kl_weight = self.config.autoencoder.kl_weight

    def loss_fn(params):
      mean, logvar = self.vae.apply({"params": params}, videos, method="encode")
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
      reconstruction = self.vae.apply({"params": params}, z, method="decode")
      l1 = jnp.mean(jnp.abs(reconstruction - videos))
      l2 = jnp.mean(jnp.square(reconstruction - videos))
      kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
      return l1 + l2 + kl_weight * kl, {"reconstruction_l1": l1, "reconstruction_l2": l2, "kl": kl,
                                        "posterior_mean": mean}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["vae"])
    means = jax.lax.stop_gradient(metrics.pop("posterior_mean"))
    batch_size = rgb.shape[0]
    momentum = _LATENT_STATS_MOMENTUM
    stats = {}
    for name, z in (("rgb", means[:batch_size]), ("flow", means[batch_size:])):
      z = z.reshape(-1, z.shape[-1])
      old = state["latent_stats"][name]
      stats[name] = {"mean": momentum * old["mean"] + (1 - momentum) * z.mean(0),
                     "var": momentum * old["var"] + (1 - momentum) * z.var(0)}
    state = apply_gradients(state, grads, phase.optimizer, self._optimizers[phase.optimizer])
    return {**state, "latent_stats": stats}, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

  def encode(self, state, videos: jax.Array, kind: str) -> jax.Array:
    """Videos [B, T, H, W, 3] in [-1, 1] -> normalised posterior means [B, t, h, w, z] under the `kind` ("rgb" or
    "flow") statistics of the frozen VAE."""
    mean, _ = self.vae.apply({"params": state["vae"]}, videos, method="encode")
    stats = state["latent_stats"][kind]
    return (mean - stats["mean"]) * jax.lax.rsqrt(stats["var"] + 1e-6)

  def decode(self, state, latents: jax.Array, kind: str) -> jax.Array:
    stats = state["latent_stats"][kind]
    z = latents * jnp.sqrt(stats["var"] + 1e-6) + stats["mean"]
    return self.vae.apply({"params": state["vae"]}, z, method="decode")

  @staticmethod
  def first_frame_condition(first_latent: jax.Array, latent_frames: int) -> jax.Array:
    """first_latent [B, 1, h, w, z] -> [B, t, h, w, z + 1]: the latent at frame 0 and zeros after, then the mask
    channel (1 at frame 0), Wan 2.1 I2V's channel condition with a one-channel mask."""
    batch, _, height, width, channels = first_latent.shape
    latent = jnp.concatenate(
      [first_latent, jnp.zeros((batch, latent_frames - 1, height, width, channels), first_latent.dtype)], axis=1)
    mask = (jnp.arange(latent_frames) == 0).astype(first_latent.dtype)
    mask = jnp.broadcast_to(mask[None, :, None, None, None], (batch, latent_frames, height, width, 1))
    return jnp.concatenate([latent, mask], axis=-1)

  def text_features(self, text_params, ids, mask, dit_mask):
    """The encoder's last layer [B, L, D], read under `mask`, zeroed where `dit_mask` is False (padding, dropped
    captions)."""
    out = self.text_encoder.apply({"params": text_params}, ids, mask)
    features = out["layer_outputs"][self.text_config.num_layers - 1]
    return features * dit_mask[..., None].astype(features.dtype)

  def velocity(self, params, x, sigma, condition, ids, mask, dit_mask, control=None, flow_latents=None):
    """The DiT's velocity at x [B, t, h, w, z]; with `control` (ControlNet params) and `flow_latents`, under the
    flow ControlNet inside `control.sigma_window`."""
    features = self.text_features(params["text"], ids, mask, dit_mask)
    inputs = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)
    if control is None:
      return self.dit.apply({"params": params["dit"]}, inputs, sigma * 1000.0, features).astype(jnp.float32)
    v = flow_controlnet.controlled_velocity(self.dit, self.controlnet, params["dit"], control, inputs, sigma * 1000.0,
                                            features, flow_latents, sigma_window=self.sigma_window,
                                            scale=self.config.control.scale, skip_outside_window=False)
    return v.astype(jnp.float32)

  def _targets(self, state, batch, stage):
    """(x0 latents [B, t, h, w, z] of the stage's videos, the first-frame condition [B, t, h, w, z + 1])."""
    rgb = jax.lax.stop_gradient(self.encode(state, _to_pixels(batch["frames"]), "rgb"))
    condition = self.first_frame_condition(rgb[:, :1], rgb.shape[1])
    if stage == "motion":
      return jax.lax.stop_gradient(self.encode(state, self.flow_video(batch["flow"]), "flow")), condition
    return rgb, condition

  def _generator_update(self, state, batch, rng, phase):
    stage, settings = phase.name, self.config[phase.name]
    x0, condition = self._targets(state, batch, stage)
    sigma_key, noise_key, drop_key = jax.random.split(rng, 3)
    sigma = sample_training_sigmas(sigma_key, x0.shape[0], None, loc=settings.sigma_loc, scale=settings.sigma_scale)
    noise = jax.random.normal(noise_key, x0.shape)
    dit_mask, dropped = caption_dropout(drop_key, batch["caption_mask"], settings.caption_dropout)

    def loss_fn(params):
      v = self.velocity(params, noised(x0, noise, sigma), sigma, condition, batch["caption_ids"],
                        batch["caption_mask"], dit_mask)
      return flow_matching_loss(v, x0, noise)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state[stage])
    state = apply_gradients(state, grads, phase.optimizer, self._optimizers[phase.optimizer])
    state = {**state, f"{stage}_ema": ema_update(state[f"{stage}_ema"], state[stage], settings.ema_decay)}
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "captions_dropped": jnp.mean(dropped)}

  def _control_update(self, state, batch, rng, phase):
    settings = self.config.control
    x0, condition = self._targets(state, batch, "video")
    flow_latents = jax.lax.stop_gradient(self.encode(state, self.flow_video(batch["flow"]), "flow"))
    sigma_key, noise_key, drop_key = jax.random.split(rng, 3)
    sigma = sample_training_sigmas(sigma_key, x0.shape[0], None, loc=settings.sigma_loc, scale=settings.sigma_scale)
    noise = jax.random.normal(noise_key, x0.shape)
    dit_mask, _ = caption_dropout(drop_key, batch["caption_mask"], settings.caption_dropout)  # CFG's other branch
    base = jax.lax.stop_gradient(state["video_ema"])

    def loss_fn(control):
      v = self.velocity(base, noised(x0, noise, sigma), sigma, condition, batch["caption_ids"], batch["caption_mask"],
                        dit_mask, control, flow_latents)
      return flow_matching_loss(v, x0, noise)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["control"])
    state = apply_gradients(state, grads, phase.optimizer, self._optimizers[phase.optimizer])
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  # ------------------------------------------------------------------------------------------ evaluation
  @functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9))
  def _sample(self, state, frames, ids, mask, key, stage, guidance, num_steps, unconditional, flow=None):
    """Latents [B, t, h, w, z] of `stage` ("motion": flow, "video": RGB) from the captions and first frames; with
    `flow` [B, T, H, W, 2] (pixels) the video under the flow ControlNet."""
    rgb = self.encode(state, _to_pixels(frames[:, :1]), "rgb")  # frame 0 alone: latent frame 0 of the clip
    condition = self.first_frame_condition(rgb, self.latent_shape[0])
    params = state[f"{stage}_ema"]
    control = flow_latents = None
    if flow is not None:
      control, flow_latents = state["control"], self.encode(state, self.flow_video(flow), "flow")
    noise = jax.random.normal(key, (frames.shape[0], *self.latent_shape))
    sigmas, timesteps = inference_sigmas(num_steps, shift=1.0)
    times = np.asarray(timesteps, np.float32) / np.float32(1000.0)
    dropped = jnp.zeros_like(mask)

    def single(x, t):
      return self.velocity(params, x, jnp.broadcast_to(t, (x.shape[0],)), condition, ids, mask,
                           dropped if unconditional else mask, control, flow_latents)

    def pair(x, t):  # the conditional rows, then the caption-dropped rows, in one call
      both = lambda a: None if a is None else jnp.concatenate([a, a])  # noqa: E731
      return self.velocity(params, x, jnp.broadcast_to(t, (x.shape[0],)), both(condition), both(ids), both(mask),
                           jnp.concatenate([mask, dropped]), control, both(flow_latents))

    field = batched_cfg(pair, guidance, axis=-1) if guidance > 1.0 and not unconditional else single
    return euler_sample(field, noise, sigmas, times=times)

  def generate_flow(self, state, frames, ids, mask, key, *, unconditional: bool = False) -> np.ndarray:
    """Stage 1: flow [B, T, H, W, 2] in pixels from the clips' first frames (uint8 [B, >=1, H, W, 3]) and captions."""
    evaluation = self.config.eval
    latents = self._sample(state, jnp.asarray(frames), jnp.asarray(ids), jnp.asarray(mask), key, "motion",
                           float(evaluation.guidance), int(evaluation.steps), bool(unconditional))
    return np.asarray(self.codec.decode(self._decode_jit(state, latents, "flow")))

  def generate_video(self, state, frames, ids, mask, key, flow=None) -> np.ndarray:
    """Stage 2: uint8 video [B, T, H, W, 3] from the first frames and captions, guided by `flow` [B, T, H, W, 2]
    (pixels, from frame 0) through the ControlNet; None: the video DiT alone."""
    evaluation = self.config.eval
    flow = None if flow is None else jnp.asarray(flow, jnp.float32)
    latents = self._sample(state, jnp.asarray(frames), jnp.asarray(ids), jnp.asarray(mask), key, "video",
                           float(evaluation.guidance), int(evaluation.steps), False, flow)
    return _to_uint8(self._decode_jit(state, latents, "rgb"))

  def generate_two_stage(self, state, frames, ids, mask, key) -> tuple[np.ndarray, np.ndarray]:
    """DynaVid's pipeline: stage 1's flow from the first frames and captions, then the video it guides. Returns
    (flow [B, T, H, W, 2], video uint8 [B, T, H, W, 3])."""
    flow_key, video_key = jax.random.split(key)
    flow = self.generate_flow(state, frames, ids, mask, flow_key)
    return flow, self.generate_video(state, frames, ids, mask, video_key, flow)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def _decode_jit(self, state, latents, kind):
    return self.decode(state, latents, kind)

  @functools.partial(jax.jit, static_argnums=0)
  def _reconstruct(self, state, frames):
    latents = self.encode(state, _to_pixels(frames), "rgb")
    return self.decode(state, latents, "rgb")

  def _eval_batch(self):
    records = [self.eval_source[i] for i in range(len(self.eval_source))]
    return {key: np.stack([r[key] for r in records]) for key in ("frames", "flow", "caption_ids", "caption_mask")}

  def evaluate(self, state, step) -> dict[str, float]:
    batch = self._eval_batch()
    key = jax.random.key(self.config.seed + 17)
    args = (batch["frames"], batch["caption_ids"], batch["caption_mask"], key)
    flow = self.generate_flow(state, *args)
    unconditional = self.generate_flow(state, *args, unconditional=True)
    video = self.generate_video(state, *args)
    controlled = self.generate_video(state, *args, flow=batch["flow"])
    two_stage_flow, two_stage_video = self.generate_two_stage(state, *args)
    reconstruction = _to_uint8(self._reconstruct(state, jnp.asarray(batch["frames"])))
    true_flow = batch["flow"]
    as_unit = lambda x: x.astype(np.float32) / 255.0  # noqa: E731
    metrics = {
      "eval/motion_correlation": flow_correlation(flow, true_flow),
      "eval/motion_unconditional_correlation": flow_correlation(unconditional, true_flow),
      "eval/motion_endpoint_error": float(np.mean(np.linalg.norm(flow[:, 1:] - true_flow[:, 1:], axis=-1))),
      "eval/zero_flow_endpoint_error": float(np.mean(np.linalg.norm(true_flow[:, 1:], axis=-1))),
      "eval/video_first_frame_l1": float(np.mean(np.abs(as_unit(video[:, 0]) - as_unit(batch["frames"][:, 0])))),
      "eval/reconstruction_l1": float(np.mean(np.abs(as_unit(reconstruction) - as_unit(batch["frames"])))),
      "eval/controlled_motion_correlation": flow_correlation(_motion(controlled), true_flow),
      "eval/uncontrolled_motion_correlation": flow_correlation(_motion(video), true_flow),
      "eval/two_stage_motion_correlation": flow_correlation(_motion(two_stage_video), two_stage_flow),
      "eval/true_motion_correlation": flow_correlation(_motion(batch["frames"]), true_flow),
    }
    self._last_samples = (step, batch, flow, video, controlled)
    return metrics

  def write_samples(self, state, workdir, step) -> None:
    """samples/step_*.gif: a row per held-out clip of (true frames, true flow, stage 1's flow, the video DiT's video,
    the video under the ControlNet fed the true flow)."""
    last = getattr(self, "_last_samples", None)
    if last is None or last[0] != step or jax.process_index() != 0:
      return
    _, batch, flow, video, controlled = last
    scale = float(np.linalg.norm(batch["flow"], axis=-1).max()) or 1.0
    rows = []
    for clip in range(video.shape[0]):
      true_flow = np.stack([flow_to_color(f, scale) for f in batch["flow"][clip]])
      generated = np.stack([flow_to_color(f, scale) for f in flow[clip]])
      rows.append(np.concatenate([batch["frames"][clip], true_flow, generated, video[clip], controlled[clip]], axis=2))
    (workdir / "samples").mkdir(parents=True, exist_ok=True)
    save_gif(np.concatenate(rows, axis=1), workdir / "samples" / f"step_{step:06d}.gif", fps=6, scale=2)
