"""The counting environment (`jaxagents.envs.counting`) seen by a tiny Qwen-VL: what the SFT, GRPO and distillation
jobs on it share, as functions.

A tiny Qwen2-VL-family model is trained from scratch on the environment's word vocabulary (its special-token roles
are Qwen-VL's, so prompts go through the same `prepare_inputs` as real batches); boards are patch-aligned, so the
image preprocessing is the Qwen2-VL processor's without a resize. Held-out evaluation samples on every host for its
share of the prompts and averages over hosts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.generation import SamplingConfig
from jaxagents.models.qwen_vl.batching import token_batch
from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.preprocess import ImageOptions
from jaxagents.tasks.rollouts import greedy_and_sampled

EVAL_SEED_OFFSET = 1_000_003  # held-out prompts come from another stream than any training phase
TRAIN_RECORDS = 1 << 30  # the environment is generated: a source as long as any run needs


def env_config(config) -> counting.CountingConfig:
  """The environment of `config.env` (a dict of `CountingConfig` fields)."""
  return counting.CountingConfig(**dict(config.env))


def model_config(env: counting.CountingConfig, *, hidden: int = 64, layers: int = 2, vision_depth: int = 2,
                 vision_width: int = 32, patch_size: int | None = None) -> QwenVLConfig:
  """A tiny Qwen2-VL-family model with the environment's vocabulary and special tokens (trained from scratch).

  `patch_size` is the ViT patch side in pixels (None: `env.cell`, one patch per cell). Qwen2-VL's merger
  concatenates 2x2 patches into one visual token, so `patch_size = env.cell // 2` gives one token per cell, and one
  patch per cell one token per 2x2 cells: a token that holds up to four shapes, whose per-colour count the decoder
  must then read out before it can add the tokens up (the shipped configs use one token per cell).
  """
  patch_size = env.cell if patch_size is None else patch_size
  for name, value in (("hidden", hidden), ("layers", layers), ("vision_depth", vision_depth),
                      ("vision_width", vision_width), ("patch_size", patch_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.model.{name}: expected a positive integer, got {value!r}.")
  merge = VisionConfig.merge_size
  if env.cell % patch_size or env.image_size % (patch_size * merge):
    raise ValueError(f"config.model.patch_size: must divide the cell ({env.cell} px) and {merge} patches must "
                     f"divide the board ({env.image_size} px), got {patch_size}.")
  if hidden % 16 or vision_width % 2:
    raise ValueError(f"config.model: hidden must be a multiple of 16 (head_dim) and vision_width even, got "
                     f"hidden={hidden}, vision_width={vision_width}.")
  heads = max(hidden // 16, 1)
  text = TextConfig(vocab_size=env.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                    num_heads=heads, num_kv_heads=max(heads // 2, 1), head_dim=16, mrope_section=(2, 3, 3))
  vision = VisionConfig(depth=vision_depth, width=vision_width, num_heads=2, mlp_dim=2 * vision_width,
                        out_dim=hidden, patch_size=patch_size)
  return QwenVLConfig(family="qwen2_vl", text=text, vision=vision, image_token_id=counting.IMAGE_PAD,
                      video_token_id=counting.VIDEO_PAD, vision_start_token_id=counting.VISION_START,
                      vision_end_token_id=counting.VISION_END, tie_word_embeddings=True)


def image_options(env: counting.CountingConfig, model: QwenVLConfig) -> ImageOptions:
  """The board is already patch-aligned: CLIP normalisation, no resize."""
  size = env.image_size**2
  return ImageOptions(min_pixels=size, max_pixels=size, patch_size=model.vision.patch_size,
                      merge_size=model.vision.merge_size)


def prompts(env: counting.CountingConfig, model: QwenVLConfig, examples: Sequence[Mapping]) -> ModelInputs:
  """Host `ModelInputs` of the examples' prompts (left-padded, one board each)."""
  rows = [counting.prompt_ids(env, e) for e in examples]
  return token_batch(model, rows, [[e["image"]] for e in examples], image_options(env, model),
                     pad_id=counting.PAD)[0]


def text_prompts(env: counting.CountingConfig, model: QwenVLConfig, examples: Sequence[Mapping]) -> ModelInputs:
  """Host `ModelInputs` of the prompts without their vision span (the text-only view x of VGS, Eq. 6-7)."""
  span = (counting.VISION_START, counting.VISION_END, counting.IMAGE_PAD, counting.VIDEO_PAD)
  rows = [[t for t in counting.prompt_ids(env, e) if t not in span] for e in examples]
  return token_batch(model, rows, [[] for _ in examples], image_options(env, model), pad_id=counting.PAD)[0]


def pad_completions(completions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens [B, T] padded with the environment's pad id, lengths [B])."""
  width = max(len(c) for c in completions)
  tokens = np.full((len(completions), width), counting.PAD, np.int32)
  for row, completion in enumerate(completions):
    tokens[row, :len(completion)] = completion
  return tokens, np.array([len(c) for c in completions], np.int32)


def with_targets(env: counting.CountingConfig, prompt_inputs: ModelInputs, examples: Sequence[Mapping]):
  """Prompt + reference completion rows of the examples (the SFT batch): (ModelInputs, completion_mask)."""
  tokens, lengths = pad_completions([counting.target_ids(env, e) for e in examples])
  return prompt_inputs.with_completions(tokens, lengths, counting.PAD)


def rewards(env: counting.CountingConfig, tokens: np.ndarray, examples: Sequence[Mapping], repeat: int) -> np.ndarray:
  """[B] float32 verifiable rewards of rows of completions; row b answers example b // repeat."""
  tokens = np.asarray(tokens)
  return np.array([counting.reward(env, tokens[b], examples[b // repeat]) for b in range(tokens.shape[0])],
                  np.float32)


def sampling(env: counting.CountingConfig, max_new_tokens: int, temperature: float) -> SamplingConfig:
  """The sampler of the environment's answers: stops at <eos>, never emits padding or vision tokens."""
  return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, eos_ids=(counting.EOS,),
                        pad_id=counting.PAD, suppress_ids=counting.NEVER_GENERATED)


def host_share(items: Sequence, name: str) -> list:
  """This host's contiguous share of `items`: hosts take equal shares and the batch shards equal numbers."""
  hosts, shards = jax.process_count(), sharding.data_parallel_size()
  if len(items) % hosts or len(items) % shards:
    raise ValueError(f"{name}: {len(items)} is not divisible by the number of hosts {hosts} and of batch shards "
                     f"{shards}.")
  per_host = len(items) // hosts
  return list(items[jax.process_index() * per_host:(jax.process_index() + 1) * per_host])


def global_mean(values: np.ndarray) -> float:
  """The mean of every host's `values` (each host passes its own rows)."""
  total = np.array([np.sum(values, dtype=np.float64), values.size], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    total = np.sum(multihost_utils.process_allgather(total), axis=0)
  return float(total[0] / max(total[1], 1.0))


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Held-out rewards of a policy: greedy accuracy, and the mean reward of `samples` sampled answers per prompt at
  the training temperature (what GRPO maximises); the same prompts and draws at every evaluation.

  Every host evaluates its share of the prompts on the global mesh, as one batch (the vision tower runs once per
  prompt, whatever the number of samples).
  """

  env: counting.CountingConfig
  model_config: QwenVLConfig
  examples: int
  samples: int
  seed: int
  sampling: SamplingConfig

  def __post_init__(self):
    if self.examples < 1 or self.samples < 0:
      raise ValueError(f"config.eval: expected examples >= 1 and samples >= 0, got examples={self.examples}, "
                       f"samples={self.samples}.")

  def __call__(self, model, params, prefix: str = "") -> dict[str, float]:
    stream = self.seed + EVAL_SEED_OFFSET
    examples = host_share([counting.make_example(self.env, stream, i) for i in range(self.examples)],
                          "config.eval.examples")
    batch = prompts(self.env, self.model_config, examples)
    per_row = greedy_and_sampled(model, params, batch, self.sampling, self.samples, jax.random.key(stream),
                                 lambda tokens, lengths, repeat: rewards(self.env, tokens, examples, repeat))
    return {f"{prefix}eval/{name}": global_mean(values) for name, values in per_row.items()}
