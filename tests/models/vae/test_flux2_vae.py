"""The FLUX.2 VAE against diffusers 0.42.1 at fp32: `AutoencoderKLFlux2` encode (mean, logvar), decode and
`tiled_decode`, and the `Flux2Pipeline` latent path (`_encode_vae_image`, `_patchify_latents`, `_unpatchify_latents`,
the batch-norm (de)normalisation), for tiny configs with random weights and random running statistics, loaded through
our converter from `save_pretrained` directories. Also the full-size shapes (no allocation), the logical axes, and
the errors on bad input."""

import dataclasses
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents import sharding
from jaxagents.models.vae import (
  FLUX2,
  LOGICAL_RULES,
  TINY,
  TINY_ONE_LEVEL,
  Flux2VAE,
  Flux2VAEConfig,
  denormalize_latents,
  load_config,
  load_variables,
  normalize_latents,
  patchify_latents,
  tiled_decode,
  unpatchify_latents,
)
from jaxagents.models.vae.blocks import CONV_AXES
from tests.models.vae import reference as R

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
Flux2Pipeline = diffusers.Flux2Pipeline

TOL = 1e-5
CONFIGS = {
  # two levels, odd channel counts, a decoder wider than the encoder, groups of 3
  "two_levels_odd_channels": TINY,
  # one level (no resampling), one latent channel, one group: diffusers' own pipeline-test size
  "one_level": TINY_ONE_LEVEL,
  # three levels, two resnets per level, Mish resnets
  "three_levels_mish": Flux2VAEConfig(block_out_channels=(8, 12, 12), layers_per_block=2, latent_channels=4,
                                      norm_num_groups=4, act_fn="mish", sample_size=32),
  # every switch off: no quant convs, no mid-block attention; exact GELU; 5 latent channels
  "no_quant_no_attention_gelu": Flux2VAEConfig(block_out_channels=(5, 10), layers_per_block=1, latent_channels=5,
                                               norm_num_groups=5, act_fn="gelu", use_quant_conv=False,
                                               use_post_quant_conv=False, mid_block_add_attention=False),
}


def _image(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _close(ours, theirs, what):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  err = R.rel_err(ours, theirs)
  assert err < TOL, f"{what}: relative error {err:.2e} >= {TOL}"
  assert np.max(np.abs(ours - theirs)) < 1e-4 * max(1.0, np.max(np.abs(theirs))), what
  return err


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
  """(diffusers model, our variables) for TINY, converted from a save_pretrained directory."""
  directory = tmp_path_factory.mktemp("tiny_vae")
  ref, _ = R.saved(TINY, directory, seed=1)
  config, variables = load_variables(str(directory))
  assert config == TINY
  return ref, variables


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_and_decode_match_diffusers_autoencoder_kl_flux2(name, tmp_path):
  config = CONFIGS[name]
  ref, _ = R.saved(config, tmp_path, seed=3)
  assert load_config(str(tmp_path)) == config
  _, variables = load_variables(str(tmp_path))
  # odd sides: the encoder's bottom/right padding before each stride-2 conv rounds up
  x = _image((2, 17, 11, 3))
  vae = Flux2VAE(config)

  @jax.jit
  def run(variables, x):
    mean, logvar = vae.apply(variables, x, method="encode")
    return mean, logvar, vae.apply(variables, mean, method="decode")

  mean, logvar, image = run(variables, x)
  with torch.no_grad():
    posterior = ref.encode(R.nchw(x)).latent_dist
    decoded = ref.decode(posterior.mean).sample
  _close(mean, R.nhwc(posterior.mean), f"{name} encode mean")
  _close(logvar, R.nhwc(posterior.logvar), f"{name} encode logvar")
  _close(image, R.nhwc(decoded), f"{name} decode")


def test_encode_to_tokens_equals_the_flux2_pipeline_encode(tiny_pair):
  """Tokens = diffusers `Flux2Pipeline._encode_vae_image` (posterior mode, `_patchify_latents`, batch-norm with the
  running statistics and `batch_norm_eps`), run unbound on the reference VAE."""
  ref, variables = tiny_pair
  x = _image((2, 12, 8, 3), seed=4)
  tokens = Flux2VAE(TINY).apply(variables, x, method="encode_to_tokens")
  pipeline = types.SimpleNamespace(vae=ref, _patchify_latents=Flux2Pipeline._patchify_latents)
  with torch.no_grad():
    expected = Flux2Pipeline._encode_vae_image(pipeline, R.nchw(x), generator=None)
  assert tokens.shape == (2, 12 // 4, 8 // 4, TINY.token_channels)
  _close(tokens, R.nhwc(expected), "encode_to_tokens")


def test_decode_from_tokens_equals_the_flux2_pipeline_decode(tiny_pair):
  """The pipeline's output path (`Flux2Pipeline.__call__` after the denoising loop): x * sqrt(running_var + eps) +
  running_mean, `_unpatchify_latents`, `vae.decode`."""
  ref, variables = tiny_pair
  tokens = np.random.default_rng(5).standard_normal((2, 3, 4, TINY.token_channels)).astype(np.float32)
  image = Flux2VAE(TINY).apply(variables, tokens, method="decode_from_tokens")
  with torch.no_grad():
    latents = R.nchw(tokens)
    mean = ref.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(ref.bn.running_var.view(1, -1, 1, 1) + ref.config.batch_norm_eps)
    latents = Flux2Pipeline._unpatchify_latents(latents * std + mean)
    expected = ref.decode(latents, return_dict=False)[0]
  assert image.shape == (2, 3 * 4, 4 * 4, 3)
  _close(image, R.nhwc(expected), "decode_from_tokens")


def test_patchify_order_is_diffusers_and_unpatchify_inverts_it():
  z = np.random.default_rng(6).standard_normal((2, 6, 10, 5)).astype(np.float32)
  tokens = np.asarray(patchify_latents(jnp.asarray(z)))
  expected = R.nhwc(Flux2Pipeline._patchify_latents(R.nchw(z)))
  assert np.array_equal(tokens, expected)
  # channel c*4 + dy*2 + dx of token (i, j) is latent channel c at pixel (2i + dy, 2j + dx)
  assert tokens[1, 2, 3, 3 * 4 + 1 * 2 + 0] == z[1, 2 * 2 + 1, 2 * 3 + 0, 3]
  back = np.asarray(unpatchify_latents(jnp.asarray(tokens)))
  assert np.array_equal(back, z)
  assert np.array_equal(back, R.nhwc(Flux2Pipeline._unpatchify_latents(R.nchw(expected))))
  # other patch shapes keep the (C, ph, pw) order and invert exactly
  tokens = np.asarray(patchify_latents(jnp.asarray(z), (3, 2)))
  assert tokens.shape == (2, 2, 5, 30) and tokens[0, 1, 4, 2 * 6 + 2 * 2 + 1] == z[0, 3 + 2, 8 + 1, 2]
  assert np.array_equal(np.asarray(unpatchify_latents(jnp.asarray(tokens), (3, 2))), z)


def test_latent_normalisation_is_the_pipeline_formula_and_inverts():
  rng = np.random.default_rng(7)
  tokens = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
  mean = rng.standard_normal(8).astype(np.float32)
  var = rng.uniform(0.1, 3, 8).astype(np.float32)
  normed = np.asarray(normalize_latents(jnp.asarray(tokens), mean, var, 1e-4))
  t_std = torch.sqrt(torch.from_numpy(var) + 1e-4)
  expected = ((torch.from_numpy(tokens) - torch.from_numpy(mean)) / t_std).numpy()
  _close(normed, expected, "normalize_latents")
  back = np.asarray(denormalize_latents(jnp.asarray(normed), mean, var, 1e-4))
  np.testing.assert_allclose(back, tokens, rtol=1e-6, atol=1e-6)


def test_tiled_decode_matches_diffusers_tiled_decode(tiny_pair):
  """11 x 14 latents in 8-latent tiles every 6 (diffusers' tiling for sample_size 16): 2 x 3 tiles, smaller at the
  bottom and right edges, blended over 4 pixels with the already blended neighbours."""
  ref, variables = tiny_pair
  assert ref.tile_latent_min_size == 8 and ref.tile_sample_min_size == 16
  z = np.random.default_rng(8).standard_normal((1, 11, 14, TINY.latent_channels)).astype(np.float32)
  vae = Flux2VAE(TINY)
  ours = jax.jit(lambda v, z: vae.apply(v, z, method="decode_tiled"))(variables, z)  # defaults: tile 8, overlap 2
  with torch.no_grad():
    expected = ref.tiled_decode(R.nchw(z), return_dict=False)[0]
  assert ours.shape == (1, 22, 28, 3)
  _close(ours, R.nhwc(expected), "decode_tiled")
  full = jax.jit(lambda v, z: vae.apply(v, z, method="decode"))(variables, z)
  assert R.rel_err(ours, full) > 1e-4  # the mid-block attention is global: tiles are an approximation here


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_decode_tiled_with_one_tile_is_decode_and_a_jitted_decoder_tiles_eagerly(tiny_pair):
  """A tile stride that covers the latent (tile 5, overlap 0 on 5 x 3) is one plain decode (up to XLA's rounding
  differences between two programs); the memory-bounded form, an eager loop over a jitted `decode` (one compilation
  per tile shape), equals the traced method (tile 4, overlap 1: two tiles, blended over 2 rows)."""
  _, variables = tiny_pair
  z = np.random.default_rng(9).standard_normal((1, 5, 3, TINY.latent_channels)).astype(np.float32)
  vae = Flux2VAE(TINY)
  decode = jax.jit(lambda z: vae.apply(variables, z, method="decode"))
  one_tile = jax.jit(lambda v, z: vae.apply(v, z, 5, 0, method="decode_tiled"))(variables, z)
  np.testing.assert_allclose(np.asarray(one_tile), np.asarray(decode(z)), rtol=0, atol=1e-6)
  tiles = jax.jit(lambda v, z: vae.apply(v, z, 4, 1, method="decode_tiled"))(variables, z)
  eager = tiled_decode(decode, z, 4, 1)
  assert tiles.shape == eager.shape == (1, 10, 6, 3)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(tiles), rtol=0, atol=1e-6)
  assert R.rel_err(tiles, decode(z)) > 1e-4


@pytest.mark.parametrize("size,tile,overlap", [((9, 13), 4, 1), ((8, 8), 4, 2), ((7, 5), 3, 0), ((6, 11), 5, 3)])
def test_tiled_decode_of_a_local_decoder_equals_the_full_decode(size, tile, overlap):
  """With a decoder whose receptive field fits in the overlap (here: pointwise, then 3x nearest upsampling), the
  blends only ever mix equal values, so the tiles reassemble the full decode exactly (up to rounding)."""
  def decode(z):
    image = jnp.tanh(z[..., :3] * 0.7 + z[..., 3:] ** 2)
    return jnp.repeat(jnp.repeat(image, 3, axis=1), 3, axis=2)

  z = jnp.asarray(np.random.default_rng(10).standard_normal((2, *size, 4)), jnp.float32)
  tiled = jax.jit(tiled_decode, static_argnums=(0, 2, 3))(decode, z, tile, overlap)
  assert tiled.shape == (2, size[0] * 3, size[1] * 3, 3)
  np.testing.assert_allclose(np.asarray(tiled), np.asarray(decode(z)), rtol=0, atol=1e-6)


def test_bad_inputs_raise_value_errors_naming_the_argument(tiny_pair):
  _, variables = tiny_pair
  vae = Flux2VAE(TINY)
  with pytest.raises(ValueError, match=r"`x` must be an image \[B, H, W, C\] with 3 channels, got shape \(1, 8, 8, 4"):
    vae.apply(variables, jnp.zeros((1, 8, 8, 4)), method="encode")
  with pytest.raises(ValueError, match=r"`z` must be a latent .* with 3 channels, got shape \(8, 8, 3\)"):
    vae.apply(variables, jnp.zeros((8, 8, 3)), method="decode")
  with pytest.raises(ValueError, match=r"multiples of \(4, 4\), got shape \(1, 6, 8, 3\)"):
    vae.apply(variables, jnp.zeros((1, 6, 8, 3)), method="encode_to_tokens")
  with pytest.raises(ValueError, match=r"`tokens` must end in 12 .* got shape \(1, 2, 2, 8\)"):
    vae.apply(variables, jnp.zeros((1, 2, 2, 8)), method="decode_from_tokens")
  with pytest.raises(ValueError, match=r"0 <= `overlap` < `tile`, got tile=4, overlap=4"):
    vae.apply(variables, jnp.zeros((1, 8, 8, 3)), 4, 4, method="decode_tiled")
  with pytest.raises(ValueError, match=r"`z` must be \[B, H, W, C\] with H % 2 == 0 .* got shape \(1, 3, 4, 2\)"):
    patchify_latents(jnp.zeros((1, 3, 4, 2)))
  with pytest.raises(ValueError, match=r"`norm_num_groups`=4 must divide every entry of `block_out_channels`"):
    Flux2VAEConfig(block_out_channels=(8, 6), norm_num_groups=4)
  with pytest.raises(ValueError, match=r"`act_fn` must be one of .* got 'tanh'"):
    dataclasses.replace(TINY, act_fn="tanh")


def test_released_config_has_diffusers_parameter_count_and_token_shapes_without_allocating():
  """`jax.eval_shape` of init at the released config: 84,046,115 params, as `sum(p.numel())` of diffusers'
  `AutoencoderKLFlux2()` built on the meta device; 1024^2 images give [1, 64, 64, 128] tokens."""
  vae = Flux2VAE(FLUX2)
  image = jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
  abstract = jax.eval_shape(vae.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sharding.unbox(abstract["params"])))
  with torch.device("meta"):
    theirs = sum(p.numel() for p in diffusers.AutoencoderKLFlux2().parameters())
  assert ours == theirs == 84_046_115
  assert jax.tree.map(lambda x: x.shape, abstract["batch_stats"]) == {
    "bn": {"running_mean": (128,), "running_var": (128,)}}
  assert FLUX2.token_stride == (16, 16) and FLUX2.token_channels == 128
  tokens = jax.eval_shape(lambda v, x: vae.apply(v, x, method="encode_to_tokens"), abstract, image)
  assert tokens.shape == (1, 64, 64, 128)
  decoded = jax.eval_shape(lambda v, t: vae.apply(v, t, method="decode_from_tokens"), abstract, tokens)
  assert decoded.shape == (1, 1024, 1024, 3)


def test_params_carry_logical_axes_and_the_vae_rules_replicate_them():
  abstract = jax.eval_shape(Flux2VAE(TINY).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.float32))
  specs = nn.get_partition_spec(abstract["params"])
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): spec
          for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda s: isinstance(s, tuple))[0]}
  assert flat, "no params"
  for path, spec in flat.items():
    if path.endswith("kernel") and "attention" not in path:
      assert tuple(spec) == CONV_AXES, path
    elif path.endswith("kernel"):
      assert tuple(spec) == ("conv_in", "conv_out"), path
    else:
      assert tuple(spec) in (("conv_out",), ("norm",)), path
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(LOGICAL_RULES))
  assert all(s.spec == jax.sharding.PartitionSpec() or all(a is None for a in s.spec)
             for s in jax.tree.leaves(shardings))


def test_encode_to_tokens_under_a_data_parallel_mesh_equals_one_device(tiny_pair):
  _, variables = tiny_pair
  vae = Flux2VAE(TINY)
  x = _image((4, 8, 8, 3), seed=11)
  single = vae.apply(variables, x, method="encode_to_tokens")
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  with sharding.active(mesh, LOGICAL_RULES):
    sharded = jax.jit(lambda v, x: vae.apply(v, x, method="encode_to_tokens"))(
      variables, jax.device_put(x, sharding.batch_sharding(mesh, LOGICAL_RULES)))
  assert sharded.sharding.spec[0] in ("data", ("data",), ("data", "fsdp"))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32(tiny_pair):
  """bf16 activations (GroupNorm statistics, softmax and the latent norm stay float32): tokens within 2e-2."""
  _, variables = tiny_pair
  x = _image((2, 8, 8, 3), seed=12)
  f32, bf16 = (jax.jit(lambda v, x, vae=vae: vae.apply(v, x, method="encode_to_tokens"))(variables, x)
               for vae in (Flux2VAE(TINY), Flux2VAE(TINY, dtype=jnp.bfloat16)))
  assert bf16.dtype == jnp.bfloat16
  assert R.rel_err(np.asarray(bf16, np.float32), f32) < 2e-2
