"""`Dense`: the one linear layer, with logical axis names on its kernel and bias (maxtext-style).

Every projection in the library goes through this so that no parameter is ever born without axis names:
the kernel `[in, out]` is annotated `axes = (in_name, out_name)` and the bias `[out]` with `(out_name,)`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]


class Dense(nn.Module):
  """y = x @ kernel (+ bias) over the last axis of x.

  Attributes:
    features: output width `out`.
    axes: logical names `(in_name, out_name)` of the kernel, e.g. `('embed', 'mlp')`; required so that no
      projection is created without them (use None for an axis that is never sharded).
    use_bias: add a learned bias `[out]`.
    dtype: compute dtype (inputs and params are cast to it); None promotes input and param dtypes.
    param_dtype: dtype the params are stored in.
    kernel_init: initialiser of `kernel: [in, out]` (default LeCun normal, as `nn.Dense`).
    bias_init: initialiser of `bias: [out]`.
  """

  features: int
  axes: tuple[str | None, str | None]
  use_bias: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., in] -> [..., features]."""
    if len(self.axes) != 2:
      raise ValueError(f"Dense: `axes` must be (in_name, out_name), got {self.axes!r}")
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
      (x.shape[-1], self.features),
      self.param_dtype,
    )
    bias = None
    if self.use_bias:
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(self.bias_init, (self.axes[1],)),
        (self.features,),
        self.param_dtype,
      )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
      y = y + bias
    return y
