"""Qwen3 as a text encoder (FLUX.2-klein's), on the Qwen-VL text stack: the decoder layer of
`jaxagents.models.qwen_vl.text` (Qwen3: QK RMSNorm before RoPE, GQA, SwiGLU), scanned here so that the scan also
stacks every layer's output. The params tree is exactly `TextDecoder`'s ('embed', 'layers', 'final_norm'), so the
same weights load into either, and `qwen_vl.convert.RULES` (its Qwen3 text rows) converts the checkpoint.

Text-only 1-D RoPE is the M-RoPE of that stack with one position row repeated on all three axes (every frequency
slot on the first axis), which is the plain Qwen3 rotation. Reference: transformers `models/qwen3/modeling_qwen3.py`
(`Qwen3Model`); the FLUX.2-klein use is diffusers `pipelines/flux2/pipeline_flux2_klein.py`,
`Flux2KleinPipeline._get_qwen3_prompt_embeds`: hidden states (9, 18, 27) in transformers' `output_hidden_states`
numbering (0 = the embeddings, k = the output of decoder layer k - 1, the last = final-normed), stacked per token
into [B, T, 3 D] layer-major.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import layers
from jaxagents.models.qwen_vl import convert as qwen_vl_convert
from jaxagents.models.qwen_vl.config import TextConfig
from jaxagents.models.qwen_vl.text import _DecoderLayer
from jaxagents.models.text_encoders.interface import TextFeatures
from jaxagents.models.text_encoders.prompts import FLUX2_KLEIN_MAX_LENGTH, flux2_klein_token_ids
from jaxagents.sharding import unbox

Dtype = Any
Params = dict[str, Any]
FLUX2_KLEIN_HIDDEN_STATES = (9, 18, 27)  # `Flux2KleinPipeline.encode_prompt(text_encoder_out_layers=...)`


def text_config_from_hf(hf: Mapping[str, Any]) -> TextConfig:
  """The Qwen-VL `TextConfig` of a transformers Qwen3 `config.json` dict (`model_type: qwen3`)."""
  if hf.get("model_type", "qwen3") != "qwen3":
    raise ValueError(f"config model_type: expected 'qwen3', got {hf.get('model_type')!r}")
  if hf.get("use_sliding_window"):
    raise ValueError("config use_sliding_window: sliding-window Qwen3 layers are not supported; expected false")
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"config rope_parameters.rope_type: only 'default' is supported, got {rope_type!r}")
  num_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  bias = bool(hf.get("attention_bias", False))
  eos = hf.get("eos_token_id")
  return TextConfig(
    vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
    num_layers=hf["num_hidden_layers"], num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=head_dim, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
    rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1e6))),
    mrope_section=(head_dim // 2, 0, 0), mrope_interleaved=False,  # 1-D RoPE: every slot on the first row
    qkv_bias=bias, out_bias=bias, qk_norm=True, activation=hf.get("hidden_act", "silu"),
    max_position_embeddings=hf.get("max_position_embeddings"), bos_token_id=hf.get("bos_token_id"),
    eos_token_id=tuple(eos) if isinstance(eos, list) else eos, pad_token_id=hf.get("pad_token_id"),
  )


class _LayerKeepingOutput(_DecoderLayer):
  """The Qwen-VL decoder layer, returning its output as the scan's per-layer result (same params)."""

  def __call__(self, x, per_layer, angles, kv_mask, cache_index, deepstack, modality_ids):
    x, _ = super().__call__(x, per_layer, angles, kv_mask, cache_index, deepstack, modality_ids)
    return x, x


class Qwen3Text(nn.Module):
  """Qwen3 decoder without the LM head; params as `qwen_vl.text.TextDecoder`.

  `__call__(ids [B, T], kv_mask [B, T] bool = None, positions [T] | [B, T] = None)` returns a dict with
  'embeddings' [B, T, D], 'layer_outputs' [L, B, T, D] (before the final norm) and 'last_hidden_state'
  (final-normed). transformers' `output_hidden_states` is `(embeddings, *layer_outputs[:-1], last_hidden_state)`.
  """

  config: TextConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"

  def setup(self):
    c = self.config
    self.embed = layers.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
    self.layers = nn.scan(
      layers.remat(_LayerKeepingOutput, self.remat),
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
      length=c.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, self.backend)
    self.final_norm = layers.RMSNorm(eps=c.rms_norm_eps, dtype=self.dtype)

  def __call__(self, ids: jax.Array, kv_mask: jax.Array | None = None, positions: jax.Array | None = None):
    c = self.config
    if ids.ndim != 2:
      raise ValueError(f"Qwen3Text: `ids` must have shape [B, T], got {ids.shape}")
    batch, length = ids.shape
    kv_mask = jnp.ones((batch, length), bool) if kv_mask is None else jnp.asarray(kv_mask, bool)
    if kv_mask.shape != (batch, length):
      raise ValueError(f"Qwen3Text: `kv_mask` must have shape [B, T] = {(batch, length)}, got {kv_mask.shape}")
    # transformers' Qwen3Model numbers positions 0..T-1 whatever the padding.
    positions = jnp.arange(length) if positions is None else jnp.asarray(positions)
    positions = jnp.broadcast_to(positions, (3, batch, length))
    angles = layers.mrope_angles(positions, c.head_dim, c.rope_theta, c.mrope_section, c.mrope_interleaved)
    embeddings = self.embed(ids)
    x, outputs = self.layers(embeddings, (jnp.arange(c.num_layers), None), angles, kv_mask, 0, None, None)
    return {"embeddings": embeddings, "layer_outputs": outputs, "last_hidden_state": self.final_norm(x)}


def hidden_state(out: Mapping[str, jax.Array], index: int, num_layers: int) -> jax.Array:
  """transformers' `output_hidden_states[index]` from a `Qwen3Text` / `GptOss` output dict."""
  if not -(num_layers + 1) <= index <= num_layers:
    raise ValueError(f"hidden_state: `index` must be in [-{num_layers + 1}, {num_layers}], got {index}")
  index %= num_layers + 1
  if index == 0:
    return out["embeddings"]
  return out["last_hidden_state"] if index == num_layers else out["layer_outputs"][index - 1]


# ------------------------------------------------------------------------------------------------------ weights
_TEXT_RULES = tuple(r for r in qwen_vl_convert.RULES if r.part == "text" and "qwen3_vl" in r.families)
_PREFIXES = ("model.language_model.", "model.")


def param_shapes(config: TextConfig) -> dict[str, tuple[int, ...]]:
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: Qwen3Text(config).init(jax.random.key(0), ids))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(unbox(abstract)["params"]), sep="/")
  return {k: tuple(x.shape) for k, x in flat.items()}


def hf_to_params(tensors: Iterator[tuple[str, Any]] | Mapping[str, Any], config: TextConfig, dtype: Any = None,
                 source: str = "checkpoint") -> Params:
  """`Qwen3Text` params from `Qwen3Model` / `Qwen3ForCausalLM` tensors through the Qwen-VL conversion table
  (its rows for the Qwen3 text decoder; `lm_head.weight` is skipped: an encoder has no LM head).

  Raises ValueError naming `source`, the missing and unexpected keys, or a tensor of the wrong shape.
  """
  shapes = param_shapes(config)
  rules = [r for r in _TEXT_RULES if all(p.removeprefix("text/").format(i=0) in shapes for p in r.ours)]
  flat: dict[str, Any] = {}
  seen: set[tuple[str, int]] = set()
  unexpected: list[str] = []
  items = tensors.items() if isinstance(tensors, Mapping) else tensors
  for key, tensor in items:
    if key == "lm_head.weight":
      continue
    rest = next((key[len(p):] for p in _PREFIXES if key.startswith(p)), key)
    matched = next(((r, m) for r in rules if (m := r.pattern.match(rest))), None)
    if matched is None:
      unexpected.append(key)
      continue
    rule, found = matched
    index = int(found.group(1)) if rule.layered else 0
    if index >= (config.num_layers if rule.layered else 1):
      unexpected.append(key)
      continue
    if hasattr(tensor, "detach"):  # a torch tensor
      tensor = tensor.detach().cpu().float().numpy() if "bfloat16" in str(tensor.dtype) else tensor.detach().numpy()
    array = np.asarray(tensor)
    for path, value in zip(rule.ours, rule.to_ours(array), strict=True):
      path = path.removeprefix("text/")
      if dtype is not None:
        value = value.astype(dtype)
      expected = shapes[path][1:] if rule.layered else shapes[path]
      if tuple(value.shape) != tuple(expected):
        raise ValueError(
          f"{source}: tensor {key!r} converts to shape {tuple(value.shape)} for {path!r}, but the config expects "
          f"{tuple(expected)}; the checkpoint and config.json disagree."
        )
      if rule.layered:
        if path not in flat:
          flat[path] = np.empty(shapes[path], value.dtype)
        flat[path][index] = value
      else:
        flat[path] = value
    seen.add((rule.hf, index))
  missing = [r.hf.replace("{i}", str(i)) for r in rules for i in (range(config.num_layers) if r.layered else (0,))
             if (r.hf, i) not in seen]
  if missing or unexpected:
    raise ValueError(
      f"{source}: keys do not match the Qwen3 config: {len(missing)} missing {missing[:8]}, {len(unexpected)} "
      f"unexpected {unexpected[:8]}. Check that config.json belongs to these weights (num_hidden_layers, "
      f"attention_bias)."
    )
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def load_config(directory: str) -> TextConfig:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Qwen3 checkpoint {directory!r}: no config.json")
  with open(path) as f:
    hf = json.load(f)
  return text_config_from_hf(hf.get("text_config", hf))


def load_params(directory: str, config: TextConfig | None = None, dtype: Any = None) -> tuple[TextConfig, Params]:
  """(config, params) from a Qwen3 checkpoint directory (config.json + safetensors)."""
  config = config or load_config(directory)
  tensors = qwen_vl_convert.iter_safetensors(directory)
  return config, hf_to_params(tensors, config, dtype, source=f"checkpoint {directory!r}")


class Qwen3TextEncoder:
  """FLUX.2-klein's text encoder: the user chat template (thinking off), padded to `max_length`, through Qwen3;
  `hidden_states_layers` in transformers' `output_hidden_states` numbering (see the module docstring).

  `encode(prompts)` returns `TextFeatures` (one [B, max_length, D] array per selected hidden state and the
  tokenizer's mask); `features.concatenated()` is the pipeline's `prompt_embeds` [B, T, L * D]. The pipeline passes
  every token on, padding included, so the mask is informational for it.
  """

  def __init__(
    self,
    tokenizer,
    config: TextConfig,
    params,
    *,
    hidden_states_layers: Sequence[int] = FLUX2_KLEIN_HIDDEN_STATES,
    max_length: int = FLUX2_KLEIN_MAX_LENGTH,
    dtype: Dtype | None = None,
  ):
    indices = tuple(int(i) for i in hidden_states_layers)
    if not indices or not all(-(config.num_layers + 1) <= i <= config.num_layers for i in indices):
      raise ValueError(
        f"Qwen3TextEncoder: `hidden_states_layers` must be non-empty indices in [-{config.num_layers + 1}, "
        f"{config.num_layers}] (0 = embeddings), got {list(indices)}"
      )
    self.tokenizer, self.config, self.params = tokenizer, config, params
    self.hidden_states_layers, self.max_length = indices, max_length
    model = Qwen3Text(config, dtype=dtype)

    def hidden(params, ids, mask):
      out = model.apply({"params": params}, ids, mask)
      return tuple(hidden_state(out, i, config.num_layers) for i in indices)

    self._hidden = jax.jit(hidden)

  def encode(self, prompts: Sequence[str]) -> TextFeatures:
    ids, mask = flux2_klein_token_ids(self.tokenizer, prompts, max_length=self.max_length)
    hidden = self._hidden(self.params, jnp.asarray(ids), jnp.asarray(mask, bool))
    return TextFeatures.create(hidden, jnp.asarray(mask, bool))
