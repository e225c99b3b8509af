"""Activations (vs torch.nn.functional / the erf formula), Dense, GatedMLP and MLP (vs numpy on their
params)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.linear import Dense
from jaxagents.layers.mlp import ACTIVATIONS, MLP, GatedMLP, activation

KEY = jax.random.key(0)
_X = np.linspace(-6, 6, 97, dtype=np.float32)


def test_gelu_is_exact_erf_and_gelu_tanh_is_the_tanh_approximation():
  exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in _X.astype(np.float64)])
  np.testing.assert_allclose(activation("gelu")(_X), exact, rtol=1e-6, atol=1e-6)
  c = math.sqrt(2 / math.pi)
  tanh = 0.5 * _X * (1 + np.tanh(c * (_X + 0.044715 * _X**3)))
  np.testing.assert_allclose(activation("gelu_tanh")(_X), tanh, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(activation("gelu")(_X) - activation("gelu_tanh")(_X))) > 1e-4


def test_quick_gelu_silu_relu_formulas():
  np.testing.assert_allclose(
    activation("quick_gelu")(_X), _X / (1 + np.exp(-1.702 * _X)), rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(activation("silu")(_X), _X / (1 + np.exp(-_X)), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(activation("relu")(_X), np.maximum(_X, 0))


def test_activations_match_torch_functional():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  xt = torch.tensor(_X)
  expected = {
    "gelu": F.gelu(xt),
    "gelu_tanh": F.gelu(xt, approximate="tanh"),
    "silu": F.silu(xt),
    "relu": F.relu(xt),
    "quick_gelu": xt * torch.sigmoid(1.702 * xt),
  }
  for name, value in expected.items():
    np.testing.assert_allclose(activation(name)(_X), value.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match=r"`name` must be one of \[.*'gelu'.*'silu'.*got 'swiglu'"):
    activation("swiglu")
  assert {"silu", "gelu", "gelu_tanh", "quick_gelu", "relu"} <= set(ACTIVATIONS)


def test_dense_kernel_is_in_by_out_with_logical_axes():
  x = np.ones((2, 3, 5), np.float32)
  module = Dense(7, axes=("embed", "mlp"), use_bias=True)
  variables = module.init(KEY, x)
  params = nn.unbox(variables)["params"]
  assert params["kernel"].shape == (5, 7) and params["bias"].shape == (7,)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["kernel"]) == ("embed", "mlp") and tuple(specs["bias"]) == ("mlp",)
  expected = x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-6)


def test_dense_computes_in_dtype_and_stores_in_param_dtype():
  module = Dense(4, axes=("embed", "mlp"), dtype=jnp.bfloat16)
  variables = module.init(KEY, jnp.ones((2, 3)))
  assert nn.unbox(variables)["params"]["kernel"].dtype == jnp.float32
  assert module.apply(variables, jnp.ones((2, 3))).dtype == jnp.bfloat16


def test_gated_mlp_is_down_of_act_gate_times_up():
  x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
  module = GatedMLP(16)
  variables = module.init(KEY, x)
  p = jax.tree.map(np.asarray, nn.unbox(variables)["params"])
  assert set(p) == {"gate", "up", "down"}
  gate, up = x @ p["gate"]["kernel"], x @ p["up"]["kernel"]
  expected = (gate / (1 + np.exp(-gate)) * up) @ p["down"]["kernel"]
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["gate"]["kernel"]) == tuple(specs["up"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["down"]["kernel"]) == ("mlp", "embed")


def test_mlp_is_fc2_of_act_fc1_with_biases():
  x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
  module = MLP(16, activation="quick_gelu", out_features=5)
  variables = module.init(KEY, x)
  p = jax.tree.map(np.asarray, nn.unbox(variables)["params"])
  assert set(p) == {"fc1", "fc2"} and set(p["fc1"]) == {"kernel", "bias"}
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  expected = (h / (1 + np.exp(-1.702 * h))) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  out = module.apply(variables, x)
  assert out.shape == (4, 5)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
