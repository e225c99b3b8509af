"""Qwen-VL prefill and decode throughput with random weights, beside the roofline anchors of the same device.

    python -m jaxagents.bench.qwen_vl_generate --preset qwen2_5_vl_7b --prompt-len 2048 --new-tokens 128 \
        --batch 1,8,32

Prefill is compute-bound: the table gives its tokens/s, the model FLOP/s (2 x text params per token plus the
attention scores and values) and the ratio to the device's dense bf16 peak. Decode is HBM-bound: every step
reads the text decoder's weights, the output projection and the KV cache written so far, so the ceiling is
`batch / (bytes per step / HBM bandwidth)` tokens/s (bytes counted on the meta device: 14.14 GB per step for
Qwen2/2.5-VL-7B, 15.14 GB for Qwen3-VL-8B, i.e. 237 / 221 tokens/s at bs 1 on an H100's 3.35 TB/s). Decode
tokens/s is measured as (generate time - prefill time) over the decoded tokens, median of `--repeats` runs.
Weights are random normal in bf16 (throughput does not depend on their values); prompts are text tokens.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.bench.report import cell, median_time, publish
from jaxagents.generation import SamplingConfig, generate
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.presets import PRESETS
from jaxagents.models.qwen_vl.vision_layout import vision_inputs

# (HBM bytes/s, dense bf16 FLOP/s) by `device_kind` substring; the SXM parts (spec sheets).
DEVICE_PEAKS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12)}


def device_peaks(device: jax.Device) -> tuple[float | None, float | None]:
  for name, peaks in DEVICE_PEAKS.items():
    if name in device.device_kind:
      return peaks
  return None, None


def random_params(model: QwenVL, config: QwenVLConfig, dtype=jnp.bfloat16, seed: int = 0):
  """Random params with the model's shapes, created on device in `dtype` (norm scales 1)."""
  v = config.vision
  grid = np.array([[1, v.merge_size, v.merge_size]])
  sample = vision_inputs(np.zeros((v.merge_size**2, v.patch_dim), np.float32), grid, config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), np.full((1, 1), config.image_token_id, np.int32),
                            np.zeros((3, 1, 1), np.int32), np.ones((1, 1), bool), sample)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(flax.linen.meta.unbox(abstract)["params"]))

  @jax.jit
  def make(key):
    keys = jax.random.split(key, len(flat))
    out = {}
    for k, (path, leaf) in zip(keys, flat.items(), strict=True):
      if path[-1] in ("scale",):
        out[path] = jnp.ones(leaf.shape, dtype)
      else:
        out[path] = (0.02 * jax.random.normal(k, leaf.shape, jnp.float32)).astype(dtype)
    return out

  return {"params": flax.traverse_util.unflatten_dict(make(jax.random.key(seed)))}


def decode_bytes_per_step(config: QwenVLConfig, batch: int, context: int, bytes_per_value: int = 2) -> float:
  """Bytes one decode step must read: decoder layers + final norm + output projection + the KV cache so far."""
  t = config.text
  attention = t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim + t.num_heads * t.head_dim * t.hidden_size
  if t.qkv_bias:
    attention += (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
  layer = attention + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size
  weights = t.num_layers * layer + t.hidden_size + t.vocab_size * t.hidden_size
  kv = 2 * t.num_layers * t.num_kv_heads * t.head_dim * context * batch
  return float((weights + kv) * bytes_per_value)


def prefill_flops(config: QwenVLConfig, batch: int, length: int) -> float:
  """Matmul FLOPs of a causal prefill: 2 x (weights touched per token) + causal QK^T and PV."""
  t = config.text
  per_token = decode_bytes_per_step(config, 1, 0, 1) - t.hidden_size  # parameter count of the text path
  attention = 2 * 2 * t.num_layers * t.num_heads * t.head_dim * length * (length + 1) / 2
  return batch * (2 * per_token * length + attention)




def run(config: QwenVLConfig, batches: Sequence[int], prompt_len: int, new_tokens: int, repeats: int = 5,
        dtype=jnp.bfloat16, backend: str = "auto") -> list[dict]:
  """Measures prefill and decode for each batch size; returns one dict of numbers per batch size."""
  model = QwenVL(config, dtype=dtype, backend=backend)
  params = random_params(model, config, dtype)
  hbm, peak = device_peaks(jax.devices()[0])
  rows = []
  rng = np.random.default_rng(0)
  for batch in batches:
    ids = rng.integers(0, min(config.text.vocab_size, 100_000), (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    positions = np.broadcast_to(np.arange(prompt_len, dtype=np.int32), (3, batch, prompt_len))
    base = np.full((3, batch), prompt_len - 1, np.int32)
    inputs = ModelInputs(ids, mask, positions, base, None)
    prefill = median_time(lambda: generate(model, params, inputs,  # noqa: B023
                                            sampling=SamplingConfig(1), cache_dtype=dtype).tokens, repeats)
    total = median_time(lambda: generate(model, params, inputs,  # noqa: B023
                                          sampling=SamplingConfig(new_tokens), cache_dtype=dtype).tokens, repeats)
    decode_time = max(total - prefill, 1e-9)
    context = prompt_len + new_tokens // 2
    ceiling = batch * hbm / decode_bytes_per_step(config, batch, context) if hbm else None
    flops = prefill_flops(config, batch, prompt_len) / prefill
    rows.append(dict(
      batch=batch, prefill_tokens_per_s=batch * prompt_len / prefill, prefill_tflops=flops / 1e12,
      prefill_vs_peak=flops / peak if peak else None,
      decode_tokens_per_s=batch * (new_tokens - 1) / decode_time,
      decode_ceiling_tokens_per_s=ceiling,
      decode_vs_ceiling=batch * (new_tokens - 1) / decode_time / ceiling if ceiling else None,
    ))
  return rows


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}",
           "| batch | prefill tok/s | prefill TFLOP/s | vs bf16 peak | decode tok/s | HBM ceiling tok/s | vs ceiling |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
      f"| {r['batch']} | {cell(r['prefill_tokens_per_s'], ',.0f')} | {cell(r['prefill_tflops'], '.1f')} | "
      f"{cell(r['prefill_vs_peak'], '.2f')} | {cell(r['decode_tokens_per_s'], ',.1f')} | "
      f"{cell(r['decode_ceiling_tokens_per_s'], ',.1f')} | {cell(r['decode_vs_ceiling'], '.2f')} |"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen2_5_vl_7b", help=f"one of {sorted(PRESETS)}")
  parser.add_argument("--config-json", help="a transformers config.json to use instead of a preset")
  parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
  parser.add_argument("--prompt-len", type=int, default=2048)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--backend", default="auto", help="attention backend: auto, xla, cudnn")
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  if args.config_json:
    with open(args.config_json) as f:
      config = QwenVLConfig.from_hf(json.load(f))
  else:
    config = QwenVLConfig.from_hf(PRESETS[args.preset])
  rows = run(config, [int(b) for b in args.batch.split(",")], args.prompt_len, args.new_tokens, args.repeats,
             jnp.dtype(args.dtype), args.backend)
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
