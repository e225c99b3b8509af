"""Next-token training of `CausalLM` on the shipped sorting task (the quick start job).

Loss: mean cross-entropy over the answer tokens (`loss_mask`). Held-out metrics: answer-token accuracy and
the fraction of sequences whose every answer token is predicted correctly (teacher forcing).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxagents import optim
from jaxagents.data.sorting import SortingSource
from jaxagents.models.causal_lm import CausalLM, CausalLMConfig
from jaxagents.tasks.base import Optimizer, single_phase

_EVAL_SEED_OFFSET = 1_000_003  # held-out records come from another seed, never from the training stream


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `-log softmax(logits)[target]` over positions where `mask` is 1 (0 if the mask is empty)."""
  token_losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(token_losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class SortingLM:
  """Task: learn to sort `config.data.length` symbols drawn from `config.data.num_symbols` (one phase, one loss)."""

  def __init__(self, config):
    self.config = config
    self.phases = single_phase(config)
    data = config.data
    self.train_records = SortingSource(
      data.num_train_records, length=data.length, num_symbols=data.num_symbols, seed=config.seed
    )
    self.eval_source = SortingSource(
      data.num_eval_records, length=data.length, num_symbols=data.num_symbols,
      seed=config.seed + _EVAL_SEED_OFFSET,
    )
    self.model_config = CausalLMConfig(vocab_size=self.train_records.vocab_size, **config.model)
    self.model = CausalLM(self.model_config, dtype=jnp.dtype(config.get("compute_dtype", "float32")))

  def init(self, rng):
    tokens = jnp.zeros((1, self.train_records.sequence_length), jnp.int32)
    return {"params": self.model.init(rng, tokens)["params"]}

  def optimizers(self):
    tx, schedule = optim.make_optimizer(self.config.optimizer, self.config.total_steps)
    return {"main": Optimizer(tx, schedule=schedule)}

  def loss(self, params, batch, rng, phase):
    del rng, phase  # deterministic model: no dropout; one phase
    logits = self.model.apply({"params": params}, batch["inputs"])
    loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    return loss, self._accuracy_metrics(logits, batch)

  def source(self, phase):
    del phase
    return self.train_records

  def evaluate(self, state, step) -> dict[str, float]:
    del step
    records = [self.eval_source[i] for i in range(len(self.eval_source))]
    batch = {key: np.stack([r[key] for r in records]) for key in records[0]}
    metrics = self._eval_step(state["params"], batch)
    return {f"eval/{key}": float(value) for key, value in metrics.items()}

  @functools.partial(jax.jit, static_argnums=0)
  def _eval_step(self, params, batch):
    logits = self.model.apply({"params": params}, batch["inputs"])
    loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    return {"loss": loss, **self._accuracy_metrics(logits, batch)}

  @staticmethod
  def _accuracy_metrics(logits, batch):
    mask = batch["loss_mask"]
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    token_accuracy = jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    sequence_correct = jnp.all((correct == 1.0) | (mask == 0.0), axis=-1)
    return {"token_accuracy": token_accuracy, "sequence_accuracy": jnp.mean(sequence_correct)}
