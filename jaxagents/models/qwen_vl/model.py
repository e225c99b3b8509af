"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL: vision tower + decoder LLM (arXiv 2409.12191, 2502.13923, 2511.21631;
transformers `models/qwen2_vl/modeling_qwen2_vl.py` and its Qwen2.5-VL / Qwen3-VL siblings).

`QwenVL.__call__` embeds the tokens, runs the vision tower once per prompt (rows that share a prompt, e.g. a
GRPO group, share its run through `row_prompt`), scatters each prompt's merged features into the placeholder
tokens of the rows that read it (images first, then videos, as transformers' `masked_scatter` does within a
row), and runs the decoder with M-RoPE positions computed on the host (`positions.rope_index`). Qwen3-VL's
DeepStack features go to the same placeholders after the first decoder layers. With a `KVCache` the same call
is the prefill (L prompt tokens at slot 0, vision inputs given) or a decode step (new tokens at slot
`cache_index`, no vision inputs): one graph for rollout and training.
With a `sparse_config` the prefill's decoder attention is MMInference sparse attention (arXiv 2504.16083), with
modality ids read from the placeholders (`sparse_prefill.modality_ids`); decode steps stay dense (`text.py`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxagents import layers
from jaxagents.layers.kv_cache import KVCache
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.sparse_prefill import modality_ids
from jaxagents.models.qwen_vl.text import TextDecoder
from jaxagents.models.qwen_vl.vision import VisionTower
from jaxagents.models.qwen_vl.vision_layout import VisionInputs

if TYPE_CHECKING:
  from jaxagents.sparse.config import SparseAttentionConfig

Dtype = Any


def scatter_features(
  embeds: jax.Array,
  input_ids: jax.Array,
  features: jax.Array,
  image_token_id: int,
  video_token_id: int,
  row_prompt: jax.Array | None = None,
) -> jax.Array:
  """Replaces placeholder embeddings by the vision features of each row's prompt, in transformers' order
  within a row (`get_placeholder_mask`, then `masked_scatter`).

  The k-th image placeholder of row b takes `features[n, k]`, n = row_prompt[b]; its k-th video placeholder
  takes `features[n, num_image_placeholders_of_row_b + k]` (the tower saw each prompt's images, then its
  videos). Everything is per row, so rows and prompts shard together along the batch. Padding features beyond
  the placeholders are never read. The host checks that the counts agree (`inputs.prepare_inputs` runs
  `positions.rope_index`, which raises on a mismatch); under `jit` it cannot.

  Args:
    embeds: [B, L, D]; input_ids: [B, L] int; features: [N, U, D].
    row_prompt: [B] int, the prompt each row reads; None: row b reads prompt b (N == B).
  Returns:
    [B, L, D] in embeds.dtype.
  """
  is_image = input_ids == image_token_id
  is_video = input_ids == video_token_id
  image_rank = jnp.cumsum(is_image, axis=1) - 1
  video_rank = jnp.sum(is_image, axis=1, keepdims=True) + jnp.cumsum(is_video, axis=1) - 1
  index = jnp.clip(jnp.where(is_image, image_rank, video_rank), 0, features.shape[1] - 1)
  if row_prompt is None:
    placed = jnp.take_along_axis(features, index[..., None], axis=1)
  else:
    placed = features[jnp.asarray(row_prompt)[:, None], index]
  return jnp.where((is_image | is_video)[..., None], placed.astype(embeds.dtype), embeds)


class QwenVL(nn.Module):
  """The whole model. Submodules: 'text' (`TextDecoder`), 'visual' (`VisionTower`), 'lm_head' (untied only).

  Attributes:
    config: `QwenVLConfig`.
    dtype: compute dtype (params stay float32 unless initialised/loaded otherwise); None keeps param dtypes.
    backend: attention backend of every dense attention ('xla', 'cudnn', 'auto', ...).
    remat: rematerialisation policy of the scanned blocks ('none', 'full', 'dots').
    sparse_config: `SparseAttentionConfig` (text num_layers x num_heads entries) for a sparse decoder prefill,
      or None (dense everywhere).
  """

  config: QwenVLConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"
  sparse_config: SparseAttentionConfig | None = None

  def setup(self):
    c = self.config
    self.text = TextDecoder(c.text, dtype=self.dtype, backend=self.backend, remat=self.remat,
                            sparse_config=self.sparse_config)
    self.visual = VisionTower(c.vision, dtype=self.dtype, backend=self.backend, remat=self.remat)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense(c.text.vocab_size, axes=("embed", "vocab"), dtype=self.dtype)

  def __call__(
    self,
    input_ids: jax.Array | ModelInputs,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    vision: VisionInputs | None = None,
    row_prompt: jax.Array | None = None,
    *,
    cache: KVCache | None = None,
    cache_index: jax.Array | int = 0,
    kv_mask: jax.Array | None = None,
    return_hidden: bool = False,
    return_input_embeds: bool = False,
  ) -> tuple[jax.Array, KVCache | None]:
    """Logits for every input token.

    Args:
      input_ids: [B, L] int, left-padded when batched for generation; or a `ModelInputs` (from `Processor` or
        `prepare_inputs`), which supplies every argument up to `row_prompt`: `apply(variables, inputs)`.
      positions: [3, B, L] int M-RoPE positions from `positions.rope_index`.
      attention_mask: [B, L] bool/int, 1 at real tokens.
      vision: `VisionInputs` of N prompts (`vision_layout`), or None (text only, or a decode step). The tower
        runs once per prompt, however many rows read it.
      row_prompt: [B] int, the prompt whose features row b's placeholders take (rows of a GRPO group share
        one); None: row b reads prompt b.
      cache: stacked `KVCache` [num_layers, B, S_max, Hk, D]; None runs without one (training, scoring).
      cache_index: cache slot of input_ids[:, 0].
      kv_mask: [B, S_max] bool key mask over the cache (prompt mask then generated slots); required with a
        cache, ignored without (the attention mask is used).
      return_hidden: also return the final hidden states [B, L, D].
      return_input_embeds: also return the decoder's input embeddings [B, L, D] (token embeddings with the vision
        features scattered in; GUI-Actor's action head reads them at the image placeholders).
    Returns:
      (logits [B, L, V] float32, updated cache or None), then the hidden states when `return_hidden`, then the
      input embeddings when `return_input_embeds`.
    """
    c = self.config
    if isinstance(input_ids, ModelInputs):  # `apply(params, inputs)`, as `generate(model, params, inputs)` takes
      input_ids, positions, attention_mask, vision, row_prompt = input_ids.model_args()
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids: expected [B, L], got {input_ids.shape}")
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask: expected {input_ids.shape} like input_ids, got {attention_mask.shape}")
    if cache is not None and (kv_mask is None or kv_mask.shape != (input_ids.shape[0], cache.k.shape[2])):
      raise ValueError(
        f"kv_mask: with a cache, expected bool [B, S_max] = {(input_ids.shape[0], cache.k.shape[2])}, "
        f"got {None if kv_mask is None else kv_mask.shape}"
      )
    if vision is not None:
      prompts = jnp.shape(vision.patches)[0]
      if row_prompt is None and prompts != input_ids.shape[0]:
        raise ValueError(f"vision: without row_prompt, expected one prompt per row (N = B = {input_ids.shape[0]}), "
                         f"got N = {prompts} (patches {jnp.shape(vision.patches)})")
      if row_prompt is not None and jnp.shape(row_prompt) != input_ids.shape[:1]:
        raise ValueError(f"row_prompt: expected [B] = {input_ids.shape[:1]}, got {jnp.shape(row_prompt)}")
    embeds = self.text.embed_tokens(input_ids)
    deepstack = None
    if vision is not None:
      features, deepstack_features = self.visual(vision)
      scatter = functools.partial(scatter_features, input_ids=input_ids, image_token_id=c.image_token_id,
                                  video_token_id=c.video_token_id, row_prompt=row_prompt)
      embeds = scatter(embeds, features=features)
      if deepstack_features:
        deepstack = jnp.stack([scatter(jnp.zeros_like(embeds), features=f) for f in deepstack_features])
    key_mask = attention_mask.astype(bool) if cache is None else kv_mask.astype(bool)
    modalities = None if self.sparse_config is None else modality_ids(input_ids, c)
    hidden, cache = self.text(embeds, positions, key_mask, cache=cache, cache_index=cache_index,
                              deepstack=deepstack, modality_ids=modalities)
    logits = self.project(hidden)
    return (logits, cache) + ((hidden,) if return_hidden else ()) + ((embeds,) if return_input_embeds else ())

  def project(self, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> logits [..., V] float32 (the tied embedding or `lm_head`): scoring applies it
    chunk by chunk (`generation.completion_logprobs`), so [B, L, V] logits never exist at once."""
    logits = self.text.attend(hidden) if self.config.tie_word_embeddings else self.lm_head(hidden)
    return logits.astype(jnp.float32)

  def init_cache(self, batch: int, max_length: int, dtype: Dtype = jnp.bfloat16) -> KVCache:
    """An empty stacked cache for `batch` rows of up to `max_length` tokens (prompt + generated)."""
    t = self.config.text
    return KVCache.zeros(batch, max_length, t.num_kv_heads, t.head_dim, dtype, num_layers=t.num_layers)
