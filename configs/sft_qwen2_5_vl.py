"""SFT of your own Qwen2.5-VL checkpoint on a JSONL/Parquet dataset (the warm start before GRPO): each record's final
assistant turn, or its answer, is the target.

  python -m jaxagents.train --config configs/sft_qwen2_5_vl.py --workdir runs/sft_qwen2_5_vl \
      --config.model.checkpoint=/path/to/Qwen2.5-VL-3B-Instruct --config.data.train=/path/to/train.jsonl
  python -m jaxagents.train --config configs/sft_qwen2_5_vl.py:small --workdir /tmp/sft_small \
      --config.model.checkpoint=/path/to/tiny_checkpoint   # seconds on a CPU
"""

import importlib.util
import pathlib

import ml_collections


def _grpo_config(arg):
  """configs/grpo_qwen2_5_vl.py, read from beside this file (so the command runs from any directory)."""
  path = pathlib.Path(__file__).with_name("grpo_qwen2_5_vl.py")
  spec = importlib.util.spec_from_file_location("grpo_qwen2_5_vl", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = _grpo_config(arg)
  c = ml_collections.ConfigDict()
  c.task = "checkpoint_sft"
  c.seed = base.seed
  c.mesh, c.model, c.data, c.reward = base.mesh, base.model, base.data, base.reward
  c.eval = dict(examples=base.eval.examples, samples=base.eval.samples, max_new_tokens=base.rl.max_new_tokens,
                temperature=1.0)
  c.sft = dict(steps=1000, batch_size=64, learning_rate=1e-5) if arg != "small" else base.sft
  c.log_every, c.eval_every, c.tensorboard, c.checkpoint = base.log_every, base.eval_every, base.tensorboard, \
    base.checkpoint
  return c
