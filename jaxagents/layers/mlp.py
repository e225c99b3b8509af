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


class _MLPBase(nn.Module):
  """Attributes shared by both MLPs.

  Attributes:
    hidden_dim: width of the hidden layer (axis 'mlp').
    activation: name from `ACTIVATIONS`.
    use_bias: biases on every projection.
    out_features: output width; None keeps the input width E.
    dtype / param_dtype: compute and storage dtypes.
  Input kernels are [E, hidden] with axes ('embed', 'mlp'); the output kernel is [hidden, E], ('mlp', 'embed').
  """

  hidden_dim: int
  activation: str = "silu"
  use_bias: bool = False
  out_features: int | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def _in(self, x: jax.Array, name: str) -> jax.Array:
    return self._dense(self.hidden_dim, ("embed", "mlp"), name)(x)

  def _out(self, h: jax.Array, width: int, name: str) -> jax.Array:
    return self._dense(self.out_features or width, ("mlp", "embed"), name)(h)

  def _dense(self, features: int, axes: tuple[str, str], name: str) -> Dense:
    return Dense(features, axes=axes, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=name)


class GatedMLP(_MLPBase):
  """down(act(gate(x)) * up(x)) (SwiGLU with the default 'silu'; Shazeer 2020, arXiv 2002.05202).

  Submodules 'gate', 'up' and 'down'; attributes as `_MLPBase` (default: silu, no biases).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., out_features or E]."""
    gated = activation(self.activation)(self._in(x, "gate")) * self._in(x, "up")
    return self._out(gated, x.shape[-1], "down")


class MLP(_MLPBase):
  """fc2(act(fc1(x))).

  Submodules 'fc1' and 'fc2'; attributes as `_MLPBase`, but the defaults are exact GELU with biases, as in
  ViT/CLIP-style torch models.
  """

  activation: str = "gelu"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., E] -> [..., out_features or E]."""
    return self._out(activation(self.activation)(self._in(x, "fc1")), x.shape[-1], "fc2")
