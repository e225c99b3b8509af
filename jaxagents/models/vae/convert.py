"""diffusers `AutoencoderKLFlux2` checkpoints <-> `Flux2VAE` variables, as one table.

`RULES` maps a diffusers state-dict key template to our variable path (`params/...` or `batch_stats/...`; `{i}` a
level, `{j}` a resnet) and a layout: 'conv' (torch OIHW <-> HWIO), 'linear' (torch [out, in] <-> kernel [in, out]) or
'copy'. Loading reads a `save_pretrained` directory (`diffusion_pytorch_model[.variant].safetensors`, or the shards
of its `.index.json`) tensor by tensor with `safe_open`: shapes are checked from the header before a tensor is read,
and a missing key, an unexpected key or a shape mismatch raises a ValueError naming the key and the file. No pickle
is ever read. `bn.num_batches_tracked` (a training counter) is accepted and dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.vae.config import Flux2VAEConfig
from jaxagents.models.vae.flux2_vae import Flux2VAE
from jaxagents.sharding import unbox

Array = np.ndarray
Variables = dict[str, Any]

_WEIGHTS = "diffusion_pytorch_model"
IGNORED_KEYS = ("bn.num_batches_tracked",)

# Layout of a tensor: torch shape -> ours, torch array -> ours, ours -> torch.
_LAYOUTS: dict[str, tuple[Callable, Callable, Callable]] = {
  "conv": (lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else (), lambda x: x.transpose(2, 3, 1, 0),
           lambda x: x.transpose(3, 2, 0, 1)),
  "linear": (lambda s: (s[1], s[0]) if len(s) == 2 else (), lambda x: x.T, lambda x: x.T),
  "copy": (tuple, lambda x: x, lambda x: x),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """diffusers key template `diffusers` <-> our variable path template `ours`, with a tensor `layout`."""

  diffusers: str
  ours: str
  layout: str = "copy"

  @staticmethod
  def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name in ("i", "j"):
      pattern = pattern.replace(r"\{" + name + r"\}", rf"(?P<{name}>\d+)")
    return re.compile(f"^{pattern}$")

  def match_diffusers(self, key: str) -> dict[str, str] | None:
    m = self._regex(self.diffusers).match(key)
    return None if m is None else m.groupdict()

  def match_ours(self, path: str) -> dict[str, str] | None:
    m = self._regex(self.ours).match(path)
    return None if m is None else m.groupdict()


# Layout of a tensor: (torch shape -> ours, torch array -> ours, ours -> torch).
Layout = tuple[Callable, Callable, Callable]


@dataclasses.dataclass(frozen=True)
class RuleTable:
  """diffusers tensors <-> our variables by a table of `Rule`s (each with a `Layout` by name), for any model whose
  keys map one to one.

  Attributes:
    rules, layouts: the table.
    config_fields: the config fields that decide the keys, named when a checkpoint does not match its config.
    ignored_keys: diffusers keys with no variable of ours (torch buffers), skipped when reading.
    float32_prefixes: our paths that stay float32 whatever `dtype` (running statistics).
  """

  rules: tuple[Rule, ...]
  layouts: dict[str, Layout]
  config_fields: str
  ignored_keys: tuple[str, ...] = ()
  float32_prefixes: tuple[str, ...] = ()

  def to_ours(self, key: str) -> tuple[Rule, str] | None:
    for rule in self.rules:
      groups = rule.match_diffusers(key)
      if groups is not None:
        return rule, rule.ours.format(**groups)
    return None

  def to_diffusers(self, path: str) -> tuple[Rule, str]:
    for rule in self.rules:
      groups = rule.match_ours(path)
      if groups is not None:
        return rule, rule.diffusers.format(**groups)
    raise ValueError(f"variables_to_diffusers: no conversion rule for our variable {path!r}")

  def read(self, entries: Iterable[Entry] | Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
           dtype: Any = None, source: str = "state dict") -> Variables:
    """Our nested variables from diffusers tensors: `entries` a state dict {key: numpy array or torch tensor} or
    `Entry` tuples (what `iter_checkpoint` yields); `shapes` our {path: shape}. Raises ValueError naming the missing
    keys, the unexpected keys (with their files) or a key whose shape does not match."""
    if isinstance(entries, Mapping):
      entries = [(source, k, tuple(np.shape(v)), lambda v=v: _numpy(v)) for k, v in entries.items()]
    flat: dict[str, Array] = {}
    unexpected: list[str] = []
    files: set[str] = set()
    for file, key, shape, read in entries:
      files.add(file)
      if key in self.ignored_keys:
        continue
      found = self.to_ours(key)
      if found is None or found[1] not in shapes:
        unexpected.append(f"{key} (in {file})")
        continue
      rule, path = found
      if path in flat:
        raise ValueError(f"checkpoint file {file!r}: tensor {key!r} is stored twice in the checkpoint")
      to_shape, to_ours, to_torch = self.layouts[rule.layout]
      if tuple(to_shape(shape)) != shapes[path]:
        raise ValueError(
          f"checkpoint file {file!r}: tensor {key!r} has shape {list(shape)}, but the config expects "
          f"{list(to_torch(np.empty(shapes[path], np.uint8)).shape)} (our {path} {list(shapes[path])}); the "
          f"checkpoint and config.json disagree"
        )
      array = np.ascontiguousarray(to_ours(read()))
      if path.startswith(self.float32_prefixes) and self.float32_prefixes:
        array = array.astype(np.float32)
      elif dtype is not None:
        array = array.astype(dtype)
      flat[path] = array
    missing = [self.to_diffusers(path)[1] for path in shapes if path not in flat]
    if missing or unexpected:
      where = ", ".join(sorted(files)) or source
      raise ValueError(
        f"checkpoint {where}: keys do not match the config: {len(missing)} missing {preview_keys(missing)}, "
        f"{len(unexpected)} unexpected {preview_keys(unexpected)}; check that config.json belongs to these weights "
        f"{self.config_fields}"
      )
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def write(self, variables: Variables, shapes: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[str, Array]]:
    """(diffusers key, numpy array) for every variable; `variables` must have exactly the paths of `shapes`."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(unbox(variables)), sep="/")
    if sorted(flat) != sorted(shapes):
      missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
      raise ValueError(f"variables_to_diffusers: `variables` do not match the config: missing "
                       f"{preview_keys(missing)}, extra {preview_keys(extra)}")
    for path, value in flat.items():
      rule, key = self.to_diffusers(path)
      yield key, np.ascontiguousarray(self.layouts[rule.layout][2](np.asarray(jax.device_get(value))))


def _conv(d: str, o: str) -> list[Rule]:
  return [Rule(f"{d}.weight", f"{o}/kernel", "conv"), Rule(f"{d}.bias", f"{o}/bias")]


def _linear(d: str, o: str) -> list[Rule]:
  return [Rule(f"{d}.weight", f"{o}/kernel", "linear"), Rule(f"{d}.bias", f"{o}/bias")]


def _norm(d: str, o: str) -> list[Rule]:
  return [Rule(f"{d}.weight", f"{o}/scale"), Rule(f"{d}.bias", f"{o}/bias")]


def _resnet(d: str, o: str, shortcut: bool = True) -> list[Rule]:
  """A resnet; the 1x1 `conv_shortcut` exists only where its channels change (never in a mid block)."""
  return [*_norm(f"{d}.norm1", f"{o}/norm1"), *_conv(f"{d}.conv1", f"{o}/conv1"), *_norm(f"{d}.norm2", f"{o}/norm2"),
          *_conv(f"{d}.conv2", f"{o}/conv2"), *(_conv(f"{d}.conv_shortcut", f"{o}/conv_shortcut") if shortcut else [])]


def _mid(d: str, o: str) -> list[Rule]:
  a, b = f"{d}.attentions.0", f"{o}/attention_0"
  return [*_resnet(f"{d}.resnets.{{j}}", f"{o}/resnet_{{j}}", shortcut=False), *_norm(f"{a}.group_norm", f"{b}/norm"),
          *[r for t, u in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "out"))
            for r in _linear(f"{a}.{t}", f"{b}/{u}")]]


_E, _D = "params/encoder", "params/decoder"
RULES: tuple[Rule, ...] = (
  *_conv("encoder.conv_in", f"{_E}/conv_in"),
  *_resnet("encoder.down_blocks.{i}.resnets.{j}", f"{_E}/down_{{i}}_resnet_{{j}}"),
  *_conv("encoder.down_blocks.{i}.downsamplers.0.conv", f"{_E}/down_{{i}}_downsample"),
  *_mid("encoder.mid_block", f"{_E}/mid"),
  *_norm("encoder.conv_norm_out", f"{_E}/norm_out"),
  *_conv("encoder.conv_out", f"{_E}/conv_out"),
  *_conv("quant_conv", "params/quant_conv"),
  *_conv("post_quant_conv", "params/post_quant_conv"),
  *_conv("decoder.conv_in", f"{_D}/conv_in"),
  *_mid("decoder.mid_block", f"{_D}/mid"),
  *_resnet("decoder.up_blocks.{i}.resnets.{j}", f"{_D}/up_{{i}}_resnet_{{j}}"),
  *_conv("decoder.up_blocks.{i}.upsamplers.0.conv", f"{_D}/up_{{i}}_upsample"),
  *_norm("decoder.conv_norm_out", f"{_D}/norm_out"),
  *_conv("decoder.conv_out", f"{_D}/conv_out"),
  Rule("bn.running_mean", "batch_stats/bn/running_mean"),
  Rule("bn.running_var", "batch_stats/bn/running_var"),
)
TABLE = RuleTable(RULES, _LAYOUTS, "(block_out_channels, layers_per_block, latent_channels, use_quant_conv, "
                  "mid_block_add_attention)", IGNORED_KEYS, ("batch_stats/",))


def variable_shapes(config: Flux2VAEConfig) -> dict[str, tuple[int, ...]]:
  """{'params/encoder/conv_in/kernel': shape, ..., 'batch_stats/bn/running_mean': (128,)} without allocating."""
  side = config.downsample_factor
  x = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
  abstract = jax.eval_shape(Flux2VAE(config).init, jax.random.key(0), x)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(unbox(abstract)), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


# An entry of a checkpoint: (file it is in, key, stored shape, a thunk that reads the tensor).
Entry = tuple[str, str, tuple[int, ...], Callable[[], Array]]


def diffusers_to_variables(entries: Iterable[Entry] | Mapping[str, Any], config: Flux2VAEConfig,
                           dtype: Any = None, source: str = "state dict") -> Variables:
  """Our variables {'params': ..., 'batch_stats': ...} from diffusers tensors.

  Args:
    entries: a state dict {key: numpy array or torch tensor}, or `Entry` tuples (what `iter_checkpoint` yields).
    config: the network the tensors are for (decides the expected keys and shapes).
    dtype: cast the params to this dtype (e.g. jnp.bfloat16); None keeps the stored one. The running statistics
      are always float32.
    source: how a state dict is named in errors (entries name their own file).
  Raises:
    ValueError naming the missing keys, the unexpected keys (with their files) or a key whose shape does not match.
  """
  return TABLE.read(entries, variable_shapes(config), dtype, source)


def _numpy(x: Any) -> Array:
  if hasattr(x, "detach"):  # a torch tensor
    return x.detach().cpu().numpy()
  return np.asarray(x)


def variables_to_diffusers(variables: Variables, config: Flux2VAEConfig) -> Iterator[tuple[str, Array]]:
  """(diffusers key, numpy array) for every variable, plus `bn.num_batches_tracked` = 0 (torch's BatchNorm buffer)."""
  yield from TABLE.write(variables, variable_shapes(config))
  yield IGNORED_KEYS[0], np.array(0, np.int64)


# ------------------------------------------------------------------------------------------------------------- files
def checkpoint_files(directory: str, variant: str | None = None) -> list[str]:
  """The safetensors files of a diffusers model directory: the shards named by its index, or the single file."""
  stem = _WEIGHTS + (f".{variant}" if variant else "")
  index = os.path.join(directory, f"{stem}.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    root = os.path.realpath(directory)
    for name in names:
      full = os.path.normpath(os.path.join(root, name))
      if os.path.isabs(name) or os.path.dirname(full) != root:
        raise ValueError(f"checkpoint index {index!r}: weight_map entry {name!r} is not a file of {directory!r}")
    return [os.path.join(directory, n) for n in names]
  single = os.path.join(directory, f"{stem}.safetensors")
  if os.path.exists(single):
    return [single]
  present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  raise FileNotFoundError(
    f"checkpoint directory {directory!r}: neither {stem}.safetensors nor {stem}.safetensors.index.json (found "
    f"{present[:10]}); pickle checkpoints (*.bin) are not read, re-save them with diffusers' save_pretrained"
  )


def iter_checkpoint(directory: str, variant: str | None = None) -> Iterator[Entry]:
  """`Entry` tuples of every tensor of a checkpoint directory; a tensor is read only when its thunk is called.

  Raises ValueError naming the file when it is not a readable safetensors file.
  """
  from safetensors import SafetensorError, safe_open

  for path in checkpoint_files(directory, variant):
    try:
      handle = safe_open(path, framework="numpy")
    except (SafetensorError, OSError) as error:
      raise ValueError(f"checkpoint file {path!r}: not a readable safetensors file ({error})") from error
    with handle as f:
      for key in f.keys():
        piece = f.get_slice(key)
        yield path, key, tuple(piece.get_shape()), _reader(path, key, piece.get_dtype(), f)


def _reader(path: str, key: str, dtype: str, handle) -> Callable[[], Array]:
  def read() -> Array:
    from safetensors import SafetensorError, safe_open

    try:
      if dtype == "BF16":  # numpy has no bfloat16: read through JAX's ml_dtypes
        with safe_open(path, framework="flax") as f:
          return np.asarray(f.get_tensor(key))
      return handle.get_tensor(key)
    except SafetensorError as error:
      raise ValueError(f"checkpoint file {path!r}: cannot read tensor {key!r} ({error})") from error

  return read


def load_config(directory: str) -> Flux2VAEConfig:
  """The config of a diffusers model directory (`config.json`)."""
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    return Flux2VAEConfig.from_diffusers(json.load(f))


def load_variables(directory: str, config: Flux2VAEConfig | None = None, dtype: Any = None,
                   variant: str | None = None) -> tuple[Flux2VAEConfig, Variables]:
  """(config, {'params', 'batch_stats'}) from a diffusers `AutoencoderKLFlux2.save_pretrained` directory."""
  config = config or load_config(directory)
  return config, diffusers_to_variables(iter_checkpoint(directory, variant), config, dtype)


def save_variables(variables: Variables, config: Flux2VAEConfig, directory: str) -> str:
  """Writes `config.json` and `diffusion_pytorch_model.safetensors` that diffusers' `from_pretrained` loads; the
  weights file is written under a temporary name and renamed into place. Returns its path."""
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{_WEIGHTS}.safetensors")
  tensors = dict(variables_to_diffusers(variables, config))
  save_file(tensors, path + ".tmp", metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_diffusers(), f, indent=2)
  os.replace(path + ".tmp", path)
  return path
