"""Flow matching, model-agnostic: noise schedules and time shifts (`schedules`), Euler and few-step samplers over a
velocity callable (`samplers`), classifier-free guidance with the Lens per-token norm rescale (`guidance`), the
training loss, caption dropout and EMA (`losses`), few-step distillation by distribution matching (`distillation`).
They take arrays and callables, never a model module; tasks hand them a model's forward pass as `velocity(x, sigma)`."""

from jaxagents.diffusion import distillation, guidance, losses, samplers, schedules
from jaxagents.diffusion.distillation import backward_simulation, clean_prediction, distribution_matching_loss
from jaxagents.diffusion.guidance import batched_cfg, cfg_velocity
from jaxagents.diffusion.losses import caption_dropout, ema_update, flow_matching_loss, noised, velocity_target
from jaxagents.diffusion.samplers import euler_sample, euler_step, few_step_sample, renoise_sample, renoise_step
from jaxagents.diffusion.schedules import (
  Schedule,
  empirical_mu,
  exponential_time_shift,
  inference_sigmas,
  linear_mu,
  linear_time_shift,
  sample_training_sigmas,
  static_shift,
  time_shift,
)

__all__ = [
  "Schedule", "backward_simulation", "batched_cfg", "caption_dropout", "cfg_velocity", "clean_prediction",
  "distillation", "distribution_matching_loss", "ema_update", "empirical_mu", "euler_sample",
  "euler_step", "exponential_time_shift", "few_step_sample", "flow_matching_loss", "guidance", "inference_sigmas",
  "linear_mu", "linear_time_shift", "losses", "noised", "renoise_sample", "renoise_step", "sample_training_sigmas",
  "samplers", "schedules", "static_shift", "time_shift", "velocity_target",
]
