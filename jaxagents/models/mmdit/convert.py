"""diffusers transformer checkpoints -> MMDiT params, for `Flux2Transformer2DModel` (diffusers
`src/diffusers/models/transformers/transformer_flux2.py`) and `LensTransformer2DModel` (`transformer_lens.py`).

Conversion is one table, `RULES`: a diffusers key template (`{i}`: block index, or text-layer index) -> our param
path(s) and a transform. A template whose `{i}` is absent from our paths fills one slice of an array stacked over
blocks (the scanned 'double_blocks' / 'single_blocks'); fused diffusers weights are split: Lens' `img_qkv` into
q, k, v; FLUX.2's SwiGLU `linear_in` into gate, up; FLUX.2's single-block `to_qkv_mlp_proj` into q, k, v, gate,
up and its `to_out` (columns) into the attention out and the MLP down projections. torch Linear weights
[out, in] become our kernels [in, out].

Loading streams tensor by tensor from the safetensors files of a `save_pretrained` directory (sharded or not),
memory-mapped, into preallocated stacked arrays; pickle files are never read. Every error names the file (or the
directory) and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import ml_dtypes
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.mmdit.config import MMDiTConfig
from jaxagents.models.mmdit.model import MMDiT, unstack_blocks

Array = np.ndarray
Transform = Callable[[Array, MMDiTConfig], tuple[Array, ...]]
_FLUX2, _LENS = ("flux2",), ("lens",)


def _copy(x: Array, config: MMDiTConfig) -> tuple[Array]:
  return (x,)


def _kernel(x: Array, config: MMDiTConfig) -> tuple[Array]:
  return (np.ascontiguousarray(x.T),)


def _split(sizes: Callable[[MMDiTConfig], list[int]], axis: int = 0) -> Transform:
  """A fused Linear weight (rows of the output for axis 0, columns of the input for axis 1) or bias split into
  parts of `sizes(config)`, each weight part transposed to a kernel."""

  def transform(x: Array, config: MMDiTConfig) -> tuple[Array, ...]:
    sizes_ = sizes(config)
    if x.shape[axis if x.ndim == 2 else 0] != sum(sizes_):
      raise _ShapeError(f"fused dim {x.shape} does not split into {sizes_} along axis {axis}")
    parts = np.split(x, np.cumsum(sizes_)[:-1], axis=axis if x.ndim == 2 else 0)
    return tuple(np.ascontiguousarray(p.T) if p.ndim == 2 else p for p in parts)

  return transform


class _ShapeError(Exception):
  pass


def _qkv(c):
  return [c.width] * 3


def _swiglu(c):
  return [c.mlp_dim] * 2


def _qkv_mlp(c):
  return [c.width] * 3 + [c.mlp_dim] * 2


def _attn_mlp(c):
  return [c.width, c.mlp_dim]


@dataclasses.dataclass(frozen=True)
class Rule:
  """diffusers `key` template <-> our param `ours` path(s); `transform(tensor, config)` gives one array per path."""

  key: str
  ours: tuple[str, ...]
  transform: Transform
  families: tuple[str, ...]

  @property
  def indexed(self) -> bool:
    return "{i}" in self.key

  @property
  def stacked(self) -> bool:
    return self.indexed and "{i}" not in "".join(self.ours)

  @property
  def pattern(self) -> re.Pattern:
    return re.compile("^" + re.escape(self.key).replace(r"\{i\}", r"(\d+)") + "$")


def _linear(key: str, ours: str, families, bias: bool = False, split=None) -> list[Rule]:
  """A torch Linear `key` -> `ours`/kernel (+ bias); with `split`, a fused one -> the paths in `ours`."""
  paths = (ours,) if isinstance(ours, str) else tuple(ours)
  weight = _kernel if split is None else split
  rules = [Rule(f"{key}.weight", tuple(f"{p}/kernel" for p in paths), weight, families)]
  if bias:
    rules.append(Rule(f"{key}.bias", tuple(f"{p}/bias" for p in paths), _copy if split is None else split, families))
  return rules


def _norm(key: str, ours: str, families) -> Rule:
  return Rule(f"{key}.weight", (f"{ours}/scale",), _copy, families)


_D, _S = "double_blocks", "single_blocks"
_TB, _STB = "transformer_blocks.{i}", "single_transformer_blocks.{i}"


def _flux2_rules() -> list[Rule]:
  f = _FLUX2
  rules = [
    *_linear("time_guidance_embed.timestep_embedder.linear_1", "time_embed/linear_1", f),
    *_linear("time_guidance_embed.timestep_embedder.linear_2", "time_embed/linear_2", f),
    *_linear("time_guidance_embed.guidance_embedder.linear_1", "guidance_embed/linear_1", f),
    *_linear("time_guidance_embed.guidance_embedder.linear_2", "guidance_embed/linear_2", f),
    *_linear("double_stream_modulation_img.linear", "double_mod_img/proj", f),
    *_linear("double_stream_modulation_txt.linear", "double_mod_txt/proj", f),
    *_linear("single_stream_modulation.linear", "single_mod/proj", f),
    *_linear("x_embedder", "img_in", f),
    *_linear("context_embedder", "txt_in", f),
    *_linear(f"{_TB}.attn.to_out.0", f"{_D}/attn/img_o", f),
    *_linear(f"{_TB}.attn.to_add_out", f"{_D}/attn/txt_o", f),
    *_linear(f"{_STB}.attn.to_qkv_mlp_proj", [f"{_S}/attn/q", f"{_S}/attn/k", f"{_S}/attn/v", f"{_S}/mlp/gate",
                                              f"{_S}/mlp/up"], f, split=_split(_qkv_mlp)),
    *_linear(f"{_STB}.attn.to_out", [f"{_S}/attn/o", f"{_S}/mlp/down"], f, split=_split(_attn_mlp, axis=1)),
    *_linear("norm_out.linear", "norm_out/proj", f),
    *_linear("proj_out", "proj_out", f),
  ]
  for p in "qkv":
    rules += _linear(f"{_TB}.attn.to_{p}", f"{_D}/attn/img_{p}", f)
    rules += _linear(f"{_TB}.attn.add_{p}_proj", f"{_D}/attn/txt_{p}", f)
  for p in "qk":
    rules += [_norm(f"{_TB}.attn.norm_{p}", f"{_D}/attn/img_{p}_norm", f),
              _norm(f"{_TB}.attn.norm_added_{p}", f"{_D}/attn/txt_{p}_norm", f),
              _norm(f"{_STB}.attn.norm_{p}", f"{_S}/attn/{p}_norm", f)]
  for hf, ours in (("ff", "img_mlp"), ("ff_context", "txt_mlp")):
    rules += _linear(f"{_TB}.{hf}.linear_in", [f"{_D}/{ours}/gate", f"{_D}/{ours}/up"], f, split=_split(_swiglu))
    rules += _linear(f"{_TB}.{hf}.linear_out", f"{_D}/{ours}/down", f)
  return rules


def _lens_rules() -> list[Rule]:
  f = _LENS
  rules = [
    *_linear("time_text_embed.timestep_embedder.linear_1", "time_embed/linear_1", f, bias=True),
    *_linear("time_text_embed.timestep_embedder.linear_2", "time_embed/linear_2", f, bias=True),
    _norm("txt_norm.{i}", "txt_norm_{i}", f),  # multi_layer_encoder_feature=True
    _norm("txt_norm", "txt_norm_0", f),  # multi_layer_encoder_feature=False
    *_linear("txt_in", "txt_in", f, bias=True),
    *_linear("img_in", "img_in", f, bias=True),
    *_linear(f"{_TB}.attn.to_out.0", f"{_D}/attn/img_o", f, bias=True),
    *_linear(f"{_TB}.attn.to_add_out", f"{_D}/attn/txt_o", f, bias=True),
    *_linear("norm_out.linear", "norm_out/proj", f, bias=True),
    *_linear("proj_out", "proj_out", f, bias=True),
  ]
  for hf, ours in (("norm_q", "img_q_norm"), ("norm_k", "img_k_norm"), ("norm_added_q", "txt_q_norm"),
                   ("norm_added_k", "txt_k_norm")):
    rules.append(_norm(f"{_TB}.attn.{hf}", f"{_D}/attn/{ours}", f))
  for s in ("img", "txt"):
    rules += _linear(f"{_TB}.attn.{s}_qkv", [f"{_D}/attn/{s}_{p}" for p in "qkv"], f, bias=True, split=_split(_qkv))
    rules += _linear(f"{_TB}.{s}_mod.1", f"{_D}/{s}_mod/proj", f, bias=True)
    rules += [_norm(f"{_TB}.{s}_norm{n}", f"{_D}/{s}_norm{n}", f) for n in (1, 2)]  # rms_norm=True only
    for hf, ours in (("w1", "gate"), ("w3", "up"), ("w2", "down")):  # gate_mlp=True: GateMLP
      rules += _linear(f"{_TB}.{s}_mlp.{hf}", f"{_D}/{s}_mlp/{ours}", f)
    for hf, ours in (("net.0.proj", "fc1"), ("net.2", "fc2")):  # gate_mlp=False: FeedForward, tanh GELU
      rules += _linear(f"{_TB}.{s}_mlp.{hf}", f"{_D}/{s}_mlp/{ours}", f, bias=True)
  return rules


RULES: tuple[Rule, ...] = (*_flux2_rules(), *_lens_rules())


def param_shapes(config: MMDiTConfig) -> dict[str, tuple[int, ...]]:
  """{'double_blocks/attn/img_q/kernel': shape, ...} of the scanned model's params, without allocating them."""
  config = config.replace(scan_layers=True)
  ids = np.zeros((1, len(config.rope_axes)), np.int32)
  txt = [np.zeros((1, 1, config.text_dim), np.float32)] * config.text_layers
  abstract = jax.eval_shape(
    MMDiT(config).init, jax.random.key(0), np.zeros((1, 1, config.in_channels), np.float32), txt,
    np.zeros((1,), np.float32), ids, ids,
  )
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
  return {k: tuple(getattr(x, "value", x).shape) for k, x in flat.items()}


def _count(rule: Rule, path: str, config: MMDiTConfig) -> int:
  if not rule.indexed:
    return 1
  if not rule.stacked:
    return config.text_layers
  return config.num_double_layers if path.startswith(_D) else config.num_single_layers


def _rules_for(config: MMDiTConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  """This family's rules whose every target exists in the param tree (e.g. no bias rules without biases)."""
  return [r for r in RULES if config.family in r.families and all(p.format(i=0) in shapes for p in r.ours)]


def tensors_to_params(
  tensors: Iterable[tuple[str, Array, str]] | Mapping[str, Array],
  config: MMDiTConfig,
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
    The nested params for `MMDiT(config).apply({'params': params}, ...)` (scanned, or unrolled when
    `config.scan_layers` is False).
  Raises:
    ValueError naming the file and key of an unexpected key or a wrong shape, or the missing keys.
  """
  shapes = param_shapes(config)
  rules = _rules_for(config, shapes)
  items = ((k, v, source) for k, v in tensors.items()) if isinstance(tensors, Mapping) else tensors
  flat: dict[str, Array] = {}
  filled: set[tuple[str, int]] = set()
  unexpected: list[str] = []
  for key, tensor, source in items:
    match = next(((r, m) for r in rules if (m := r.pattern.match(key))), None)
    index = int(match[1][1]) if match and match[0].indexed else 0
    if match is None or index >= _count(match[0], match[0].ours[0], config):
      unexpected.append(f"{key} ({source})")
      continue
    rule = match[0]
    array = np.asarray(tensor) if dtype is None else np.asarray(tensor).astype(dtype)
    try:
      values = rule.transform(array, config)
    except _ShapeError as error:
      raise ValueError(f"checkpoint {source!r}: tensor {key!r} of shape {array.shape}: {error}") from None
    for template, value in zip(rule.ours, values, strict=True):
      path = template.format(i=index)
      expected = shapes[path][1:] if rule.stacked else shapes[path]
      if tuple(value.shape) != tuple(expected):
        raise ValueError(
          f"checkpoint {source!r}: tensor {key!r} of shape {array.shape} converts to {tuple(value.shape)} for "
          f"{path!r}, but the config expects {tuple(expected)}; the checkpoint and its config.json disagree."
        )
      slot = (path, index if rule.stacked else 0)
      if slot in filled:
        raise ValueError(f"checkpoint {source!r}: tensor {key!r} fills {path!r} (layer {slot[1]}) a second time.")
      filled.add(slot)
      if rule.stacked:
        if path not in flat:
          flat[path] = np.empty(shapes[path], value.dtype)
        flat[path][index] = value
      else:
        flat[path] = value
  missing = []
  for rule in rules:
    for template in rule.ours:
      for i in range(_count(rule, template, config)):
        path = template.format(i=i)
        if (path, i if rule.stacked else 0) not in filled and path in shapes:
          missing.append(rule.key.format(i=i))
  missing = sorted(set(missing))
  if missing or unexpected:
    raise ValueError(
      f"checkpoint {source!r}: keys do not match the {config.family} config: {len(missing)} missing "
      f"{preview_keys(missing)}, "
      f"{len(unexpected)} unexpected {preview_keys(unexpected)}. Check that config.json belongs to these weights."
    )
  params = flax.traverse_util.unflatten_dict(flat, sep="/")
  return params if config.scan_layers else unstack_blocks(params, config)


# ---------------------------------------------------------------------------------------------------------- files
_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_SINGLE = "diffusion_pytorch_model.safetensors"
_DTYPES = {
  "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
  "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def checkpoint_files(directory: str) -> list[str]:
  """The safetensors files of a diffusers `save_pretrained` directory (from its index when sharded)."""
  index = os.path.join(directory, _INDEX)
  if os.path.exists(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    for name in names:
      if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"checkpoint index {index!r}: weight_map entry {name!r} is outside {directory!r}.")
    return [os.path.join(directory, n) for n in names]
  if os.path.exists(os.path.join(directory, _SINGLE)):
    return [os.path.join(directory, _SINGLE)]
  found = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors")) if os.path.isdir(directory) else []
  if not found:
    raise FileNotFoundError(
      f"checkpoint directory {directory!r}: no {_INDEX}, {_SINGLE} or *.safetensors (pickle files are not read)."
    )
  return [os.path.join(directory, n) for n in found]


def read_safetensors(path: str) -> Iterator[tuple[str, Array]]:
  """(key, array) of one safetensors file, memory-mapped (bfloat16 and float8 through ml_dtypes)."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      if header_len > size - 8:
        raise ValueError(f"header length {header_len} exceeds the file size {size}")
      header = json.loads(f.read(header_len))
  except (OSError, struct.error, ValueError, UnicodeDecodeError) as error:
    raise ValueError(f"checkpoint file {path!r}: not a readable safetensors file ({error}).") from error
  start_of_data = 8 + header_len
  data = np.memmap(path, np.uint8, mode="r", offset=start_of_data) if size > start_of_data else np.zeros(0, np.uint8)
  for key, info in header.items():
    if key == "__metadata__":
      continue
    dtype = _DTYPES.get(info.get("dtype"))
    begin, end = info.get("data_offsets", (0, -1))
    shape = tuple(info.get("shape", ()))
    if dtype is None or end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize or end > data.size:
      raise ValueError(f"checkpoint file {path!r}: tensor {key!r} has a bad header entry {info}.")
    yield key, data[begin:end].view(dtype).reshape(shape)


def iter_checkpoint(directory: str) -> Iterator[tuple[str, Array, str]]:
  """(key, array, file) for every tensor of a checkpoint directory, one file mapped at a time."""
  for path in checkpoint_files(directory):
    for key, array in read_safetensors(path):
      yield key, array, path


def load_config(directory: str, **overrides: Any) -> MMDiTConfig:
  """`MMDiTConfig.from_diffusers` of `directory`/config.json."""
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    return MMDiTConfig.from_diffusers(json.load(f), **overrides)


def load_params(directory: str, config: MMDiTConfig | None = None, dtype: Any = None) -> tuple[MMDiTConfig, Any]:
  """(config, params) from a diffusers transformer directory (config.json + safetensors)."""
  config = config or load_config(directory)
  return config, tensors_to_params(iter_checkpoint(directory), config, dtype, source=directory)
