"""transformers GPT-OSS checkpoints <-> `GptOss` params, and MXFP4 dequantisation of the released MoE weights.

Conversion is one table, `RULES`: an HF key template (after an optional `model.` prefix; `{i}` a layer index) ->
our param path and a pair of inverse transforms. Loading streams tensor by tensor from (sharded) safetensors into
preallocated layer-stacked arrays.

The released checkpoints (openai/gpt-oss-20b, -120b) store each expert projection as MXFP4 (OCP Microscaling
FP4: E2M1 values, two per byte, low nibble first, one shared E8M0 power-of-two scale per block of 32 values): a
`<proj>_blocks` uint8 tensor [experts, rows, groups, 16] and a `<proj>_scales` uint8 tensor [experts, rows,
groups]. `dequantize_mxfp4` decodes them exactly as transformers `integrations/mxfp4.py`,
`convert_moe_packed_tensors` does (value = FP4[nibble] * 2^(scale - 127), then the last two axes swapped, so
`gate_up_proj` comes out [experts, E, 2 I] and `down_proj` [experts, I, E], the unquantised layout). A layer's
blocks and scales meet in the stream in any order; the first is held until its partner arrives.
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
import jax.numpy as jnp
import numpy as np

from jaxagents.models.checkpoint_keys import preview_keys
from jaxagents.models.qwen_vl.convert import iter_safetensors
from jaxagents.models.text_encoders.gpt_oss import GptOss, GptOssConfig
from jaxagents.sharding import unbox

Array = np.ndarray
Params = dict[str, Any]

# E2M1 code -> value (sign bit 3, then exponent and mantissa), the table of transformers' `FP4_VALUES`.
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      np.float32)
_E8M0_BIAS = 127


def mxfp4_values(blocks: Array, scales: Array) -> Array:
  """Decodes MXFP4 along the last axes: blocks uint8 [..., G, B], scales uint8 [..., G] -> float32 [..., G * 2 B].

  Byte j of a block holds value 2 j in its low nibble and 2 j + 1 in its high nibble. The scale multiplies as a
  float32 power of two (2^(s - 127), so the E8M0 NaN code 255 gives inf, and inf * 0 = NaN, as transformers'
  `torch.ldexp` does).
  """
  blocks, scales = np.asarray(blocks), np.asarray(scales)
  if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
    raise ValueError(f"mxfp4: `blocks` and `scales` must be uint8, got {blocks.dtype} and {scales.dtype}")
  if blocks.ndim < 2 or blocks.shape[:-1] != scales.shape:
    raise ValueError(f"mxfp4: `scales` must have shape blocks.shape[:-1] = {blocks.shape[:-1]}, got {scales.shape}")
  values = np.stack([FP4_VALUES[blocks & 0x0F], FP4_VALUES[blocks >> 4]], axis=-1)  # [..., G, B, 2]
  with np.errstate(over="ignore", invalid="ignore"):
    powers = np.exp2(scales.astype(np.float32) - np.float32(_E8M0_BIAS))  # float32: 2^128 overflows to inf
    values = values.reshape(*blocks.shape[:-1], -1) * powers[..., None]
  return values.reshape(*blocks.shape[:-2], -1)


def dequantize_mxfp4(blocks: Array, scales: Array, dtype: Any = np.float32) -> Array:
  """transformers `convert_moe_packed_tensors`: blocks [E, R, G, B], scales [E, R, G] -> [E, G * 2 B, R] in
  `dtype` (float32, or e.g. `jnp.bfloat16`: every MXFP4 value is exact in bfloat16)."""
  blocks, scales = np.asarray(blocks), np.asarray(scales)
  if blocks.ndim != 4:
    raise ValueError(f"dequantize_mxfp4: `blocks` must have shape [experts, rows, groups, 16], got {blocks.shape}")
  if scales.shape != blocks.shape[:-1]:
    raise ValueError(f"dequantize_mxfp4: `scales` must have shape {blocks.shape[:-1]} (blocks {blocks.shape}), got "
                     f"{scales.shape}")
  experts, rows, groups, width = blocks.shape
  out = np.empty((experts, groups * 2 * width, rows), dtype)
  for expert in range(experts):  # one expert at a time bounds the float32 temporaries (2 GB for all of 20B's)
    out[expert] = mxfp4_values(blocks[expert], scales[expert]).T
  return out


def _identity(x: Array) -> Array:
  return x


def _transpose(x: Array) -> Array:
  return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF key `hf` ({i}: layer index, after an optional `model.` prefix) <-> our param path `ours` (stacked over
  layers when `hf` has `{i}`); `to_ours` and `to_hf` are inverses. `top` keys never carry the `model.` prefix."""

  hf: str
  ours: str
  to_ours: Callable[[Array], Array] = _identity
  to_hf: Callable[[Array], Array] = _identity
  top: bool = False

  @property
  def layered(self) -> bool:
    return "{i}" in self.hf

  @property
  def pattern(self) -> re.Pattern:
    return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(\d+)") + "$")


def _linear(hf: str, ours: str, bias: bool = True, top: bool = False) -> list[Rule]:
  """A torch Linear: weight [out, in] <-> our kernel [in, out]; the bias as is."""
  rules = [Rule(f"{hf}.weight", f"{ours}/kernel", _transpose, _transpose, top)]
  if bias:
    rules.append(Rule(f"{hf}.bias", f"{ours}/bias", top=top))
  return rules


_L = "layers"
RULES: tuple[Rule, ...] = (
  Rule("embed_tokens.weight", "embed/embedding"),
  Rule("layers.{i}.input_layernorm.weight", f"{_L}/attn_norm/scale"),
  *[r for p in "qkvo" for r in _linear(f"layers.{{i}}.self_attn.{p}_proj", f"{_L}/attn/{p}")],
  Rule("layers.{i}.self_attn.sinks", f"{_L}/attn/sinks"),
  Rule("layers.{i}.post_attention_layernorm.weight", f"{_L}/mlp_norm/scale"),
  *_linear("layers.{i}.mlp.router", f"{_L}/moe/router"),
  Rule("layers.{i}.mlp.experts.gate_up_proj", f"{_L}/moe/gate_up"),  # [experts, E, 2 I]: gate/up interleaved
  Rule("layers.{i}.mlp.experts.gate_up_proj_bias", f"{_L}/moe/gate_up_bias"),
  Rule("layers.{i}.mlp.experts.down_proj", f"{_L}/moe/down"),  # [experts, I, E]
  Rule("layers.{i}.mlp.experts.down_proj_bias", f"{_L}/moe/down_bias"),
  Rule("norm.weight", "final_norm/scale"),
  *_linear("lm_head", "lm_head", bias=False, top=True),
)
# The released MXFP4 checkpoints store these two experts' weights as a (blocks, scales) pair instead.
_MXFP4 = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)_(blocks|scales)$")
_MXFP4_TARGET = {"gate_up_proj": "layers.{i}.mlp.experts.gate_up_proj", "down_proj": "layers.{i}.mlp.experts.down_proj"}
_ATTENTION_BIAS = re.compile(r"self_attn\.[qkvo]_proj\.bias$")


def param_shapes(config: GptOssConfig) -> dict[str, tuple[int, ...]]:
  """{'embed/embedding': shape, ...} of `GptOss(config)`'s params, without allocating them."""
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: GptOss(config).init(jax.random.key(0), ids, logits=True))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(unbox(abstract)["params"]), sep="/")
  return {k: tuple(x.shape) for k, x in flat.items()}


def _rules_for(shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  """The rules whose target exists (no q/k/v/o biases without `attention_bias`, no lm_head when tied)."""
  return [rule for rule in RULES if rule.ours in shapes]


def _strip(key: str) -> tuple[str, bool]:
  """(key without its `model.` prefix, whether it had one)."""
  return (key[len("model."):], True) if key.startswith("model.") else (key, False)


def _match(rules: list[Rule], key: str) -> tuple[Rule, int] | None:
  rest, prefixed = _strip(key)
  for rule in rules:
    if rule.top and prefixed:
      continue
    found = rule.pattern.match(key if rule.top else rest)
    if found:
      return rule, int(found.group(1)) if rule.layered else 0
  return None


def _as_numpy(tensor: Any) -> Array:
  if isinstance(tensor, np.ndarray):
    return tensor
  if hasattr(tensor, "detach"):  # a torch tensor (bfloat16 goes through float32)
    tensor = tensor.detach().cpu()
    return tensor.float().numpy() if str(tensor.dtype) == "torch.bfloat16" else tensor.numpy()
  return np.asarray(tensor)


def hf_to_params(
  tensors: Iterator[tuple[str, Any]] | Mapping[str, Any], config: GptOssConfig, dtype: Any = None,
  source: str = "checkpoint",
) -> Params:
  """Builds `GptOss(config)`'s params from HF tensors, dequantising MXFP4 expert weights on the way.

  Args:
    tensors: HF state-dict entries (numpy arrays or torch tensors), a dict or a lazily consumed iterator of
      (key, tensor); `GptOssForCausalLM` (`model.`-prefixed, `lm_head.weight`) or `GptOssModel` keys.
    config: decides which keys are expected.
    dtype: cast every tensor to this dtype (e.g. `jnp.bfloat16`); None keeps the stored dtype (MXFP4 pairs
      decode to float32).
    source: the checkpoint's name in error messages (its directory).
  Returns:
    The nested `params` dict for `GptOss(config).apply({'params': params}, ...)`.
  Raises:
    ValueError naming the missing and unexpected keys, a tensor whose shape does not match the config, or an
    MXFP4 blocks tensor without its scales (or the reverse).
  """
  shapes = param_shapes(config)
  rules = _rules_for(shapes)
  flat: dict[str, Array] = {}
  seen: set[tuple[str, int]] = set()
  unexpected: list[str] = []
  pending: dict[tuple[int, str], dict[str, Array]] = {}  # (layer, proj) -> {'blocks'|'scales': array}

  def put(rule: Rule, index: int, key: str, array: Array) -> None:
    value = rule.to_ours(array)
    if dtype is not None:
      value = value.astype(dtype)
    expected = shapes[rule.ours][1:] if rule.layered else shapes[rule.ours]
    if tuple(value.shape) != tuple(expected):
      raise ValueError(
        f"{source}: tensor {key!r} converts to shape {tuple(value.shape)} for {rule.ours!r}, but the config expects "
        f"{tuple(expected)}; the checkpoint and config.json disagree."
      )
    if rule.layered:
      if rule.ours not in flat:
        flat[rule.ours] = np.empty(shapes[rule.ours], value.dtype)
      flat[rule.ours][index] = value
    else:
      flat[rule.ours] = value
    seen.add((rule.hf, index))

  items = tensors.items() if isinstance(tensors, Mapping) else tensors
  for key, tensor in items:
    quantized = _MXFP4.match(_strip(key)[0])
    if quantized:
      index, proj, part = int(quantized.group(1)), quantized.group(2), quantized.group(3)
      if index >= config.num_layers:
        unexpected.append(key)
        continue
      pair = pending.setdefault((index, proj), {})
      pair[part] = _as_numpy(tensor)
      if len(pair) == 2:
        del pending[(index, proj)]
        target = _MXFP4_TARGET[proj]
        rule = next(r for r in rules if r.hf == target)
        put(rule, index, f"{key.rsplit('_', 1)[0]}_{{blocks,scales}}", dequantize_mxfp4(pair["blocks"], pair["scales"]))
      continue
    matched = _match(rules, key)
    if matched is None:
      if not (config.tie_word_embeddings and key == "lm_head.weight"):
        unexpected.append(key)
      continue
    rule, index = matched
    if rule.layered and index >= config.num_layers:
      unexpected.append(key)
      continue
    put(rule, index, key, _as_numpy(tensor))
  halves = [f"layers.{i}.mlp.experts.{proj}_{'scales' if 'blocks' in pair else 'blocks'}"
            for (i, proj), pair in sorted(pending.items())]
  if halves:
    raise ValueError(
      f"{source}: MXFP4 expert weights come as a _blocks and a _scales tensor; missing {preview_keys(halves)}."
    )
  missing = [rule.hf.replace("{i}", str(i)) for rule in rules
             for i in (range(config.num_layers) if rule.layered else (0,)) if (rule.hf, i) not in seen]
  if missing or unexpected:
    hint = ""
    if any(_ATTENTION_BIAS.search(k) for k in unexpected) or any(_ATTENTION_BIAS.search(k) for k in missing):
      hint = " (attention_bias)"
    raise ValueError(
      f"{source}: keys do not match the GPT-OSS config: {len(missing)} missing {preview_keys(missing)}, "
      f"{len(unexpected)} unexpected {preview_keys(unexpected)}. Check that config.json belongs to these weights "
      f"(num_hidden_layers, num_local_experts, tie_word_embeddings{hint})."
    )
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def params_to_hf(params: Params, config: GptOssConfig, dtype: Any = None) -> Iterator[tuple[str, Array]]:
  """Yields (`GptOssForCausalLM` key, numpy array), unquantised, one tensor at a time."""
  params = unbox(params)
  params = params.get("params", params)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  for rule in _rules_for({k: np.shape(v) for k, v in flat.items()}):
    for i in range(config.num_layers) if rule.layered else (0,):
      value = np.asarray(jax.device_get(flat[rule.ours][i] if rule.layered else flat[rule.ours]))
      tensor = rule.to_hf(value)
      if dtype is not None:
        tensor = tensor.astype(dtype)
      yield (rule.hf if rule.top else "model." + rule.hf).format(i=i), tensor


def load_config(directory: str) -> GptOssConfig:
  """`GptOssConfig` from `directory/config.json` (a `quantization_config` there is ignored: MXFP4 is decoded)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GPT-OSS checkpoint {directory!r}: no config.json")
  with open(path) as f:
    return GptOssConfig.from_hf(json.load(f))


def load_params(directory: str, config: GptOssConfig | None = None, dtype: Any = None) -> tuple[GptOssConfig, Params]:
  """(config, params) from an HF checkpoint directory (config.json + safetensors, sharded or not, MXFP4 or not)."""
  config = config or load_config(directory)
  return config, hf_to_params(iter_safetensors(directory), config, dtype, source=f"checkpoint {directory!r}")
