"""Flow-matching loss pieces against the formulas written out in the test (numpy, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.diffusion.losses import caption_dropout, ema_update, flow_matching_loss, noised, velocity_target


def _arrays(seed=0, shape=(3, 5, 4)):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for _ in range(3)] + [rng]


def test_noised_interpolates_data_and_noise_per_sample():
  x0, noise, _, _ = _arrays()
  sigma = np.array([0.0, 0.3, 1.0], np.float32)
  got = np.asarray(noised(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(sigma)))
  np.testing.assert_allclose(got, (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[0], x0[0])
  np.testing.assert_array_equal(got[2], noise[2])


def test_the_target_velocity_carries_x_sigma_from_data_to_noise():
  # d x_sigma / d sigma = noise - x0: a finite difference of `noised` equals the target.
  x0, noise, _, _ = _arrays()
  with jax.enable_x64():
    x0, noise = jnp.asarray(x0, jnp.float64), jnp.asarray(noise, jnp.float64)
    derivative = jax.jacfwd(lambda s: noised(x0, noise, s))(jnp.float64(0.4))
  np.testing.assert_allclose(derivative, velocity_target(x0, noise), rtol=1e-6)


def test_loss_is_the_masked_per_sample_mean_then_the_batch_mean():
  x0, noise, velocity, rng = _arrays()
  mask = rng.random((3, 5)) < 0.6
  mask[0] = False  # a sample without tokens is not counted
  mask[1, 0] = True
  loss, metrics = flow_matching_loss(jnp.asarray(velocity), jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(mask))
  error = ((velocity.astype(np.float64) - (noise - x0)) ** 2).mean(-1)
  per_sample = [error[b][mask[b]].mean() if mask[b].any() else 0.0 for b in range(3)]
  np.testing.assert_allclose(metrics["per_sample"], per_sample, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(per_sample[1:]), rtol=1e-5)


def test_loss_is_zero_for_the_exact_velocity_and_its_gradient_is_the_residual():
  x0, noise, velocity, _ = _arrays()
  exact = jnp.asarray(noise - x0)
  assert float(flow_matching_loss(exact, jnp.asarray(x0), jnp.asarray(noise))[0]) == 0.0
  grad = jax.grad(lambda v: flow_matching_loss(v, jnp.asarray(x0), jnp.asarray(noise))[0])(jnp.asarray(velocity))
  np.testing.assert_allclose(grad, 2 * (velocity - (noise - x0)) / velocity.size, rtol=1e-5, atol=1e-8)


def test_padding_tokens_change_nothing():
  x0, noise, velocity, _ = _arrays()
  pad = lambda x, fill: np.concatenate([x, np.full((3, 2, 4), fill, np.float32)], axis=1)  # noqa: E731
  mask = np.concatenate([np.ones((3, 5), bool), np.zeros((3, 2), bool)], axis=1)
  plain, _ = flow_matching_loss(jnp.asarray(velocity), jnp.asarray(x0), jnp.asarray(noise))
  padded, _ = flow_matching_loss(*(jnp.asarray(pad(x, 1e3)) for x in (velocity, x0, noise)), jnp.asarray(mask))
  np.testing.assert_allclose(padded, plain, rtol=1e-6)


def test_caption_dropout_drops_whole_captions_at_the_given_rate():
  mask = jnp.ones((20000, 7), bool)
  dropped_mask, dropped = caption_dropout(jax.random.key(0), mask, 0.1)
  assert abs(float(dropped.mean()) - 0.1) < 0.01
  np.testing.assert_array_equal(np.asarray(dropped_mask), ~np.asarray(dropped)[:, None] & np.ones((1, 7), bool))
  assert not np.any(caption_dropout(jax.random.key(1), mask, 0.0)[1])


def test_ema_update_moves_towards_the_parameters_by_one_minus_decay():
  ema = {"w": jnp.zeros((2,), jnp.bfloat16), "b": jnp.ones((3,))}
  params = {"w": jnp.full((2,), 4.0), "b": jnp.full((3,), 3.0)}
  out = ema_update(ema, params, 0.75)
  np.testing.assert_array_equal(np.asarray(out["w"], np.float32), [1.0, 1.0])
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(out["b"], 1.5)


@pytest.mark.parametrize(
  "call, argument",
  [
    (lambda: noised(jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.5), "noise"),
    (lambda: noised(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((3,))), "sigma"),
    (lambda: flow_matching_loss(jnp.zeros((2, 3, 1)), jnp.zeros((2, 3, 2)), jnp.zeros((2, 3, 2))), "velocity"),
    (lambda: flow_matching_loss(*[jnp.zeros((2, 3, 1))] * 3, jnp.ones((2, 4), bool)), "token_mask"),
    (lambda: caption_dropout(jax.random.key(0), jnp.ones((2, 3), bool), 1.5), "rate"),
  ],
)
def test_bad_inputs_name_the_argument(call, argument):
  with pytest.raises(ValueError, match=argument):
    call()
