"""A Qwen-VL checkpoint and a dataset on disk, as SFT and GRPO on them share it: the model, the processor, batches
of records and held-out rewards.

    c.model = dict(checkpoint="path/to/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", remat="full", max_pixels=None)
    c.data = dict(train="train.jsonl", eval="val.jsonl", max_prompt_tokens=2048, length_multiple=64)

The model is built from the checkpoint's `config.json`; its weights are loaded by the loop's `pretrained` hook into
the sharded parameter shells (float32 master weights; `dtype` is the compute dtype). Records come from
`data.vlm_records` (JSONL, Parquet or an HF `datasets` folder): grain carries their indices, the host reads and
renders them with the checkpoint's `Processor`. A record's prompt is its conversation without a final assistant
turn; its SFT target is that assistant turn's text, else `str(answer)`.

Static shapes: prompts are left-padded to a multiple of `data.length_multiple` tokens and each prompt's patches to
a multiple of `data.patch_multiple`, so a run compiles once per bucket, not once per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import sharding
from jaxagents.data.vlm_records import IndexSource, open_dataset, records_for_batch
from jaxagents.generation import SamplingConfig
from jaxagents.models.qwen_vl import QwenVL, load_params
from jaxagents.models.qwen_vl.convert import load_config
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.processor import Processor
from jaxagents.rl import named_rewards
from jaxagents.tasks.counting_vlm import global_mean, host_share
from jaxagents.tasks.rollouts import greedy_and_sampled

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT = ("none", "full", "dots")


def build_model(config) -> tuple[QwenVL, Processor]:
  """The model (compute dtype and remat policy of `config.model`) and the checkpoint's processor."""
  m = config.model
  dtype, remat = m.get("dtype", "float32"), m.get("remat", "none")
  if dtype not in DTYPES:
    raise ValueError(f"config.model.dtype: expected one of {sorted(DTYPES)}, got {dtype!r}.")
  if remat not in REMAT:
    raise ValueError(f"config.model.remat: expected one of {REMAT}, got {remat!r}.")
  model_config = load_config(m.checkpoint, mrope_mode=m.get("mrope_mode", "qwen"))
  processor = Processor.from_pretrained(m.checkpoint, config=model_config, min_pixels=m.get("min_pixels"),
                                        max_pixels=m.get("max_pixels"), mode=model_config.mrope_mode)
  return QwenVL(model_config, dtype=DTYPES[dtype], remat=remat), processor


def pretrained_params(config, abstract_params) -> Any:
  """The checkpoint's weights as host numpy arrays in the dtypes of the abstract (initialised) params (each tree the
  loop places gets buffers of its own, so `params` and `ref_params` can both start from them)."""
  _, params = load_params(config.model.checkpoint)
  abstract = sharding.unbox(abstract_params)
  if jax.tree.structure(params) != jax.tree.structure(abstract):
    raise ValueError(f"{config.model.checkpoint}: its parameter tree is not the model's (was config.json changed?)")
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  mismatched = [f"{jax.tree_util.keystr(path)}: {np.shape(x)} vs {a.shape}"
                for (path, x), a in zip(leaves, jax.tree.leaves(abstract), strict=True) if np.shape(x) != a.shape]
  if mismatched:
    raise ValueError(f"{config.model.checkpoint}: parameter shapes differ from the model's: {mismatched[:4]}")
  return jax.tree.map(lambda x, a: np.asarray(x, a.dtype), params, abstract)


def split_target(messages: Sequence[Mapping]) -> tuple[list[Mapping], str | None]:
  """(the prompt's messages, the final assistant turn's text or None)."""
  messages = list(messages)
  if not messages or messages[-1]["role"] != "assistant":
    return messages, None
  content = messages[-1]["content"]
  if isinstance(content, str):
    return messages[:-1], content
  if any(part.get("type") != "text" for part in content):
    raise ValueError("messages: the final assistant turn (the SFT target) may hold text only, got parts of types "
                     f"{[part.get('type') for part in content]}")
  return messages[:-1], "".join(part["text"] for part in content)


@dataclasses.dataclass
class RecordBatches:
  """A dataset file and the processor that renders its records (`config.data`)."""

  path: str
  processor: Processor
  max_prompt_tokens: int | None = None
  length_multiple: int = 64
  patch_multiple: int = 256

  def __post_init__(self):
    self.dataset = open_dataset(self.path)
    if len(self.dataset) == 0:
      raise ValueError(f"{self.path}: the dataset holds no records")

  @classmethod
  def from_config(cls, config, processor: Processor, split: str = "train") -> RecordBatches | None:
    d = config.data
    path = d.get(split)
    if path is None:
      return None
    return cls(path, processor, d.get("max_prompt_tokens"), d.get("length_multiple", 64),
               d.get("patch_multiple", 256))

  def source(self) -> IndexSource:
    return IndexSource(len(self.dataset))

  def records(self, batch: Mapping[str, np.ndarray]) -> list[dict]:
    return records_for_batch(self.dataset, batch)

  def _render(self, records: Sequence[Mapping], targets: Sequence[str] | None):
    prompts = [split_target(r["messages"])[0] for r in records]
    inputs = self.processor(prompts, [r["images"] for r in records], [r["videos"] for r in records],
                            completions=targets, max_prompt_tokens=self.max_prompt_tokens,
                            length_multiple=self.length_multiple, patch_multiple=self.patch_multiple)
    return inputs

  def prompts(self, records: Sequence[Mapping]) -> ModelInputs:
    """Left-padded prompt rows of the records."""
    return self._render(records, None)

  def sft(self, records: Sequence[Mapping]) -> tuple[ModelInputs, np.ndarray]:
    """Prompt + target rows and the completion mask (targets closed by the stop id)."""
    targets = []
    for r in records:
      target = split_target(r["messages"])[1]
      if target is None and r["answer"] is None:
        raise ValueError(f"{self.path}: record {r.get('id')!r} has neither a final assistant turn nor an answer to "
                         "train on")
      targets.append(target if target is not None else str(r["answer"]))
    return self._render(records, targets)


def rewards(reward_fn: named_rewards.RewardFunction, processor: Processor, tokens: np.ndarray, lengths: np.ndarray,
            records: Sequence[Mapping], repeat: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Rewards [B] float32 of decoded completions (row b answers records[b // repeat]) and each term's scores."""
  responses = processor.decode(tokens, lengths)
  return reward_fn.batch(responses, [records[b // repeat] for b in range(len(responses))])


@dataclasses.dataclass
class HeldOutRecords:
  """Greedy and sampled rewards on the first `examples` records of a held-out file (every host its share)."""

  batches: RecordBatches
  reward_fn: named_rewards.RewardFunction
  examples: int
  samples: int
  sampling: SamplingConfig
  seed: int
  chunk: int = 64  # prompts per generate call

  def __call__(self, model, params) -> dict[str, float]:
    shards = sharding.data_parallel_size()
    unit = jax.process_count() * shards  # every host takes the same number of prompts, a multiple of the shards
    usable = min(self.examples, len(self.batches.dataset)) // unit * unit
    if usable == 0:
      raise ValueError(f"config.eval.examples: {self.examples} held-out records ({len(self.batches.dataset)} in "
                       f"{self.batches.path}) are fewer than hosts x batch shards = {unit}")
    indices = host_share(list(range(usable)), "config.eval.examples")
    totals = {"reward": [], "sampled_reward": []}
    step = max(self.chunk // shards, 1) * shards  # prompts per generate call on this host
    for start in range(0, len(indices), step):
      records = [self.batches.dataset[i] for i in indices[start:start + step]]

      def score(tokens, lengths, repeat, records=records):
        return rewards(self.reward_fn, self.batches.processor, tokens, lengths, records, repeat)[0]

      per_row = greedy_and_sampled(model, params, self.batches.prompts(records), self.sampling, self.samples,
                                   jax.random.key(self.seed + start), score)
      for name, values in per_row.items():
        totals[name].append(values)
    return {f"eval/{name}": global_mean(np.concatenate(values)) for name, values in totals.items() if values}
