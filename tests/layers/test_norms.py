"""RMSNorm against HF Llama/Qwen2 RMSNorm semantics (cast to the input dtype, then multiply by the weight) and
LayerNorm against numpy / torch."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxagents.layers.norms import LayerNorm, RMSNorm

KEY = jax.random.key(0)


def _x(shape, seed=0, scale=3.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _with_scale(variables, name, value):
  params = nn.unbox(variables)["params"]
  return {"params": {**params, name: jnp.asarray(value)}}


def test_rmsnorm_matches_numpy_formula_in_fp32():
  x = _x((2, 5, 16))
  weight = _x((16,), 1, 1.0)
  module = RMSNorm(eps=1e-6)
  variables = _with_scale(module.init(KEY, x), "scale", weight)
  expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * weight
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5)


def test_rmsnorm_bf16_casts_to_input_dtype_before_the_weight_multiply():
  x = _x((4, 64)).astype(ml_dtypes.bfloat16)
  weight = (1 + _x((64,), 1, 0.7)).astype(ml_dtypes.bfloat16).astype(np.float32)  # bf16-representable
  module = RMSNorm(dtype=jnp.bfloat16)
  variables = _with_scale(module.init(KEY, x), "scale", weight)
  out = np.asarray(module.apply(variables, jnp.asarray(x)))
  assert out.dtype == ml_dtypes.bfloat16
  x32 = x.astype(np.float32)
  normed = x32 / np.sqrt(np.mean(x32**2, -1, keepdims=True) + 1e-6)
  cast_then_multiply = (normed.astype(ml_dtypes.bfloat16) * weight.astype(ml_dtypes.bfloat16)).astype(
    np.float32
  )
  multiply_then_cast = (normed * weight).astype(ml_dtypes.bfloat16).astype(np.float32)
  assert np.mean(out.astype(np.float32) == cast_then_multiply) > 0.98
  assert np.mean(cast_then_multiply != multiply_then_cast) > 0.05  # the order is observable on this data


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("hf_class", ["LlamaRMSNorm", "Qwen2RMSNorm"])
def test_rmsnorm_matches_hf_torch(hf_class, dtype):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  module_path = {"LlamaRMSNorm": "llama.modeling_llama", "Qwen2RMSNorm": "qwen2.modeling_qwen2"}[hf_class]
  hf_cls = getattr(importlib.import_module(f"transformers.models.{module_path}"), hf_class)
  torch_dtype = getattr(torch, dtype)
  x = _x((3, 7, 32))
  hf = hf_cls(32, eps=1e-6).to(torch_dtype)
  with torch.no_grad():
    hf.weight.copy_(torch.tensor(1 + _x((32,), 1, 0.5)))
    expected = hf(torch.tensor(x).to(torch_dtype)).float().numpy()
  weight = hf.weight.detach().float().numpy()
  module = RMSNorm(eps=1e-6, dtype=jnp.dtype(dtype))
  xj = jnp.asarray(x, dtype)
  out = module.apply(_with_scale(module.init(KEY, xj), "scale", weight), xj)
  assert out.dtype == jnp.dtype(dtype)
  if dtype == "float32":
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  else:  # at most one bf16 ulp apart (rsqrt may differ in the last fp32 bit)
    np.testing.assert_allclose(out.astype(np.float32), expected, rtol=2**-7)
    assert np.mean(np.asarray(out.astype(np.float32)) == expected) > 0.98


def test_rmsnorm_without_scale_has_no_params():
  x = _x((2, 8))
  variables = RMSNorm(use_scale=False).init(KEY, x)
  assert not variables.get("params")


def test_layernorm_matches_numpy():
  x = _x((2, 3, 16)) + 5.0
  scale, bias = _x((16,), 1, 1.0), _x((16,), 2, 1.0)
  module = LayerNorm(eps=1e-5)
  variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  expected = (x - mean) / np.sqrt(var + 1e-5) * scale + bias
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_layernorm_matches_torch_functional():
  torch = pytest.importorskip("torch")
  x = _x((4, 24)) - 2.0
  scale, bias = _x((24,), 1, 1.0), _x((24,), 2, 1.0)
  expected = torch.nn.functional.layer_norm(
    torch.tensor(x), (24,), torch.tensor(scale), torch.tensor(bias), eps=1e-6
  ).numpy()
  out = LayerNorm().apply({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_layernorm_param_names_and_axes():
  variables = LayerNorm(dtype=jnp.bfloat16).init(KEY, jnp.ones((2, 8), jnp.bfloat16))
  specs = nn.get_partition_spec(variables)["params"]
  assert set(specs) == {"scale", "bias"}
  assert all(tuple(spec) == ("norm",) for spec in specs.values())
  assert LayerNorm(dtype=jnp.bfloat16).apply(variables, jnp.ones((2, 8), jnp.bfloat16)).dtype == jnp.bfloat16
