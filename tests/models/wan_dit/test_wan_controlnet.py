"""The Wan flow ControlNet (FloVD, arXiv 2502.08244, reconstructed for DynaVid) on a tiny float32 Wan DiT: the
zero-initialised ControlNet is the identity on the base output, the sigma window gates per sample, the copy holds
the base's first K blocks, residual k enters after block k (against an intercepted plain forward), gradients reach
the zero projections while the base is frozen, and bad inputs are refused by name."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxagents.models import wan_dit

CONFIG = wan_dit.get_config("wan-tiny", num_layers=3)  # 2 x 12 heads, E = 24
K = 2  # copied blocks, fewer than the base's 3 so that the last block is never controlled
WIDTH = CONFIG.width
TOKENS = 2 * 2 * 2  # (T, H, W) = (2, 4, 4) latents, patch (1, 2, 2)
WINDOW = (0.5, 1.0)  # sigma
# No LLVM optimisation for the jitted tests: it changes no property checked here and halves their compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _inputs(timesteps=(600.0, 900.0), seed=0):
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((2, 2, 4, 4, CONFIG.in_channels)).astype(np.float32)
  text = rng.standard_normal((2, 3, CONFIG.text_dim)).astype(np.float32)
  flow = rng.standard_normal((2, 2, 4, 4, CONFIG.out_channels)).astype(np.float32)
  return latents, np.asarray(timesteps, np.float32), text, flow


@functools.cache
def _models(scan_layers: bool):
  """(base module, ControlNet module, base params, zero-init ControlNet params) for one layout. The base params are
  random normals (no init compile); the unrolled ones are the scanned ones unstacked, so both layouts hold one
  model."""
  base = wan_dit.WanDiT(CONFIG)
  latents, timesteps, text, _ = _inputs()
  shapes = nn.meta.unbox(jax.eval_shape(base.init, jax.random.key(0), latents, timesteps, text))["params"]
  rng = np.random.default_rng(1)
  base_params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), jnp.float32), shapes)
  config = CONFIG.replace(scan_layers=scan_layers)
  if not scan_layers:
    base_params = wan_dit.unstack_blocks(base_params, CONFIG)
  control_params = wan_dit.controlnet_params_from_base(base_params, config, K)
  return wan_dit.WanDiT(config), wan_dit.WanFlowControlNet(config, K), base_params, control_params


@functools.cache
def _jitted_controlled():
  """The scanned base under the ControlNet with `WINDOW`, jitted once for the tests that share it."""
  base, controlnet, _, _ = _models(scan_layers=True)

  def controlled(base_params, control_params, latents, timesteps, text, flow):
    return wan_dit.controlled_velocity(base, controlnet, base_params, control_params, latents, timesteps, text, flow,
                                       sigma_window=WINDOW)

  return jax.jit(controlled, compiler_options=FAST_COMPILE)


def _perturbed(control_params, seed=3):
  """The ControlNet with random (nonzero) input and output projections, as after some training."""
  rng = np.random.default_rng(seed)
  params = dict(control_params)
  for name in ("control_in_proj", "control_out_proj"):
    params[name] = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32), params[name])
  return params


@pytest.mark.parametrize("scan_layers", [True, False])
def test_zero_init_controlnet_leaves_the_base_output_bitwise_unchanged(scan_layers):
  # Op by op, as a bitwise claim needs: the residuals are exact zeros and x + 0 == x, but one jitted program holding
  # base and ControlNet may fuse the base's own ops (e.g. a LayerNorm with its producer) differently from the plain
  # base's program, which XLA on CPU rounds differently in the last bit (seen at 7e-7 on the I2V config).
  base, controlnet, base_params, control_params = _models(scan_layers=scan_layers)
  latents, timesteps, text, flow = _inputs()  # both samples inside the window
  plain = base.apply({"params": base_params}, latents, timesteps, text)
  controlled = wan_dit.controlled_velocity(base, controlnet, base_params, control_params, latents, timesteps, text,
                                           flow, sigma_window=WINDOW, skip_outside_window=False)
  assert np.abs(flow).min() > 0 and np.isfinite(plain).all()
  assert jnp.array_equal(controlled, plain)


def test_sigma_window_gate_is_inclusive_at_both_ends():
  gate = wan_dit.sigma_window_gate(jnp.array([0.0, 499.0, 500.0, 700.0, 900.0, 901.0]), (0.5, 0.9))
  np.testing.assert_array_equal(gate, [0, 0, 1, 1, 1, 0])


def test_trained_controlnet_changes_only_the_samples_whose_sigma_is_in_the_window():
  """Trained (perturbed) against zero-init ControlNet params through one jitted program, so that any difference
  comes from the residuals (the zero-init one is the plain base, test above)."""
  _, _, base_params, zero_params = _models(scan_layers=True)
  trained_params = _perturbed(zero_params)
  controlled = _jitted_controlled()
  latents, _, text, flow = _inputs()
  mixed = np.float32([300.0, 900.0])  # sigma 0.3 outside, 0.9 inside
  trained = controlled(base_params, trained_params, latents, mixed, text, flow)
  untrained = controlled(base_params, zero_params, latents, mixed, text, flow)
  assert jnp.array_equal(trained[0], untrained[0])
  assert np.abs(trained[1] - untrained[1]).max() > 1e-3
  # A batch wholly outside the window skips the ControlNet (`lax.cond`).
  outside = np.float32([100.0, 400.0])
  assert jnp.array_equal(controlled(base_params, trained_params, latents, outside, text, flow),
                         controlled(base_params, zero_params, latents, outside, text, flow))


@pytest.mark.parametrize("base_layout", ["scanned", "unrolled"])
@pytest.mark.parametrize("control_scan", [True, False])
def test_controlnet_params_copy_exactly_the_first_k_base_blocks(base_layout, control_scan):
  _, _, base_params, _ = _models(scan_layers=True)
  stacked = base_params["blocks"]
  if base_layout == "unrolled":
    base_params = wan_dit.unstack_blocks(base_params, CONFIG)
  config = CONFIG.replace(scan_layers=control_scan)
  params = wan_dit.controlnet_params_from_base(base_params, config, K)

  if control_scan:
    jax.tree.map(lambda c, b: np.testing.assert_array_equal(c, b[:K]), params["blocks"], stacked)
  else:
    assert f"blocks_{K}" not in params
    for i in range(K):
      jax.tree.map(lambda c, b, i=i: np.testing.assert_array_equal(c, b[i]), params[f"blocks_{i}"], stacked)
  for name in ("patch_embed", "time_embed", "time_proj", "text_embed"):
    jax.tree.map(np.testing.assert_array_equal, params[name], base_params[name])
  assert "proj_out" not in params and "scale_shift_table" not in params
  for name in ("control_in_proj", "control_out_proj"):
    assert all(not leaf.any() for leaf in jax.tree.leaves(params[name]))
  assert params["control_out_proj"]["kernel"].shape == (K, WIDTH, WIDTH)
  assert np.abs(params["control_patch_embed"]["kernel"]).max() > 0
  # The copies are new buffers: donating the ControlNet's params in a train step leaves the base intact.
  assert all(c.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
             for c, b in zip(jax.tree.leaves(params["patch_embed"]), jax.tree.leaves(base_params["patch_embed"])))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_residual_k_enters_after_base_block_k(scan_layers):
  """Against the plain unrolled model whose block k's output gets `scale * residual_k` added by a method
  interceptor (an independent construction of the injection)."""
  base, _, base_params, _ = _models(scan_layers=scan_layers)
  unrolled, _, unrolled_params, _ = _models(scan_layers=False)
  latents, timesteps, text, _ = _inputs()
  residuals = jnp.asarray(np.random.default_rng(7).standard_normal((K, 2, TOKENS, WIDTH)), jnp.float32)
  scale = jnp.array([0.5, 2.0])

  def add_after_block(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, wan_dit.WanBlock) and context.method_name == "__call__":
      k = int(context.module.name.removeprefix("blocks_"))
      if k < K:
        return out[0] + scale[:, None, None] * residuals[k], out[1]
    return out

  with nn.intercept_methods(add_after_block):
    expected = unrolled.apply({"params": unrolled_params}, latents, timesteps, text)
  plain = unrolled.apply({"params": unrolled_params}, latents, timesteps, text)
  assert np.abs(expected - plain).max() > 1e-2
  given = tuple(residuals) if scan_layers else residuals  # both forms are accepted
  apply = jax.jit(base.apply, compiler_options=FAST_COMPILE) if scan_layers else base.apply  # unrolled: op by op
  ours = apply({"params": base_params}, latents, timesteps, text, control_residuals=given, control_scale=scale)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_zero_projections_and_the_base_stays_frozen():
  base, controlnet, base_params, control_params = _models(scan_layers=True)
  latents, timesteps, text, flow = _inputs()
  target = np.random.default_rng(5).standard_normal((2, 2, 4, 4, CONFIG.out_channels)).astype(np.float32)

  @jax.grad
  def grads(params):
    velocity = wan_dit.controlled_velocity(base, controlnet, params["base"], params["controlnet"], latents, timesteps,
                                           text, flow, sigma_window=WINDOW)
    return jnp.mean((velocity - target) ** 2)

  grads = jax.jit(grads, compiler_options=FAST_COMPILE)
  params = {"base": base_params, "controlnet": control_params}
  g = grads(params)
  out_proj = g["controlnet"]["control_out_proj"]
  assert np.abs(out_proj["kernel"]).max() > 0 and np.abs(out_proj["bias"]).max() > 0
  # Behind zero output projections nothing upstream learns yet (ControlNet, arXiv 2302.05543, Sec. 3.1) ...
  assert not g["controlnet"]["control_in_proj"]["kernel"].any()
  # ... and once they are nonzero the input projection gets its gradient too.
  perturbed = dict(control_params, control_out_proj=_perturbed(control_params)["control_out_proj"])
  g = grads({"base": base_params, "controlnet": perturbed})
  assert np.abs(g["controlnet"]["control_in_proj"]["kernel"]).max() > 0

  labels = wan_dit.param_labels(params)
  assert set(jax.tree.leaves(labels["base"])) == {"frozen"}
  assert set(jax.tree.leaves(labels["controlnet"])) == {"trainable"}
  tx = wan_dit.freeze_base(optax.sgd(1e-3))
  updates, _ = tx.update(g, tx.init(params), params)
  assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(g["base"]))  # the base does get gradients ...
  assert all(not leaf.any() for leaf in jax.tree.leaves(updates["base"]))  # ... which the optimiser drops
  assert np.abs(updates["controlnet"]["control_in_proj"]["kernel"]).max() > 0


def test_more_copied_blocks_than_the_base_has_are_refused():
  _, _, base_params, _ = _models(scan_layers=True)
  message = r"`num_blocks` must be an int in \[1, config.num_layers=3\], got 4"
  with pytest.raises(ValueError, match="WanFlowControlNet: " + message):
    wan_dit.WanFlowControlNet(CONFIG, 4)
  with pytest.raises(ValueError, match="controlnet_params_from_base: " + message):
    wan_dit.controlnet_params_from_base(base_params, CONFIG, 4)
  with pytest.raises(ValueError, match=r"stacked over config.num_layers=4 layers, got leading sizes \[3\]"):
    wan_dit.controlnet_params_from_base(base_params, CONFIG.replace(num_layers=4), 2)


def test_flow_latents_of_another_shape_are_refused_with_both_shapes():
  _, controlnet, _, control_params = _models(scan_layers=True)
  latents, timesteps, text, flow = _inputs()
  good = jax.eval_shape(controlnet.apply, {"params": control_params}, latents, timesteps, text, flow)
  assert good.shape == (K, 2, TOKENS, WIDTH)
  for bad in (flow[:, :, :, :2], flow[..., :3]):
    with pytest.raises(ValueError, match=r"`flow_latents` must have shape .* = \(2, 2, 4, 4, 4\).*got "
                       + re.escape(str(bad.shape))):
      jax.eval_shape(controlnet.apply, {"params": control_params}, latents, timesteps, text, bad)


def test_control_residuals_of_another_shape_are_refused():
  base, _, base_params, _ = _models(scan_layers=True)
  latents, timesteps, text, _ = _inputs()

  def apply(residuals, scale=1.0):
    return jax.eval_shape(lambda: base.apply({"params": base_params}, latents, timesteps, text,
                                             control_residuals=residuals, control_scale=scale))

  with pytest.raises(ValueError, match=r"`control_residuals` must have shape \[K, B, N, E\] = \[1..3, 2, 8, 24\], "
                                       r"got \(4, 2, 8, 24\)"):
    apply(jnp.zeros((4, 2, TOKENS, WIDTH)))
  with pytest.raises(ValueError, match=r"`control_residuals` given as a sequence .* got \[\(2, 7, 24\)\]"):
    apply((jnp.zeros((2, 7, WIDTH)),))
  with pytest.raises(ValueError, match=r"`control_scale` must be a scalar or have shape \[B=2\], got \(3,\)"):
    apply(jnp.zeros((K, 2, TOKENS, WIDTH)), jnp.ones(3))


def test_full_size_controlnet_is_the_base_embeddings_k_blocks_and_the_projections():
  """Wan2.1-T2V-1.3B with FloVD's K = 8, through `jax.eval_shape` (no weights allocated)."""
  config, num_blocks = wan_dit.get_config("wan2.1-t2v-1.3b"), 8
  latents = jax.ShapeDtypeStruct((1, 1, 2, 2, 16), jnp.float32)
  text = jax.ShapeDtypeStruct((1, 1, config.text_dim), jnp.float32)
  timesteps = jax.ShapeDtypeStruct((1,), jnp.float32)
  boxed = jax.eval_shape(wan_dit.WanFlowControlNet(config, num_blocks).init, jax.random.key(0), latents, timesteps,
                         text, latents)["params"]
  params = nn.meta.unbox(boxed)
  base = wan_dit.param_shapes(config)  # {'path/to/leaf': shape} of the base
  width = config.width

  def count(shapes):
    return sum(int(np.prod(shape)) for shape in shapes)

  embeddings = count(shape for path, shape in base.items() if path.split("/")[0] in wan_dit.controlnet.EMBEDDINGS)
  block = count(shape[1:] for path, shape in base.items() if path.startswith("blocks/"))
  flow_features = 1 * 2 * 2 * config.out_channels  # a (1, 2, 2) patch of the 16-channel flow latents
  new = (flow_features + 1) * width + (width + 1) * width * (1 + num_blocks)  # patch embed, in and out projections
  assert count(leaf.shape for leaf in jax.tree.leaves(params)) == embeddings + num_blocks * block + new
  assert boxed["control_out_proj"]["kernel"].names == ("layers", "mlp", "embed")
  assert boxed["blocks"]["ffn"]["fc1"]["kernel"].names[0] == "layers"
