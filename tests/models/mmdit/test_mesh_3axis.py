"""The MMDiT on a data 2 x fsdp 2 x tensor 2 mesh (the suite's eight fake CPU devices), with params sharded by their
logical axes and inputs by `shard_batch`, equals the unsharded model: outputs and gradients.

Regression test for the XLA SPMD partitioner bug that `model._pinned` works around: without it, the text stream
came out (and its gradients went back) with batch shards 1 and 2 swapped whenever the text was shorter than the
image; 1- and 2-axis meshes and longer text were right.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents import sharding
from jaxagents.models import mmdit
from tests.models.mmdit.test_model import CONFIGS, HEIGHT, WIDTH, _abstract_params, _ids, _inputs, _random_params

BATCH = 8  # two rows on each of the four batch shards
SHORT_TEXT, LONG_TEXT = 5, 2 * HEIGHT * WIDTH


def _sharded_params(config, mesh):
  params = {"params": _random_params(config)}
  with sharding.active(mesh):
    shardings = nn.meta.unbox(sharding.logical_to_sharding({"params": _abstract_params(config)}, mesh))
  return params, jax.device_put(params, shardings)


def _batch(config, text_len):
  img, txt, sigma, guidance = _inputs(config, BATCH, text_len=text_len)
  mask = np.ones((BATCH, text_len), bool)
  mask[3, text_len // 2:] = False
  return img, txt, sigma, mask, guidance


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
  config = CONFIGS[request.param].replace(mlp_dim=96)  # divisible by the tensor axis
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params, sharded = _sharded_params(config, mesh)
  down = sharded["params"]["double_blocks"]["txt_mlp"]["down"]["kernel"]
  assert down.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
  return config, params, sharded, mesh


@pytest.mark.parametrize("text_len", [SHORT_TEXT, LONG_TEXT], ids=["text_shorter_than_image", "text_longer"])
def test_sharded_output_equals_unsharded(setup, text_len):
  config, params, sharded, mesh = setup
  img, txt, sigma, mask, guidance = _batch(config, text_len)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, text_len)
  apply = jax.jit(mmdit.MMDiT(config).apply)
  expected = apply(params, img, txt, sigma, img_ids, txt_ids, mask, guidance)
  with sharding.active(mesh):
    img, txt, sigma, mask, guidance = sharding.shard_batch((img, txt, sigma, mask, guidance))
    out = apply(sharded, img, txt, sigma, img_ids, txt_ids, mask, guidance)
  assert img.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_sharded_gradients_equal_unsharded_with_text_shorter_than_image():
  # One unrolled Lens block: the backward pass hit the same partitioner bug, and a smaller program keeps it quick.
  config = CONFIGS["lens"].replace(mlp_dim=96, num_double_layers=1, scan_layers=False)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params, sharded = _sharded_params(config, mesh)
  img, txt, sigma, mask, guidance = _batch(config, SHORT_TEXT)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, SHORT_TEXT)
  weights = np.random.default_rng(1).standard_normal((BATCH, HEIGHT * WIDTH, config.out_features), np.float32)

  @jax.jit
  @jax.grad
  def grad(params, img, txt, sigma, mask, guidance, weights):
    out = mmdit.MMDiT(config).apply(params, img, txt, sigma, img_ids, txt_ids, mask, guidance)
    return jnp.sum(out * weights)

  expected = grad(params, img, txt, sigma, mask, guidance, weights)
  with sharding.active(mesh):
    got = grad(sharded, *sharding.shard_batch((img, txt, sigma, mask, guidance, weights)))

  def check(path, got_leaf, expected_leaf):
    expected_leaf = np.asarray(expected_leaf)
    np.testing.assert_allclose(got_leaf, expected_leaf, rtol=1e-5, atol=1e-5 * np.abs(expected_leaf).max(),
                               err_msg=f"gradient of {jax.tree_util.keystr(path)}")

  jax.tree_util.tree_map_with_path(check, got, expected)
