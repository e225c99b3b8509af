"""The MMDiT configured as Lens, against an independent float64 numpy reference written here from the equations of
diffusers `src/diffusers/models/transformers/transformer_lens.py` (`LensTransformer2DModel`,
`LensTransformerBlock`, `LensJointAttention`, `LensEmbedRope`; not in the installed diffusers release).

Checkpoints are written here with the key names and shapes of that file (`lens_state_shapes`) and read through
`convert.load_params`, so every test also checks the conversion table. The reference masks text padding in every
block (the equations' intent; see the model docstring on the diffusers port masking only its first block).
"""

import json
import math

import jax
import numpy as np
import pytest

from jaxagents.layers.multi_axis_rope import msrope_position_ids, multi_axis_rope_angles
from jaxagents.models import mmdit
from jaxagents.models.mmdit.model import DoubleStreamBlock

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def lens_config(**changes) -> dict:
  """A tiny `LensTransformer2DModel` config.json (defaults: 2 blocks, 2 x 16 heads, axes (4, 6, 6), in 16, out 4,
  two text layers of 24)."""
  config = dict(
    _class_name="LensTransformer2DModel", patch_size=2, in_channels=16, out_channels=4, num_layers=2,
    attention_head_dim=16, num_attention_heads=2, inner_dim=32, enc_hidden_dim=24, axes_dims_rope=[4, 6, 6],
    gate_mlp=True, rms_norm=True, multi_layer_encoder_feature=True, selected_layer_index=[5, 11],
  )
  return {**config, **changes}


def lens_state_shapes(config: dict) -> dict[str, tuple[int, ...]]:
  """Every state-dict key of `LensTransformer2DModel(**config)` and its shape, as its constructor builds them."""
  width = config["num_attention_heads"] * config["attention_head_dim"]
  head_dim, text_dim = config["attention_head_dim"], config["enc_hidden_dim"]
  layers = len(config["selected_layer_index"]) if config["multi_layer_encoder_feature"] else 1
  shapes = {}

  def linear(key, out, inp, bias=True):
    shapes[f"{key}.weight"] = (out, inp)
    if bias:
      shapes[f"{key}.bias"] = (out,)

  linear("time_text_embed.timestep_embedder.linear_1", width, 256)
  linear("time_text_embed.timestep_embedder.linear_2", width, width)
  if config["multi_layer_encoder_feature"]:
    shapes.update({f"txt_norm.{k}.weight": (text_dim,) for k in range(layers)})
  else:
    shapes["txt_norm.weight"] = (text_dim,)
  linear("txt_in", width, text_dim * layers)
  linear("img_in", width, config["in_channels"])
  for i in range(config["num_layers"]):
    block = f"transformer_blocks.{i}"
    for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
      shapes[f"{block}.attn.{norm}.weight"] = (head_dim,)
    linear(f"{block}.attn.img_qkv", 3 * width, width)
    linear(f"{block}.attn.txt_qkv", 3 * width, width)
    linear(f"{block}.attn.to_out.0", width, width)
    linear(f"{block}.attn.to_add_out", width, width)
    for s in ("img", "txt"):
      linear(f"{block}.{s}_mod.1", 6 * width, width)
      if config["rms_norm"]:
        shapes[f"{block}.{s}_norm1.weight"] = shapes[f"{block}.{s}_norm2.weight"] = (width,)
      if config["gate_mlp"]:
        hidden = int(width / 3 * 8)
        linear(f"{block}.{s}_mlp.w1", hidden, width, bias=False)
        linear(f"{block}.{s}_mlp.w2", width, hidden, bias=False)
        linear(f"{block}.{s}_mlp.w3", hidden, width, bias=False)
      else:
        linear(f"{block}.{s}_mlp.net.0.proj", 4 * width, width)
        linear(f"{block}.{s}_mlp.net.2", width, 4 * width)
  linear("norm_out.linear", 2 * width, width)
  linear("proj_out", config["patch_size"] ** 2 * config["out_channels"], width)
  return shapes


def random_state(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """float32 weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in lens_state_shapes(config).items():
    if len(shape) == 2:
      value = rng.standard_normal(shape) / math.sqrt(shape[1])
    elif "norm" in key:
      value = 1 + 0.1 * rng.standard_normal(shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    state[key] = value.astype(np.float32)
  return state


def write_checkpoint(directory, config: dict, state: dict[str, np.ndarray]) -> str:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  safetensors_numpy.save_file(state, str(directory / "diffusion_pytorch_model.safetensors"))
  return str(directory)


# ------------------------------------------------------------------------------------------------ numpy reference
def _rms(x, weight, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _layer_norm(x, eps):
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)


def _silu(x):
  return x / (1 + np.exp(-x))


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _linear(state, key, x):
  y = x @ state[f"{key}.weight"].astype(np.float64).T
  bias = state.get(f"{key}.bias")
  return y if bias is None else y + bias


def lens_rope_tables(axes_dims, theta, height, width, text_len):
  """`LensEmbedRope(theta, axes_dims, scale_rope=True)` for one (1, h, w) image: (image [h*w, D/2], text
  [T, D/2]) complex tables, and the per-axis position index each row uses."""
  positive, negative = np.arange(4096), -np.arange(4096)[::-1] - 1

  def table(index, dim):
    return np.exp(1j * np.outer(index, 1.0 / theta ** (np.arange(0, dim, 2) / dim)))

  pos = [table(positive, d) for d in axes_dims]
  neg = [table(negative, d) for d in axes_dims]
  index_h = np.concatenate([negative[-(height - height // 2):], positive[: height // 2]])
  index_w = np.concatenate([negative[-(width - width // 2):], positive[: width // 2]])
  frame = np.broadcast_to(pos[0][0], (height, width, axes_dims[0] // 2))
  rows = np.concatenate([neg[1][-(height - height // 2):], pos[1][: height // 2]])
  cols = np.concatenate([neg[2][-(width - width // 2):], pos[2][: width // 2]])
  rows = np.broadcast_to(rows[:, None], (height, width, rows.shape[-1]))
  cols = np.broadcast_to(cols[None, :], (height, width, cols.shape[-1]))
  image = np.concatenate([frame, rows, cols], axis=-1).reshape(height * width, -1)
  start = max(height // 2, width // 2)
  text = np.concatenate([p[start:start + text_len] for p in pos], axis=-1)
  indices = (np.zeros(height * width, int), np.repeat(index_h, width), np.tile(index_w, height))
  return image, text, np.stack(indices, -1), np.repeat(positive[start:start + text_len, None], 3, axis=1)


def _rotate(x, table):
  """Complex multiplication of interleaved pairs: x [B, S, H, D], table [S, D/2]."""
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * table[None, :, None, :]
  return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def lens_block(state, prefix, config, img, txt, temb, tables, txt_valid):
  """`LensTransformerBlock.forward` in float64; returns (txt, img)."""
  heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
  eps = 1e-6

  def norm(s, n, x):
    key = f"{prefix}.{s}_norm{n}.weight"
    return _rms(x, state[key], eps) if config["rms_norm"] else _layer_norm(x, eps)

  def mlp(s, x):
    if config["gate_mlp"]:
      w1, w3 = _linear(state, f"{prefix}.{s}_mlp.w1", x), _linear(state, f"{prefix}.{s}_mlp.w3", x)
      return _linear(state, f"{prefix}.{s}_mlp.w2", _silu(w1) * w3)
    return _linear(state, f"{prefix}.{s}_mlp.net.2", _gelu_tanh(_linear(state, f"{prefix}.{s}_mlp.net.0.proj", x)))

  mods = {s: np.split(_linear(state, f"{prefix}.{s}_mod.1", _silu(temb)), 6, axis=-1) for s in ("img", "txt")}
  streams = {"img": img, "txt": txt}
  qkv = {}
  for s, (q_norm, k_norm) in (("img", ("norm_q", "norm_k")), ("txt", ("norm_added_q", "norm_added_k"))):
    shift, scale = mods[s][0], mods[s][1]
    x = norm(s, 1, streams[s]) * (1 + scale[:, None]) + shift[:, None]
    fused = _linear(state, f"{prefix}.attn.{s}_qkv", x).reshape(*x.shape[:2], 3, heads, head_dim)
    q = _rms(fused[:, :, 0], state[f"{prefix}.attn.{q_norm}.weight"], eps)
    k = _rms(fused[:, :, 1], state[f"{prefix}.attn.{k_norm}.weight"], eps)
    qkv[s] = (_rotate(q, tables[s]), _rotate(k, tables[s]), fused[:, :, 2])
  q, k, v = (np.concatenate([qkv["img"][j], qkv["txt"][j]], axis=1) for j in range(3))
  valid = np.concatenate([np.ones(img.shape[:2], bool), txt_valid], axis=1)
  scores = np.einsum("bshd,bthd->bhst", q, k) / math.sqrt(head_dim)
  scores = np.where(valid[:, None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  joint = np.einsum("bhst,bthd->bshd", probs, v).reshape(q.shape[0], q.shape[1], heads * head_dim)
  attended = {"img": _linear(state, f"{prefix}.attn.to_out.0", joint[:, : img.shape[1]]),
              "txt": _linear(state, f"{prefix}.attn.to_add_out", joint[:, img.shape[1]:])}
  for s in ("img", "txt"):
    shift1, scale1, gate1, shift2, scale2, gate2 = mods[s]
    x = streams[s] + gate1[:, None] * attended[s]
    streams[s] = x + gate2[:, None] * mlp(s, norm(s, 2, x) * (1 + scale2[:, None]) + shift2[:, None])
  return streams["txt"], streams["img"]


def lens_time_embedding(state, sigma):
  freqs = np.exp(-math.log(10000.0) * np.arange(128) / 128)
  args = np.asarray(sigma, np.float64)[:, None] * freqs * 1000
  emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
  hidden = _linear(state, "time_text_embed.timestep_embedder.linear_1", emb)
  return _linear(state, "time_text_embed.timestep_embedder.linear_2", _silu(hidden))


def lens_model(state, config, img, txt_layers, sigma, height, width, txt_valid):
  """`LensTransformer2DModel.forward` in float64 (text padding masked in every block)."""
  temb = lens_time_embedding(state, sigma)
  if config["multi_layer_encoder_feature"]:
    normed = [_rms(x, state[f"txt_norm.{k}.weight"], 1e-5) for k, x in enumerate(txt_layers)]
  else:
    normed = [_rms(txt_layers[0], state["txt_norm.weight"], 1e-5)]
  txt = _linear(state, "txt_in", np.concatenate(normed, axis=-1))
  img = _linear(state, "img_in", img)
  image_table, text_table, _, _ = lens_rope_tables(config["axes_dims_rope"], 10000, height, width, txt.shape[1])
  tables = {"img": image_table, "txt": text_table}
  for i in range(config["num_layers"]):
    txt, img = lens_block(state, f"transformer_blocks.{i}", config, img, txt, temb, tables, txt_valid)
  scale, shift = np.split(_linear(state, "norm_out.linear", _silu(temb)), 2, axis=-1)
  return _linear(state, "proj_out", _layer_norm(img, 1e-6) * (1 + scale[:, None]) + shift[:, None])


def _inputs(config, height, width, text_len, valid, seed=1):
  rng = np.random.default_rng(seed)
  batch = len(valid)
  layers = len(config["selected_layer_index"]) if config["multi_layer_encoder_feature"] else 1
  img = rng.standard_normal((batch, height * width, config["in_channels"])).astype(np.float32)
  txt = [rng.standard_normal((batch, text_len, config["enc_hidden_dim"])).astype(np.float32) for _ in range(layers)]
  sigma = np.linspace(0.2, 0.8, batch).astype(np.float32)
  mask = np.arange(text_len)[None, :] < np.asarray(valid)[:, None]
  return img, txt, sigma, mask


def _relative_error(ours, reference):
  return float(np.linalg.norm(np.asarray(ours, np.float64) - reference) / np.linalg.norm(reference))


# ----------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("height,width,text_len", [(4, 6, 5), (5, 3, 0), (1, 1, 3), (2, 7, 4), (7, 7, 2)])
def test_msrope_ids_are_the_rows_lens_embed_rope_selects_and_the_tables_match(height, width, text_len):
  axes = (8, 28, 28)
  image_table, text_table, image_index, text_index = lens_rope_tables(axes, 10000, height, width, text_len)
  img_ids, txt_ids = msrope_position_ids(height, width, text_len)
  np.testing.assert_array_equal(img_ids, image_index)
  np.testing.assert_array_equal(txt_ids, text_index)
  for ids, table in ((img_ids, image_table), (txt_ids, text_table)):
    angles = np.asarray(multi_axis_rope_angles(ids, axes, 10000.0), np.float64)
    np.testing.assert_allclose(np.exp(1j * angles), table, rtol=0, atol=2e-6)


@pytest.mark.parametrize("changes", [{}, {"gate_mlp": False, "rms_norm": False}])
def test_lens_block_matches_numpy_reference(tmp_path, changes):
  config = lens_config(num_layers=1, **changes)
  state = random_state(config)
  ours, params = mmdit.load_params(write_checkpoint(tmp_path / "ckpt", config, state))
  rng = np.random.default_rng(3)
  height, width, text_len, width_model = 3, 5, 6, ours.width
  img = rng.standard_normal((2, height * width, width_model)).astype(np.float32)
  txt = rng.standard_normal((2, text_len, width_model)).astype(np.float32)
  temb = rng.standard_normal((2, width_model)).astype(np.float32)
  mask = np.arange(text_len)[None] < np.array([[6], [2]])
  img_ids, txt_ids = msrope_position_ids(height, width, text_len)
  angles = {"img": multi_axis_rope_angles(img_ids, ours.rope_axes, ours.rope_theta)[None],
            "txt": multi_axis_rope_angles(txt_ids, ours.rope_axes, ours.rope_theta)[None]}
  block_params = jax.tree.map(lambda x: x[0], params["double_blocks"])
  (txt_out, img_out), _ = jax.jit(DoubleStreamBlock(ours).apply)(
    {"params": block_params}, (txt, img), temb, angles, {"txt": mask, "img": None}
  )
  image_table, text_table, _, _ = lens_rope_tables(config["axes_dims_rope"], 10000, height, width, text_len)
  ref_txt, ref_img = lens_block(state, "transformer_blocks.0", config, img.astype(np.float64), txt.astype(np.float64),
                                temb.astype(np.float64), {"img": image_table, "txt": text_table}, mask)
  assert _relative_error(img_out, ref_img) < 1e-5
  valid = mask[..., None]  # padded text rows are never read by anything
  assert _relative_error(np.where(valid, txt_out, 0), np.where(valid, ref_txt, 0)) < 1e-5


@pytest.mark.parametrize(
  "changes,height,width,text_len,valid",
  [
    ({}, 4, 6, 7, [7, 0]),
    ({}, 5, 3, 7, [3, 7]),
    ({"gate_mlp": False, "rms_norm": False, "num_layers": 3, "num_attention_heads": 3, "attention_head_dim": 12,
      "axes_dims_rope": [2, 4, 6]}, 3, 3, 4, [4, 1]),
    ({"multi_layer_encoder_feature": False, "selected_layer_index": [23], "out_channels": 3}, 2, 5, 0, [0, 0]),
  ],
)
def test_lens_model_matches_numpy_reference(tmp_path, changes, height, width, text_len, valid):
  config = lens_config(**changes)
  state = random_state(config)
  ours, params = mmdit.load_params(write_checkpoint(tmp_path / "ckpt", config, state))
  img, txt, sigma, mask = _inputs(config, height, width, text_len, valid)
  img_ids, txt_ids = msrope_position_ids(height, width, text_len)
  out = jax.jit(mmdit.MMDiT(ours).apply)({"params": params}, img, txt, sigma, img_ids, txt_ids, mask)
  reference = lens_model(state, config, img.astype(np.float64), [t.astype(np.float64) for t in txt], sigma,
                         height, width, mask)
  assert out.shape == (len(valid), height * width, config["patch_size"] ** 2 * config["out_channels"])
  error = _relative_error(out, reference)
  assert error < 1e-5, error
  assert np.max(np.abs(np.asarray(out, np.float64) - reference)) < 1e-4


def test_lens_preset_is_the_reference_default_and_counts_4_10e9_parameters():
  reference_config = lens_config(
    patch_size=2, in_channels=128, out_channels=32, num_layers=48, attention_head_dim=64, num_attention_heads=24,
    enc_hidden_dim=2880, axes_dims_rope=[8, 28, 28], selected_layer_index=[5, 11, 17, 23],
  )
  assert mmdit.MMDiTConfig.from_diffusers(reference_config) == mmdit.get_config("lens")
  reference_count = sum(math.prod(s) for s in lens_state_shapes(reference_config).values())
  shapes = mmdit.param_shapes(mmdit.get_config("lens"))
  ours = sum(math.prod(s) for s in shapes.values())
  print(f"Lens parameters: ours {ours:,}, LensTransformer2DModel shapes {reference_count:,}")
  assert ours == reference_count == 4_104_225_152
