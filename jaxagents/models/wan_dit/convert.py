"""diffusers `WanTransformer3DModel` checkpoints (diffusers `src/diffusers/models/transformers/transformer_wan.py`)
-> `WanDiT` params.

Conversion is one table, `RULES`: a diffusers key template (`{i}`: block index) -> our param path and a transform.
Block keys fill one slice of the arrays stacked over the scanned 'blocks'. torch Linear weights [out, in] become
our kernels [in, out]; the Conv3d patch embedding [E, C, pt, ph, pw] becomes the kernel [pt ph pw C, E] of the
Linear on `model.patchify`'s tokens; the `scale_shift_table`s and `pos_embed` lose their leading 1.

`attn2.norm_added_q` weights are skipped, as diffusers skips them (`_keys_to_ignore_on_load_unexpected`: some
converted checkpoints carry one the processor never uses). Loading streams tensor by tensor from the safetensors
files of a `save_pretrained` directory (sharded or not, memory-mapped; pickle files are never read). Every error
names the file (or the directory) and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.mmdit.convert import iter_checkpoint
from jaxagents.models.wan_dit.config import WanDiTConfig
from jaxagents.models.wan_dit.model import WanDiT, unstack_blocks

Array = np.ndarray
_IGNORED = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.weight$")


def _copy(x: Array) -> Array:
  return x


def _kernel(x: Array) -> Array:
  if x.ndim != 2:
    raise ValueError(f"a Linear weight must be 2-D, got shape {x.shape}")
  return np.ascontiguousarray(x.T)


def _patch_kernel(x: Array) -> Array:
  if x.ndim != 5:
    raise ValueError(f"the Conv3d weight must be [E, C, pt, ph, pw], got shape {x.shape}")
  return np.ascontiguousarray(x.transpose(2, 3, 4, 1, 0).reshape(-1, x.shape[0]))


def _drop_leading_one(x: Array) -> Array:
  if x.ndim < 2 or x.shape[0] != 1:
    raise ValueError(f"expected a leading axis of 1, got shape {x.shape}")
  return x[0]


@dataclasses.dataclass(frozen=True)
class Rule:
  """diffusers `key` template <-> our param path `ours`; `transform(tensor)` gives our array."""

  key: str
  ours: str
  transform: Callable[[Array], Array]

  @property
  def stacked(self) -> bool:
    return "{i}" in self.key

  @property
  def pattern(self) -> re.Pattern:
    return re.compile("^" + re.escape(self.key).replace(r"\{i\}", r"(\d+)") + "$")


def _linear(key: str, ours: str, weight=_kernel) -> list[Rule]:
  return [Rule(f"{key}.weight", f"{ours}/kernel", weight), Rule(f"{key}.bias", f"{ours}/bias", _copy)]


def _layer_norm(key: str, ours: str) -> list[Rule]:
  return [Rule(f"{key}.weight", f"{ours}/scale", _copy), Rule(f"{key}.bias", f"{ours}/bias", _copy)]


def _rules() -> list[Rule]:
  cond, image = "condition_embedder", "condition_embedder.image_embedder"
  rules = [
    *_linear("patch_embedding", "patch_embed", _patch_kernel),
    *_linear(f"{cond}.time_embedder.linear_1", "time_embed/linear_1"),
    *_linear(f"{cond}.time_embedder.linear_2", "time_embed/linear_2"),
    *_linear(f"{cond}.time_proj", "time_proj/proj"),
    *_linear(f"{cond}.text_embedder.linear_1", "text_embed/fc1"),
    *_linear(f"{cond}.text_embedder.linear_2", "text_embed/fc2"),
    *_layer_norm(f"{image}.norm1", "image_embed/norm1"),
    *_linear(f"{image}.ff.net.0.proj", "image_embed/ff/fc1"),
    *_linear(f"{image}.ff.net.2", "image_embed/ff/fc2"),
    *_layer_norm(f"{image}.norm2", "image_embed/norm2"),
    Rule(f"{image}.pos_embed", "image_embed/pos_embed", _drop_leading_one),
    *_layer_norm("blocks.{i}.norm2", "blocks/norm2"),
    *_linear("blocks.{i}.ffn.net.0.proj", "blocks/ffn/fc1"),
    *_linear("blocks.{i}.ffn.net.2", "blocks/ffn/fc2"),
    Rule("blocks.{i}.scale_shift_table", "blocks/scale_shift_table", _drop_leading_one),
    Rule("scale_shift_table", "scale_shift_table", _drop_leading_one),
    *_linear("proj_out", "proj_out"),
  ]
  for hf, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
    for proj, name in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
      rules += _linear(f"blocks.{{i}}.{hf}.{proj}", f"blocks/{ours}/{name}")
    for norm in ("q", "k"):
      rules.append(Rule(f"blocks.{{i}}.{hf}.norm_{norm}.weight", f"blocks/{ours}/{norm}_norm/scale", _copy))
  rules += _linear("blocks.{i}.attn2.add_k_proj", "blocks/cross_attn/img_k")
  rules += _linear("blocks.{i}.attn2.add_v_proj", "blocks/cross_attn/img_v")
  rules.append(Rule("blocks.{i}.attn2.norm_added_k.weight", "blocks/cross_attn/img_k_norm/scale", _copy))
  return rules


RULES: tuple[Rule, ...] = tuple(_rules())


def param_shapes(config: WanDiTConfig) -> dict[str, tuple[int, ...]]:
  """{'blocks/self_attn/q/kernel': shape, ...} of the scanned model's params, without allocating them."""
  config = config.replace(scan_layers=True)
  latents = np.zeros((1, *config.patch_size, config.in_channels), np.float32)
  text = np.zeros((1, 1, config.text_dim), np.float32)
  image = None
  if config.image_dim is not None:
    image = np.zeros((1, config.pos_embed_seq_len or 1, config.image_dim), np.float32)
  abstract = jax.eval_shape(WanDiT(config).init, jax.random.key(0), latents, np.zeros((1,), np.float32), text, image)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
  return {k: tuple(getattr(x, "value", x).shape) for k, x in flat.items()}


def tensors_to_params(
  tensors: Iterable[tuple[str, Array, str]] | Mapping[str, Array],
  config: WanDiTConfig,
  dtype: Any = None,
  source: str = "state dict",
) -> dict[str, Any]:
  """Our `params` tree from diffusers tensors.

  Args:
    tensors: a state dict {key: array}, or an iterator of (key, array, source file) consumed lazily.
    config: the model config (decides which keys are expected and their shapes).
    dtype: cast every tensor to this dtype; None keeps the stored one.
    source: what the tensors come from (a checkpoint directory), named in the missing-keys error.
  Returns:
    The nested params for `WanDiT(config).apply({'params': params}, ...)` (scanned, or unrolled when
    `config.scan_layers` is False).
  Raises:
    ValueError naming the file and key of an unexpected key or a wrong shape, or the missing keys.
  """
  shapes = param_shapes(config)
  rules = [r for r in RULES if r.ours in shapes]
  items = ((k, v, source) for k, v in tensors.items()) if isinstance(tensors, Mapping) else tensors
  flat: dict[str, Array] = {}
  filled: set[tuple[str, int]] = set()
  unexpected: list[str] = []
  for key, tensor, file in items:
    if _IGNORED.match(key):
      continue
    match = next(((r, m) for r in rules if (m := r.pattern.match(key))), None)
    index = int(match[1][1]) if match and match[0].stacked else 0
    if match is None or index >= config.num_layers:
      unexpected.append(f"{key} ({file})")
      continue
    rule = match[0]
    array = np.asarray(tensor) if dtype is None else np.asarray(tensor).astype(dtype)
    try:
      value = rule.transform(array)
    except ValueError as error:
      raise ValueError(f"checkpoint {file!r}: tensor {key!r}: {error}") from None
    expected = shapes[rule.ours][1:] if rule.stacked else shapes[rule.ours]
    if tuple(value.shape) != tuple(expected):
      raise ValueError(
        f"checkpoint {file!r}: tensor {key!r} of shape {array.shape} converts to {tuple(value.shape)} for "
        f"{rule.ours!r}, but the config expects {tuple(expected)}; the checkpoint and its config.json disagree."
      )
    if (rule.ours, index) in filled:
      raise ValueError(f"checkpoint {file!r}: tensor {key!r} fills {rule.ours!r} (layer {index}) a second time.")
    filled.add((rule.ours, index))
    if rule.stacked:
      if rule.ours not in flat:
        flat[rule.ours] = np.empty(shapes[rule.ours], value.dtype)
      flat[rule.ours][index] = value
    else:
      flat[rule.ours] = value
  missing = sorted(
    rule.key.format(i=i)
    for rule in rules
    for i in range(config.num_layers if rule.stacked else 1)
    if (rule.ours, i) not in filled
  )
  if missing or unexpected:
    raise ValueError(
      f"checkpoint {source!r}: keys do not match the config: {len(missing)} missing {preview_keys(missing)}, "
      f"{len(unexpected)} unexpected {preview_keys(unexpected)}. Check that config.json belongs to these weights."
    )
  params = flax.traverse_util.unflatten_dict(flat, sep="/")
  return params if config.scan_layers else unstack_blocks(params, config)


def load_config(directory: str, **overrides: Any) -> WanDiTConfig:
  """`WanDiTConfig.from_diffusers` of `directory`/config.json."""
  with open(os.path.join(directory, "config.json")) as f:
    return WanDiTConfig.from_diffusers(json.load(f), **overrides)


def load_params(directory: str, config: WanDiTConfig | None = None, dtype: Any = None) -> tuple[WanDiTConfig, Any]:
  """(config, params) from a diffusers `WanTransformer3DModel` directory (config.json + safetensors)."""
  config = config or load_config(directory)
  return config, tensors_to_params(iter_checkpoint(directory), config, dtype, source=directory)
