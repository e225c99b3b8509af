"""The Wan DiT against diffusers `WanTransformer3DModel` (float32, CPU): tiny random models written with
`save_pretrained`, read back through `wan_dit.load_params`, and run on the same channels-last inputs; plus the
conversion's refusals, scan == unrolled, and the presets against the diffusers constructor."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.models import wan_dit

torch = pytest.importorskip("torch")
transformer_wan = pytest.importorskip("diffusers.models.transformers.transformer_wan")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Tiny configs with odd sizes: 2 x 12 heads (rotary split (4, 4, 4)) and 3 x 8 heads (split (4, 2, 2)).
T2V = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3, out_channels=5,
           text_dim=13, freq_dim=32, ffn_dim=37, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
T2V_NO_NORM = dict(T2V, num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=None,
                   cross_attn_norm=False, qk_norm=None, eps=1e-5)
T2V_PATCH_T2 = dict(T2V, patch_size=(2, 2, 2), ffn_dim=21)
I2V = dict(T2V, in_channels=7, image_dim=11, added_kv_proj_dim=24)
FLF2V = dict(I2V, pos_embed_seq_len=6)
CONFIGS = {"t2v": T2V, "t2v_no_norm": T2V_NO_NORM, "t2v_patch_t2": T2V_PATCH_T2, "i2v": I2V, "flf2v": FLF2V}


def _diffusers_model(config: dict, seed: int = 0):
  """A random `WanTransformer3DModel`; norm weights and biases and `pos_embed` are perturbed away from their
  (1, 0) / zero inits so that a transposed or misplaced one shows."""
  torch.manual_seed(seed)
  model = transformer_wan.WanTransformer3DModel(**config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or "pos_embed" in name:
        param.add_(0.1 * torch.randn_like(param))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (torch model, directory it was saved to), built once per config."""
  out = {}

  def get(name):
    if name not in out:
      model = _diffusers_model(CONFIGS[name])
      directory = tmp_path_factory.mktemp(name)
      model.save_pretrained(directory)
      out[name] = (model, str(directory))
    return out[name]

  return get


def _inputs(config: dict, frames: int, height: int, width: int, text_len: int, image_len: int = 0, seed: int = 0):
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((2, frames, height, width, config["in_channels"])).astype(np.float32)
  timesteps = np.array([37.5, 912.0], np.float32)
  text = rng.standard_normal((2, text_len, config["text_dim"])).astype(np.float32)
  image = None
  if image_len:
    image = rng.standard_normal((2, image_len, config["image_dim"])).astype(np.float32)
  return latents, timesteps, text, image


def _reference(model, latents, timesteps, text, image) -> np.ndarray:
  """diffusers' output on the same inputs, moved to channels-last. Its FLF2V embedder views [2B, M/2, D] image
  tokens as [B, M, D], i.e. our row b is its rows 2b, 2b + 1."""
  kwargs = {}
  if image is not None:
    image_t = torch.from_numpy(image)
    if model.config.pos_embed_seq_len is not None:
      image_t = image_t.reshape(-1, image.shape[1] // 2, image.shape[2])
    kwargs["encoder_hidden_states_image"] = image_t
  with torch.no_grad():
    out = model(torch.from_numpy(latents).permute(0, 4, 1, 2, 3), torch.from_numpy(timesteps),
                torch.from_numpy(text), return_dict=False, **kwargs)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()


def _relative_error(ours, reference) -> float:
  return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


# name, (frames, height, width), text length, image tokens. The I2V reference splits its context at 512 text tokens.
_SLOW = pytest.mark.slow  # in CI after the suite (.ci/run): each case is another compilation
PARITY_CASES = [
  ("t2v", (3, 6, 10), 7, 0),
  pytest.param("t2v", (1, 4, 6), 5, 0, marks=_SLOW),
  pytest.param("t2v_no_norm", (1, 6, 4), 5, 0, marks=_SLOW),
  ("t2v_no_norm", (5, 2, 8), 9, 0),
  pytest.param("t2v_patch_t2", (4, 4, 6), 3, 0, marks=_SLOW),
  ("i2v", (3, 4, 6), 512, 9),
  pytest.param("flf2v", (2, 6, 4), 512, 6, marks=_SLOW),
]


@pytest.mark.parametrize("name, shape, text_len, image_len", PARITY_CASES)
def test_output_matches_diffusers_in_float32(checkpoints, name, shape, text_len, image_len):
  model, directory = checkpoints(name)
  config, params = wan_dit.load_params(directory)
  inputs = _inputs(CONFIGS[name], *shape, text_len, image_len)
  ours = jax.jit(wan_dit.WanDiT(config).apply)({"params": params}, *inputs)
  expected = _reference(model, *inputs)
  assert ours.shape == expected.shape == (2, *shape, config.out_channels)
  error = _relative_error(ours, expected)
  print(f"{name} {shape} text {text_len} image {image_len}: relative error {error:.2e}")
  assert error < 1e-5


def test_scanned_and_unrolled_blocks_give_the_same_output(checkpoints):
  _, directory = checkpoints("t2v")
  config, params = wan_dit.load_params(directory)
  unrolled_config, unrolled_params = wan_dit.load_params(directory, config.replace(scan_layers=False))
  assert "blocks" not in unrolled_params and "blocks_1" in unrolled_params
  inputs = _inputs(T2V, 3, 4, 6, 5)
  scanned = jax.jit(wan_dit.WanDiT(config).apply)({"params": params}, *inputs)
  unrolled = jax.jit(wan_dit.WanDiT(unrolled_config).apply)({"params": unrolled_params}, *inputs)
  np.testing.assert_allclose(scanned, unrolled, rtol=1e-6, atol=1e-6)


def test_remat_keeps_the_output_and_bfloat16_stays_close(checkpoints):
  _, directory = checkpoints("i2v")
  config, params = wan_dit.load_params(directory)
  inputs = _inputs(I2V, 3, 4, 6, 5, 9)
  reference = jax.jit(wan_dit.WanDiT(config).apply)({"params": params}, *inputs)
  remat = jax.jit(wan_dit.WanDiT(config.replace(remat_policy="full")).apply)({"params": params}, *inputs)
  np.testing.assert_allclose(remat, reference, rtol=1e-6, atol=1e-6)
  bf16_inputs = [x if x is inputs[1] else x.astype(jnp.bfloat16) for x in inputs]
  bf16 = jax.jit(wan_dit.WanDiT(config, dtype=jnp.bfloat16).apply)({"params": params}, *bf16_inputs)
  assert bf16.dtype == jnp.bfloat16
  assert _relative_error(np.asarray(bf16, np.float32), np.asarray(reference)) < 2e-2


def test_patchify_inverts_unpatchify():
  latents = np.arange(2 * 4 * 6 * 8 * 3, dtype=np.float32).reshape(2, 4, 6, 8, 3)
  tokens = wan_dit.patchify(latents, (2, 2, 2))
  assert tokens.shape == (2, 2 * 3 * 4, 8 * 3)
  np.testing.assert_array_equal(wan_dit.unpatchify(tokens, (2, 3, 4), (2, 2, 2)), latents)


def _rewrite(directory, tmp_path, edit):
  """A copy of a checkpoint directory with its state dict passed through `edit`."""
  state = safetensors_numpy.load_file(f"{directory}/{_WEIGHTS}")
  edit(state)
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text((open(f"{directory}/config.json")).read())
  safetensors_numpy.save_file(state, str(tmp_path / _WEIGHTS))
  return str(tmp_path)


def test_missing_key_is_named_with_the_directory(checkpoints, tmp_path):
  _, directory = checkpoints("t2v")
  broken = _rewrite(directory, tmp_path / "ckpt", lambda s: s.pop("blocks.1.attn2.norm_k.weight"))
  with pytest.raises(ValueError, match=r"1 missing \['blocks\.1\.attn2\.norm_k\.weight'\]") as error:
    wan_dit.load_params(broken)
  assert broken in str(error.value)


def test_unexpected_keys_are_named_with_their_file(checkpoints, tmp_path):
  _, directory = checkpoints("t2v")

  def edit(state):
    state["blocks.2.ffn.net.2.bias"] = state["blocks.1.ffn.net.2.bias"]  # only 2 blocks
    state["blocks.0.attn2.add_k_proj.weight"] = np.zeros((24, 24), np.float32)  # a T2V config has no image branch

  broken = _rewrite(directory, tmp_path / "ckpt", edit)
  with pytest.raises(ValueError, match="0 missing.*2 unexpected") as error:
    wan_dit.load_params(broken)
  for name in ("blocks.2.ffn.net.2.bias", "blocks.0.attn2.add_k_proj.weight", _WEIGHTS):
    assert name in str(error.value)


def test_wrong_shape_is_named_with_file_key_and_both_shapes(checkpoints, tmp_path):
  _, directory = checkpoints("t2v")

  def edit(state):
    state["patch_embedding.weight"] = state["patch_embedding.weight"][:, :-1]

  broken = _rewrite(directory, tmp_path / "ckpt", edit)
  with pytest.raises(ValueError, match=r"'patch_embedding\.weight' of shape \(24, 2, 1, 2, 2\) converts to \(8, 24\)"
                     ) as error:
    wan_dit.load_params(broken)
  assert _WEIGHTS in str(error.value) and "(12, 24)" in str(error.value)


def test_sharded_save_pretrained_loads_like_a_single_file(checkpoints, tmp_path):
  model, directory = checkpoints("t2v")
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
  _, single = wan_dit.load_params(directory)
  _, sharded = wan_dit.load_params(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, single, sharded)


def test_checkpoint_of_another_config_is_refused(checkpoints):
  _, directory = checkpoints("t2v")
  config = wan_dit.load_config(directory).replace(num_layers=3)
  with pytest.raises(ValueError, match=r"missing \['blocks\.2\."):
    wan_dit.load_params(directory, config)


def test_unused_norm_added_q_is_skipped_as_diffusers_does(checkpoints, tmp_path):
  _, directory = checkpoints("t2v")
  extra = _rewrite(directory, tmp_path / "ckpt",
                   lambda s: s.__setitem__("blocks.0.attn2.norm_added_q.weight", np.ones(24, np.float32)))
  wan_dit.load_params(extra)


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b"])
def test_presets_have_the_diffusers_parameter_count(name):
  config = wan_dit.get_config(name)
  diffusers_config = dict(
    num_attention_heads=config.num_heads, attention_head_dim=config.head_dim, in_channels=config.in_channels,
    out_channels=config.out_channels, text_dim=config.text_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers,
    image_dim=config.image_dim, added_kv_proj_dim=config.image_dim and config.width,
  )
  with torch.device("meta"):
    reference = transformer_wan.WanTransformer3DModel(**diffusers_config)
  assert wan_dit.WanDiTConfig.from_diffusers(json.loads(json.dumps(dict(reference.config)))) == config
  ours = sum(int(np.prod(shape)) for shape in wan_dit.param_shapes(config).values())
  assert ours == sum(p.numel() for p in reference.parameters())


def test_inconsistent_image_branch_config_is_refused():
  with pytest.raises(ValueError, match="added_kv_proj_dim"):
    wan_dit.WanDiTConfig.from_diffusers(dict(T2V, image_dim=11))


def test_latents_not_divisible_by_the_patch_are_refused():
  config = wan_dit.get_config("wan-tiny")
  latents = np.zeros((1, 2, 5, 4, config.in_channels), np.float32)
  with pytest.raises(ValueError, match="multiples of patch_size"):
    wan_dit.WanDiT(config).init(jax.random.key(0), latents, np.zeros(1), np.zeros((1, 3, config.text_dim)))
