"""Feed-forward blocks: `GatedMLP` (GLU variants, Shazeer 2020, arXiv 2002.05202 -- SwiGLU in Llama/Qwen) and
the plain two-layer `MLP` (Vaswani et al. 2017; ViT/CLIP/DiT), plus the activation lookup shared by both.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.linear import Dense

Dtype = Any


def _quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


# Names follow HF `ACT2FN` so a checkpoint's `hidden_act` can be looked up directly.
# PyTorch's GELU default is exact (erf); jax.nn.gelu defaults to the tanh approximation, so spell it out.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "quick_gelu": _quick_gelu,
  "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Elementwise activation by name: 'silu', 'gelu' (exact erf), 'gelu_tanh', 'quick_gelu', 'relu', ..."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation: `name` must be one of {sorted(ACTIVATIONS)}, got {name!r}")
  return ACTIVATIONS[name]


class GatedMLP(nn.Module):
  """down(act(gate(x)) * up(x)).

  Attributes:
    hidden_dim: width of the gated hidden layer (axis 'mlp').
    activation: name from `ACTIVATIONS` applied to the gate branch.
    use_bias: biases on all three projections.
    out_features: output width; None keeps the input width E.
    dtype / param_dtype: compute and storage dtypes.
  Submodules 'gate', 'up' (kernels [E, hidden], axes ('embed', 'mlp')) and 'down' ([hidden, E],
  ('mlp', 'embed')).
  """

  hidden_dim: int
  activation: str = "silu"
  use_bias: bool = False
  out_features: int | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., out_features or E]."""
    act = activation(self.activation)
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = Dense(self.hidden_dim, axes=("embed", "mlp"), name="gate", **kw)(x)
    up = Dense(self.hidden_dim, axes=("embed", "mlp"), name="up", **kw)(x)
    return Dense(self.out_features or x.shape[-1], axes=("mlp", "embed"), name="down", **kw)(act(gate) * up)


class MLP(nn.Module):
  """fc2(act(fc1(x))).

  Attributes:
    hidden_dim: hidden width (axis 'mlp').
    activation: name from `ACTIVATIONS`; default exact GELU as in ViT/CLIP-style torch models.
    use_bias: biases on both projections.
    out_features: output width; None keeps the input width E.
    dtype / param_dtype: compute and storage dtypes.
  Submodules 'fc1' (kernel [E, hidden], axes ('embed', 'mlp')) and 'fc2' ([hidden, E], ('mlp', 'embed')).
  """

  hidden_dim: int
  activation: str = "gelu"
  use_bias: bool = True
  out_features: int | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., out_features or E]."""
    act = activation(self.activation)
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    h = act(Dense(self.hidden_dim, axes=("embed", "mlp"), name="fc1", **kw)(x))
    return Dense(self.out_features or x.shape[-1], axes=("mlp", "embed"), name="fc2", **kw)(h)
