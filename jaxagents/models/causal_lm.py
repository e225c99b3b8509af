"""A decoder-only language model composed from the shared layers (the quick start's model).

Token embedding, `num_layers` pre-norm `TransformerBlock`s (GQA self-attention with rotary embeddings,
SwiGLU MLP) scanned with `nn.scan` so compile time does not grow with depth, a final RMSNorm and a tied or
untied output projection: the Llama/Qwen2 text-decoder recipe at any size.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents import layers

REMAT_POLICIES = layers.REMAT_POLICIES  # re-exported: configs and tests name the policies from here


@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
  vocab_size: int
  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  mlp_dim: int = 128
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  remat: str = "none"  # one of REMAT_POLICIES
  attention_backend: str = "xla"


class _ScannedBlock(nn.Module):
  """A `TransformerBlock` with the (carry, x) -> (carry, y) signature `nn.scan` expects."""

  config: CausalLMConfig
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, angles, kv_mask):
    c = self.config
    x = layers.TransformerBlock(
      num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim,
      norm_eps=c.norm_eps, backend=c.attention_backend, dtype=self.dtype, name="block",
    )(x, angles, causal=True, kv_mask=kv_mask)
    return x, None


class CausalLM(nn.Module):
  """`__call__(tokens[B, S] int, mask[B, S] bool | None) -> logits[B, S, vocab] float32`."""

  config: CausalLMConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    c = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens: expected shape [batch, length], got {tokens.shape}.")
    embed = layers.Embed(c.vocab_size, c.embed_dim, dtype=self.dtype, name="embed")
    x = nn.with_logical_constraint(embed(tokens), ("activation_batch", "activation_length", "activation_embed"))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    angles = layers.rope_angles(positions, c.head_dim, c.rope_theta)

    block = layers.remat(_ScannedBlock, c.remat)
    x, _ = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=c.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, name="layers")(x, angles, mask)

    x = layers.RMSNorm(eps=c.norm_eps, dtype=self.dtype, name="final_norm")(x)
    if c.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = layers.Dense(c.vocab_size, axes=("embed", "vocab"), dtype=self.dtype, name="lm_head")(x)
    return logits.astype(jnp.float32)
