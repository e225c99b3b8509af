"""The Qwen-VL decoder LLM: the Qwen2 decoder (Qwen2/2.5-VL: q/k/v biases, chunked M-RoPE) and the Qwen3
decoder (Qwen3-VL: per-head QK RMSNorm before RoPE, interleaved M-RoPE), from the shared `TransformerBlock`.
Reference: transformers `models/qwen2_vl/modeling_qwen2_vl.py` and `models/qwen3_vl/modeling_qwen3_vl.py`;
DeepStack injection as `Qwen3VLTextModel._deepstack_process` (Qwen3-VL, arXiv 2511.21631).

Blocks are scanned (`nn.scan`, params stacked on a leading 'layers' axis) and so is the KV cache
([L, B, S_max, Hk, D]), so prefill and decode are the same graph: the rollout log-probs and the training
recompute come from one function.

MMInference sparse prefill (arXiv 2504.16083): with a
`sparse_config`, a prefill (no cache, or a cache written from the static slot 0) runs `attention(backend='sparse')`
with layer l's head entries; decode steps stay dense. One scanned body serves every layer, so the distinct layer
configs become `jax.lax.switch` branches selected by the scanned layer index (identical layers share a branch);
the params layout is unchanged. Prompts shorter than the config's length-bound parameters run dense
(`attention.sparse_min_length`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents import layers
from jaxagents.layers.kv_cache import KVCache
from jaxagents.models.qwen_vl.config import TextConfig

if TYPE_CHECKING:
  from jaxagents.sparse.config import SparseAttentionConfig

Dtype = Any
_ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def layer_branches(config: SparseAttentionConfig) -> tuple[tuple[SparseAttentionConfig, ...], tuple[int, ...]]:
  """(distinct one-layer configs in order of first use, branch index of every layer)."""
  distinct: dict[tuple[str, ...], int] = {}
  index = tuple(distinct.setdefault(heads, len(distinct)) for heads in config.layers)
  branches = tuple(dataclasses.replace(config, layers=(heads,)) for heads in distinct)
  return branches, index


class _DecoderLayer(nn.Module):
  """One decoder block in `nn.scan` form. DeepStack features are added after layer k (k < K) at visual tokens."""

  config: TextConfig
  dtype: Dtype | None
  backend: str
  sparse_config: SparseAttentionConfig | None = None

  @nn.compact
  def __call__(self, x, per_layer, angles, kv_mask, cache_index, deepstack, modality_ids):
    """`modality_ids` [B, L] (None on dense calls) makes the attention sparse, layer `layer_index`'s config."""
    layer_index, cache = per_layer
    c = self.config
    branches, sparse = (), {}
    if self.sparse_config is not None:
      branches, branch_of_layer = layer_branches(self.sparse_config)
      if modality_ids is not None:
        sparse = {"modality_ids": modality_ids, "sparse_index": jnp.asarray(branch_of_layer)[layer_index]}
    out = layers.TransformerBlock(
      num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, mlp_dim=c.intermediate_size,
      norm="rms", activation=c.activation, gated_mlp=True, qkv_bias=c.qkv_bias, out_bias=c.out_bias,
      qk_norm=c.qk_norm, norm_eps=c.rms_norm_eps, backend=self.backend, sparse_configs=branches, dtype=self.dtype,
      name="block",
    )(x, angles, causal=True, kv_mask=kv_mask, cache=cache, cache_index=cache_index, **sparse)
    x, cache = out if cache is not None else (out, None)
    if deepstack is not None:
      k = jnp.minimum(layer_index, deepstack.shape[0] - 1)
      x = x + jnp.where(layer_index < deepstack.shape[0], deepstack[k].astype(x.dtype), 0)
    return x, cache


class TextDecoder(nn.Module):
  """Token embedding ('embed'), scanned decoder layers ('layers'), final RMSNorm ('final_norm').

  `embed_tokens(ids)` looks tokens up; `__call__` runs the layers on embeddings (the model scatters vision features
  into them first); `attend(h)` gives tied logits. `sparse_config` (num_layers x num_heads entries) makes prefills
  sparse (module docstring).
  """

  config: TextConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"
  sparse_config: SparseAttentionConfig | None = None

  def setup(self):
    c = self.config
    self.embed = layers.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
    sparse = self.sparse_config
    if sparse is not None and (sparse.num_layers, sparse.num_heads) != (c.num_layers, c.num_heads):
      raise ValueError(
        f"TextDecoder: `sparse_config` must have num_layers x num_heads = {c.num_layers} x {c.num_heads} head "
        f"entries, got {sparse.num_layers} x {sparse.num_heads}"
      )
    self.layers = nn.scan(
      layers.remat(_DecoderLayer, self.remat),
      variable_axes={"params": 0, "attention_inputs": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
      length=c.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, self.backend, sparse)
    self.final_norm = layers.RMSNorm(eps=c.rms_norm_eps, dtype=self.dtype)

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    """ids: [B, L] int -> [B, L, D]."""
    return self.embed(ids)

  def attend(self, hidden: jax.Array) -> jax.Array:
    """Tied output logits: hidden [B, L, D] -> [B, L, V]."""
    return self.embed.attend(hidden)

  def __call__(
    self,
    embeds: jax.Array,
    positions: jax.Array,
    kv_mask: jax.Array,
    *,
    cache: KVCache | None = None,
    cache_index: jax.Array | int = 0,
    deepstack: jax.Array | None = None,
    modality_ids: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder.

    Args:
      embeds: [B, L, D] input embeddings (text tokens with vision features scattered in).
      positions: [3, B, L] int M-RoPE positions (T, H, W); text-only inputs repeat one row three times.
      kv_mask: [B, T] bool, False at padding keys; T = L without a cache, S_max with one.
      cache: stacked `KVCache` [num_layers, B, S_max, Hk, D] or None; x's tokens are written at `cache_index`.
      cache_index: slot of the first of the L tokens (shared by all rows: prompts are left-padded).
      deepstack: [K, B, L, D] features added to the output of layer k < K (zeros at non-visual tokens).
      modality_ids: [B, L] int (0 text, 1 vision), required by a sparse prefill; ignored on dense calls.
    Returns:
      (final-normed hidden states [B, L, D], updated cache or None).
    """
    c = self.config
    if embeds.ndim != 3 or positions.shape != (3, *embeds.shape[:2]):
      raise ValueError(
        f"TextDecoder: expected embeds [B, L, D] and positions [3, B, L], got {embeds.shape} and {positions.shape}"
      )
    angles = layers.mrope_angles(positions, c.head_dim, c.rope_theta, c.mrope_section, c.mrope_interleaved)
    x = nn.with_logical_constraint(embeds, _ACTIVATION_AXES)
    # Decided here, where cache_index is still a Python int (remat traces it inside the scan).
    prefill = cache is None or (isinstance(cache_index, int) and cache_index == 0)
    if self.sparse_config is not None and prefill:
      if modality_ids is None or modality_ids.shape != embeds.shape[:2]:
        raise ValueError(
          f"TextDecoder: a sparse prefill needs `modality_ids` int [B, L] = {embeds.shape[:2]}, got "
          f"{None if modality_ids is None else modality_ids.shape}"
        )
    else:
      modality_ids = None
    x, cache = self.layers(
      x, (jnp.arange(c.num_layers), cache), angles, kv_mask, cache_index, deepstack, modality_ids
    )
    return self.final_norm(x), cache
