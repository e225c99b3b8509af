"""diffusers `AutoencoderKLWan` checkpoints <-> `WanVAE` variables, as one table.

`RULES` maps a diffusers state-dict key template to our variable path (`{i}` a level or diffusers' flat encoder
`down_blocks` index, `{j}` a resnet) and a layout: 'conv' (torch [O, I, *k] <-> our [*k, I, O], 2D and 3D),
'gamma3' / 'gamma2' (`WanRMS_norm` gammas [C, 1, 1, 1] / [C, 1, 1] <-> [C]) or 'copy'. Files are read as for the
FLUX.2 VAE (`jaxagents.models.vae.convert.iter_checkpoint`: safetensors only, tensor by tensor, shapes checked from
the header); a missing key, an unexpected key or a shape mismatch raises a ValueError naming the key and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.models.vae.convert import Entry, Rule, RuleTable, iter_checkpoint
from jaxagents.models.wan_vae.config import WanVAEConfig
from jaxagents.models.wan_vae.model import WanVAE
from jaxagents.sharding import unbox

Array = np.ndarray
Variables = dict[str, Any]
_WEIGHTS = "diffusion_pytorch_model"


def _gamma(ones: int) -> tuple[Callable, Callable, Callable]:
  tail = (1,) * ones
  return (lambda s: tuple(s[:1]) if tuple(s[1:]) == tail else tuple(s), lambda x: x.reshape(x.shape[0]),
          lambda x: x.reshape(x.shape[0], *tail))


# Layout of a tensor: torch shape -> ours, torch array -> ours, ours -> torch.
_LAYOUTS: dict[str, tuple[Callable, Callable, Callable]] = {
  "conv": (lambda s: (*s[2:], s[1], s[0]) if len(s) > 2 else tuple(s),
           lambda x: x.transpose(*range(2, x.ndim), 1, 0),
           lambda x: x.transpose(x.ndim - 1, x.ndim - 2, *range(x.ndim - 2))),
  "gamma3": _gamma(3),
  "gamma2": _gamma(2),
  "copy": (tuple, lambda x: x, lambda x: x),
}


def _conv(d: str, o: str) -> list[Rule]:
  return [Rule(f"{d}.weight", f"{o}/kernel", "conv"), Rule(f"{d}.bias", f"{o}/bias")]


def _resnet(d: str, o: str, shortcut: bool = True) -> list[Rule]:
  """A `WanResidualBlock`; its `conv_shortcut` exists only where the channels change (never in a mid block)."""
  return [Rule(f"{d}.norm1.gamma", f"{o}/norm1/scale", "gamma3"), *_conv(f"{d}.conv1", f"{o}/conv1"),
          Rule(f"{d}.norm2.gamma", f"{o}/norm2/scale", "gamma3"), *_conv(f"{d}.conv2", f"{o}/conv2"),
          *(_conv(f"{d}.conv_shortcut", f"{o}/conv_shortcut") if shortcut else [])]


def _resample(d: str, o: str) -> list[Rule]:
  return [*_conv(f"{d}.resample.1", f"{o}/resample"), *_conv(f"{d}.time_conv", f"{o}/time_conv")]


def _mid(d: str, o: str) -> list[Rule]:
  a, b = f"{d}.attentions.0", f"{o}/attention_0"
  return [*_resnet(f"{d}.resnets.{{j}}", f"{o}/resnet_{{j}}", shortcut=False),
          Rule(f"{a}.norm.gamma", f"{b}/norm/scale", "gamma2"),
          *_conv(f"{a}.to_qkv", f"{b}/to_qkv"), *_conv(f"{a}.proj", f"{b}/proj")]


def _ends(d: str, o: str) -> list[Rule]:
  return [*_conv(f"{d}.conv_in", f"{o}/conv_in"), *_mid(f"{d}.mid_block", f"{o}/mid"),
          Rule(f"{d}.norm_out.gamma", f"{o}/norm_out/scale", "gamma3"), *_conv(f"{d}.conv_out", f"{o}/conv_out")]


_E, _D = "params/encoder", "params/decoder"
RULES: tuple[Rule, ...] = (
  *_ends("encoder", _E),
  *_resnet("encoder.down_blocks.{i}", f"{_E}/down_{{i}}"),
  *_resample("encoder.down_blocks.{i}", f"{_E}/down_{{i}}"),
  *_conv("quant_conv", "params/quant_conv"),
  *_conv("post_quant_conv", "params/post_quant_conv"),
  *_ends("decoder", _D),
  *_resnet("decoder.up_blocks.{i}.resnets.{j}", f"{_D}/up_{{i}}_resnet_{{j}}"),
  *_resample("decoder.up_blocks.{i}.upsamplers.0", f"{_D}/up_{{i}}_upsample"),
)
TABLE = RuleTable(RULES, _LAYOUTS, "(base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample)")


def variable_shapes(config: WanVAEConfig) -> dict[str, tuple[int, ...]]:
  """{'params/encoder/conv_in/kernel': shape, ...} without allocating."""
  side = config.spatial_factor
  x = jax.ShapeDtypeStruct((1, 1, side, side, config.in_channels), jnp.float32)
  abstract = jax.eval_shape(WanVAE(config).init, jax.random.key(0), x)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(unbox(abstract)), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def diffusers_to_variables(entries: Iterable[Entry] | Mapping[str, Any], config: WanVAEConfig, dtype: Any = None,
                           source: str = "state dict") -> Variables:
  """Our variables {'params': ...} from diffusers tensors.

  Args:
    entries: a state dict {key: numpy array or torch tensor}, or `Entry` tuples (what `iter_checkpoint` yields).
    config: the network the tensors are for (decides the expected keys and shapes).
    dtype: cast the params to this dtype (e.g. jnp.bfloat16); None keeps the stored one.
    source: how a state dict is named in errors (entries name their own file).
  Raises:
    ValueError naming the missing keys, the unexpected keys (with their files) or a key whose shape does not match.
  """
  return TABLE.read(entries, variable_shapes(config), dtype, source)


def variables_to_diffusers(variables: Variables, config: WanVAEConfig) -> Iterator[tuple[str, Array]]:
  """(diffusers key, numpy array) for every variable."""
  yield from TABLE.write(variables, variable_shapes(config))


def load_config(directory: str) -> WanVAEConfig:
  """The config of a diffusers model directory (`config.json`)."""
  with open(os.path.join(directory, "config.json")) as f:
    return WanVAEConfig.from_diffusers(json.load(f))


def load_variables(directory: str, config: WanVAEConfig | None = None, dtype: Any = None,
                   variant: str | None = None) -> tuple[WanVAEConfig, Variables]:
  """(config, {'params'}) from a diffusers `AutoencoderKLWan.save_pretrained` directory (e.g. the `vae/` folder of
  Wan-AI/Wan2.1-T2V-1.3B-Diffusers)."""
  config = config or load_config(directory)
  return config, diffusers_to_variables(iter_checkpoint(directory, variant), config, dtype)


def save_variables(variables: Variables, config: WanVAEConfig, directory: str) -> str:
  """Writes `config.json` and `diffusion_pytorch_model.safetensors` that diffusers' `from_pretrained` loads; the
  weights file is written under a temporary name and renamed into place. Returns its path."""
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{_WEIGHTS}.safetensors")
  save_file(dict(variables_to_diffusers(variables, config)), path + ".tmp", metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_diffusers(), f, indent=2)
  os.replace(path + ".tmp", path)
  return path
