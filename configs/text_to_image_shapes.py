"""A tiny text-to-image model trained from scratch on CPU: a FLUX.2-architecture VAE, then a Lens-architecture
MMDiT with a small Qwen3 text encoder, on rendered shapes with dense captions at three aspect ratios.

  python -m jaxagents.train --config configs/text_to_image_shapes.py --workdir runs/t2i_shapes
  python -m jaxagents.train --config configs/text_to_image_shapes.py:turbo --workdir runs/t2i_turbo \
      --config.distill.teacher_workdir=runs/t2i_shapes   # a 4-step student distilled from that run's EMA teacher
  python -m jaxagents.train --config configs/text_to_image_shapes.py:test --workdir /tmp/t2i_test   # for tests

Writes runs/t2i_shapes/{metrics.jsonl, loss.png, samples/step_*.png, final_metrics.json, checkpoints/}; prints the
held-out prompt-following score (pixels read by `jaxagents.data.prompt_following`) beside the unconditional
baseline.
"""

import ml_collections


def _adamw(learning_rate, warmup_steps):
  return dict(name="adamw", learning_rate=learning_rate, warmup_steps=warmup_steps, b1=0.9, b2=0.99,
              weight_decay=0.0, grad_clip_norm=1.0, end_fraction=0.1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "text_to_image"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  # max_len 17 = `shapes_captions.max_caption_length(2)`: the longest two-group caption.
  c.data = dict(num_records=50_000, image_sizes=((32, 32), (32, 48), (48, 32)), max_groups=2, max_len=17)
  # 2 levels (one 2x downsampling), latent 4 channels -> 4 pixels per token of 16 channels after the 2x2 patchify.
  c.vae = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=4,
               mid_block_add_attention=False, sample_size=32)
  c.text = dict(hidden=64, mlp=128, layers=2, heads=4, head_dim=16)
  # compute_dtype "bfloat16" on accelerators (float32 weights in the optimizer); remat_policy as `layers.remat`.
  c.dit = dict(heads=4, head_dim=32, layers=4, mlp=256, rope_axes=(8, 12, 12), time_channels=64,
               compute_dtype="float32", remat_policy="none")
  c.autoencoder = dict(steps=600, tokens_per_batch=1024, kl_weight=1e-4, optimizer=_adamw(3e-3, 30))
  c.flow = dict(steps=1500, tokens_per_batch=2048, optimizer=_adamw(1e-3, 100), caption_dropout=0.1,
                ema_decay=0.995, sigma_loc=0.0, sigma_scale=1.0, resolution_shift=False)
  # DMD2 distillation (off here; the `turbo` variant runs it on a finished run's teacher).
  c.distill = dict(steps=0, tokens_per_batch=1024, student_steps=4, sampler="renoise", teacher_guidance=4.0,
                   fake_updates=4, min_sigma=0.02, max_sigma=0.98, teacher_workdir="",
                   optimizer=_adamw(1e-4, 20) | dict(b1=0.0), fake_optimizer=_adamw(1e-4, 20) | dict(b1=0.0))
  c.eval = dict(samples_per_prompt=2, steps=20, guidance=4.0)
  c.log_every = 50
  c.eval_every = 500
  c.tensorboard = False
  c.checkpoint = dict(save_every=500, keep=2)
  if arg == "test":  # the same job at toy size, small enough for the CPU test suite (seconds)
    c.data.num_records = 600
    c.vae.update(block_out_channels=(8, 16))
    c.text.update(hidden=32, mlp=64, heads=2)
    c.dit.update(heads=2, head_dim=16, layers=1, mlp=64, rope_axes=(4, 6, 6), time_channels=32)
    c.autoencoder.update(steps=3, tokens_per_batch=512)
    c.flow.update(steps=3, tokens_per_batch=512)
    c.distill.update(tokens_per_batch=512, fake_updates=2)
    c.eval = dict(samples_per_prompt=1, steps=2, guidance=4.0)
    c.log_every, c.eval_every = 1, 0
    c.checkpoint = dict(save_every=3, keep=2)
  elif arg == "turbo":  # distillation only: the VAE and teacher come from `distill.teacher_workdir`
    c.autoencoder.steps, c.flow.steps = 0, 0
    c.distill.steps = 300
    c.eval_every = 100
    c.checkpoint = dict(save_every=100, keep=2)
  elif arg:
    raise ValueError(f"configs/text_to_image_shapes.py: unknown variant {arg!r}; expected none, 'turbo' or 'test'.")
  return c
