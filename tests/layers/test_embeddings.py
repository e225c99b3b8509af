"""Embed (lookup and tied logits) and the sinusoidal timestep embedding (DiT convention, vs a hand
formula; vs diffusers when installed)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.embeddings import Embed, sinusoidal_timestep_embedding

KEY = jax.random.key(0)


def test_embed_lookup_and_tied_logits():
  module = Embed(num_embeddings=11, features=6)
  ids = np.array([[0, 3, 10], [5, 5, 1]])
  variables = module.init(KEY, ids)
  table = np.asarray(nn.unbox(variables)["params"]["embedding"])
  assert table.shape == (11, 6)
  assert tuple(nn.get_partition_spec(variables)["params"]["embedding"]) == ("vocab", "embed")
  np.testing.assert_array_equal(module.apply(variables, ids), table[ids])
  x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
  np.testing.assert_allclose(module.apply(variables, x, method="attend"), x @ table.T, rtol=1e-5, atol=1e-6)


def test_embed_dtype_and_integer_ids():
  module = Embed(num_embeddings=4, features=2, dtype=jnp.bfloat16)
  variables = module.init(KEY, np.array([1]))
  assert module.apply(variables, np.array([1, 2])).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="`ids` must be an integer array"):
    module.apply(variables, np.array([1.0]))


def test_sinusoidal_embedding_dit_convention_is_cos_then_sin():
  t = np.array([0.0, 1.0, 37.5, 999.0], np.float32)
  dim, half = 8, 4
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
  args = t[:, None] * freqs
  emb = sinusoidal_timestep_embedding(t, dim)
  assert emb.shape == (4, 8) and emb.dtype == jnp.float32
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], -1), rtol=1e-5, atol=1e-5)
  flipped = sinusoidal_timestep_embedding(t, dim, flip_sin_to_cos=False)
  np.testing.assert_allclose(flipped, np.concatenate([np.sin(args), np.cos(args)], -1), rtol=1e-5, atol=1e-5)


def test_sinusoidal_embedding_odd_dim_pads_one_zero_and_freq_shift():
  t = np.array([3.0, 7.0])
  emb = sinusoidal_timestep_embedding(t, 7)
  assert emb.shape == (2, 7)
  np.testing.assert_array_equal(emb[:, -1], 0.0)
  shifted = sinusoidal_timestep_embedding(t, 8, downscale_freq_shift=1.0, max_period=100.0)
  args = t[:, None] * np.exp(-math.log(100.0) * np.arange(4) / 3)
  np.testing.assert_allclose(shifted[:, 4:], np.sin(args), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="`t` must have shape"):
    sinusoidal_timestep_embedding(np.zeros((2, 1)), 8)


def test_sinusoidal_embedding_matches_diffusers():
  torch = pytest.importorskip("torch")
  embeddings = pytest.importorskip("diffusers.models.embeddings")
  t = np.array([0.0, 5.0, 500.0], np.float32)
  for flip, shift in ((True, 0.0), (False, 1.0)):
    expected = embeddings.get_timestep_embedding(
      torch.tensor(t), 16, flip_sin_to_cos=flip, downscale_freq_shift=shift
    ).numpy()
    ours = sinusoidal_timestep_embedding(t, 16, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
