"""The two layers GPT-OSS adds: attention with sinks and sliding windows (`layers.attention_sinks`) against a numpy
restatement of the reference `sdpa` (openai/gpt-oss `gpt_oss/torch/model.py`), and YaRN frequencies
(`layers.yarn`) against transformers' `ROPE_INIT_FUNCTIONS['yarn']`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention import attention
from jaxagents.layers.attention_sinks import attention_with_sinks, sliding_window_mask
from jaxagents.layers.yarn import yarn_inv_freq

_sinks = jax.jit(attention_with_sinks, static_argnames=("causal", "sliding_window", "scale", "softmax_dtype"))


def _reference(q, k, v, sinks, window, kv_mask):
  """float64 numpy: scores with -inf masks, the sink as one more column, softmax, the column dropped."""
  batch, length, heads, dim = q.shape
  groups = heads // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(dim)
  s, t = np.arange(length)[:, None], np.arange(length)[None, :]
  visible = (t <= s) & ((s - t < window) if window else True)
  visible = visible[None, None] & kv_mask[:, None, None, :]
  scores = np.where(visible, scores, -np.inf)
  logits = np.concatenate([scores, np.broadcast_to(sinks[None, :, None, None], (batch, heads, length, 1))], -1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (probs / probs.sum(-1, keepdims=True))[..., :-1]
  return np.einsum("bhst,bthd->bshd", probs, v)


@pytest.mark.parametrize("heads, kv_heads, window", [(4, 2, 3), (3, 1, 0), (2, 2, 1)])
def test_sinks_and_windows_match_the_reference_softmax(heads, kv_heads, window):
  rng = np.random.default_rng(heads + window)
  q = rng.standard_normal((2, 9, heads, 8))
  k, v = rng.standard_normal((2, 2, 9, kv_heads, 8))
  sinks = rng.standard_normal(heads) * 2
  kv_mask = np.ones((2, 9), bool)
  kv_mask[1, 6:] = False
  ours = _sinks(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, sinks)), sliding_window=window or None,
                kv_mask=jnp.asarray(kv_mask))
  np.testing.assert_allclose(ours, _reference(q, k, v, sinks, window, kv_mask), rtol=2e-5, atol=2e-6)


def test_a_traced_window_of_zero_means_full_attention():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 6, 2, 4)), jnp.float32) for _ in range(3))
  sinks = jnp.zeros(2)
  run = jax.jit(lambda w: attention_with_sinks(q, k, v, sinks, sliding_window=w))
  full, windowed = _sinks(q, k, v, sinks), _sinks(q, k, v, sinks, sliding_window=2)
  np.testing.assert_allclose(run(jnp.int32(0)), full, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(run(jnp.int32(2)), windowed, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(full - windowed)).max() > 1e-3


def test_a_window_of_w_shows_each_query_itself_and_the_w_minus_1_keys_before_it():
  visible = np.asarray(sliding_window_mask(jnp.arange(6), jnp.arange(6), 3))[0, 0]
  causal = np.tril(np.ones((6, 6), bool))
  assert ((visible & causal).sum(1) == [1, 2, 3, 3, 3, 3]).all()
  assert (visible & causal)[5].tolist() == [False, False, False, True, True, True]


def test_very_negative_sinks_give_plain_attention_and_rows_without_keys_give_zeros():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 5, 4, 8)), jnp.float32) for _ in range(3))
  kv_mask = jnp.array([[True] * 5, [False, False, True, True, True]])
  plain = jax.jit(lambda q, k, v, m: attention(q, k, v, causal=True, kv_mask=m))(q, k, v, kv_mask)
  sunk = _sinks(q, k, v, jnp.full(4, -1e30), kv_mask=kv_mask)
  np.testing.assert_allclose(sunk, plain, rtol=1e-5, atol=1e-6)
  assert not np.asarray(sunk[1, :2]).any()  # queries 0 and 1 of row 1 see only padding
  assert np.isfinite(np.asarray(sunk)).all()


def test_sinks_take_weight_from_the_keys():
  """With one key and sink logit s, the output is v * e^l / (e^l + e^s)."""
  q = jnp.ones((1, 1, 1, 4))
  k, v = jnp.zeros((1, 1, 1, 4)), jnp.full((1, 1, 1, 4), 3.0)
  out = _sinks(q, k, v, jnp.array([np.log(2.0)], jnp.float32))  # score 0: weight 1 / (1 + 2)
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


@pytest.mark.parametrize("name, value", [("sinks", jnp.zeros(3)), ("kv_mask", jnp.ones((1, 4), jnp.int32))])
def test_bad_arguments_are_named(name, value):
  q = k = v = jnp.zeros((1, 4, 2, 8))
  kwargs = {"sinks": jnp.zeros(2), name: value}
  with pytest.raises(ValueError, match=f"`{name}`"):
    attention_with_sinks(q, k, v, **kwargs)


@pytest.mark.parametrize(
  "params",
  [
    dict(factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False, original_max_position_embeddings=4096),  # GPT-OSS
    dict(factor=4.0, beta_fast=8.0, beta_slow=1.0, original_max_position_embeddings=32),  # truncate by default
    dict(factor=3.0, beta_fast=16.0, beta_slow=2.0, attention_factor=1.25, original_max_position_embeddings=64),
    dict(factor=40.0, mscale=1.0, mscale_all_dim=0.707, original_max_position_embeddings=4096),  # DeepSeek style
  ],
)
def test_yarn_frequencies_match_transformers(params):
  transformers = pytest.importorskip("transformers")
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  theta, head_dim = 150000.0, 64
  config = transformers.GptOssConfig(head_dim=head_dim, max_position_embeddings=131072,
                                     rope_parameters={"rope_type": "yarn", "rope_theta": theta, **params})
  reference, reference_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
  ours, factor = yarn_inv_freq(head_dim, theta, params["factor"], params["original_max_position_embeddings"],
                               beta_fast=params.get("beta_fast", 32.0), beta_slow=params.get("beta_slow", 1.0),
                               truncate=params.get("truncate", True), attention_factor=params.get("attention_factor"),
                               mscale=params.get("mscale"), mscale_all_dim=params.get("mscale_all_dim"))
  assert factor == pytest.approx(reference_factor, rel=1e-12)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, reference.numpy(), rtol=3e-7, atol=0)  # about one float32 ulp
