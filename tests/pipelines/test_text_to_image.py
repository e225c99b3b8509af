"""Text to image end to end on CPU: a tiny Lens transformer and a tiny FLUX.2 VAE written in the diffusers layout,
precomputed text features, `python -m jaxagents.sample` writing PNGs and a grid. The sampler is checked against a
hand-written loop of the same model calls (batched CFG, Lens renorm, Euler on FLUX.2's sigmas)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxagents import sample
from jaxagents.diffusion import cfg_velocity, inference_sigmas
from jaxagents.layers.multi_axis_rope import msrope_position_ids
from jaxagents.models import mmdit, vae
from jaxagents.models.text_encoders import PrecomputedTextEncoder, TextFeatures, save_features
from jaxagents.pipelines import TextToImage
from tests.models.mmdit.test_lens import lens_config, random_state, write_checkpoint

PROMPTS = ["a red cube", "two blue balls on a green floor"]
# One VAE level: no down-sampling, so a token covers 2 x 2 pixels and images stay tiny. 4 latent channels x 2 x 2
# = the tiny Lens transformer's 16 input channels.
VAE_CONFIG = vae.Flux2VAEConfig(block_out_channels=(4,), layers_per_block=1, latent_channels=4, norm_num_groups=1,
                                sample_size=32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("lens_tiny")
  config = lens_config()
  write_checkpoint(root / "transformer", config, random_state(config, seed=1))
  model = vae.Flux2VAE(VAE_CONFIG)
  variables = model.init(jax.random.key(2), jnp.zeros((1, 8, 8, 3)))
  stats = {"running_mean": 0.1 * jax.random.normal(jax.random.key(3), (16,)),
           "running_var": 1.0 + jax.random.uniform(jax.random.key(4), (16,))}
  variables = {**variables, "batch_stats": {"bn": stats}}
  vae.save_variables(variables, VAE_CONFIG, str(root / "vae"))
  rng = np.random.default_rng(5)
  rows = PROMPTS + [""]
  lengths = [5, 7, 3]
  hidden = rng.standard_normal((2, len(rows), 7, 24)).astype(np.float32)
  mask = np.arange(7)[None] < np.array(lengths)[:, None]
  save_features(str(root / "features.npz"), rows, TextFeatures.create(tuple(hidden * mask[..., None]), mask))
  return root


def test_sampler_equals_a_hand_written_cfg_euler_loop(checkpoint):
  encoder = PrecomputedTextEncoder(str(checkpoint / "features.npz"))
  pipeline = TextToImage.from_pretrained(str(checkpoint), encoder)
  rows, cols, steps, guidance = 3, 5, 4, 4.0
  sampler = pipeline.sampler(rows * 2, cols * 2, steps, guidance)
  cond, uncond = pipeline.text_features(PROMPTS, "")
  noise = jax.random.normal(jax.random.key(0), (2, rows * cols, 16))
  tokens = sampler(pipeline.dit_params, noise, cond, uncond)

  model = mmdit.MMDiT(pipeline.dit_config)
  sigmas, timesteps = inference_sigmas(steps, rows * cols)
  x = np.asarray(noise)
  for i in range(steps):
    t = np.float32(timesteps[i]) / np.float32(1000.0)
    velocities = []
    for features in (cond, uncond):
      img_ids, txt_ids = msrope_position_ids(rows, cols, features.shape[1])
      velocities.append(model.apply({"params": pipeline.dit_params}, x, list(features.hidden), jnp.full((2,), t),
                                    img_ids, txt_ids, features.mask))
    x = x + (sigmas[i + 1] - sigmas[i]) * np.asarray(cfg_velocity(*velocities, guidance))
  np.testing.assert_allclose(np.asarray(tokens), x, rtol=2e-5, atol=2e-5)


def test_sample_cli_writes_pngs_a_grid_and_timings(checkpoint, tmp_path, capsys):
  out = tmp_path / "samples"
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text(PROMPTS[1] + "\n\n")
  code = sample.main(["--checkpoint", str(checkpoint), "--prompt", PROMPTS[0], "--prompts-file", str(prompts_file),
                      "--text-features", str(checkpoint / "features.npz"), "--size", "12x8", "--steps", "3",
                      "--cfg", "3.0", "--seed", "7", "--out", str(out)])
  assert code == 0
  images = [np.asarray(Image.open(out / f"{i:03d}_7.png")) for i in range(2)]
  assert all(image.shape == (8, 12, 3) and image.dtype == np.uint8 for image in images)
  assert not np.array_equal(images[0], images[1])  # different prompts, same seed
  assert np.asarray(Image.open(out / "grid.png")).shape == (8, 12 * 2 + 4, 3)
  report = json.loads((out / "prompts.json").read_text())
  assert report["prompts"] == PROMPTS and report["timings"]["per_step"] > 0
  assert "ms/step over 3 steps" in capsys.readouterr().out


def test_sizes_that_do_not_fit_the_tokens_are_refused(checkpoint):
  pipeline = TextToImage.from_pretrained(str(checkpoint), PrecomputedTextEncoder(str(checkpoint / "features.npz")))
  with pytest.raises(ValueError, match="`height` must be a positive multiple of 2, got 7"):
    pipeline(PROMPTS, height=7, width=8, num_steps=2)
  with pytest.raises(FileNotFoundError, match="no transformer/ folder"):
    TextToImage.from_pretrained(str(checkpoint / "vae"), None)
