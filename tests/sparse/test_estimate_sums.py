"""The Last-Q estimate's line sums, read straight from the logits in one reduction (`line_sums`, `residue_sums`),
against float64 numpy sums of the softmax probabilities written out in the test."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.sparse.estimate import Estimate, line_sums, residue_sums


def _probabilities(logits, visible, scale):
  scaled = np.where(visible, logits.astype(np.float64) * scale, -np.inf)
  unnormalized = np.exp(scaled - scaled.max(-1, keepdims=True))
  return unnormalized / unnormalized.sum(-1, keepdims=True)


def _case(rows=5, keys=37, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 3, rows, keys)).astype(np.float32) * 3
  visible = np.arange(keys) <= np.arange(keys - rows, keys)[:, None]  # causal rows at the end
  return logits, np.broadcast_to(visible, logits.shape), rng


@pytest.mark.parametrize("rows, keys", [(5, 37), (1, 9), (8, 8)])
def test_line_sums_equal_column_and_shifted_diagonal_sums_of_the_probabilities(rows, keys):
  logits, visible, rng = _case(rows, keys)
  row_weight = rng.integers(0, 2, size=(2, 1, rows)).astype(np.float32)
  groups = rng.integers(0, 2, size=(3, 2, 1, keys)).astype(bool)
  probs = _probabilities(logits, visible, 0.7) * row_weight[..., None]
  estimate = Estimate(jnp.asarray(logits), jnp.asarray(visible), 0.7)

  column, diagonal = line_sums(estimate, jnp.asarray(row_weight))
  np.testing.assert_allclose(column, probs.sum(-2), rtol=1e-5, atol=1e-7)
  # out[u + R - 1] = sum_r p[r, u + r] for u in (-R, T)
  expected = np.zeros(probs.shape[:-2] + (keys + rows - 1,))
  for r in range(rows):
    expected[..., rows - 1 - r : rows - 1 - r + keys] += probs[..., r, :]
  np.testing.assert_allclose(diagonal, expected, rtol=1e-5, atol=1e-7)

  _, per_group = line_sums(estimate, jnp.asarray(row_weight), jnp.asarray(groups))
  assert per_group.shape == (3, 2, 3, keys + rows - 1)
  for g in range(3):
    masked = np.where(groups[g][..., None, :], probs, 0.0)
    expected = np.zeros_like(expected)
    for r in range(rows):
      expected[..., rows - 1 - r : rows - 1 - r + keys] += masked[..., r, :]
    np.testing.assert_allclose(per_group[g], expected, rtol=1e-5, atol=1e-7)


def test_line_sums_of_an_all_zero_row_weight_are_zero_not_nan():
  logits, visible, _ = _case()
  column, diagonal = line_sums(Estimate(jnp.asarray(logits), jnp.asarray(visible), 1.0), jnp.zeros((2, 1, 5)))
  assert not np.any(column) and not np.any(diagonal)


@pytest.mark.parametrize("modulus", [4, 8, 37, 40])
def test_residue_sums_equal_sums_over_keys_of_one_residue(modulus):
  logits, visible, _ = _case()
  probs = _probabilities(logits, visible, 0.5)
  expected = np.stack([probs[..., c::modulus].sum(-1) for c in range(modulus)], -1)
  got = residue_sums(Estimate(jnp.asarray(logits), jnp.asarray(visible), 0.5), modulus)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
