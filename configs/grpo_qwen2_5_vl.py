"""GRPO on your own Qwen2.5-VL checkpoint and JSONL/Parquet dataset: a real-run recipe (DAPO loss and dynamic
sampling, bf16 compute with float32 master weights, remat, a mesh over all devices).

  python -m jaxagents.train --config configs/grpo_qwen2_5_vl.py --workdir runs/grpo_qwen2_5_vl \
      --config.model.checkpoint=/path/to/Qwen2.5-VL-3B-Instruct --config.data.train=/path/to/train.jsonl \
      --config.data.eval=/path/to/val.jsonl
  python -m jaxagents.train --config configs/grpo_qwen2_5_vl.py:small --workdir /tmp/grpo_small \
      --config.model.checkpoint=/path/to/tiny_checkpoint   # minutes on a CPU: the shipped counting examples

Records: `jaxagents/data/vlm_records.py` (`messages` or `prompt`, `images`, `answer`, optional `reward`). Memory for
3B and 7B (README, `python -m jaxagents.bench.memory`): parameters and AdamW state are sharded over `mesh.fsdp`.
Then `python -m jaxagents.sample --checkpoint <export> --image x.png --prompt "..."` on the export
(`python -m jaxagents.export --workdir runs/grpo_qwen2_5_vl --out runs/grpo_qwen2_5_vl/export`).
"""

import ml_collections

EXAMPLES = "examples/data/counting/train.jsonl"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "checkpoint_grpo"
  c.seed = 0
  c.mesh = dict(data=1, fsdp=-1, tensor=1)  # FSDP over every device: params, grads and Adam state are split
  c.model = dict(checkpoint=ml_collections.config_dict.placeholder(str), dtype="bfloat16", remat="full",
                 mrope_mode="qwen", min_pixels=None, max_pixels=512 * 28 * 28)  # <= 512 visual tokens per image
  c.data = dict(train=EXAMPLES, eval=None, max_prompt_tokens=1024, length_multiple=128, patch_multiple=512)
  c.reward = dict(rewards=[dict(name="numeric", weight=0.9), dict(name="format", weight=0.1)], gate=None)
  c.eval = dict(examples=256, samples=0)
  c.sft = dict(steps=0, batch_size=32, learning_rate=1e-5,  # steps > 0: a warm start on the records' answers first
               micro_batches=4, logprob_chunk=256)
  c.rl = dict(
    steps=500, prompts_per_step=64, group_size=8, updates_per_batch=2, max_new_tokens=1024, temperature=1.0,
    top_p=1.0, learning_rate=1e-6,  # EasyR1 / verl's Qwen2.5-VL GRPO examples: 1e-6
    advantage="grpo",
    loss=dict(variant="dapo"),  # clip-higher 0.2 / 0.28, token-mean loss, no KL (DAPO, arXiv 2503.14476)
    dynamic_sampling=dict(max_rounds=3),  # over-sample up to 3x and drop groups with equal rewards
    micro_batches=8,  # gradient accumulation; per device a micro-batch holds prompts_per_step / devices / 8 prompts
    logprob_chunk=256,  # response log-probs projected 256 positions at a time ([rows, 256, 151936] logits)
  )
  c.log_every = 1
  c.eval_every = 50
  c.tensorboard = True
  c.checkpoint = dict(save_every=25, keep=3)
  if arg == "small":  # the same job at a size a CPU runs in minutes: a tiny checkpoint, the shipped 16 records
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.model.update(dtype="float32", remat="none", max_pixels=56 * 56)
    c.data.update(max_prompt_tokens=256, length_multiple=16, patch_multiple=16)
    c.reward = dict(rewards=["exact_match"], gate=None)
    c.eval = dict(examples=8, samples=2)
    c.sft.update(steps=3, batch_size=4, learning_rate=1e-3)
    c.rl.update(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=4, learning_rate=1e-4,
                loss=dict(variant="grpo", beta=0.04), dynamic_sampling=dict(max_rounds=2), micro_batches=2,
                logprob_chunk=2)
    c.sft.update(micro_batches=2, logprob_chunk=8)
    c.log_every, c.eval_every, c.tensorboard = 1, 0, False
    c.checkpoint = dict(save_every=1, keep=2)
  elif arg:
    raise ValueError(f"configs/grpo_qwen2_5_vl.py: unknown variant {arg!r}; expected none or 'small'.")
  return c
