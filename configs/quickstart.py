"""Quick start: a 2-layer decoder learns to sort 8 digits, on CPU in about a minute.

  python -m jaxagents.train --config configs/quickstart.py --workdir runs/quickstart

Override any field from the command line, e.g. `--config.total_steps=100 --config.mesh.fsdp=2`.
Writes runs/quickstart/{metrics.jsonl, loss.png, tensorboard/, checkpoints/}.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.task = "sorting_lm"
  c.seed = 0
  c.total_steps = 800
  c.batch_size = 64  # global, split over hosts and the data-parallel mesh axes
  c.compute_dtype = "float32"

  c.data = dict(length=8, num_symbols=10, num_train_records=200_000, num_eval_records=512, worker_count=0)
  c.model = dict(
    num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=192, tie_embeddings=True,
    remat="none", attention_backend="xla",
  )
  c.optimizer = dict(
    name="adamw", learning_rate=3e-3, warmup_steps=50, b1=0.9, b2=0.98, weight_decay=0.01, grad_clip_norm=1.0,
  )
  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  c.log_every = 25
  c.tensorboard = True  # also write TensorBoard events (when the tensorboard package is installed)
  c.eval_every = 100
  c.checkpoint = dict(save_every=200, keep=2, async_save=True)
  c.plot_keys = ("loss", "eval/loss", "eval/sequence_accuracy", "learning_rate")
  return c
