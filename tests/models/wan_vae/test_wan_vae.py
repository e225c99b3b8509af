"""The Wan 2.1 VAE against diffusers 0.42.1 `AutoencoderKLWan` at fp32 on CPU: encode (posterior mean and logvar,
through diffusers' chunked loop with its feature caches), decode (one latent frame at a time) and the full forward,
for tiny configs with random weights loaded through our converter from `save_pretrained` directories, at 1, 5 and 9
frames and odd, non-square sizes. Also checkpoint conversion and its errors, the pipelines' latent normalisation, the
released config's parameter count and latent shape (no allocation), the logical axes and bad input."""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents import sharding
from jaxagents.models.wan_vae import (
  LOGICAL_RULES,
  TINY,
  WAN21,
  WanVAE,
  WanVAEConfig,
  decode_chunked,
  denormalize_latents,
  diffusers_to_variables,
  encode_chunked,
  load_config,
  load_variables,
  normalize_latents,
  save_variables,
  usable_frames,
  variables_to_diffusers,
)
from jaxagents.models.wan_vae.blocks import CONV3D_AXES
from jaxagents.models.wan_vae.convert import RULES

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-5
WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIGS = {
  # two levels, time halved once (1 + 4k frames -> 1 + 2k latents)
  "two_levels_time_down": TINY,
  # three levels, time halved twice (as the released VAE: chunks of 4 frames -> 1 latent), base 12
  "three_levels_time_down_twice": WanVAEConfig(base_dim=12, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
                                               temperal_downsample=(True, True), latents_mean=(0.0,) * 4,
                                               latents_std=(1.0,) * 4),
  # the released pattern's tail: a space-only level then a space-time one; 2 resnets, a narrower decoder, 3 latents
  "space_then_time_narrow_decoder": WanVAEConfig(base_dim=8, decoder_base_dim=6, z_dim=3, dim_mult=(1, 2, 3),
                                                 num_res_blocks=2, temperal_downsample=(False, True),
                                                 latents_mean=(0.0,) * 3, latents_std=(1.0,) * 3),
}
# (config, frames, also the full forward): 1, 5 and 9 frames = one, two and three chunks of diffusers' loop.
# Three of them run in CI's slow stage (`.ci/run`), after the suite: each new shape is another compilation.
_SLOW = pytest.mark.slow
CASES = [pytest.param("two_levels_time_down", 1, False, marks=_SLOW),
         pytest.param("two_levels_time_down", 5, False, marks=_SLOW), ("two_levels_time_down", 9, True),
         ("three_levels_time_down_twice", 1, False), ("three_levels_time_down_twice", 5, True),
         pytest.param("three_levels_time_down_twice", 9, False, marks=_SLOW),
         ("space_then_time_narrow_decoder", 9, True)]


def _randomize(model, seed: int):
  """Every parameter random and away from its default (RMS gammas around 1, kernels scaled by 1/sqrt(fan_in))."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      p.copy_(1 + 0.2 * noise if name.endswith("gamma") else noise / np.sqrt(p[0].numel()) if p.ndim > 1 else
              0.2 * noise)
  return model.eval()


def _saved(config: WanVAEConfig, directory, seed: int = 0):
  model = _randomize(diffusers.AutoencoderKLWan.from_config(config.to_diffusers()), seed)
  model.save_pretrained(str(directory), safe_serialization=True)
  return model


def _ncthw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def _nthwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 4, 1)


def _close(ours, theirs, what: str) -> float:
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
  print(f"{what}: max|ours - diffusers| / max|diffusers| = {err:.2e}")
  assert err < TOL, f"{what}: relative error {err:.2e} >= {TOL}"
  return err


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
  """{name: (diffusers model, directory)}, each config saved once."""
  out = {}
  for seed, (name, config) in enumerate(CONFIGS.items()):
    directory = tmp_path_factory.mktemp(name)
    out[name] = (_saved(config, directory, seed), str(directory))
  return out


@pytest.mark.parametrize("name,frames,forward", CASES)
def test_encode_decode_and_forward_match_diffusers_autoencoder_kl_wan(name, frames, forward, saved_models):
  """Encode and decode in every case, the forward (encode -> posterior mode -> decode) once per config (each is one
  more compilation)."""
  ref, directory = saved_models[name]
  config, variables = load_variables(directory)
  assert config == CONFIGS[name]
  rng = np.random.default_rng(frames)
  video = rng.uniform(-1, 1, (2, frames, 10, 14, 3)).astype(np.float32)  # odd latent sides at 2x down
  latent_frames = 1 + (frames - 1) // config.temporal_factor
  h, w = 10 // config.spatial_factor, 14 // config.spatial_factor
  z = rng.standard_normal((2, latent_frames, h, w, config.z_dim)).astype(np.float32)
  vae = WanVAE(config)

  @jax.jit
  def run(variables, video, z):
    mean, logvar = vae.apply(variables, video, method="encode")
    return mean, logvar, vae.apply(variables, z, method="decode"), vae.apply(variables, video) if forward else None

  mean, logvar, decoded, reconstruction = run(variables, video, z)
  with torch.no_grad():
    posterior = ref.encode(_ncthw(video)).latent_dist
    expected_decoded = ref.decode(_ncthw(z)).sample
  assert mean.shape == (2, latent_frames, h, w, config.z_dim)
  assert decoded.shape == (2, frames, h * config.spatial_factor, w * config.spatial_factor, 3)
  _close(mean, _nthwc(posterior.mean), f"{name} T={frames} encode mean")
  _close(logvar, _nthwc(posterior.logvar), f"{name} T={frames} encode logvar")
  _close(decoded, _nthwc(expected_decoded), f"{name} T={frames} decode")
  if forward:
    with torch.no_grad():
      expected = ref(_ncthw(video)).sample
    _close(reconstruction, _nthwc(expected), f"{name} T={frames} forward")


def test_chunked_encode_and_decode_match_diffusers(saved_models):
  """diffusers' loop with an explicit cache pytree (first frame, then chunks of 4; one latent frame at a time) gives
  diffusers' numbers, as the one pass does (above); time halved and doubled twice, so every cache kind is used."""
  name, frames = "three_levels_time_down_twice", 9
  ref, directory = saved_models[name]
  config, variables = load_variables(directory)
  video = np.random.default_rng(frames + 1).uniform(-1, 1, (2, frames, 6, 10, 3)).astype(np.float32)
  vae = WanVAE(config)
  mean, logvar = encode_chunked(vae, variables, video)
  decoded = decode_chunked(vae, variables, mean)
  with torch.no_grad():
    posterior = ref.encode(_ncthw(video)).latent_dist
    expected = ref.decode(posterior.mean).sample
  _close(mean, _nthwc(posterior.mean), f"{name} T={frames} chunked encode mean")
  _close(logvar, _nthwc(posterior.logvar), f"{name} T={frames} chunked encode logvar")
  _close(decoded, _nthwc(expected), f"{name} T={frames} chunked decode")
  # the cache: each causal conv's last 2 input frames, e.g. the encoder's first conv sees the raw video
  _, state = jax.eval_shape(lambda v, x: vae.apply(v, x, method="encode_moments", mutable=["cache"]), variables,
                            video[:, :1])
  assert state["cache"]["encoder"]["conv_in_history"].shape == (2, 2, 6, 10, 3)


def test_frames_past_the_last_chunk_of_four_are_dropped_as_diffusers_does(saved_models):
  """7 frames encode like their first 5 (diffusers' `_encode` runs 1 + (T - 1) // 4 chunks)."""
  ref, directory = saved_models["two_levels_time_down"]
  config, variables = load_variables(directory)
  video = np.random.default_rng(7).uniform(-1, 1, (1, 7, 6, 8, 3)).astype(np.float32)
  assert usable_frames(7) == 5 and usable_frames(1) == 1 and usable_frames(9) == 9
  mean, _ = WanVAE(config).apply(variables, video, method="encode")
  with torch.no_grad():
    expected = ref.encode(_ncthw(video)).latent_dist.mean
  assert mean.shape == (1, 3, 3, 4, config.z_dim)
  _close(mean, _nthwc(expected), "T=7 encode mean")


def test_latent_normalisation_is_the_wan_pipeline_formula_and_inverts():
  """(z - mean) * (1 / std) as `WanImageToVideoPipeline.prepare_latents`, z / (1 / std) + mean as `WanPipeline`."""
  z = np.random.default_rng(3).standard_normal((2, 3, 4, 5, TINY.z_dim)).astype(np.float32)
  mean = torch.tensor(TINY.latents_mean).view(1, TINY.z_dim, 1, 1, 1)
  inv_std = 1.0 / torch.tensor(TINY.latents_std).view(1, TINY.z_dim, 1, 1, 1)
  normed = np.asarray(normalize_latents(jnp.asarray(z), TINY))
  _close(normed, _nthwc((_ncthw(z) - mean) * inv_std), "normalize_latents")
  back = np.asarray(denormalize_latents(jnp.asarray(normed), TINY))
  _close(back, _nthwc(_ncthw(normed) / inv_std + mean), "denormalize_latents")
  np.testing.assert_allclose(back, z, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"`latents_mean` and `latents_std` must have z_dim = 16 entries, got 4"):
    normalize_latents(jnp.zeros((1, 16)), WanVAEConfig(latents_mean=(0.0,) * 4))


# ------------------------------------------------------------------------------------------------------- conversion
def _state(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _corrupt(source: str, target, edit) -> str:
  """A copy of the checkpoint directory `source` whose tensors went through `edit(dict) -> dict`."""
  os.makedirs(target, exist_ok=True)
  with open(os.path.join(source, "config.json")) as f:
    config = f.read()
  with open(os.path.join(target, "config.json"), "w") as f:
    f.write(config)
  tensors = edit(safetensors_numpy.load_file(os.path.join(source, WEIGHTS)))
  safetensors_numpy.save_file(tensors, os.path.join(target, WEIGHTS), metadata={"format": "pt"})
  return str(target)


def test_diffusers_to_ours_to_diffusers_is_bitwise_and_diffusers_loads_what_we_save(saved_models, tmp_path):
  model, directory = saved_models["three_levels_time_down_twice"]
  config, variables = load_variables(directory)
  state = _state(model)
  back = dict(variables_to_diffusers(variables, config))
  assert sorted(back) == sorted(state)
  assert all(back[k].shape == v.shape and np.array_equal(back[k], v) for k, v in state.items())
  from_state = dict(variables_to_diffusers(diffusers_to_variables(model.state_dict(), config), config))
  assert all(np.array_equal(from_state[k], back[k]) for k in back)
  save_variables(variables, config, str(tmp_path / "ours"))
  reloaded = diffusers.AutoencoderKLWan.from_pretrained(str(tmp_path / "ours"))
  assert all(np.array_equal(v, state[k]) for k, v in _state(reloaded).items())
  assert load_config(str(tmp_path / "ours")) == config


def test_every_rule_is_used_by_some_config():
  keys = set()
  for config in (WAN21, *CONFIGS.values()):
    with torch.device("meta"):
      keys |= set(diffusers.AutoencoderKLWan.from_config(config.to_diffusers()).state_dict())
  for rule in RULES:
    assert any(rule.match_diffusers(k) is not None for k in keys), rule


def test_missing_key_is_named_with_the_checkpoint_file(saved_models, tmp_path):
  _, directory = saved_models["two_levels_time_down"]
  key = "decoder.up_blocks.0.upsamplers.0.time_conv.bias"
  broken = _corrupt(directory, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != key})
  with pytest.raises(ValueError, match=rf"{re.escape(WEIGHTS)}: keys do not match .* 1 missing \['{re.escape(key)}'\]"):
    load_variables(broken)


def test_unexpected_key_is_named_with_its_file(saved_models, tmp_path):
  _, directory = saved_models["two_levels_time_down"]
  key = "encoder.down_blocks.0.extra.weight"
  broken = _corrupt(directory, tmp_path / "extra", lambda t: {**t, key: np.zeros(3, np.float32)})
  path = os.path.join(broken, WEIGHTS)
  expected = rf"0 missing \[\], 1 unexpected \['{re.escape(key)} \(in {re.escape(path)}\)'\]"
  with pytest.raises(ValueError, match=expected):
    load_variables(broken)


def test_wrong_shape_is_named_with_the_key_the_file_and_both_shapes(saved_models, tmp_path):
  _, directory = saved_models["two_levels_time_down"]
  key = "encoder.mid_block.attentions.0.norm.gamma"  # [16, 1, 1]
  broken = _corrupt(directory, tmp_path / "shape", lambda t: {**t, key: np.ones((16, 1, 1, 1), np.float32)})
  path = os.path.join(broken, WEIGHTS)
  with pytest.raises(ValueError, match=rf"checkpoint file '{re.escape(path)}': tensor '{re.escape(key)}' has shape "
                                       r"\[16, 1, 1, 1\], but the config expects \[16, 1, 1\]"):
    load_variables(broken)


def test_config_that_does_not_fit_the_weights_names_the_missing_keys(saved_models):
  _, directory = saved_models["two_levels_time_down"]
  deeper = WanVAEConfig(**{**load_config(directory).__dict__, "num_res_blocks": 2})
  with pytest.raises(ValueError, match=r"missing \[.*'decoder\.up_blocks\.0\.resnets\.2\.conv1\.weight'"):
    load_variables(directory, deeper)


def test_config_reads_diffusers_config_json_and_rejects_what_is_not_ported():
  with torch.device("meta"):
    released = dict(diffusers.AutoencoderKLWan().config)
  assert WanVAEConfig.from_diffusers(released) == WAN21
  assert WanVAEConfig.from_diffusers(json.loads(json.dumps(TINY.to_diffusers()))) == TINY
  with pytest.raises(ValueError, match=r"`_class_name` must be 'AutoencoderKLWan', got 'AutoencoderKL'"):
    WanVAEConfig.from_diffusers({**TINY.to_diffusers(), "_class_name": "AutoencoderKL"})
  with pytest.raises(ValueError, match=r"Wan 2.2 VAE .* is not ported"):
    WanVAEConfig.from_diffusers({**released, "is_residual": True, "patch_size": 2})
  with pytest.raises(ValueError, match=r"`temperal_downsample` must have len\(dim_mult\) - 1 = 1 entries"):
    WanVAEConfig(dim_mult=(1, 2), temperal_downsample=(True, True))
  with pytest.raises(ValueError, match=r"at most two levels can halve time"):
    WanVAEConfig(dim_mult=(1, 1, 1, 1), temperal_downsample=(True, True, True))
  with pytest.raises(ValueError, match=r"encoder attention"):
    WanVAEConfig(attn_scales=(0.5,))


# ------------------------------------------------------------------------------------------------ full size, axes
def test_released_config_has_diffusers_parameter_count_and_latent_shape_without_allocating():
  """126,892,531 parameters as diffusers' `AutoencoderKLWan()` on the meta device; 81 frames at 480 x 832 give
  [1, 21, 60, 104, 16] latents and decode back to [1, 81, 480, 832, 3]."""
  vae = WanVAE(WAN21)
  abstract = jax.eval_shape(vae.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, 8, 8, 3), jnp.float32))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sharding.unbox(abstract["params"])))
  with torch.device("meta"):
    theirs = sum(p.numel() for p in diffusers.AutoencoderKLWan().parameters())
  assert ours == theirs == 126_892_531
  video = jax.ShapeDtypeStruct((1, 81, 480, 832, 3), jnp.float32)
  mean, _ = jax.eval_shape(lambda v, x: vae.apply(v, x, method="encode"), abstract, video)
  assert mean.shape == (1, 21, 60, 104, 16)
  assert jax.eval_shape(lambda v, z: vae.apply(v, z, method="decode"), abstract, mean).shape == (1, 81, 480, 832, 3)


def test_params_carry_logical_axes_and_the_rules_replicate_them():
  abstract = jax.eval_shape(WanVAE(TINY).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, 4, 4, 3), jnp.float32))
  specs = nn.get_partition_spec(abstract["params"])
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(spec)
          for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda s: isinstance(s, tuple))[0]}
  assert flat
  for path, spec in flat.items():
    if path.endswith("kernel"):
      assert spec in (CONV3D_AXES, CONV3D_AXES[1:]), path
      assert (len(spec) == 4) == any(s in path for s in ("resample", "to_qkv", "proj")), path
    else:
      assert spec in (("conv_out",), ("norm",)), path
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(LOGICAL_RULES))
  assert all(all(a is None for a in s.spec) for s in jax.tree.leaves(shardings))


def test_bad_inputs_raise_value_errors_naming_the_argument():
  vae = WanVAE(TINY)
  variables = {"params": {}}
  with pytest.raises(ValueError, match=r"`x` must be a video \[B, T, H, W, C\] with T >= 1 and 3 channels, got shape "
                                       r"\(1, 4, 4, 3\)"):
    vae.apply(variables, jnp.zeros((1, 4, 4, 3)), method="encode")
  with pytest.raises(ValueError, match=r"`z` must be a latent .* and 4 channels, got shape \(1, 1, 2, 2, 3"):
    vae.apply(variables, jnp.zeros((1, 1, 2, 2, 3)), method="decode")
  with pytest.raises(ValueError, match=r"got shape \(1, 0, 4, 4, 3\)"):
    encode_chunked(vae, variables, jnp.zeros((1, 0, 4, 4, 3)))


def test_bfloat16_compute_stays_close_to_float32(saved_models):
  """bf16 activations (RMS-norm statistics and the attention softmax stay float32): posterior mean within 2e-2."""
  _, directory = saved_models["two_levels_time_down"]
  config, variables = load_variables(directory)
  video = np.random.default_rng(11).uniform(-1, 1, (1, 5, 6, 8, 3)).astype(np.float32)
  f32, bf16 = (jax.jit(lambda v, x, vae=vae: vae.apply(v, x, method="encode")[0])(variables, video)
               for vae in (WanVAE(config), WanVAE(config, dtype=jnp.bfloat16)))
  assert bf16.dtype == jnp.bfloat16
  err = float(np.max(np.abs(np.asarray(bf16, np.float32) - np.asarray(f32))) / np.max(np.abs(np.asarray(f32))))
  assert err < 2e-2, err
