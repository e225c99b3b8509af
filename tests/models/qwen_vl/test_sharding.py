"""Qwen-VL at full size shards over fsdp/tensor with the library's rules (checked via `jax.eval_shape`, no
weights allocated), has the published parameter counts, and a sharded tiny model computes the same logits as
an unsharded one on 8 CPU devices."""

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxagents import sharding as mesh_lib
from jaxagents.models.qwen_vl import sharding
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs, row_vision_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.presets import PRESETS
from jaxagents.models.qwen_vl.vision_layout import vision_inputs
from tests.models.qwen_vl import tiny


def _abstract(config):
  v = config.vision
  grid = np.array([[1, 2 * v.merge_size, 2 * v.merge_size]])
  inputs = vision_inputs(np.zeros((4 * v.merge_size**2, v.patch_dim), np.float32), grid, config)
  ids = np.full((1, 4), config.image_token_id, np.int32)
  return jax.eval_shape(QwenVL(config).init, jax.random.key(0), ids, np.zeros((3, 1, 4), np.int32),
                        np.ones((1, 4), bool), inputs)


def _count(tree, prefix=""):
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.meta.unbox(tree)["params"]), sep="/")
  return sum(int(np.prod(x.shape)) for k, x in flat.items() if k.startswith(prefix))


@pytest.mark.parametrize("name,total,vision", [("qwen2_5_vl_7b", 8.29e9, 0.68e9), ("qwen3_vl_8b", 8.767e9, 0.576e9)])
def test_full_size_parameter_counts_match_the_published_models(name, total, vision):
  abstract = _abstract(QwenVLConfig.from_hf(PRESETS[name]))
  assert _count(abstract) == pytest.approx(total, rel=2e-3)
  assert _count(abstract, "visual") == pytest.approx(vision, rel=1e-2)


@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_models_shard_over_fsdp_and_tensor(name):
  config = QwenVLConfig.from_hf(PRESETS[name])
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  shardings = sharding.param_shardings(_abstract(config), mesh)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shardings["params"]), sep="/")
  assert flat["text/layers/block/attn/q/kernel"].spec == PartitionSpec(None, "fsdp", "tensor")
  assert flat["text/layers/block/mlp/down/kernel"].spec == PartitionSpec(None, "tensor", "fsdp")
  assert flat["text/embed/embedding"].spec == PartitionSpec("tensor", "fsdp")
  assert all(s.spec == PartitionSpec() or set(s.spec) == {None} for k, s in flat.items() if k.startswith("visual"))


def test_indivisible_dimension_is_named():
  config = QwenVLConfig.from_hf(PRESETS["qwen2_5_vl_7b"])  # 4 kv heads x 128 = 512 columns; 28 q heads
  mesh = mesh_lib.make_mesh({"tensor": 8})
  rules = [*sharding.RULES[:-len(sharding.VISION_RULES)], ("vit_mlp", "tensor"),
           *[r for r in sharding.VISION_RULES if r[0] != "vit_mlp"]]
  with pytest.raises(ValueError, match=r"visual/blocks/block/mlp/.*3420.*tensor"):
    sharding.param_shardings(_abstract(config), mesh, rules)


@pytest.mark.parametrize("copies", [1, 2])
def test_sharded_tiny_model_matches_one_device(copies):
  """copies=2: GRPO-style groups, rows reading their prompt's vision features through row_prompt."""
  config = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  inputs = tiny.batch("qwen3_vl", "images")
  positions = np.broadcast_to(np.cumsum(inputs["attention_mask"], 1) - 1, (3, *inputs["input_ids"].shape))
  vision = row_vision_inputs(config, inputs["input_ids"], pixel_values=inputs["pixel_values"],
                             image_grid_thw=inputs["image_grid_thw"])
  batch = ModelInputs(inputs["input_ids"], inputs["attention_mask"], positions, positions[:, :, -1], vision)
  batch = batch.repeat(copies) if copies > 1 else batch
  model = QwenVL(config)
  args = (batch.input_ids, batch.positions, batch.attention_mask, batch.vision, batch.row_prompt)
  params = jax.jit(model.init)(jax.random.key(0), *args)
  expected, _ = jax.jit(model.apply)(mesh_lib.unbox(params), *args)

  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.param_shardings(jax.eval_shape(model.init, jax.random.key(0), *args), mesh)
  with mesh_lib.active(mesh, sharding.RULES):
    sharded_params = jax.device_put(mesh_lib.unbox(params), shardings)
    logits, _ = jax.jit(model.apply)(sharded_params, *args)
  assert len(sharded_params["params"]["text"]["layers"]["block"]["attn"]["q"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-5, atol=1e-5)
