"""Two tiny cached decoders for the generation tests: Qwen3-VL on an image batch (M-RoPE, vision, left-padded
rows) and `CausalLM` on a ragged text batch; session-scoped so that each is initialised once."""

import jax
import numpy as np
import pytest

from jaxagents.generation import TokenInputs
from jaxagents.models.causal_lm import CausalLM, CausalLMConfig
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from tests.models.qwen_vl import tiny

STEPS = 4


class Decoder:
  """model, params ({'params': ...}), prompts (a `PromptBatch`), plus what a test needs to build more prompts."""

  def __init__(self, name, model, params, prompts, config=None, raw=None):
    self.name, self.model, self.params, self.prompts, self.config, self.raw = name, model, params, prompts, config, raw


def qwen_prompts(config, raw, copies=1):
  """`ModelInputs` of the tiny image batch, its rows repeated `copies` times as a block (images too)."""
  ids = np.concatenate([raw["input_ids"]] * copies)
  mask = np.concatenate([raw["attention_mask"]] * copies)
  return prepare_inputs(config, ids, mask, pixel_values=np.concatenate([raw["pixel_values"]] * copies),
                        image_grid_thw=np.concatenate([raw["image_grid_thw"]] * copies))


@pytest.fixture(scope="session")
def qwen3():
  config = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  raw = tiny.batch("qwen3_vl", "images")
  prompts = qwen_prompts(config, raw, copies=2)  # 4 rows: the mesh tests split them over data x fsdp
  model = QwenVL(config)
  params = jax.jit(model.init)(jax.random.key(1), *prompts.model_args())
  return Decoder("qwen3_vl", model, params, prompts, config, raw)


CAUSAL_CONFIG = CausalLMConfig(vocab_size=16, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                               mlp_dim=64)


def causal_prompts(rows, pad=0):
  """`TokenInputs` of token rows, left-padded with `pad`."""
  ids, mask = tiny.left_pad(rows, pad)
  return TokenInputs.from_ids(ids.astype(np.int32), mask.astype(np.int32))


@pytest.fixture(scope="session")
def causal():
  model = CausalLM(CAUSAL_CONFIG)
  prompts = causal_prompts([[1, 5, 7, 2, 9], [4, 4], [3, 8, 1], [6]])
  params = jax.jit(model.init)(jax.random.key(2), *prompts.model_args())
  return Decoder("causal_lm", model, params, prompts)


@pytest.fixture(params=["qwen3", "causal"])
def decoder(request):
  """Each tiny decoder in turn."""
  return request.getfixturevalue(request.param)
