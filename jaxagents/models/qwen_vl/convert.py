"""transformers checkpoints <-> Flax params for Qwen2-VL / Qwen2.5-VL / Qwen3-VL (transformers 5.23
`save_pretrained` layouts).

Conversion is one table, `RULES`: an HF key template (after the family's prefix, `{i}` a layer index) -> our
param path(s) and a pair of exact inverse transforms. Loading streams tensor by tensor from (sharded)
safetensors into preallocated stacked arrays, so host memory holds the converted model once plus one tensor;
saving streams the other way, one shard at a time, atomically. No pickle is ever read.

File layouts (5.23): Qwen2/2.5-VL store `model.*` (text), `visual.*`, `lm_head.weight`; Qwen3-VL stores
`model.language_model.*`, `model.visual.*` and omits `lm_head.weight` when the embeddings are tied. Loading
accepts either layout for every family (as transformers' conversion mapping does); saving writes the family's
own. A tied checkpoint that still carries `lm_head.weight` has it ignored, as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.sharding import unbox

Array = np.ndarray
Params = dict[str, Any]

_TEXT, _VISION, _TOP = "text", "visual", "top"
_PREFIXES = {  # family -> part -> the prefix written on save
  "qwen2_vl": {_TEXT: "model.", _VISION: "visual.", _TOP: ""},
  "qwen2_5_vl": {_TEXT: "model.", _VISION: "visual.", _TOP: ""},
  "qwen3_vl": {_TEXT: "model.language_model.", _VISION: "model.visual.", _TOP: ""},
}
# Prefixes accepted on load, most specific first.
_LOAD_PREFIXES = (("model.language_model.", _TEXT), ("model.visual.", _VISION), ("visual.", _VISION),
                  ("model.", _TEXT), ("", _TOP))


def _identity(x: Array) -> tuple[Array]:
  return (x,)


def _identity_back(x: Array, config: QwenVLConfig) -> Array:
  return x


def _transpose(x: Array) -> tuple[Array]:
  return (np.ascontiguousarray(x.T),)


def _transpose_back(x: Array, config: QwenVLConfig) -> Array:
  return np.ascontiguousarray(x.T)


def _patch(x: Array) -> tuple[Array]:
  """Conv3d weight [C, 3, T, p, p] -> Dense kernel [3*T*p*p, C] (the patch vector is flattened in (3, T, p, p))."""
  return (np.ascontiguousarray(x.reshape(x.shape[0], -1).T),)


def _patch_back(x: Array, config: QwenVLConfig) -> Array:
  v = config.vision
  return np.ascontiguousarray(x.T).reshape(-1, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


def _split_qkv(x: Array) -> tuple[Array, Array, Array]:
  """Fused qkv Linear weight [3C, C] (rows q | k | v) -> three kernels [C, C]; a bias [3C] -> three [C]."""
  parts = np.split(x, 3, axis=0)
  return tuple(np.ascontiguousarray(p.T) if x.ndim == 2 else p for p in parts)


def _join_qkv(q: Array, k: Array, v: Array, config: QwenVLConfig) -> Array:
  return np.concatenate([p.T if p.ndim == 2 else p for p in (q, k, v)], axis=0)


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF key `part`-prefix + `hf` ({i}: layer index) <-> param paths `ours` (stacked on axis 0 when `layered`).

  `to_ours(tensor) -> tuple of arrays` (one per path) and `to_hf(*arrays, config=...) -> tensor` are inverses.
  """

  part: str
  hf: str
  ours: tuple[str, ...]
  to_ours: Callable[[Array], tuple[Array, ...]] = _identity
  to_hf: Callable[..., Array] = _identity_back
  families: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

  @property
  def layered(self) -> bool:
    return "{i}" in self.hf

  @property
  def pattern(self) -> re.Pattern:
    return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(\d+)") + "$")


def _linear(part, hf, ours, families=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), bias=True):
  """A torch Linear: weight [out, in] transposed to our kernel [in, out]; the bias copied."""
  rules = [Rule(part, f"{hf}.weight", (f"{ours}/kernel",), _transpose, _transpose_back, families)]
  if bias:
    rules.append(Rule(part, f"{hf}.bias", (f"{ours}/bias",), families=families))
  return rules


def _norm(part, hf, ours, families=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), bias=False):
  rules = [Rule(part, f"{hf}.weight", (f"{ours}/scale",), families=families)]
  if bias:
    rules.append(Rule(part, f"{hf}.bias", (f"{ours}/bias",), families=families))
  return rules


Q2, Q25, Q3 = ("qwen2_vl",), ("qwen2_5_vl",), ("qwen3_vl",)
_LN = ("qwen2_vl", "qwen3_vl")  # LayerNorm (weight + bias) vision norms; Qwen2.5-VL uses RMSNorm
_T, _V = "text/layers/block", "visual/blocks/block"

RULES: tuple[Rule, ...] = (
  Rule(_TEXT, "embed_tokens.weight", ("text/embed/embedding",)),
  *[r for p in "qkv" for r in _linear(_TEXT, f"layers.{{i}}.self_attn.{p}_proj", f"{_T}/attn/{p}", bias=False)],
  *[Rule(_TEXT, f"layers.{{i}}.self_attn.{p}_proj.bias", (f"{_T}/attn/{p}/bias",)) for p in "qkv"],
  *_linear(_TEXT, "layers.{i}.self_attn.o_proj", f"{_T}/attn/o"),  # the bias only where out_bias (Qwen3-VL)
  *_norm(_TEXT, "layers.{i}.self_attn.q_norm", f"{_T}/attn/q_norm", Q3),
  *_norm(_TEXT, "layers.{i}.self_attn.k_norm", f"{_T}/attn/k_norm", Q3),
  *[r for p in ("gate", "up", "down") for r in _linear(_TEXT, f"layers.{{i}}.mlp.{p}_proj", f"{_T}/mlp/{p}",
                                                        bias=False)],
  *_norm(_TEXT, "layers.{i}.input_layernorm", f"{_T}/attn_norm"),
  *_norm(_TEXT, "layers.{i}.post_attention_layernorm", f"{_T}/mlp_norm"),
  *_norm(_TEXT, "norm", "text/final_norm"),
  *_linear(_TOP, "lm_head", "lm_head", bias=False),
  Rule(_VISION, "patch_embed.proj.weight", ("visual/patch_embed/kernel",), _patch, _patch_back),
  Rule(_VISION, "patch_embed.proj.bias", ("visual/patch_embed/bias",), families=Q3),
  Rule(_VISION, "pos_embed.weight", ("visual/pos_embed",), families=Q3),
  *_norm(_VISION, "blocks.{i}.norm1", f"{_V}/attn_norm", _LN, bias=True),
  *_norm(_VISION, "blocks.{i}.norm2", f"{_V}/mlp_norm", _LN, bias=True),
  *_norm(_VISION, "blocks.{i}.norm1", f"{_V}/attn_norm", Q25),
  *_norm(_VISION, "blocks.{i}.norm2", f"{_V}/mlp_norm", Q25),
  *[Rule(_VISION, f"blocks.{{i}}.attn.qkv.{w}", tuple(f"{_V}/attn/{p}/{ours}" for p in "qkv"), _split_qkv,
         _join_qkv) for w, ours in (("weight", "kernel"), ("bias", "bias"))],
  *_linear(_VISION, "blocks.{i}.attn.proj", f"{_V}/attn/o"),
  *_linear(_VISION, "blocks.{i}.mlp.fc1", f"{_V}/mlp/fc1", Q2),
  *_linear(_VISION, "blocks.{i}.mlp.fc2", f"{_V}/mlp/fc2", Q2),
  *[r for p in ("gate", "up", "down") for r in _linear(_VISION, f"blocks.{{i}}.mlp.{p}_proj", f"{_V}/mlp/{p}", Q25)],
  *_linear(_VISION, "blocks.{i}.mlp.linear_fc1", f"{_V}/mlp/fc1", Q3),
  *_linear(_VISION, "blocks.{i}.mlp.linear_fc2", f"{_V}/mlp/fc2", Q3),
  *_norm(_VISION, "merger.ln_q", "visual/merger/norm", Q2, bias=True),
  *_norm(_VISION, "merger.ln_q", "visual/merger/norm", Q25),
  *_linear(_VISION, "merger.mlp.0", "visual/merger/fc1", Q2 + Q25),
  *_linear(_VISION, "merger.mlp.2", "visual/merger/fc2", Q2 + Q25),
  *_norm(_VISION, "merger.norm", "visual/merger/norm", Q3, bias=True),
  *_linear(_VISION, "merger.linear_fc1", "visual/merger/fc1", Q3),
  *_linear(_VISION, "merger.linear_fc2", "visual/merger/fc2", Q3),
  # DeepStack mergers: {i} is the merger index k, stored in separate (unstacked) submodules.
  *_norm(_VISION, "deepstack_merger_list.{i}.norm", "visual/deepstack_merger_{i}/norm", Q3, bias=True),
  *_linear(_VISION, "deepstack_merger_list.{i}.linear_fc1", "visual/deepstack_merger_{i}/fc1", Q3),
  *_linear(_VISION, "deepstack_merger_list.{i}.linear_fc2", "visual/deepstack_merger_{i}/fc2", Q3),
)


def _stacked(rule: Rule) -> bool:
  """Layer rules whose target is one array stacked over layers (scanned blocks), not one module per index."""
  return rule.layered and "{i}" not in "".join(rule.ours)


def _count(rule: Rule, config: QwenVLConfig) -> int:
  if not rule.layered:
    return 1
  if rule.hf.startswith("deepstack"):
    return len(config.vision.deepstack_indexes)
  return config.text.num_layers if rule.part == _TEXT else config.vision.depth


def _rules_for(config: QwenVLConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  """The rules of this family whose targets exist in the param tree (e.g. no q/k/v biases without qkv_bias)."""
  out = []
  for rule in RULES:
    if config.family not in rule.families:
      continue
    paths = [p.format(i=0) for p in rule.ours]
    if all(p in shapes for p in paths):
      out.append(rule)
  return out


def param_shapes(config: QwenVLConfig) -> dict[str, tuple[int, ...]]:
  """{'text/embed/embedding': shape, ...} of the model's params, without allocating them."""
  from jaxagents.models.qwen_vl.model import QwenVL
  from jaxagents.models.qwen_vl.vision_layout import vision_inputs

  v = config.vision
  unit = v.merge_size**2
  grid = np.array([[1, v.merge_size, v.merge_size]])
  inputs = vision_inputs(np.zeros((unit, v.patch_dim), np.float32), grid, config)
  ids = np.full((1, 1), config.image_token_id, np.int32)
  abstract = jax.eval_shape(QwenVL(config).init, jax.random.key(0), ids, np.zeros((3, 1, 1), np.int32),
                            np.ones((1, 1), bool), inputs)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
  return {k: tuple(getattr(x, "value", x).shape) for k, x in flat.items()}


def _split_key(key: str) -> tuple[str, str]:
  for prefix, part in _LOAD_PREFIXES:
    if key.startswith(prefix):
      return part, key[len(prefix):]
  raise AssertionError("unreachable: the empty prefix matches everything")


def _match(rules: list[Rule], key: str) -> tuple[Rule, int] | None:
  part, rest = _split_key(key)
  for rule in rules:
    if rule.part != part:
      continue
    m = rule.pattern.match(rest)
    if m:
      return rule, int(m.group(1)) if rule.layered else 0
  return None


def hf_to_params(
  tensors: Iterator[tuple[str, Array]] | Mapping[str, Array], config: QwenVLConfig, dtype: Any = None
) -> Params:
  """Builds our param tree from HF tensors (a dict, or an iterator of (key, array) that is consumed lazily).

  Args:
    tensors: HF state-dict entries (numpy arrays; torch tensors are converted with `.numpy()`).
    config: the model config (decides which keys are expected).
    dtype: cast every tensor to this dtype (e.g. `jnp.bfloat16`); None keeps the stored dtype.
  Returns:
    The nested `params` dict (`{'text': ..., 'visual': ..., 'lm_head': ...}`) for `QwenVL(config).apply`.
  Raises:
    ValueError naming the missing keys, the unexpected keys, or a key whose shape does not match.
  """
  shapes = param_shapes(config)
  rules = _rules_for(config, shapes)
  flat: dict[str, Array] = {}
  seen: set[tuple[int, int]] = set()
  unexpected: list[str] = []
  items = tensors.items() if isinstance(tensors, Mapping) else tensors
  for key, tensor in items:
    matched = _match(rules, key)
    if matched is None:
      if not (config.tie_word_embeddings and key == "lm_head.weight"):
        unexpected.append(key)
      continue
    rule, index = matched
    if index >= _count(rule, config):
      unexpected.append(key)
      continue
    array = tensor.numpy() if hasattr(tensor, "numpy") and not isinstance(tensor, np.ndarray) else np.asarray(tensor)
    if dtype is not None:
      array = array.astype(dtype)
    for path, value in zip(rule.ours, rule.to_ours(array), strict=True):
      path = path.format(i=index)
      expected = shapes[path][1:] if _stacked(rule) else shapes[path]
      if tuple(value.shape) != tuple(expected):
        raise ValueError(
          f"checkpoint tensor {key!r}: converts to shape {tuple(value.shape)} for {path!r}, but the config "
          f"expects {tuple(expected)}; the checkpoint and config.json disagree."
        )
      if _stacked(rule):
        if path not in flat:
          flat[path] = np.empty(shapes[path], value.dtype)
        flat[path][index] = value
      else:
        flat[path] = value
    seen.add((RULES.index(rule), index))
  missing = [rule.hf.replace("{i}", str(i)) if rule.layered else rule.hf
             for rule in rules for i in range(_count(rule, config)) if (RULES.index(rule), i) not in seen]
  if missing or unexpected:
    raise ValueError(
      f"checkpoint keys do not match the {config.family} config: {len(missing)} missing "
      f"{preview_keys(missing)}, {len(unexpected)} unexpected {preview_keys(unexpected)}. Check that config.json "
      f"belongs to these weights (family, depth, num_hidden_layers, tie_word_embeddings)."
    )
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def params_to_hf(params: Params, config: QwenVLConfig, dtype: Any = None) -> Iterator[tuple[str, Array]]:
  """Yields (HF key, numpy array) in the family's native layout, one tensor at a time.

  `params` is the nested `params` collection (with or without the outer {'params': ...}), plain arrays or the
  `LogicallyPartitioned` boxes that `QwenVL(config).init` returns.
  """
  params = unbox(params)
  params = params.get("params", params)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
  prefixes = _PREFIXES[config.family]
  for rule in _rules_for(config, shapes):
    for i in range(_count(rule, config)):
      parts = []
      for path in rule.ours:
        value = flat[path.format(i=i)]
        parts.append(np.asarray(jax.device_get(value[i] if _stacked(rule) else value)))
      tensor = rule.to_hf(*parts, config=config)
      if dtype is not None:
        tensor = tensor.astype(dtype)
      yield prefixes[rule.part] + rule.hf.format(i=i), tensor


# ---------------------------------------------------------------------------------------------------------- files
_INDEX = "model.safetensors.index.json"


def checkpoint_files(directory: str) -> list[str]:
  """The safetensors files of an HF checkpoint directory (from its index when sharded).

  Raises ValueError for an index entry that leads outside `directory` (see `_inside`).
  """
  index = os.path.join(directory, _INDEX)
  if os.path.exists(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    for name in names:
      if not _inside(directory, name):
        raise ValueError(
          f"checkpoint index {index!r}: weight_map entry {name!r} is outside the checkpoint directory "
          f"{directory!r}; shards must be files of that directory, named relative to it."
        )
    return [os.path.join(directory, n) for n in names]
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(single):
    return [single]
  found = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors")) if os.path.isdir(directory) else []
  if not found:
    raise FileNotFoundError(
      f"checkpoint directory {directory!r}: no {_INDEX}, model.safetensors or *.safetensors (pickle "
      f"checkpoints (*.bin, *.pt) are not read; convert them with transformers' save_pretrained first)."
    )
  return [os.path.join(directory, n) for n in found]


def _inside(directory: str, name: str) -> bool:
  """Whether the index entry `name` names a file under `directory`: not absolute, no `..` out of it, and no
  directory on the way that is a symlink leading out.

  The file itself may be a symlink anywhere: huggingface_hub's cache stores every file of a snapshot as a link
  to `../../blobs/<hash>`. Only the index's own naming (and the directories it walks through) is confined.
  """
  if os.path.isabs(name):
    return False
  root = os.path.realpath(directory)
  parent = os.path.realpath(os.path.join(directory, os.path.dirname(name)))
  lexical = os.path.normpath(os.path.join(root, name))
  return all(os.path.commonpath([root, p]) == root for p in (parent, lexical)) and lexical != root


def iter_safetensors(directory: str) -> Iterator[tuple[str, Array]]:
  """Streams (key, numpy array) from every safetensors file of a checkpoint, one tensor in memory at a time.

  Raises ValueError naming the file when one is not valid safetensors (truncated, corrupt), with safetensors'
  own error as its `__cause__`.
  """
  from safetensors import SafetensorError, safe_open

  for path in checkpoint_files(directory):
    try:
      handle = safe_open(path, framework="numpy")  # parses and checks the header
    except SafetensorError as error:
      raise ValueError(f"checkpoint file {path!r}: not a readable safetensors file ({error}).") from error
    with handle as f:
      for key in f.keys():
        try:
          tensor = f.get_tensor(key)
        except SafetensorError as error:
          raise ValueError(f"checkpoint file {path!r}: cannot read tensor {key!r} ({error}).") from error
        yield key, tensor


def load_config(directory: str, mrope_mode: str = "qwen") -> QwenVLConfig:
  with open(os.path.join(directory, "config.json")) as f:
    return QwenVLConfig.from_hf(json.load(f), mrope_mode=mrope_mode)


def load_params(directory: str, config: QwenVLConfig | None = None, dtype: Any = None) -> tuple[QwenVLConfig, Params]:
  """(config, params) from an HF checkpoint directory (config.json + safetensors, sharded or not)."""
  config = config or load_config(directory)
  return config, hf_to_params(iter_safetensors(directory), config, dtype)


def save_params(
  params: Params, config: QwenVLConfig, directory: str, *, dtype: Any = None, max_shard_bytes: int = 5_000_000_000
) -> list[str]:
  """Writes an HF checkpoint directory (config.json, safetensors shards and their index) atomically.

  Tensors stream out of `params_to_hf`; at most one shard (`max_shard_bytes`) is held in memory besides the
  params. Each file is written under a temporary name and renamed into place, the index (or the single
  `model.safetensors`) last, so a reader never sees a partial checkpoint. Returns the safetensors file names.
  """
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  written: list[tuple[str, list[str]]] = []  # (temporary path, keys)
  shard: dict[str, Array] = {}
  size = 0

  def flush():
    tmp = os.path.join(directory, f".shard-{len(written):05d}.safetensors.tmp")
    save_file(shard, tmp, metadata={"format": "pt"})
    written.append((tmp, list(shard)))

  for key, tensor in params_to_hf(params, config, dtype):
    if shard and size + tensor.nbytes > max_shard_bytes:
      flush()
      shard, size = {}, 0
    shard[key] = np.ascontiguousarray(tensor)
    size += tensor.nbytes
  flush()
  count = len(written)
  names = ["model.safetensors"] if count == 1 else [f"model-{k + 1:05d}-of-{count:05d}.safetensors"
                                                    for k in range(count)]
  _atomic_write_json(os.path.join(directory, "config.json"), config.to_hf())
  for (tmp, _), name in zip(written, names, strict=True):
    os.replace(tmp, os.path.join(directory, name))
  if count > 1:
    weight_map = {key: name for (_, keys), name in zip(written, names, strict=True) for key in keys}
    total = sum(os.path.getsize(os.path.join(directory, n)) for n in names)
    _atomic_write_json(os.path.join(directory, _INDEX), {"metadata": {"total_size": total}, "weight_map": weight_map})
  return names


def _atomic_write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)
