"""Distribution-matching distillation against its formula, and on Gaussians whose scores are known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.diffusion import euler_sample
from jaxagents.diffusion.distillation import backward_simulation, clean_prediction, distribution_matching_loss


def test_the_loss_gradient_is_the_normalised_score_difference():
  rng = np.random.default_rng(0)
  x0, real, fake = (jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32) for _ in range(3))
  grad = jax.grad(lambda x: distribution_matching_loss(x, real, fake)[0])(x0)
  scale = np.abs(np.float64(x0) - np.float64(real)).mean(axis=(1, 2), keepdims=True)
  expected = (np.float64(fake) - np.float64(real)) / scale / x0.size
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
  # No gradient reaches the predictions (they come from frozen or separately trained networks).
  assert not np.any(jax.grad(lambda r: distribution_matching_loss(x0, r, fake)[0])(real))
  assert not np.any(jax.grad(lambda f: distribution_matching_loss(x0, real, f)[0])(fake))


def test_no_gradient_when_the_student_matches_the_teacher():
  rng = np.random.default_rng(1)
  x0, real = (jnp.asarray(rng.normal(size=(2, 6)), jnp.float32) for _ in range(2))
  grad = jax.grad(lambda x: distribution_matching_loss(x, real, real)[0])(x0)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="x0, x0_real, x0_fake"):
    distribution_matching_loss(x0, real, real[:1])


def _posterior_mean(x_t, t, mean):
  """E[x0 | x_t] for x0 ~ N(mean, I), x_t = (1 - t) x0 + t eps."""
  t = t[:, None]
  return mean + (1 - t) / ((1 - t) ** 2 + t ** 2) * (x_t - (1 - t) * mean)


def test_distribution_matching_moves_a_gaussian_student_onto_the_teacher():
  # Teacher N(mu, I); student G(z) = theta + z, i.e. N(theta, I). With exact clean-sample predictions of both
  # distributions, gradient descent on the DMD loss carries theta to mu.
  mu = jnp.asarray([1.5, -2.0, 0.5])
  theta = jnp.zeros(3)
  key = jax.random.key(0)

  def loss(theta, key):
    z_key, t_key, eps_key = jax.random.split(key, 3)
    x0 = theta + jax.random.normal(z_key, (256, 3))
    t = jax.random.uniform(t_key, (256,), minval=0.02, maxval=0.98)
    x_t = jax.lax.stop_gradient((1 - t[:, None]) * x0 + t[:, None] * jax.random.normal(eps_key, x0.shape))
    real, fake = _posterior_mean(x_t, t, mu), _posterior_mean(x_t, t, jax.lax.stop_gradient(theta))
    return distribution_matching_loss(x0, real, fake)[0]

  step = jax.jit(lambda theta, key: theta - 2.0 * jax.grad(loss)(theta, key))
  for i in range(300):
    theta = step(theta, jax.random.fold_in(key, i))
  np.testing.assert_allclose(theta, mu, atol=0.1)


def test_clean_prediction_inverts_the_flow_interpolation():
  rng = np.random.default_rng(2)
  x0, noise = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
  sigma = np.array([0.3, 0.9])
  x = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
  np.testing.assert_allclose(clean_prediction(jnp.asarray(x), jnp.asarray(noise - x0), jnp.asarray(sigma)), x0,
                             rtol=1e-5, atol=1e-5)


def test_backward_simulation_stops_each_sample_after_its_own_number_of_steps():
  sigmas = jnp.asarray([1.0, 0.75, 0.5, 0.25, 0.0])
  noise = jax.random.normal(jax.random.key(0), (4, 3, 2))

  def velocity(x, sigma):
    return jnp.sin(x) + sigma[:, None, None]

  steps = jnp.asarray([0, 1, 2, 3])
  x, sigma = backward_simulation(velocity, noise, sigmas, steps, jax.random.key(1), method="euler")
  np.testing.assert_array_equal(sigma, sigmas[:4])
  np.testing.assert_array_equal(x[0], noise[0])
  for b in range(1, 4):
    expected = euler_sample(lambda x, s: jnp.sin(x) + s, noise[b:b + 1], sigmas[:b + 1])
    np.testing.assert_allclose(x[b:b + 1], expected, rtol=1e-6, atol=1e-6)
  renoised, sigma = backward_simulation(velocity, noise, sigmas, steps, jax.random.key(1), method="renoise")
  np.testing.assert_array_equal(renoised[0], noise[0])
  # After a renoise step the state is (1 - sigma') x0_hat + sigma' fresh noise: not the Euler state.
  assert not np.allclose(renoised[1], x[1])
  with pytest.raises(ValueError, match="method"):
    backward_simulation(velocity, noise, sigmas, steps, jax.random.key(1), method="heun")
