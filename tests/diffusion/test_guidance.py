"""Classifier-free guidance (jaxagents/diffusion/guidance.py): the per-token norm rescale of diffusers
`src/diffusers/pipelines/lens/pipeline_lens.py` (`LensPipeline.__call__`), written out in torch below as the
pipeline computes it, and batched CFG (one model call on the doubled batch) against two separate calls."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.diffusion import guidance, samplers, schedules


def random_pair(seed, shape=(2, 9, 16)):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal(shape), jnp.float32),
          jnp.asarray(rng.standard_normal(shape), jnp.float32))


def lens_pipeline_cfg(cond, uncond, scale):
  """The Lens pipeline's guidance step in torch: u + w (c - u), rescaled per token to ||c|| over the last axis."""
  torch = pytest.importorskip("torch")
  cond, uncond = torch.from_numpy(np.array(cond)), torch.from_numpy(np.array(uncond))
  combined = uncond + scale * (cond - uncond)
  cond_norm = torch.linalg.vector_norm(cond, dim=-1, keepdim=True)
  combined_norm = torch.linalg.vector_norm(combined, dim=-1, keepdim=True)
  ratio = torch.where(combined_norm > 0, cond_norm / combined_norm.clamp_min(1e-12), torch.ones_like(combined_norm))
  return (combined * ratio).numpy()


@pytest.mark.parametrize("scale", [0.0, 2.5, 5.0])
def test_renormalised_cfg_has_the_conditional_norm_at_every_token(scale):
  cond, uncond = random_pair(0)
  guided = guidance.cfg_velocity(cond, uncond, scale)
  np.testing.assert_allclose(jnp.linalg.norm(guided, axis=-1), jnp.linalg.norm(cond, axis=-1), rtol=1e-6)


@pytest.mark.parametrize("renorm", [True, False])
def test_guidance_scale_one_returns_cond_bit_for_bit(renorm):
  cond, uncond = random_pair(1)
  np.testing.assert_array_equal(guidance.cfg_velocity(cond, uncond, 1.0, renorm=renorm), cond)
  traced = jax.jit(functools.partial(guidance.cfg_velocity, renorm=renorm))(cond, uncond, jnp.float32(1.0))
  np.testing.assert_array_equal(traced, cond)


@pytest.mark.parametrize("scale", [1.0, 3.0, 5.0, 7.5])
def test_cfg_equals_the_lens_pipeline_formula(scale):
  cond, uncond = random_pair(2, (3, 17, 12))
  cond = cond.at[0, :3].set(0.0).at[1, 4].set(uncond[1, 4])  # zero tokens, and a token where cond == uncond
  uncond = uncond.at[0, :2].set(0.0)  # ... so that token 0, 1 of sample 0 is zero after guidance: scale 1
  reference = lens_pipeline_cfg(cond, uncond, scale)
  ours = np.asarray(guidance.cfg_velocity(cond, uncond, scale))
  # c + (w - 1)(c - u) and u + w (c - u) round differently; measured <= 1e-7 relative, <= 5e-7 max abs.
  assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-6
  assert np.abs(ours - reference).max() < 1e-5
  np.testing.assert_array_equal(ours[0, :2], 0.0)


def test_cfg_without_renorm_is_the_linear_combination():
  cond, uncond = random_pair(3)
  np.testing.assert_allclose(guidance.cfg_velocity(cond, uncond, 4.0, renorm=False), uncond + 4.0 * (cond - uncond),
                             rtol=1e-5, atol=1e-6)


def test_cfg_renormalises_along_the_given_channel_axis():
  cond, uncond = random_pair(4, (2, 16, 9))  # channels first
  guided = guidance.cfg_velocity(cond, uncond, 3.0, axis=1)
  np.testing.assert_allclose(jnp.linalg.norm(guided, axis=1), jnp.linalg.norm(cond, axis=1), rtol=1e-6)


def test_cfg_of_bfloat16_velocities_is_computed_in_float32():
  cond, uncond = random_pair(5)
  guided = guidance.cfg_velocity(cond.astype(jnp.bfloat16), uncond.astype(jnp.bfloat16), 4.0)
  assert guided.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------------------------------
# Batched CFG
# ---------------------------------------------------------------------------------------------------------------------

WEIGHT = jnp.asarray(np.random.default_rng(6).standard_normal((16, 16)) / 4, jnp.float32)


def text_velocity(x, sigma, text):
  """A toy conditional field: x [B, L, 16], text [B, 16]."""
  return jnp.tanh(x @ WEIGHT + text[:, None, :] * sigma)


def test_batched_cfg_equals_two_separate_calls():
  x, _ = random_pair(7)
  text = jnp.asarray(np.random.default_rng(8).standard_normal((2, 16)), jnp.float32)
  negative = jnp.zeros_like(text)  # the Lens pipeline's empty negative prompt: zero features, empty mask

  def velocity_pair(x2, sigma):
    return text_velocity(x2, sigma, jnp.concatenate([text, negative]))

  sigma = jnp.float32(0.6)
  batched = guidance.batched_cfg(velocity_pair, 5.0)(x, sigma)
  separate = guidance.cfg_velocity(text_velocity(x, sigma, text), text_velocity(x, sigma, negative), 5.0)
  np.testing.assert_allclose(batched, separate, rtol=1e-6, atol=1e-7)


def test_batched_cfg_calls_the_model_once_per_step_on_the_doubled_batch():
  batch_sizes = []
  text = jnp.asarray(np.random.default_rng(9).standard_normal((4, 16)), jnp.float32)

  def velocity_pair(x2, sigma):
    jax.debug.callback(lambda n: batch_sizes.append(int(n)), x2.shape[0])
    return text_velocity(x2, sigma, text)

  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  sigmas = schedules.inference_sigmas(6, 1024).sigmas
  out = jax.jit(lambda x: samplers.euler_sample(guidance.batched_cfg(velocity_pair, 4.0), x, sigmas))(x)
  jax.effects_barrier()
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert batch_sizes == [4] * 6


def test_bad_guidance_inputs_raise_naming_the_argument():
  cond, uncond = random_pair(10)
  with pytest.raises(ValueError, match="uncond: expected the shape of cond"):
    guidance.cfg_velocity(cond, uncond[:1], 2.0)
  with pytest.raises(ValueError, match="velocity_pair: expected an output batch of 4"):
    guidance.batched_cfg(lambda x2, sigma: x2[:2], 2.0)(cond, jnp.float32(0.5))
