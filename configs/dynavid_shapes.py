"""DynaVid at toy size, trained from scratch on CPU: a Wan-architecture VAE for frames and flow, a motion generator
(flow from caption + first frame) and the image-to-video generator that stage 2 guides, on rendered motion clips.

  python -m jaxagents.train --config configs/dynavid_shapes.py --workdir runs/dynavid
  python -m jaxagents.train --config configs/dynavid_shapes.py:test --workdir /tmp/dynavid_test   # for tests

Writes runs/dynavid/{metrics.jsonl, loss.png, samples/step_*.gif, final_metrics.json, checkpoints/}; the summary
prints the held-out motion correlation (generated vs. true flow) beside the caption-dropped sampler's.
"""

import ml_collections


def _adamw(learning_rate, warmup_steps):
  return dict(name="adamw", learning_rate=learning_rate, warmup_steps=warmup_steps, b1=0.9, b2=0.99,
              weight_decay=0.0, grad_clip_norm=1.0, end_fraction=0.1)


def _generator(steps):
  return dict(steps=steps, batch_size=8, optimizer=_adamw(1e-3, 50), caption_dropout=0.1, ema_decay=0.99,
              sigma_loc=0.0, sigma_scale=1.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "dynavid"
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  # 9 frames (1 + 4k, what the Wan VAE reads) of 32 x 32; four camera motions the caption names.
  c.data = dict(num_records=20_000, height=32, width=32, num_frames=9,
                camera_motions=("pan", "zoom", "roll", "orbit"))
  # Two downsampling levels (4 pixels per latent), one of them in time: 9 frames -> 5 latent frames of 8 x 8 x 8.
  c.vae = dict(base_dim=8, z_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(False, True))
  c.text = dict(hidden=32, mlp=64, layers=1, heads=2, head_dim=16)
  # head_dim 24: rotary dims (8, 8, 8) over (t, h, w); patches of 1 x 2 x 2 latents: 5 x 4 x 4 = 80 tokens.
  c.dit = dict(heads=4, head_dim=24, layers=4, mlp=256, patch_size=(1, 2, 2), freq_dim=64, remat_policy="none")
  c.autoencoder = dict(steps=400, batch_size=4, kl_weight=1e-4, optimizer=_adamw(2e-3, 30))
  c.motion = _generator(1000)
  c.video = _generator(1000)
  # Stage 2's flow ControlNet: a copy of the video DiT's first 2 blocks, trained with the video DiT frozen.
  c.control = _generator(600) | dict(blocks=2, sigma_window=(0.0, 1.0), scale=1.0)
  c.eval = dict(clips=8, steps=20, guidance=3.0)
  c.log_every = 50
  c.eval_every = 500
  c.tensorboard = False
  c.checkpoint = dict(save_every=500, keep=2)
  if arg == "test":  # the same job at toy size, small enough for the CPU test suite
    c.data.update(num_records=64, height=16, width=16, num_frames=5)
    c.vae.update(base_dim=8, z_dim=4)
    c.text.update(hidden=16, mlp=32, heads=2, head_dim=8)
    c.dit.update(heads=2, head_dim=12, layers=1, mlp=32, freq_dim=16)
    c.autoencoder.update(steps=2, batch_size=8)  # 8: one clip per device of the tests' 8-device CPU mesh
    c.motion.update(steps=2, batch_size=8)
    c.video.update(steps=2, batch_size=8)
    c.control.update(steps=2, batch_size=8, blocks=1)
    c.eval = dict(clips=2, steps=2, guidance=3.0)
    c.log_every, c.eval_every = 1, 0
    c.checkpoint = dict(save_every=2, keep=2)
  elif arg:
    raise ValueError(f"configs/dynavid_shapes.py: unknown variant {arg!r}; expected none or 'test'.")
  return c
