"""GUI-Actor as a whole: a released-layout checkpoint (written here: transformers `save_pretrained` of a tiny
randomized Qwen2-VL / Qwen2.5-VL plus the `multi_patch_pointer_head.*` tensors of a PyTorch transcription of
microsoft/GUI-Actor's `VisionHead_MultiPatch`, and the `pointer_*_token_id` fields in config.json) loads into
`GUIActor`, whose LM logits and pointer attention match the reference at fp32: transformers' hidden states read as
their `inference.py` reads them (`hidden_states[0]` at `<|image_pad|>`, `hidden_states[-1]` at `<|pointer_pad|>`)
fed to the transcribed head. Checkpoints that do not fit are rejected by key, shape and file; `ground` returns their
regions and point.
"""

import functools
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jaxagents.models.gui_actor import (  # noqa: E402
  GUIActor,
  GUIActorConfig,
  gather_tokens,
  ground,
  hf_to_params,
  load_params,
  multi_patch_loss,
  params_to_hf,
  patch_attention,
  prediction_regions,
  token_counts,
)
from jaxagents.models.qwen_vl.inputs import prepare_inputs  # noqa: E402
from tests.models.gui_actor.test_action_head import torch_reference  # noqa: E402
from tests.models.qwen_vl import tiny  # noqa: E402

# Pointer tokens of the tiny vocabulary (unused by `tiny`'s other special ids).
START, POINTER, END = 246, 247, 248
IMG, VS, VE = tiny.IMG, tiny.VS, tiny.VE
WIDTH = 64  # the tiny text hidden size = the head width


def rows_and_grids():
  """Two left-padded rows in their placeholder form: row 0 holds a 2x3-token image and two pointers (a drag), row 1
  a 3x2-token image and one pointer; plus a third row without a pointer."""
  row0 = [5, VS, *[IMG] * 6, VE, 7, START, POINTER, END, 8, START, POINTER, END]
  row1 = [9, 10, VS, *[IMG] * 6, VE, 11, START, POINTER, END]
  row2 = [12, VS, *[IMG] * 6, VE, 13, 14]
  return [row0, row1, row2], np.array([[1, 4, 6], [1, 6, 4], [1, 4, 6]], np.int64)


def write_released_checkpoint(directory, family, *, head_state=None):
  """A GUI-Actor checkpoint in the released layout; returns (HF backbone, torch head)."""
  hf = tiny.hf_model(family)
  hf.save_pretrained(directory)
  from safetensors.numpy import load_file, save_file

  path = os.path.join(directory, "model.safetensors")
  state = load_file(path)
  _, head = torch_reference(WIDTH, WIDTH, 8)
  head_state = head_state or {f"multi_patch_pointer_head.{k}": v.numpy() for k, v in head.state_dict().items()}
  save_file({**state, **head_state}, path, metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  config.update(pointer_start_token_id=START, pointer_pad_token_id=POINTER, pointer_end_token_id=END)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  return hf, head


def reference(hf, head, ids, mask, pixels, grids):
  """LM logits [B, L, V] and, per row, the head's (logits [K, N], attention [K, N]) the way their inference reads
  the model: image embeds = `hidden_states[0]` at <|image_pad|>, queries = `hidden_states[-1]` at <|pointer_pad|>."""
  kwargs = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.from_numpy(grids),
                mm_token_type_ids=torch.from_numpy((ids == IMG).astype(np.int64)))
  hf.model.rope_deltas = None
  with torch.no_grad():
    out = hf(**kwargs, output_hidden_states=True)
    pointers = []
    for b in range(ids.shape[0]):
      image_embeds = out.hidden_states[0][b][kwargs["input_ids"][b] == IMG]
      queries = out.hidden_states[-1][b][kwargs["input_ids"][b] == POINTER]
      enc = image_embeds.unsqueeze(0)
      attended, _ = head.self_attention(query=enc, key=enc, value=enc, need_weights=False)
      context = head.layer_norm(enc + head.dropout(attended)).squeeze(0)
      logits = head.projection_dec(queries) @ head.projection_enc(context).T / head.d_model**0.5
      attention, _ = head(image_embeds, queries)
      pointers.append((logits.numpy(), attention.numpy()))
  return out.logits.numpy(), pointers


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def released(request, tmp_path_factory):
  family = request.param
  directory = str(tmp_path_factory.mktemp(f"gui_actor_{family}"))
  hf, head = write_released_checkpoint(directory, family)
  rows, grids = rows_and_grids()
  ids, mask = tiny.left_pad(rows)
  pixels = np.random.default_rng(0).standard_normal((int(np.prod(grids, 1).sum()), 3 * 2 * 14**2), np.float32)
  config, params = load_params(directory)
  inputs = prepare_inputs(config.backbone, ids, mask, pixel_values=pixels, image_grid_thw=grids)
  model = GUIActor(config)
  num_patches, num_pointers = token_counts(ids, config)
  out = jax.jit(lambda p, x: model.apply({"params": p}, x, num_patches=num_patches, num_pointers=num_pointers))(
    params, inputs)
  ref_logits, ref_pointers = reference(hf, head, ids, mask, pixels, grids)
  return dict(directory=directory, ids=ids, mask=mask, grids=grids, config=config, params=params, inputs=inputs,
              model=model, out=jax.device_get(out), ref_logits=ref_logits, ref_pointers=ref_pointers)


def _relative_error(ours, ref):
  return float(np.abs(ours - ref).max() / (ref.max() - ref.min()))


def test_lm_and_pointer_logits_match_transformers_backbone_with_their_head_fp32(released):
  r = released
  ref_logits, ref_pointers = r["ref_logits"], r["ref_pointers"]
  out, valid = r["out"], r["mask"].astype(bool)
  assert _relative_error(out.logits[valid], ref_logits[valid]) < 1e-5
  assert out.pointer_logits.shape == (3, 2, 6)
  assert out.pointer_mask.tolist() == [[True, True], [True, False], [False, False]]
  assert out.visual_mask.all()
  for b, (ref_pointer_logits, ref_attention) in enumerate(ref_pointers):
    count = len(ref_pointer_logits)
    assert out.pointer_mask[b].sum() == count
    if count:
      assert _relative_error(out.pointer_logits[b, :count], ref_pointer_logits) < 1e-5
      np.testing.assert_allclose(patch_attention(out.pointer_logits[b, :count]), ref_attention, rtol=1e-5,
                                 atol=1e-7)


def test_loaded_params_have_the_tree_and_shapes_of_init(released):
  r = released
  init = functools.partial(r["model"].init, num_patches=6, num_pointers=2)
  abstract = jax.eval_shape(init, jax.random.key(0), r["inputs"])
  want = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract["params"]))
  assert jax.tree.map(np.shape, r["params"]) == want


def test_pointer_loss_counts_the_row_without_pointers_as_zero(released):
  out = released["out"]
  labels = np.zeros(out.pointer_logits.shape, np.float32)
  labels[:, :, :2] = 1
  loss, metrics = jax.jit(multi_patch_loss)(out.pointer_logits, labels, out.visual_mask, out.pointer_mask)
  per_sample = np.asarray(metrics["per_sample_loss"])
  assert per_sample[2] == 0 and (per_sample[:2] > 0).all()
  np.testing.assert_allclose(loss, per_sample.sum() / 3, rtol=1e-6)


def test_released_keys_convert_back_bitwise(released):
  from safetensors.numpy import load_file

  stored = load_file(os.path.join(released["directory"], "model.safetensors"))
  back = dict(params_to_hf(released["params"], released["config"]))
  assert sorted(back) == sorted(stored)
  for key, value in stored.items():
    assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


@pytest.mark.parametrize("released", ["qwen2_vl"], indirect=True)  # the wiring is the family's: one suffices
def test_ground_ranks_their_regions_of_the_first_pointer(released):
  r = released
  ref_pointers = r["ref_pointers"]
  results = ground(r["model"], r["params"], r["inputs"], r["grids"], top_k=2)
  assert results[2] is None  # no pointer in row 2
  for b, (h, w) in enumerate([(2, 3), (3, 2)]):
    want = prediction_regions(ref_pointers[b][1][0], w, h)
    got = results[b]
    assert got.grid_hw == (h, w)
    assert len(got.regions) == min(2, len(want))
    np.testing.assert_allclose(got.point, want[0].center, rtol=1e-5)
    for ours, theirs in zip(got.regions, want, strict=False):
      assert ours.patch_indices == theirs.patch_indices
      np.testing.assert_allclose(ours.center, theirs.center, rtol=1e-5)
  with pytest.raises(ValueError, match=r"image_grid_thw\[1\] = \(1, 4, 4\)"):
    ground(r["model"], r["params"], r["inputs"], [[1, 4, 6], [1, 4, 4], [1, 4, 6]])


# --- mismatching checkpoints (qwen2_vl only: the rules are shared) --------------------------------------------------


@pytest.fixture(scope="module")
def released_files(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("gui_actor_files"))
  write_released_checkpoint(directory, "qwen2_vl")
  from safetensors.numpy import load_file

  return directory, load_file(os.path.join(directory, "model.safetensors"))


def _rewrite(source_dir, target_dir, state):
  from safetensors.numpy import save_file

  shutil.copytree(source_dir, target_dir)
  save_file(state, os.path.join(target_dir, "model.safetensors"), metadata={"format": "pt"})
  return target_dir


def test_head_tensor_of_the_wrong_shape_is_named_with_both_shapes_and_the_file(released_files, tmp_path):
  directory, state = released_files
  key = "multi_patch_pointer_head.projection_enc.0.weight"
  bad = _rewrite(directory, str(tmp_path / "bad"), {**state, key: np.zeros((WIDTH, WIDTH + 1), np.float32)})
  path = os.path.join(bad, "model.safetensors")
  pattern = (rf"file '{re.escape(path)}': tensor '{re.escape(key)}' has shape \({WIDTH}, {WIDTH + 1}\), expected "
             rf"\({WIDTH}, {WIDTH}\)")
  with pytest.raises(ValueError, match=pattern):
    load_params(bad)


def test_backbone_tensor_of_the_wrong_shape_names_the_file(released_files, tmp_path):
  directory, state = released_files
  key = "model.layers.1.mlp.up_proj.weight"
  bad = _rewrite(directory, str(tmp_path / "bad"), {**state, key: np.zeros((5, 7), np.float32)})
  with pytest.raises(ValueError, match=rf"file '{re.escape(os.path.join(bad, 'model.safetensors'))}': backbone: "
                                       rf"checkpoint tensor '{re.escape(key)}'.*\(7, 5\).*expects \(64, 128\)"):
    load_params(bad)


def test_missing_and_unexpected_head_keys_are_named(released_files, tmp_path):
  directory, state = released_files
  missing = "multi_patch_pointer_head.layer_norm.bias"
  state = {k: v for k, v in state.items() if k != missing}
  bad = _rewrite(directory, str(tmp_path / "bad"), {**state, "multi_patch_pointer_head.extra": np.zeros(3)})
  with pytest.raises(ValueError, match=rf"{re.escape(repr(bad))}.*1 missing \['{re.escape(missing)}'\], 1 "
                                       r"unexpected \['multi_patch_pointer_head.extra'\]"):
    load_params(bad)


def test_missing_backbone_key_is_named_with_the_checkpoint(released_files):
  directory, state = released_files
  config = GUIActorConfig.from_hf({**json.load(open(os.path.join(directory, "config.json")))})
  state = {k: v for k, v in state.items() if k != "model.norm.weight"}
  with pytest.raises(ValueError, match=r"\(in memory\): backbone: .*1 missing \['norm.weight'\]"):
    hf_to_params(state, config)


def test_config_without_the_pointer_token_id_is_rejected():
  with pytest.raises(ValueError, match="pointer_pad_token_id"):
    GUIActorConfig.from_hf(tiny.QWEN2_VL)


def test_gather_tokens_keeps_order_pads_and_masks():
  values = np.arange(2 * 5, dtype=np.float32).reshape(2, 5, 1)
  selected = np.array([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], bool)
  gathered, mask = jax.jit(gather_tokens, static_argnums=2)(values, selected, 4)
  assert np.asarray(gathered)[..., 0].tolist() == [[1, 3, 4, 0], [5, 5, 5, 5]]
  assert np.asarray(mask).tolist() == [[True, True, True, False], [True, False, False, False]]
