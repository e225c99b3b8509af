"""Joint attention of several token streams with separate weights: the attention of MM-DiT (Esser et al. 2024,
arXiv 2403.03206, Sec. 4 and Fig. 2b) used by the dual-stream blocks of SD3, FLUX and Lens.

Each stream (e.g. text and image tokens) has its own q/k/v projections, its own per-head QK RMSNorm (Dehghani et
al. 2023, arXiv 2302.05442, Sec. 2) and its own output projection; the streams are concatenated on the sequence
axis in the order given, attend to each other in one non-causal softmax, and each stream's slice of the result goes
through its own output projection. The concatenation order only changes which slice is which -- it matters for
bit-level parity and for the layout of fused kernels: FLUX (diffusers `transformer_flux2.py`,
`Flux2AttnProcessor`) puts text first, Lens (diffusers `transformer_lens.py`, `LensDoubleStreamAttnProcessor`)
puts the image first.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents.layers.attention import attention
from jaxagents.layers.linear import Dense
from jaxagents.layers.norms import RMSNorm
from jaxagents.layers.rotary import apply_rope

Dtype = Any
_HEADS = ("activation_batch", "activation_length", "activation_heads", "head_dim")


class JointAttention(nn.Module):
  """Joint attention over streams x_i: [B, S_i, E_i] with H heads of width D.

  Attributes:
    streams: stream names in concatenation order, e.g. ('txt', 'img'); they name the submodules.
    num_heads: H.
    head_dim: D.
    qkv_bias: biases on the q/k/v projections.
    out_bias: bias on the output projections.
    qk_norm: RMSNorm over D on q and k of every stream, before RoPE.
    norm_eps: eps of the QK norms.
    rope_style / rope_compute_dtype: passed to `apply_rope` (FLUX and Lens rotate interleaved pairs in float32).
    backend: `attention` backend.
    dtype / param_dtype: compute and storage dtypes.
  Submodules per stream s: '{s}_q', '{s}_k', '{s}_v' (kernel [E_s, H*D], axes ('embed', 'heads')), '{s}_q_norm',
  '{s}_k_norm' (scale [D]), '{s}_o' ([H*D, E_s], ('heads', 'embed')).
  """

  streams: tuple[str, ...]
  num_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = True
  norm_eps: float = 1e-6
  rope_style: str = "interleaved"
  rope_compute_dtype: Dtype | None = jnp.float32
  backend: str = "xla"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    xs: Sequence[jax.Array],
    angles: Sequence[jax.Array | None] | None = None,
    kv_masks: Sequence[jax.Array | None] | None = None,
  ) -> tuple[jax.Array, ...]:
    """Attends jointly.

    Args:
      xs: one [B, S_i, E_i] array per stream, in `streams` order.
      angles: per stream [..., S_i, D/2] rotary angles (leading dims broadcastable to [B]) or None (no RoPE).
      kv_masks: per stream [B, S_i] bool (False = padding key, e.g. text padding) or None (all valid).
    Returns:
      One [B, S_i, E_i] array per stream.
    """
    count = len(self.streams)
    angles = [None] * count if angles is None else list(angles)
    kv_masks = [None] * count if kv_masks is None else list(kv_masks)
    for name, value in (("xs", xs), ("angles", angles), ("kv_masks", kv_masks)):
      if len(value) != count:
        raise ValueError(f"JointAttention: `{name}` must have one entry per stream {self.streams}, got {len(value)}")
    batch = xs[0].shape[0]
    for stream, x, mask in zip(self.streams, xs, kv_masks, strict=True):
      if x.ndim != 3 or x.shape[0] != batch:
        raise ValueError(f"JointAttention: `xs` entry {stream!r} must have shape [B={batch}, S, E], got {x.shape}")
      if mask is not None and (mask.shape != x.shape[:2] or mask.dtype != jnp.bool_):
        raise ValueError(
          f"JointAttention: `kv_masks` entry {stream!r} must be bool of shape {x.shape[:2]}, "
          f"got {mask.dtype}{mask.shape}"
        )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.num_heads * self.head_dim
    qs, ks, vs = [], [], []
    for stream, x, stream_angles in zip(self.streams, xs, angles, strict=True):
      shape = (*x.shape[:2], self.num_heads, self.head_dim)
      q, k, v = (
        nn.with_logical_constraint(
          Dense(width, axes=("embed", "heads"), use_bias=self.qkv_bias, name=f"{stream}_{p}", **kw)(x).reshape(shape),
          _HEADS,
        )
        for p in "qkv"
      )
      if self.qk_norm:
        q = RMSNorm(eps=self.norm_eps, name=f"{stream}_q_norm", **kw)(q)
        k = RMSNorm(eps=self.norm_eps, name=f"{stream}_k_norm", **kw)(k)
      if stream_angles is not None:
        q = apply_rope(q, stream_angles, style=self.rope_style, compute_dtype=self.rope_compute_dtype)
        k = apply_rope(k, stream_angles, style=self.rope_style, compute_dtype=self.rope_compute_dtype)
      qs.append(q.astype(v.dtype))
      ks.append(k.astype(v.dtype))
      vs.append(v)
    kv_mask = None
    if any(m is not None for m in kv_masks):
      kv_mask = jnp.concatenate(
        [jnp.ones(x.shape[:2], bool) if m is None else m for x, m in zip(xs, kv_masks, strict=True)], axis=1
      )
    out = attention(
      jnp.concatenate(qs, axis=1), jnp.concatenate(ks, axis=1), jnp.concatenate(vs, axis=1),
      kv_mask=kv_mask, backend=self.backend,
    )
    out = nn.with_logical_constraint(out, _HEADS)
    outs, start = [], 0
    for stream, x in zip(self.streams, xs, strict=True):
      part = out[:, start:start + x.shape[1]].reshape(*x.shape[:2], width)
      start += x.shape[1]
      outs.append(Dense(x.shape[-1], axes=("heads", "embed"), use_bias=self.out_bias, name=f"{stream}_o", **kw)(part))
    return tuple(outs)
