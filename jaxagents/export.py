"""Export a training run's policy as a Hugging Face checkpoint directory (transformers and vLLM load it as it is).

    python -m jaxagents.export --workdir runs/grpo_qwen2_5_vl --out runs/grpo_qwen2_5_vl/export
    python -m jaxagents.export --workdir runs/sft_qwen2_5_vl --out export --step 500 --dtype bfloat16

Reads the run's `config.json`, restores `params` of its latest checkpoint (or `--step`) onto this machine's devices
(`train.restore_trees`), and writes them with the task's processor (tokenizer, chat template, image options, stop
ids) through `models/qwen_vl/export.py`. The run's task must hold a Qwen-VL `model` and `processor`
(`checkpoint_sft`, `checkpoint_grpo`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def export_run(workdir: str, out: str, *, step: int | None = None, dtype: str = "float32",
               overwrite: bool = False) -> str:
  """Writes the run's params at `step` (default latest) to `out`; returns `out`."""
  from jaxagents.models.qwen_vl.export import export_hf
  from jaxagents.train import restore_trees

  config_file = pathlib.Path(workdir) / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"workdir: {config_file} not found; is {workdir} a training run's workdir?")
  config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
  task, trees, step = restore_trees(config, workdir, ("params",), step)
  processor = getattr(task, "processor", None)
  if processor is None:
    raise ValueError(f"workdir: task {config.task!r} has no Qwen-VL processor to export with; export works for the "
                     "checkpoint_sft and checkpoint_grpo tasks")
  export_hf(out, task.model.config, trees["params"], processor, dtype=DTYPES[dtype], overwrite=overwrite)
  print(f"Exported step {step} of {workdir} to {out}.", file=sys.stderr)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxagents.export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  export_run(args.workdir, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite)
  return 0


if __name__ == "__main__":
  sys.exit(main())
