"""Properties of the MMDiT that hold for any weights, on the tiny FLUX.2 and Lens configs with random params:
padding, batch independence, scan == unrolled, remat policies, bf16, logical axes, and input validation."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.multi_axis_rope import flux_position_ids, msrope_position_ids
from jaxagents.models import mmdit

CONFIGS = {
  "flux2": mmdit.get_config("flux2-tiny"),
  "lens": mmdit.get_config("lens-tiny"),
}
HEIGHT, WIDTH, TEXT = 3, 4, 5


def _ids(config, height, width, text_len):
  return (flux_position_ids if config.family == "flux2" else msrope_position_ids)(height, width, text_len)


def _inputs(config, batch, text_len=TEXT, seed=0):
  rng = np.random.default_rng(seed)
  img = rng.standard_normal((batch, HEIGHT * WIDTH, config.in_channels)).astype(np.float32)
  txt = [rng.standard_normal((batch, text_len, config.text_dim)).astype(np.float32) for _ in range(config.text_layers)]
  sigma = rng.uniform(0.1, 0.9, batch).astype(np.float32)
  guidance = rng.uniform(1.0, 4.0, batch).astype(np.float32)
  return img, txt, sigma, guidance


def _abstract_params(config):
  img, txt, sigma, guidance = _inputs(config, 1)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  return jax.eval_shape(mmdit.MMDiT(config).init, jax.random.key(0), img, txt, sigma, img_ids, txt_ids, None,
                        guidance)["params"]


def _random_params(config, seed=0):
  """Random params of the init's shapes (no compile): kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2),
  biases ~ N(0, 0.1^2); the init's zero adaLN modulations would make every block an identity."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(_abstract_params(config)), sep="/")
  out = {}
  for path, leaf in flat.items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path.endswith("kernel"):
      out[path] = noise / np.sqrt(leaf.shape[-2])
    else:
      out[path] = (path.endswith("scale") + 0.1 * noise).astype(np.float32)
  return flax.traverse_util.unflatten_dict(out, sep="/")


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
  config = CONFIGS[request.param]
  model = mmdit.MMDiT(config)
  return config, _random_params(config), jax.jit(model.apply)


def _run(setup, img, txt, sigma, guidance, txt_mask="all", text_len=TEXT):
  """The jitted model; the default all-valid mask keeps one compiled program per input shape across tests."""
  config, params, apply = setup
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, text_len)
  if isinstance(txt_mask, str):
    txt_mask = np.ones((img.shape[0], text_len), bool)
  return np.asarray(apply({"params": params}, img, txt, sigma, img_ids, txt_ids, txt_mask, guidance))


def test_extra_masked_text_padding_changes_nothing(setup):
  config = setup[0]
  img, txt, sigma, guidance = _inputs(config, 2)
  mask = np.array([[True] * TEXT, [True] * 3 + [False] * (TEXT - 3)])
  base = _run(setup, img, txt, sigma, guidance, mask)
  extra = 4
  rng = np.random.default_rng(7)
  padded = [np.concatenate([t, 5 * rng.standard_normal((2, extra, config.text_dim)).astype(np.float32)], 1)
            for t in txt]
  padded_mask = np.concatenate([mask, np.zeros((2, extra), bool)], axis=1)
  np.testing.assert_allclose(_run(setup, img, padded, sigma, guidance, padded_mask, TEXT + extra), base, atol=1e-6)
  # and padding that is masked in the short row is invisible there too
  garbage = [t.copy() for t in txt]
  for t in garbage:
    t[1, 3:] = 100.0
  np.testing.assert_allclose(_run(setup, img, garbage, sigma, guidance, mask), base, atol=1e-6)


def test_all_valid_mask_equals_no_mask(setup):
  img, txt, sigma, guidance = _inputs(setup[0], 2)
  np.testing.assert_allclose(_run(setup, img, txt, sigma, guidance), _run(setup, img, txt, sigma, guidance, None),
                             atol=1e-6)


def test_batch_elements_are_independent(setup):
  img, txt, sigma, guidance = _inputs(setup[0], 2)
  both = _run(setup, img, txt, sigma, guidance)
  alone = _run(setup, img[:1], [t[:1] for t in txt], sigma[:1], guidance[:1])
  # a different batch size may change XLA's float32 summation order, hence a relative tolerance
  np.testing.assert_allclose(both[:1], alone, rtol=1e-5, atol=1e-5)
  other_img, other_txt, other_sigma, other_guidance = _inputs(setup[0], 2, seed=5)
  changed = _run(
    setup, np.concatenate([img[:1], other_img[1:]]), [np.concatenate([t[:1], o[1:]]) for t, o in zip(txt, other_txt)],
    np.concatenate([sigma[:1], other_sigma[1:]]), np.concatenate([guidance[:1], other_guidance[1:]]),
  )
  np.testing.assert_allclose(changed[:1], both[:1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(changed[1:], both[1:], atol=1e-3)


def test_scan_equals_unrolled(setup):
  config, params, _ = setup
  img, txt, sigma, guidance = _inputs(config, 2)
  unrolled_config = config.replace(scan_layers=False)
  unrolled_params = mmdit.unstack_blocks(params, config)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  # the unrolled model creates exactly the unstacked tree
  fresh = nn.meta.unbox(_abstract_params(unrolled_config))
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, unrolled_params)
  mask = np.array([[True] * TEXT, [True] * 2 + [False] * (TEXT - 2)])
  unrolled = jax.jit(mmdit.MMDiT(unrolled_config).apply)(
    {"params": unrolled_params}, img, txt, sigma, img_ids, txt_ids, mask, guidance
  )
  # one compiled program against another: equal up to float32 summation order
  np.testing.assert_allclose(unrolled, _run(setup, img, txt, sigma, guidance, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_remat_policies_give_equal_loss_and_grads():
  # One block of each kind (FLUX.2 has both; Lens runs the same DoubleStreamBlock): compiling the backward pass of
  # deeper scans costs seconds per policy on CPU without testing anything more.
  config = CONFIGS["flux2"].replace(num_double_layers=1, num_single_layers=1)
  params = _random_params(config)
  img, txt, sigma, guidance = _inputs(config, 2)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  mask = np.array([[True] * TEXT, [True] * 4 + [False]])
  results = {}
  for policy in ("none", "full", "dots"):
    model = mmdit.MMDiT(config.replace(remat_policy=policy))

    def loss(p, model=model):
      return jnp.mean(model.apply({"params": p}, img, txt, sigma, img_ids, txt_ids, mask, guidance) ** 2)

    # compiled without XLA's backend optimisations: this compares values, and -O0 halves the CPU compile time
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile({"xla_backend_optimization_level": 0})
    results[policy] = compiled(params)
  value, grads = results["none"]
  for policy in ("full", "dots"):
    np.testing.assert_allclose(results[policy][0], value, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[policy][1], grads)


def test_bfloat16_compute_is_close_to_float32(setup):
  config, params, _ = setup
  img, txt, sigma, guidance = _inputs(config, 2)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  out = jax.jit(mmdit.MMDiT(config, dtype=jnp.bfloat16).apply)(
    {"params": params}, img, txt, sigma, img_ids, txt_ids, None, guidance
  )
  assert out.dtype == jnp.bfloat16
  reference = _run(setup, img, txt, sigma, guidance, None)
  error = np.linalg.norm(np.asarray(out, np.float32) - reference) / np.linalg.norm(reference)
  assert error < 2e-2, error


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_param_has_logical_axes_and_blocks_are_stacked_on_layers(name):
  config = CONFIGS[name]
  img, txt, sigma, guidance = _inputs(config, 1)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(_abstract_params(config)), sep="/")
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path
    if path.startswith(("double_blocks/", "single_blocks/")):
      assert leaf.names[0] == "layers", path
      length = config.num_double_layers if path.startswith("double") else config.num_single_layers
      assert leaf.value.shape[0] == length, path


def test_bad_inputs_raise_value_errors_naming_the_argument():
  config = CONFIGS["lens"]
  model = mmdit.MMDiT(config)
  img, txt, sigma, guidance = _inputs(config, 2)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  params = {"params": _random_params(config)}
  cases = {
    "img": (img[..., :3], txt, sigma, img_ids, txt_ids, None),
    "txt": (img, txt[:1], sigma, img_ids, txt_ids, None),
    "timesteps": (img, txt, sigma[:1], img_ids, txt_ids, None),
    "img_ids": (img, txt, sigma, img_ids[:-1], txt_ids, None),
    "txt_ids": (img, txt, sigma, img_ids, txt_ids[:, :2], None),
    "txt_mask": (img, txt, sigma, img_ids, txt_ids, np.ones((2, TEXT), np.int32)),
  }
  for name, args in cases.items():
    with pytest.raises(ValueError, match=f"`{name}`"):
      model.apply(params, *args)


@pytest.mark.parametrize(
  "changes,field",
  [({"rope_axes": (4, 4, 4, 2)}, "rope_axes"), ({"norm": "batch"}, "norm"), ({"remat_policy": "some"}, "remat_policy"),
   ({"family": "sd3"}, "family"), ({"num_double_layers": 0, "num_single_layers": 0}, "num_double_layers")],
)
def test_bad_configs_raise_value_errors_naming_the_field(changes, field):
  with pytest.raises(ValueError, match=f"`{field}`"):
    CONFIGS["flux2"].replace(**changes)


def test_params_sharded_by_their_logical_axes_give_the_same_output():
  from jaxagents import sharding

  config = CONFIGS["lens"].replace(mlp_dim=96)  # divisible by the tensor axis
  params = {"params": _random_params(config)}
  img, txt, sigma, guidance = _inputs(config, 4)
  img_ids, txt_ids = _ids(config, HEIGHT, WIDTH, TEXT)
  mask = np.ones((4, TEXT), bool)
  mask[1, 2:] = False
  model = mmdit.MMDiT(config)
  expected = jax.jit(model.apply)(params, img, txt, sigma, img_ids, txt_ids, mask, guidance)
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  with sharding.active(mesh):
    shardings = nn.meta.unbox(sharding.logical_to_sharding({"params": _abstract_params(config)}, mesh))
    sharded = jax.device_put(params, shardings)
    out = jax.jit(model.apply)(sharded, img, txt, sigma, img_ids, txt_ids, mask, guidance)
  assert len(sharded["params"]["double_blocks"]["img_mlp"]["gate"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
