"""Released GUI-Actor checkpoints (HF safetensors) <-> `GUIActor` params.

The released models (microsoft/GUI-Actor-{2B,7B}-Qwen2-VL, -{3B,7B}-Qwen2.5-VL) are `save_pretrained` files of
`Qwen2VLForConditionalGenerationWithPointer` / `Qwen2_5_VLForConditionalGenerationWithPointer` (microsoft/GUI-Actor
`src/gui_actor/modeling.py`, `modeling_qwen25vl.py`; transformers 4.51.3 per their pyproject.toml). Their keys are
the backbone's transformers layout (`model.*` decoder, `visual.*` vision tower, `lm_head.weight` unless tied),
converted by `models.qwen_vl.convert`'s table, plus the head `multi_patch_pointer_head.*`, converted by the table
`action_head.RELEASED_KEYS` (torch Linear weights transposed). Their `config.json` is the backbone's plus
`pointer_{start,end,pad}_token_id` (`GUIActorConfig.from_hf`).

A checkpoint that does not match the config is rejected by name: a tensor of the wrong shape names the key, its
shape, the expected shape and the file it came from; missing and unexpected keys are listed with the checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.gui_actor.action_head import RELEASED_KEYS, RELEASED_PREFIX, released_key_shapes
from jaxagents.models.gui_actor.model import GUIActorConfig
from jaxagents.models.qwen_vl import convert as qwen_convert
from jaxagents.sharding import unbox

Array = np.ndarray
Params = dict[str, Any]

# Our top-level param collections: `GUIActor`'s submodules.
BACKBONE, HEAD = "backbone", "action_head"
_HEAD_TABLE = {RELEASED_PREFIX + key: (path, transpose) for key, path, transpose in RELEASED_KEYS}


class _HeadMismatch(ValueError):
  """A head tensor that does not fit; raised from inside the backbone's stream and passed through unchanged."""


def _to_numpy(tensor: Any) -> Array:
  return tensor.numpy() if hasattr(tensor, "numpy") and not isinstance(tensor, np.ndarray) else np.asarray(tensor)


def _convert(items: Iterable[tuple[str, Any, str]], config: GUIActorConfig, dtype: Any, checkpoint: str) -> Params:
  """(key, tensor, source) triples -> {'backbone': ..., 'action_head': ...}; `source` names the file of a tensor in
  errors, `checkpoint` the whole input."""
  expected = released_key_shapes(config.hidden_size, config.projection_dim)
  head: dict[str, Any] = {}
  seen_head: set[str] = set()
  unexpected_head: list[str] = []
  last = {"source": None, "done": False}

  def missing_head() -> list[str]:
    return [key for key in expected if key not in seen_head]

  def backbone_items() -> Iterator[tuple[str, Any]]:
    for key, tensor, source in items:
      if not key.startswith(RELEASED_PREFIX):
        last["source"] = source
        yield key, tensor
        continue
      if key not in _HEAD_TABLE:
        unexpected_head.append(key)
        continue
      array = _to_numpy(tensor)
      if tuple(array.shape) != expected[key]:
        raise _HeadMismatch(
          f"GUI-Actor checkpoint {source}: tensor {key!r} has shape {tuple(array.shape)}, expected "
          f"{expected[key]} (action head of width {config.hidden_size}, projection "
          f"{config.projection_dim or config.hidden_size}); the checkpoint and config.json disagree.")
      path, transpose = _HEAD_TABLE[key]
      array = np.ascontiguousarray(array.T) if transpose else array
      node = head
      for name in path[:-1]:
        node = node.setdefault(name, {})
      node[path[-1]] = array if dtype is None else array.astype(dtype)
      seen_head.add(key)
    last["done"] = True

  try:
    backbone = qwen_convert.hf_to_params(backbone_items(), config.backbone, dtype)
  except _HeadMismatch:
    raise
  except ValueError as error:
    # Raised mid-stream: a shape mismatch of the tensor just read; after the stream: missing or unexpected keys.
    where = last["source"] if not last["done"] else checkpoint
    extra = (f"; head: {len(missing_head())} missing {preview_keys(missing_head())}, {len(unexpected_head)} "
             f"unexpected {preview_keys(unexpected_head)}") if last["done"] else ""
    raise ValueError(f"GUI-Actor checkpoint {where}: backbone: {error}{extra}") from error
  if missing_head() or unexpected_head:
    raise ValueError(
      f"GUI-Actor checkpoint {checkpoint}: action head keys do not match: {len(missing_head())} missing "
      f"{preview_keys(missing_head())}, {len(unexpected_head)} unexpected {preview_keys(unexpected_head)} (expected "
      f"the {len(RELEASED_KEYS)} keys `{RELEASED_PREFIX}*` of `VisionHead_MultiPatch`).")
  return {BACKBONE: backbone, HEAD: head}


def hf_to_params(
  tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], config: GUIActorConfig, dtype: Any = None
) -> Params:
  """Our `GUIActor` params from released-layout tensors (a dict, or (key, array) pairs consumed lazily).

  Args:
    tensors: backbone keys (`model.*`, `visual.*`, `lm_head.weight`) and `multi_patch_pointer_head.*`; numpy arrays
      or torch tensors.
    config: `GUIActorConfig` (decides the expected keys and shapes).
    dtype: cast every tensor to this dtype; None keeps the stored dtype.
  Returns:
    {'backbone': `QwenVL` params, 'action_head': `ActionHead` params}.
  Raises:
    ValueError naming a tensor of the wrong shape (with both shapes) or the missing / unexpected keys.
  """
  pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
  return _convert(((key, tensor, "(in memory)") for key, tensor in pairs), config, dtype, "(in memory)")


def params_to_hf(params: Params, config: GUIActorConfig, dtype: Any = None) -> Iterator[tuple[str, Array]]:
  """Yields (released key, numpy array): the backbone in its family's layout, then the head."""
  params = unbox(params)
  params = params.get("params", params)
  yield from qwen_convert.params_to_hf(params[BACKBONE], config.backbone, dtype)
  for key, path, transpose in RELEASED_KEYS:
    value = params[HEAD]
    for name in path:
      value = value[name]
    array = np.asarray(jax.device_get(value))
    array = np.ascontiguousarray(array.T) if transpose else array
    yield RELEASED_PREFIX + key, array if dtype is None else array.astype(dtype)


def _iter_files(files: list[str]) -> Iterator[tuple[str, Array, str]]:
  """(key, numpy array, file) of every tensor of the given safetensors files, one tensor in memory at a time."""
  from safetensors import SafetensorError, safe_open

  for path in files:
    try:
      handle = safe_open(path, framework="numpy")
    except SafetensorError as error:
      raise ValueError(f"GUI-Actor checkpoint file {path!r}: not a readable safetensors file ({error}).") from error
    with handle as f:
      for key in f.keys():
        yield key, f.get_tensor(key), f"file {path!r}"


def load_config(directory: str, mrope_mode: str = "qwen") -> GUIActorConfig:
  """`GUIActorConfig.from_hf` of the checkpoint's config.json."""
  with open(os.path.join(directory, "config.json")) as f:
    return GUIActorConfig.from_hf(json.load(f), mrope_mode=mrope_mode)


def load_params(
  directory: str, config: GUIActorConfig | None = None, dtype: Any = None
) -> tuple[GUIActorConfig, Params]:
  """(config, params) from a released GUI-Actor checkpoint directory (config.json + safetensors, sharded or not)."""
  config = config or load_config(directory)
  files = qwen_convert.checkpoint_files(directory)
  params = _convert(_iter_files(files), config, dtype, f"{directory!r} ({len(files)} safetensors files)")
  return config, params
