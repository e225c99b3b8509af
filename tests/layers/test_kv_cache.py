"""KV cache: a prompt prefilled into the cache and then decoded token by token gives the same outputs as one
uncached causal pass over the whole sequence, for left-padded batches; bad arguments are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.block import TransformerBlock
from jaxagents.layers.kv_cache import KVCache, update_cache
from jaxagents.layers.rotary import rope_angles


def test_prefill_then_decode_equals_one_uncached_pass():
  block = TransformerBlock(num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=32, qkv_bias=True, qk_norm=True)
  rng = np.random.default_rng(0)
  batch, prompt, new, width = 2, 5, 3, 16
  x = rng.standard_normal((batch, prompt + new, width)).astype(np.float32)
  valid = np.ones((batch, prompt + new), bool)
  valid[1, :2] = False  # row 1 is left-padded by two tokens
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  angles = rope_angles(positions, 8, 10_000.0)
  params = block.init(jax.random.key(0), x, angles, causal=True, kv_mask=valid)
  full = block.apply(params, x, angles, causal=True, kv_mask=valid)

  cache = KVCache.zeros(batch, prompt + new, 2, 8, jnp.float32)
  out, cache = block.apply(params, x[:, :prompt], angles[:, :prompt], cache=cache, cache_index=0, causal=True,
                           kv_mask=valid)
  steps = [out]
  for s in range(new):
    t = prompt + s
    out, cache = block.apply(params, x[:, t:t + 1], angles[:, t:t + 1], cache=cache, cache_index=t, causal=True,
                             kv_mask=valid)
    steps.append(out)
  cached = np.concatenate(steps, axis=1)
  np.testing.assert_allclose(cached[valid], np.asarray(full)[valid], rtol=1e-5, atol=1e-5)


def test_update_cache_writes_at_a_traced_index_and_checks_shapes():
  cache = KVCache.zeros(1, 6, 2, 4, jnp.float32)
  k = jnp.ones((1, 2, 2, 4))
  written = jax.jit(update_cache)(cache, k, 2 * k, jnp.int32(3))
  assert np.asarray(written.k)[0, 3:5].min() == 1 and np.asarray(written.k)[0, :3].max() == 0
  assert np.asarray(written.v)[0, 3:5].min() == 2 and np.asarray(written.v)[0, 5].max() == 0
  with pytest.raises(ValueError, match="update_cache"):
    update_cache(cache, jnp.ones((1, 2, 3, 4)), jnp.ones((1, 2, 3, 4)), 0)
  stacked = KVCache.zeros(1, 6, 2, 4, num_layers=3)
  assert stacked.k.shape == (3, 1, 6, 2, 4) and stacked.max_length == 6
