"""SelfAttention / TransformerBlock / AdaLN: logical axis names on every param, numerics against a manual
composition and against HF Qwen3's decoder layer (when torch is installed), jit + bf16, full-size shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.adaln import AdaLNModulation, modulate
from jaxagents.layers.attention import attention
from jaxagents.layers.attention_block import SelfAttention
from jaxagents.layers.block import TransformerBlock
from jaxagents.layers.rotary import apply_rope, rope_angles

KEY = jax.random.key(0)
_LIBRARY_AXES = {"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "norm"}


def _x(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _logical_axes(variables):
  """{'path/to/param': axis names}; fails on any param without logical partitioning metadata."""
  boxed = jax.tree_util.tree_flatten_with_path(
    variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  out = {}
  for path, leaf in boxed[0]:
    name = "/".join(p.key for p in path)
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{name} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, name
    out[name] = tuple(leaf.names)
  return out


def test_self_attention_params_all_have_logical_axes():
  module = SelfAttention(num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, qk_norm=True)
  axes = _logical_axes(jax.eval_shape(module.init, KEY, jnp.ones((1, 3, 16))))
  assert axes == {
    "q/kernel": ("embed", "heads"),
    "q/bias": ("heads",),
    "k/kernel": ("embed", "kv_heads"),
    "k/bias": ("kv_heads",),
    "v/kernel": ("embed", "kv_heads"),
    "v/bias": ("kv_heads",),
    "o/kernel": ("heads", "embed"),
    "q_norm/scale": ("norm",),
    "k_norm/scale": ("norm",),
  }


@pytest.mark.parametrize("norm,gated", [("rms", True), ("layer", False)])
def test_transformer_block_params_all_have_library_axis_names(norm, gated):
  module = TransformerBlock(
    num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=32, norm=norm, gated_mlp=gated, mlp_bias=not gated
  )
  variables = jax.eval_shape(module.init, KEY, jnp.ones((1, 3, 16)))
  axes = _logical_axes(variables)
  assert {name.split("/")[0] for name in axes} == {"attn_norm", "attn", "mlp_norm", "mlp"}
  assert all(set(names) <= _LIBRARY_AXES for names in axes.values())
  specs = nn.get_partition_spec(variables)["params"]
  mlp_in = "gate" if gated else "fc1"
  assert tuple(specs["mlp"][mlp_in]["kernel"]) == ("embed", "mlp")


def test_self_attention_equals_projections_rope_and_attention():
  module = SelfAttention(num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=False)
  x = _x((2, 5, 16))
  angles = rope_angles(np.arange(5)[None].repeat(2, 0), 8, 10000.0)
  variables = jax.jit(module.init)(KEY, x, angles)
  p = jax.tree.map(np.asarray, nn.unbox(variables)["params"])
  q = (x @ p["q"]["kernel"]).reshape(2, 5, 4, 8)
  k = (x @ p["k"]["kernel"]).reshape(2, 5, 2, 8)
  v = (x @ p["v"]["kernel"]).reshape(2, 5, 2, 8)
  seg = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
  reference = lambda q, k, v, s: attention(
    apply_rope(q, angles), apply_rope(k, angles), v, causal=True, q_segment_ids=s
  )
  out = jax.jit(reference)(q, k, v, seg)
  expected = np.asarray(out).reshape(2, 5, 32) @ p["o"]["kernel"]
  got = jax.jit(lambda v, x, a, s: module.apply(v, x, a, causal=True, q_segment_ids=s))(
    variables, x, angles, seg
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_qwen3_decoder_layer_parity_with_hf():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers import Qwen3Config
  from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

  config = Qwen3Config(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=48,
    num_hidden_layers=1,
    vocab_size=16,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6},
  )
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  hf = Qwen3DecoderLayer(config, layer_idx=0).eval()
  with torch.no_grad():
    for param in hf.parameters():
      param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.ndim == 1 else 0.0))
  t = lambda w: jnp.asarray(w.detach().numpy().T)
  attn, mlp = hf.self_attn, hf.mlp
  params = {
    "attn_norm": {"scale": jnp.asarray(hf.input_layernorm.weight.detach().numpy())},
    "mlp_norm": {"scale": jnp.asarray(hf.post_attention_layernorm.weight.detach().numpy())},
    "attn": {
      "q": {"kernel": t(attn.q_proj.weight)},
      "k": {"kernel": t(attn.k_proj.weight)},
      "v": {"kernel": t(attn.v_proj.weight)},
      "o": {"kernel": t(attn.o_proj.weight)},
      "q_norm": {"scale": jnp.asarray(attn.q_norm.weight.detach().numpy())},
      "k_norm": {"scale": jnp.asarray(attn.k_norm.weight.detach().numpy())},
    },
    "mlp": {
      "gate": {"kernel": t(mlp.gate_proj.weight)},
      "up": {"kernel": t(mlp.up_proj.weight)},
      "down": {"kernel": t(mlp.down_proj.weight)},
    },
  }
  x = _x((2, 6, 32))
  positions = np.array([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])
  causal = torch.full((6, 6), torch.finfo(torch.float32).min).triu(1)[None, None]
  with torch.no_grad():
    cos_sin = Qwen3RotaryEmbedding(config)(torch.zeros(1), torch.tensor(positions))
    expected = hf(torch.tensor(x), attention_mask=causal, position_embeddings=cos_sin)
  expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
  block = TransformerBlock(num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48, qk_norm=True, norm_eps=1e-6)
  out = jax.jit(lambda p, x, a: block.apply({"params": p}, x, a, causal=True))(
    params, x, rope_angles(positions, 8, 1e6)
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_transformer_block_bf16_under_jit_is_finite_and_keeps_dtype():
  module = TransformerBlock(
    num_heads=4, num_kv_heads=1, head_dim=16, mlp_dim=64, qk_norm=True, dtype=jnp.bfloat16, backend="auto"
  )
  x = jnp.asarray(_x((2, 8, 32)), jnp.bfloat16)
  angles = rope_angles(jnp.arange(8)[None], 16, 1e4)
  variables = jax.jit(module.init)(KEY, x, angles)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nn.unbox(variables)))
  seg = jnp.array([[0] * 5 + [1] * 3] * 2)
  apply = jax.jit(lambda v, x: module.apply(v, x, angles, causal=True, q_segment_ids=seg))
  out = apply(variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_full_size_block_shapes_via_eval_shape():
  # Qwen2.5-7B layer sizes, no weights allocated.
  module = TransformerBlock(num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18944, qkv_bias=True)
  x = jax.ShapeDtypeStruct((1, 4096, 3584), jnp.bfloat16)
  variables = jax.eval_shape(module.init, KEY, x)
  params = nn.unbox(variables)["params"]
  assert params["attn"]["q"]["kernel"].shape == (3584, 3584)
  assert params["attn"]["k"]["kernel"].shape == (3584, 512)
  assert params["mlp"]["down"]["kernel"].shape == (18944, 3584)
  assert jax.eval_shape(module.apply, variables, x).shape == (1, 4096, 3584)


def test_self_attention_rejects_bad_head_counts():
  with pytest.raises(ValueError, match="`num_heads`.*multiple of `num_kv_heads`"):
    SelfAttention(num_heads=3, num_kv_heads=2, head_dim=4).init(KEY, jnp.ones((1, 2, 8)))


def test_adaln_zero_init_gives_zero_chunks_and_identity_modulation():
  cond = _x((3, 16))
  module = AdaLNModulation(num_chunks=6)
  variables = jax.jit(module.init)(KEY, cond)
  chunks = module.apply(variables, cond)
  assert len(chunks) == 6 and all(c.shape == (3, 16) for c in chunks)
  assert all(bool(jnp.all(c == 0)) for c in chunks)
  x = _x((3, 5, 16), 1)
  np.testing.assert_array_equal(modulate(x, chunks[0], chunks[1]), x)
  assert _logical_axes(variables) == {"proj/kernel": ("embed", "mlp"), "proj/bias": ("mlp",)}


def test_adaln_chunks_are_a_split_of_dense_silu_cond():
  cond = _x((2, 4))
  module = AdaLNModulation(num_chunks=3, features=5, zero_init=False)
  variables = jax.jit(module.init)(KEY, cond)
  p = jax.tree.map(np.asarray, nn.unbox(variables)["params"]["proj"])
  full = (cond / (1 + np.exp(-cond))) @ p["kernel"] + p["bias"]
  for i, chunk in enumerate(module.apply(variables, cond)):
    np.testing.assert_allclose(chunk, full[:, 5 * i : 5 * (i + 1)], rtol=1e-5, atol=1e-6)


def test_modulate_formula():
  x, shift, scale = _x((2, 3, 4)), _x((2, 4), 1), _x((2, 4), 2)
  np.testing.assert_allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None], rtol=1e-6)
  with pytest.raises(ValueError, match="`shift` and `scale`"):
    modulate(x, shift[:, None], scale)
