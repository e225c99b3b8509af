"""Flow-matching schedules (jaxagents/diffusion/schedules.py) against diffusers: `compute_empirical_mu` of the FLUX.2
pipeline and `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)` configured as FLUX.2's
scheduler (its config is FLUX.1-dev's: dynamic shifting, exponential time shift), compared bit for bit in float32;
and the training sigma sampler against the closed form of its shifted logit-normal density."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.diffusion import schedules

# (image_seq_len, steps): 1024^2 -> 4096 tokens at 20 and 4 steps, 512^2 -> 1024 tokens, the two sides of the jump
# at 4300 tokens, 1440^2 -> 8100 tokens at 28 steps.
CASES = [(4096, 20), (4096, 4), (1024, 20), (4300, 20), (4301, 20), (8100, 28)]

# FLUX.2's scheduler: `FlowMatchEulerDiscreteScheduler.from_pretrained("black-forest-labs/FLUX.1-dev", "scheduler")`
# in diffusers `scripts/convert_flux2_to_diffusers.py`; these are that config's values.
FLUX2_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                              time_shift_type="exponential")


def diffusers_schedule(num_steps, mu=None, **config):
  """sigmas [N + 1] and timesteps [N] as the FLUX.2 / Lens pipelines get them from the diffusers scheduler."""
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**{**FLUX2_SCHEDULER_CONFIG, **config})
  scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
  return scheduler.sigmas.numpy(), scheduler.timesteps.numpy()


def diffusers_mu(image_seq_len, num_steps):
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

  return compute_empirical_mu(image_seq_len, num_steps)


# ---------------------------------------------------------------------------------------------------------------------
# mu
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image_seq_len", "num_steps"), CASES)
def test_empirical_mu_equals_flux2_compute_empirical_mu(image_seq_len, num_steps):
  assert schedules.empirical_mu(image_seq_len, num_steps) == diffusers_mu(image_seq_len, num_steps)


def test_empirical_mu_equals_flux2_on_a_grid_of_token_counts_and_steps():
  for image_seq_len in (1, 256, 999, 2304, 4299, 4300, 4301, 6000, 16384):
    for num_steps in (1, 2, 8, 50, 200):
      assert schedules.empirical_mu(image_seq_len, num_steps) == diffusers_mu(image_seq_len, num_steps)


def test_empirical_mu_jumps_at_4300_tokens_and_ignores_the_step_count_above():
  below, above = schedules.empirical_mu(4300, 20), schedules.empirical_mu(4301, 20)
  assert below == pytest.approx(2.21673, abs=1e-5) and above == pytest.approx(1.18470, abs=1e-5)
  assert {schedules.empirical_mu(8100, n) for n in (1, 4, 28, 50)} == {schedules.empirical_mu(8100, 28)}
  assert schedules.empirical_mu(4300, 4) != schedules.empirical_mu(4300, 50)
  # The model-card values: e^mu = 9.0 at 1024^2 / 20 steps, 6.8 at 512^2, 6.2 at 1440^2.
  assert [round(math.exp(schedules.empirical_mu(n, 20)), 1) for n in (4096, 1024, 8100)] == [9.0, 6.8, 6.2]


def test_linear_mu_is_flux1_calculate_shift():
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  from diffusers.pipelines.flux.pipeline_flux import calculate_shift

  for image_seq_len in (256, 1024, 4096, 8100):
    assert schedules.linear_mu(image_seq_len) == calculate_shift(image_seq_len)
  np.testing.assert_allclose(schedules.linear_mu(np.array([256, 4096])), [0.5, 1.15], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Inference sigmas: exact float32 equality with the scheduler
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image_seq_len", "num_steps"), CASES)
def test_inference_sigmas_equal_the_flux2_scheduler_bit_for_bit(image_seq_len, num_steps):
  sigmas, timesteps = diffusers_schedule(num_steps, mu=diffusers_mu(image_seq_len, num_steps))
  ours = schedules.inference_sigmas(num_steps, image_seq_len)
  assert ours.sigmas.dtype == ours.timesteps.dtype == np.float32
  assert ours.sigmas.shape == (num_steps + 1,) and ours.timesteps.shape == (num_steps,)
  np.testing.assert_array_equal(ours.sigmas, sigmas)  # tolerance 0: the same float32 operations in the same order
  np.testing.assert_array_equal(ours.timesteps, timesteps)
  assert ours.sigmas[0] == 1 and ours.sigmas[-1] == 0 and np.all(np.diff(ours.sigmas) < 0)


@pytest.mark.parametrize(("option", "config"), [
  (dict(time_shift_type="linear"), dict(time_shift_type="linear")),
  (dict(shift_terminal=0.1), dict(shift_terminal=0.1)),
  (dict(spacing="karras"), dict(use_karras_sigmas=True)),
  (dict(spacing="exponential"), dict(use_exponential_sigmas=True)),
  (dict(spacing="beta"), dict(use_beta_sigmas=True)),
  (dict(invert_sigmas=True), dict(invert_sigmas=True)),
  (dict(shift_terminal=0.02, spacing="karras"), dict(shift_terminal=0.02, use_karras_sigmas=True)),
])
def test_each_scheduler_option_equals_diffusers_bit_for_bit(option, config):
  num_steps, mu = 7, schedules.empirical_mu(3000, 7)
  sigmas, timesteps = diffusers_schedule(num_steps, mu=mu, **config)
  ours = schedules.inference_sigmas(num_steps, mu=mu, **option)
  np.testing.assert_array_equal(ours.sigmas, sigmas)
  np.testing.assert_array_equal(ours.timesteps, timesteps)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_static_shift_equals_the_scheduler_without_dynamic_shifting(shift):
  # Z-Image-Turbo style: use_dynamic_shifting=False, shift=3.0, sigmas linspace(1, 1/N, N).
  sigmas, timesteps = diffusers_schedule(8, use_dynamic_shifting=False, shift=shift)
  ours = schedules.inference_sigmas(8, shift=shift)
  np.testing.assert_array_equal(ours.sigmas, sigmas)
  np.testing.assert_array_equal(ours.timesteps, timesteps)


def test_custom_base_sigmas_equal_the_scheduler():
  diffusers = pytest.importorskip("diffusers")
  base = np.array([1.0, 0.8, 0.5, 0.3, 0.05])
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG)
  scheduler.set_timesteps(sigmas=base, mu=1.7)
  ours = schedules.inference_sigmas(5, mu=1.7, base_sigmas=base)
  np.testing.assert_array_equal(ours.sigmas, scheduler.sigmas.numpy())


def test_static_shift_is_the_exponential_shift_with_mu_log_shift():
  sigmas = np.linspace(0.01, 1.0, 50)
  exponential = schedules.exponential_time_shift(sigmas, math.log(3.0))
  np.testing.assert_allclose(schedules.static_shift(sigmas, 3.0), exponential, rtol=1e-12)
  # A bigger image shifts every interior sigma up (more noise), keeping 0 and 1 fixed.
  low, high = (schedules.exponential_time_shift(sigmas, schedules.empirical_mu(n, 20)) for n in (1024, 4096))
  assert np.all(high[:-1] > low[:-1]) and high[-1] == low[-1] == 1.0


def test_time_shifts_run_under_jit_with_a_traced_mu():
  sigmas = jnp.linspace(1.0, 0.1, 10)
  shifted = jax.jit(schedules.exponential_time_shift)(sigmas, jnp.float32(1.2))
  np.testing.assert_allclose(shifted, schedules.exponential_time_shift(np.asarray(sigmas), 1.2), rtol=2e-7)


@pytest.mark.parametrize(("kwargs", "message"), [
  (dict(num_steps=0, image_seq_len=4096), "num_steps"),
  (dict(num_steps=4.0, image_seq_len=4096), "num_steps"),
  (dict(num_steps=4), "exactly one of image_seq_len, mu, shift"),
  (dict(num_steps=4, image_seq_len=4096, mu=1.0), "exactly one of image_seq_len, mu, shift"),
  (dict(num_steps=4, image_seq_len=-5), "image_seq_len"),
  (dict(num_steps=4, mu=1.0, time_shift_type="cosine"), "time_shift_type"),
  (dict(num_steps=4, mu=1.0, spacing="cosine"), "spacing"),
  (dict(num_steps=4, mu=1.0, shift_terminal=1.5), "shift_terminal"),
  (dict(num_steps=4, mu=1.0, base_sigmas=[1.0, 0.5]), r"base_sigmas: expected shape \(4,\)"),
  (dict(num_steps=2, mu=1.0, base_sigmas=[1.0, 0.0]), r"base_sigmas: expected values in \(0, 1\]"),
  (dict(num_steps=4, shift=-1.0), "shift"),
])
def test_bad_schedule_arguments_raise_naming_the_argument(kwargs, message):
  with pytest.raises(ValueError, match=message):
    schedules.inference_sigmas(**kwargs)


def test_bad_mu_arguments_raise_naming_the_argument():
  with pytest.raises(ValueError, match="image_seq_len: expected a positive int"):
    schedules.empirical_mu(0, 20)
  with pytest.raises(ValueError, match="num_steps"):
    schedules.empirical_mu(4096, True)
  with pytest.raises(ValueError, match="mu: the linear time shift needs mu > 0"):
    schedules.linear_time_shift(np.ones(3), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Training sigmas
# ---------------------------------------------------------------------------------------------------------------------


def _logit(x):
  x = np.asarray(x, np.float64)
  return np.log(x) - np.log1p(-x)


@pytest.mark.parametrize("kind", ["logit_normal", "uniform"])
def test_training_sigmas_have_the_batch_shape_and_lie_inside_zero_one(kind):
  sigmas = schedules.sample_training_sigmas(jax.random.key(0), 4096, 8100, kind)
  assert sigmas.shape == (4096,) and sigmas.dtype == jnp.float32
  assert float(sigmas.min()) > 0 and float(sigmas.max()) < 1


def test_logit_normal_sigmas_are_shifted_by_mu_in_logit_space():
  n = 50_000
  for image_seq_len in (256, 1024, 4096):
    mu = schedules.linear_mu(image_seq_len)
    sigmas = np.asarray(schedules.sample_training_sigmas(jax.random.key(1), n, image_seq_len, loc=0.2, scale=0.8))
    logits = _logit(sigmas)
    assert abs(logits.mean() - (0.2 + mu)) < 4 * 0.8 / math.sqrt(n)  # 4 standard errors
    assert abs(logits.std() - 0.8) < 0.01
    assert abs(np.median(sigmas) - 1 / (1 + math.exp(-(0.2 + mu)))) < 0.01


def test_a_bigger_image_moves_the_training_median_towards_noise():
  key = jax.random.key(2)
  medians = [float(jnp.median(schedules.sample_training_sigmas(key, 20_000, n))) for n in (256, 1024, 4096)]
  assert medians[0] < medians[1] < medians[2]
  unshifted = schedules.sample_training_sigmas(key, 20_000, None)
  assert abs(float(jnp.median(unshifted)) - 0.5) < 0.01


def test_uniform_sigmas_follow_the_exponential_shift_of_a_uniform():
  mu = schedules.linear_mu(4096)
  sigmas = np.asarray(schedules.sample_training_sigmas(jax.random.key(3), 50_000, 4096, "uniform"))
  # P(sigma' <= s) = P(u <= shift^-1(s)), and the shift's inverse is the shift by -mu.
  for s in (0.2, 0.5, 0.8):
    assert abs((sigmas <= s).mean() - schedules.exponential_time_shift(s, -mu)) < 0.01
  plain = np.asarray(schedules.sample_training_sigmas(jax.random.key(3), 50_000, None, "uniform"))
  assert abs(plain.mean() - 0.5) < 0.01


def test_per_sample_token_counts_shift_each_sample_by_its_own_mu():
  key = jax.random.key(4)
  seq_lens = jnp.array([256, 8100] * 4)
  mixed = schedules.sample_training_sigmas(key, 8, seq_lens)
  base = schedules.sample_training_sigmas(key, 8, None)
  np.testing.assert_allclose(_logit(mixed) - _logit(base), schedules.linear_mu(np.asarray(seq_lens, np.float64)),
                             atol=1e-3)
  jitted = jax.jit(schedules.sample_training_sigmas, static_argnums=(1, 3))(key, 8, seq_lens, "logit_normal")
  np.testing.assert_allclose(jitted, mixed, rtol=1e-6)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
  ((4, 4096, "cosmap"), {}, "kind"),
  ((0, 4096), {}, "batch"),
  ((4, jnp.ones((3,), jnp.int32)), {}, r"image_seq_len: expected an int or an array of shape \(4,\)"),
  ((4, 4096), dict(eps=0.7), "eps"),
])
def test_bad_training_sigma_arguments_raise_naming_the_argument(args, kwargs, message):
  with pytest.raises(ValueError, match=message):
    schedules.sample_training_sigmas(jax.random.key(0), *args, **kwargs)
