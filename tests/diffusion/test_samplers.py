"""Flow-matching samplers (jaxagents/diffusion/samplers.py): single steps against diffusers
`FlowMatchEulerDiscreteScheduler.step` (deterministic and `stochastic_sampling=True`), whole trajectories against a
loop of that `step`, and sampling a Gaussian data distribution with its exact velocity field, whose ODE transport
x1 -> x0 = m + s x1 is known in closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.diffusion import samplers, schedules

FLUX2_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                              time_shift_type="exponential")


def flux2_scheduler(num_steps, image_seq_len, **config):
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**{**FLUX2_SCHEDULER_CONFIG, **config})
  mu = schedules.empirical_mu(image_seq_len, num_steps)
  scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
  return scheduler


def ulps(ours, reference, scale):
  """|ours - reference| in units of the float32 spacing at `scale`."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return np.abs(ours - reference) / np.spacing(np.abs(np.asarray(scale, np.float32)))


# ---------------------------------------------------------------------------------------------------------------------
# Single steps against the diffusers scheduler
# ---------------------------------------------------------------------------------------------------------------------


def test_each_euler_step_equals_the_scheduler_step():
  torch = pytest.importorskip("torch")
  scheduler = flux2_scheduler(20, 4096)
  sigmas = schedules.inference_sigmas(20, 4096).sigmas
  rng = np.random.default_rng(0)
  jitted = jax.jit(samplers.euler_step)
  worst = 0.0
  for i, t in enumerate(scheduler.timesteps):
    x = rng.standard_normal((2, 37, 13)).astype(np.float32)
    v = 3 * rng.standard_normal(x.shape).astype(np.float32)
    reference = scheduler.step(torch.from_numpy(v), t, torch.from_numpy(x), return_dict=False)[0].numpy()
    # Op by op the arithmetic is the scheduler's: equal bit for bit.
    np.testing.assert_array_equal(samplers.euler_step(jnp.asarray(x), jnp.asarray(v), sigmas[i], sigmas[i + 1]),
                                  reference)
    # Under jit XLA contracts x + dt v into one fused multiply-add: one rounding where torch rounds twice (dt v, then
    # the sum). Where x and dt v cancel, the rounding of dt v is many ulps of the small result, so count ulps of the
    # larger term: the product's rounding (0.5) plus each sum's (0.5 ulp of a sum up to twice that term) is <= 2.5.
    scale = np.maximum(np.abs(x), np.abs(np.float32(sigmas[i + 1] - sigmas[i]) * v))
    worst = max(worst, ulps(jitted(x, v, sigmas[i], sigmas[i + 1]), reference, scale).max())
  assert worst <= 2.5  # measured 2.0


def test_each_renoise_step_equals_the_stochastic_scheduler_step():
  torch = pytest.importorskip("torch")
  scheduler = flux2_scheduler(4, 4096, stochastic_sampling=True)
  sigmas = schedules.inference_sigmas(4, 4096).sigmas
  rng = np.random.default_rng(1)
  for i, t in enumerate(scheduler.timesteps):
    x = rng.standard_normal((2, 11, 8)).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    reference = scheduler.step(torch.from_numpy(v), t, torch.from_numpy(x), generator=torch.Generator().manual_seed(i),
                               return_dict=False)[0].numpy()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).numpy()  # the noise the scheduler drew
    ours = samplers.renoise_step(jnp.asarray(x), jnp.asarray(v), sigmas[i], sigmas[i + 1], jnp.asarray(noise))
    np.testing.assert_array_equal(ours, reference)


def test_euler_sample_follows_the_scheduler_loop_over_a_whole_schedule():
  torch = pytest.importorskip("torch")
  num_steps, image_seq_len = 20, 1024
  scheduler = flux2_scheduler(num_steps, image_seq_len)
  schedule = schedules.inference_sigmas(num_steps, image_seq_len)
  weight = np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32) / 4
  x = np.random.default_rng(3).standard_normal((2, 9, 16)).astype(np.float32)

  reference = torch.from_numpy(x)
  for t in scheduler.timesteps:  # the pipelines' loop: the model sees timestep / 1000
    v = torch.tanh(reference @ torch.from_numpy(weight) + t / 1000)
    reference = scheduler.step(v, t, reference, return_dict=False)[0]

  def velocity(x, sigma):
    return jnp.tanh(x @ weight + sigma)

  sample = jax.jit(functools.partial(samplers.euler_sample, velocity))
  ours = sample(jnp.asarray(x), schedule.sigmas, times=schedule.timesteps / 1000)
  reference = reference.numpy()
  assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-6
  assert np.abs(ours - reference).max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# A Gaussian data distribution with its exact velocity field
# ---------------------------------------------------------------------------------------------------------------------

MEAN = jnp.array([1.5, -2.0, 0.3, 4.0, 0.0, -0.7, 2.2, 1.0])
STD = jnp.array([0.5, 1.0, 2.0, 0.1, 1.5, 0.8, 0.05, 3.0])


def gaussian_velocity(x, sigma):
  """E[eps - x0 | x_sigma = x] for x0 ~ N(MEAN, diag(STD^2)), x_sigma = (1 - sigma) x0 + sigma eps."""
  alpha = 1 - sigma
  variance = alpha**2 * STD**2 + sigma**2
  return (sigma - alpha * STD**2) / variance * (x - alpha * MEAN) - MEAN


@pytest.mark.parametrize("schedule", [dict(shift=1.0), dict(image_seq_len=4096)])
def test_euler_with_200_steps_matches_the_closed_form_transport(schedule):
  noise = jax.random.normal(jax.random.key(0), (2048, 8))
  exact = MEAN + STD * noise  # the ODE maps x1 to x0 = m + s x1 (x_sigma = (1 - sigma) m + sqrt(var_sigma) x1)
  sample = jax.jit(functools.partial(samplers.euler_sample, gaussian_velocity))
  errors = {}
  for num_steps in (200, 400):
    ours = sample(noise, schedules.inference_sigmas(num_steps, **schedule).sigmas)
    errors[num_steps] = float(jnp.linalg.norm(ours - exact) / jnp.linalg.norm(exact))
  assert errors[200] < 1e-2  # measured 5.1e-3 (linear sigmas) and 4.7e-3 (FLUX.2's 1024^2 shift)
  assert 0.4 < errors[400] / errors[200] < 0.6  # first order: twice the steps, half the error (measured 0.50, 0.55)


def test_four_euler_steps_on_the_exact_field_reach_the_target_mean():
  noise = jax.random.normal(jax.random.key(1), (4096, 8))
  noise = noise - noise.mean(axis=0)  # the field is affine, so Euler keeps the mean exactly at (1 - sigma) m
  for schedule in (dict(shift=1.0), dict(shift=3.0), dict(image_seq_len=4096)):
    ours = samplers.few_step_sample(gaussian_velocity, noise, schedules.inference_sigmas(4, **schedule).sigmas)
    np.testing.assert_allclose(ours.mean(axis=0), MEAN, atol=1e-5)


def test_four_renoise_steps_on_the_exact_field_reach_the_target_mean():
  count = 8192
  noise = jax.random.normal(jax.random.key(2), (count, 8))
  sigmas = schedules.inference_sigmas(4, image_seq_len=4096).sigmas
  ours = samplers.few_step_sample(gaussian_velocity, noise, sigmas, method="renoise", key=jax.random.key(3))
  # The last step returns E[x0 | x_sigma], whose mean is m; 4 standard errors of a sample of std <= s.
  assert np.all(np.abs(ours.mean(axis=0) - MEAN) < 4 * STD / np.sqrt(count))


# ---------------------------------------------------------------------------------------------------------------------
# Mechanics: jit, times, callbacks, errors
# ---------------------------------------------------------------------------------------------------------------------


def test_the_velocity_sees_the_given_times_and_the_callback_sees_every_step():
  seen_times, seen_steps = [], []

  def velocity(x, time):
    jax.debug.callback(lambda t: seen_times.append(float(t)), time)
    return jnp.zeros_like(x)

  schedule = schedules.inference_sigmas(5, 2048)
  x = jnp.ones((1, 3, 4))
  out = samplers.euler_sample(velocity, x, schedule.sigmas, times=schedule.timesteps / 1000,
                              callback=lambda step, sigma: seen_steps.append((int(step), float(sigma))))
  jax.effects_barrier()
  np.testing.assert_array_equal(out, x)
  assert seen_times == [float(t) for t in schedule.timesteps / 1000]
  assert seen_steps == [(i, float(s)) for i, s in enumerate(schedule.sigmas[:-1])]


def test_samplers_jit_with_traced_sigmas_and_keep_the_dtype_of_x():
  x = jax.random.normal(jax.random.key(4), (2, 6, 8), jnp.bfloat16)
  sigmas = schedules.inference_sigmas(4, 256).sigmas

  @jax.jit
  def run(x, sigmas, key):
    euler = samplers.euler_sample(gaussian_velocity, x, sigmas)
    renoise = samplers.renoise_sample(gaussian_velocity, x, sigmas, key)
    return euler, renoise

  euler, renoise = run(x, sigmas, jax.random.key(5))
  assert euler.dtype == renoise.dtype == jnp.bfloat16 and euler.shape == renoise.shape == x.shape
  np.testing.assert_allclose(euler.astype(jnp.float32), samplers.euler_sample(gaussian_velocity, x, sigmas),
                             rtol=1e-2, atol=1e-2)


def test_the_last_renoise_step_returns_the_predicted_x0():
  x, v = jnp.full((2, 3), 0.7), jnp.full((2, 3), -1.3)
  ours = samplers.renoise_step(x, v, jnp.float32(0.25), jnp.float32(0.0), jnp.full((2, 3), 100.0))
  np.testing.assert_array_equal(ours, x - jnp.float32(0.25) * v)


@pytest.mark.parametrize(("call", "message"), [
  (lambda: samplers.euler_sample(gaussian_velocity, jnp.ones((2, 8)), jnp.ones((3, 2))), "sigmas: expected shape"),
  (lambda: samplers.euler_sample(gaussian_velocity, jnp.ones((2, 8)), jnp.ones((1,))), "sigmas: expected shape"),
  (lambda: samplers.euler_sample(gaussian_velocity, jnp.ones((2, 8)), jnp.ones((4,)), times=jnp.ones((4,))),
   r"times: expected shape \(3,\)"),
  (lambda: samplers.euler_sample(lambda x, s: x[:1], jnp.ones((2, 8)), jnp.ones((4,))), "velocity: expected an output"),
  (lambda: samplers.few_step_sample(gaussian_velocity, jnp.ones((2, 8)), jnp.ones((4,)), method="dpm"), "method"),
  (lambda: samplers.few_step_sample(gaussian_velocity, jnp.ones((2, 8)), jnp.ones((4,)), method="renoise"), "key"),
])
def test_bad_sampler_arguments_raise_naming_the_argument(call, message):
  with pytest.raises(ValueError, match=message):
    call()
