"""Device memory of GRPO on Qwen2.5-VL-3B / 7B at the real-run recipe's shapes, computed, not guessed.

    python -m jaxagents.bench.memory                         # 3B and 7B, one device and a v5p-8 (4 chips, fsdp 4)
    python -m jaxagents.bench.memory --models 3b --devices 1 --micro-prompts 1

Two sources, per device:
  * `jax.eval_shape` of the train state: float32 parameters and AdamW moments (what `configs/grpo_qwen2_5_vl.py`
    keeps: DAPO has no KL, so no reference copy), sharded over `fsdp` devices;
  * XLA's memory analysis of the compiled update (`tasks.grpo.policy_update`: bf16 compute, full remat,
    gradient accumulation over micro-batches of whole groups, chunked response-only log-probs) and of the rollout's
    generate call, lowered with abstract inputs on a mesh of fake CPU devices
    (`--xla_force_host_platform_device_count`). XLA:CPU's buffer assignment stands in for the GPU/TPU compiler's:
    the same program and shapes, fusion decisions of another backend, so read the temporaries as an estimate.
The full-size configs are the published `config.json` values of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct.
"""

from __future__ import annotations

import argparse
import os
import sys

_QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                          temporal_patch_size=2, spatial_merge_size=2, in_channels=3, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
               vision_end_token_id=151653)
MODELS = {  # huggingface.co/Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json
  "3b": dict(model_type="qwen2_5_vl", tie_word_embeddings=True, **_TOKENS,
             vision_config={**_QWEN2_5_VL_VISION, "out_hidden_size": 2048},
             text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                               "mrope_section": [16, 24, 24]})),
  "7b": dict(model_type="qwen2_5_vl", tie_word_embeddings=False, **_TOKENS,
             vision_config={**_QWEN2_5_VL_VISION, "out_hidden_size": 3584},
             text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                               "mrope_section": [16, 24, 24]})),
}
GIB = 1024**3


def parameter_count(config) -> int:
  """Parameters of the model, from `jax.eval_shape` of its init (nothing allocated)."""
  import jax
  import numpy as np

  from jaxagents.models.qwen_vl import QwenVL
  from jaxagents.sharding import unbox

  inputs, _ = batch_rows(config, prompts=1, group=1, prompt_tokens=16, visual_tokens=8, response=1)
  shapes = jax.eval_shape(lambda: QwenVL(config).init(jax.random.key(0), *inputs.model_args())["params"])
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(unbox(shapes)))


def batch_rows(config, *, prompts: int, group: int, prompt_tokens: int, visual_tokens: int, response: int):
  """Host `ModelInputs` of `prompts` prompts x `group` sampled responses: one image of `visual_tokens` merged tokens
  per prompt (a 2:1 grid), text to `prompt_tokens`, then `response` completion tokens."""
  import numpy as np

  from jaxagents.models.qwen_vl.inputs import prepare_inputs

  merge = config.vision.merge_size
  h = int(np.sqrt(visual_tokens / 2)) * merge
  w = visual_tokens * merge * merge // h
  text = prompt_tokens - visual_tokens - 2
  row = [9707] * (text // 2) + [config.vision_start_token_id] + [config.image_token_id] * visual_tokens + [
    config.vision_end_token_id] + [9707] * (text - text // 2)
  ids = np.array([row] * prompts, np.int32)
  grid = np.array([[1, h, w]] * prompts, np.int64)
  pixels = np.zeros((prompts * h * w, config.vision.patch_dim), np.float32)
  inputs = prepare_inputs(config, ids, np.ones_like(ids), pixel_values=pixels, image_grid_thw=grid)
  tokens = np.full((prompts * group, response), 9707, np.int32)
  return inputs, inputs.repeat(group).with_completions(tokens, np.full(prompts * group, response), 0)


def measure(name: str, devices: int, *, prompts_per_device: int, group: int, micro_prompts: int,
            prompt_tokens: int, visual_tokens: int, response: int, chunk: int) -> dict[str, float]:
  """Per-device GiB: state (params + AdamW), the compiled update's and the rollout's temporaries and peaks."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxagents import sharding
  from jaxagents.generation import SamplingConfig, generate
  from jaxagents.models.qwen_vl import QwenVL, QwenVLConfig
  from jaxagents.rl import grpo
  from jaxagents.tasks import vlm_sft
  from jaxagents.tasks.base import Optimizer
  from jaxagents.tasks.grpo import policy_update

  config = QwenVLConfig.from_hf(MODELS[name])
  mesh = sharding.make_mesh(dict(data=1, fsdp=devices, tensor=1), jax.devices()[:devices])
  model = QwenVL(config, dtype=jnp.bfloat16, remat="full")
  prompts = prompts_per_device * devices
  host_prompts, (host_inputs, host_mask) = batch_rows(config, prompts=prompts, group=group,
                                                      prompt_tokens=prompt_tokens, visual_tokens=visual_tokens,
                                                      response=response)
  optimizer = Optimizer(vlm_sft.adamw(1e-6))
  loss_config = grpo.grpo_config("dapo")
  sampling = SamplingConfig(response, 1.0)
  with sharding.active(mesh, sharding.DEFAULT_RULES):
    small, _ = batch_rows(config, prompts=1, group=1, prompt_tokens=16, visual_tokens=8, response=1)
    boxed = jax.eval_shape(lambda: {"params": (p := model.init(jax.random.key(0), *small.model_args())["params"]),
                                    "opt_state": {"rl": optimizer.tx.init(p)}})  # boxed: logical axis names
    shardings = sharding.logical_to_sharding(boxed, mesh, sharding.DEFAULT_RULES)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sharding.unbox(boxed),
                         shardings)
    params = state["params"]

    def abstract(tree):
      shards = sharding.batch_axes(tree)
      return jax.tree.map(lambda x, axis: jax.ShapeDtypeStruct(
        np.shape(x), np.asarray(x).dtype, sharding=sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, axis)),
        tree, shards)

    rows = host_mask.shape[0]
    batch = abstract({"inputs": host_inputs, "completion_mask": host_mask,
                      "old_logp": np.zeros(host_mask.shape, np.float32),
                      "advantages": np.zeros((rows,), np.float32)})
    update = functools.partial(policy_update, model, sampling, loss_config, name="rl", optimizer=optimizer,
                               micro_batches=prompts_per_device // micro_prompts,
                               group=group, chunk=chunk, response_length=response)
    compiled = jax.jit(lambda s, b: update(s, b), donate_argnums=0).lower(state, batch).compile()  # as the loop
    update_memory = compiled.memory_analysis()
    rollout = jax.jit(functools.partial(generate, model, sampling=sampling))
    rollout_inputs = abstract(host_prompts.repeat(group))
    rollout_memory = rollout.lower({"params": params}, rollout_inputs, key=jax.random.key(0)).compile() \
      .memory_analysis()
  state_bytes = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(state) if hasattr(x, "sharding"))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  peak = lambda m: (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes  # noqa: E731
                    + m.temp_size_in_bytes)
  return {"params_billions": count / 1e9, "state": state_bytes / GIB,
          "update_temp": update_memory.temp_size_in_bytes / GIB, "update_peak": peak(update_memory) / GIB,
          "rollout_temp": rollout_memory.temp_size_in_bytes / GIB, "rollout_peak": peak(rollout_memory) / GIB}


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=["3b", "7b"], choices=sorted(MODELS))
  parser.add_argument("--devices", nargs="+", type=int, default=[1, 4], help="fsdp sizes (4: a TPU v5p-8)")
  parser.add_argument("--prompts-per-device", type=int, default=8)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--micro-prompts", type=int, default=1, help="prompts per device per micro-batch")
  parser.add_argument("--prompt-tokens", type=int, default=1024)
  parser.add_argument("--visual-tokens", type=int, default=512)
  parser.add_argument("--response", type=int, default=1024)
  parser.add_argument("--chunk", type=int, default=256)
  args = parser.parse_args(argv)
  lines = [f"GRPO memory per device (GiB): {args.prompts_per_device} prompts x {args.group} samples per device, "
           f"{args.prompt_tokens} prompt tokens ({args.visual_tokens} visual) + {args.response} response tokens, "
           f"{args.micro_prompts} prompt(s) per micro-batch, log-prob chunk {args.chunk}, bf16 compute, full remat",
           "", "| model | params (B) | devices (fsdp) | params + AdamW | update temp | update peak | rollout temp | "
           "rollout peak |", "|---|---|---|---|---|---|---|---|"]
  for name in args.models:
    for devices in args.devices:
      m = measure(name, devices, prompts_per_device=args.prompts_per_device, group=args.group,
                  micro_prompts=args.micro_prompts, prompt_tokens=args.prompt_tokens,
                  visual_tokens=args.visual_tokens, response=args.response, chunk=args.chunk)
      lines.append(f"| Qwen2.5-VL-{name.upper()} | {m['params_billions']:.2f} | {devices} | {m['state']:.1f} | "
                   f"{m['update_temp']:.1f} | {m['update_peak']:.1f} | {m['rollout_temp']:.1f} | "
                   f"{m['rollout_peak']:.1f} |")
      print(lines[-1], flush=True)
  table = "\n".join(lines)
  print("\n" + table)
  return table


if __name__ == "__main__":
  if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(0 if main() else 1)
