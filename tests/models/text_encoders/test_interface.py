"""The `TextEncoder` interface: `TextFeatures`, the feature files of `save_features` read back by
`PrecomputedTextEncoder` (with named errors), and Lens's `GptOssTextEncoder` end to end against the pipeline's own
lines (diffusers `pipelines/lens/pipeline_lens.py`: `_build_chat_inputs`, `LensGptOssEncoder.forward`,
`_get_text_embeddings`) on a tiny random GPT-OSS and a tiny local tokenizer; padding and batch invariances.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxagents.models.text_encoders import interface
from jaxagents.models.text_encoders.interface import PrecomputedTextEncoder, TextEncoder, TextFeatures, save_features
from tests.models.text_encoders import tiny


def _features(batch=3, length=5, layers=2, width=4, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((batch, length, layers, width)).astype(np.float32)
  mask = np.arange(length)[None, :] < rng.integers(1, length + 1, (batch, 1))
  return TextFeatures.create(jnp.asarray(hidden), jnp.asarray(mask)), hidden, mask


# ---------------------------------------------------------------------------------------------------- TextFeatures
def test_features_from_a_list_or_a_stack_are_the_same():
  features, hidden, mask = _features()
  listed = TextFeatures.create([hidden[:, :, i] for i in range(2)], mask.astype(np.int32))
  assert features.num_layers == listed.num_layers == 2 and features.shape == (3, 5, 4)
  np.testing.assert_array_equal(listed.stacked(), hidden)
  assert listed.mask.dtype == jnp.bool_


def test_concatenated_is_flux2s_stack_permute_reshape():
  features, hidden, _ = _features()
  by_layer = np.moveaxis(hidden, 2, 1)  # [B, L, T, D], as torch.stack(..., dim=1)
  reference = by_layer.transpose(0, 2, 1, 3).reshape(3, 5, 2 * 4)
  np.testing.assert_array_equal(features.concatenated(), reference)


def test_drop_prefix_and_pad_to_follow_lens():
  features, hidden, mask = _features()
  dropped = features.drop_prefix(2)
  np.testing.assert_array_equal(dropped.stacked(), hidden[:, 2:])
  np.testing.assert_array_equal(dropped.mask, mask[:, 2:])
  assert features.drop_prefix(5).shape == (3, 0, 4) == features.drop_prefix(9).shape  # T <= offset: no tokens
  padded = features.pad_to(8)
  assert padded.shape == (3, 8, 4) and not padded.mask[:, 5:].any() and not np.asarray(padded.stacked()[:, 5:]).any()


def test_features_pass_through_jit():
  features, hidden, _ = _features()
  doubled = jax.jit(lambda f: TextFeatures(hidden=tuple(2 * h for h in f.hidden), mask=f.mask))(features)
  np.testing.assert_allclose(doubled.stacked(), 2 * hidden)


@pytest.mark.parametrize(
  "hidden, mask, match",
  [
    ([], np.ones((1, 2), bool), "at least one layer"),
    ([np.zeros((1, 2, 3)), np.zeros((1, 2, 4))], np.ones((1, 2), bool), r"hidden\[1\]"),
    ([np.zeros((1, 2, 3))], np.ones((1, 3), bool), "`mask` must be"),
    (np.zeros((1, 2, 3)), np.ones((1, 2), bool), r"\[B, T, L, D\]"),
    ([np.zeros((1, 2, 3))], np.ones((1, 2), np.float32), "bool"),
  ],
)
def test_bad_features_are_named(hidden, mask, match):
  with pytest.raises(ValueError, match=match):
    TextFeatures.create(hidden, mask)


# ------------------------------------------------------------------------------------------------- feature files
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_saved_features_read_back_by_prompt(tmp_path, suffix, dtype):
  features, hidden, mask = _features()
  path = save_features(str(tmp_path / f"f{suffix}"), ["a", "b", "c"], features, dtype=dtype,
                       metadata={"encoder": "tiny", "layers": [1, 3]})
  encoder = PrecomputedTextEncoder(path)
  assert isinstance(encoder, TextEncoder)
  assert encoder.metadata == {"encoder": "tiny", "layers": [1, 3]}
  out = encoder.encode(["c", "a"])
  expected = hidden[[2, 0]].astype(ml_dtypes.bfloat16) if dtype else hidden[[2, 0]]
  assert out.stacked().dtype == (jnp.bfloat16 if dtype else jnp.float32)
  np.testing.assert_array_equal(np.asarray(out.stacked()).astype(np.float32), expected.astype(np.float32))
  np.testing.assert_array_equal(out.mask, mask[[2, 0]])


def test_rows_of_shorter_files_are_right_padded(tmp_path):
  short, short_hidden, short_mask = _features(batch=1, length=3, seed=1)
  long, _, _ = _features(batch=1, length=6, seed=2)
  paths = [save_features(str(tmp_path / "short.npz"), ["s"], short),
           save_features(str(tmp_path / "long.safetensors"), ["l"], long)]
  out = PrecomputedTextEncoder(paths).encode(["s", "l"])
  assert out.shape == (2, 6, 4)
  np.testing.assert_array_equal(out.stacked()[0, :3], short_hidden[0])
  np.testing.assert_array_equal(out.mask[0], np.pad(short_mask[0], (0, 3)))


def test_feature_file_errors_are_named(tmp_path):
  features, _, _ = _features()
  with pytest.raises(ValueError, match=r"`path` must end in \.npz or \.safetensors, got '.*x\.pt'"):
    save_features(str(tmp_path / "x.pt"), ["a", "b", "c"], features)
  with pytest.raises(ValueError, match="must be 3 strings"):
    save_features(str(tmp_path / "x.npz"), ["a", "b"], features)
  with pytest.raises(ValueError, match=r"distinct.*\['a'\]"):
    save_features(str(tmp_path / "x.npz"), ["a", "b", "a"], features)
  with pytest.raises(FileNotFoundError, match="absent.npz"):
    PrecomputedTextEncoder(str(tmp_path / "absent.npz"))
  good = save_features(str(tmp_path / "good.npz"), ["a", "b", "c"], features)
  with pytest.raises(ValueError, match=r"prompts \['zebra'\] are not in the features files"):
    PrecomputedTextEncoder(good).encode(["a", "zebra"])
  np.savez(tmp_path / "bare.npz", hidden=np.zeros((1, 2, 1, 3), np.float32))
  with pytest.raises(ValueError, match=r"bare\.npz.*missing \['hidden_dtype', 'mask', 'format', 'prompts'\]"):
    PrecomputedTextEncoder(str(tmp_path / "bare.npz"))
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match=r"junk\.safetensors.*not a readable safetensors file"):
    PrecomputedTextEncoder(str(tmp_path / "junk.safetensors"))
  other = save_features(str(tmp_path / "other.npz"), ["a"], _features(batch=1, width=6)[0])
  with pytest.raises(ValueError, match=r"other\.npz.*2 x 6"):
    PrecomputedTextEncoder([good, other])
  again = save_features(str(tmp_path / "again.npz"), ["b"], _features(batch=1)[0])
  with pytest.raises(ValueError, match="both hold the prompt 'b'"):
    PrecomputedTextEncoder([good, again])


def test_a_file_of_another_format_is_named(tmp_path, monkeypatch):
  features, _, _ = _features(batch=1)
  monkeypatch.setattr(interface, "FORMAT", "someone.else/9")
  path = save_features(str(tmp_path / "f.safetensors"), ["a"], features)
  monkeypatch.undo()
  with pytest.raises(ValueError, match=r"format must be 'jaxagents\.text_features/1', got 'someone\.else/9'"):
    PrecomputedTextEncoder(path)


# ---------------------------------------------------------------------------------- Lens's encoder end to end
@pytest.fixture(scope="module")
def lens(tmp_path_factory):
  """(our GptOssTextEncoder, the HF model, the tokenizer directory, the prefix length) on tiny parts."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from jaxagents.models.text_encoders import gpt_oss_convert, prompts
  from jaxagents.models.text_encoders.gpt_oss import GptOssTextEncoder

  directory = tmp_path_factory.mktemp("lens")
  hf = tiny.gpt_oss_model("gqa_yarn")
  hf.save_pretrained(str(directory / "model"))
  tokenizer_dir = tiny.save_harmony_tokenizer(directory / "tokenizer")
  config, params = gpt_oss_convert.load_params(str(directory / "model"))
  tokenizer = prompts.load_tokenizer(tokenizer_dir)
  offset = prompts.lens_prefix_length(tokenizer)
  encoder = GptOssTextEncoder(tokenizer, config, params, layer_indices=(1, 3), offset=offset)
  return encoder, hf, tokenizer_dir, offset


PAIR = ["a red cube", "two cats asleep on a green sofa"]


def _lens_pipeline(hf, tokenizer_dir, texts, layers, offset):
  """`_build_chat_inputs`, `LensGptOssEncoder.forward` (layer outputs captured, early exit) and the offset of
  `_get_text_embeddings`, restated with the HF model."""
  import torch
  import transformers

  from tests.models.text_encoders.test_prompts import _lens_pipeline as build_chat_inputs

  ids, mask = (torch.from_numpy(x) for x in build_chat_inputs(tokenizer_dir, texts, 512))
  model = hf.model
  with torch.no_grad():
    x = model.embed_tokens(ids)
    position_ids = torch.arange(x.shape[1]).unsqueeze(0).expand_as(ids)
    kwargs = dict(config=model.config, inputs_embeds=x, attention_mask=mask, cache=None, position_ids=position_ids)
    masks = {"full_attention": transformers.masking_utils.create_causal_mask(**kwargs),
             "sliding_attention": transformers.masking_utils.create_sliding_window_causal_mask(**kwargs)}
    position_embeddings = model.rotary_emb(x, position_ids)
    captured = {}
    for i, layer in enumerate(model.layers):
      x = layer(x, attention_mask=masks[model.config.layer_types[i]], position_embeddings=position_embeddings,
                position_ids=position_ids, use_cache=False)
      if i in layers:
        captured[i] = x
      if i == max(layers):
        break
  return [captured[i][:, offset:].numpy() for i in layers], mask[:, offset:].bool().numpy()


def test_lens_features_equal_the_pipelines(lens):
  encoder, hf, tokenizer_dir, offset = lens
  features = encoder.encode(PAIR)
  reference, reference_mask = _lens_pipeline(hf, tokenizer_dir, PAIR, (1, 3), offset)
  assert features.num_layers == 2
  np.testing.assert_array_equal(features.mask, reference_mask)
  for ours, expected in zip(features.hidden, reference, strict=True):
    assert ours.shape == expected.shape == (2, reference_mask.shape[1], encoder.config.hidden_size)
    assert tiny.relative_error(ours, expected) < 1e-5


def test_padding_and_the_other_prompts_change_no_valid_feature(lens):
  encoder, *_ = lens
  pair = encoder.encode(PAIR)
  alone = encoder.encode(PAIR[:1])
  swapped = encoder.encode(PAIR[::-1])
  padded_encoder = type(encoder)(encoder.tokenizer, encoder.config, encoder.params, layer_indices=(1, 3),
                                 offset=encoder.offset, pad_to_multiple=128)
  padded = padded_encoder.encode(PAIR)
  assert padded.shape[1] % 128 == (-encoder.offset) % 128 and padded.shape[1] > pair.shape[1]
  n = int(alone.mask[0].sum())
  for layer in range(2):
    np.testing.assert_allclose(pair.hidden[layer][0, :n], alone.hidden[layer][0, :n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(swapped.hidden[layer][1, :n], alone.hidden[layer][0, :n], rtol=1e-5, atol=1e-5)
    for row in range(2):
      valid = np.asarray(pair.mask[row])
      np.testing.assert_allclose(padded.hidden[layer][row, : valid.size][valid], pair.hidden[layer][row][valid],
                                 rtol=1e-5, atol=1e-5)
  assert not padded.mask[:, pair.shape[1]:].any()


def test_a_long_offset_leaves_no_tokens_and_features_round_trip_through_a_file(lens, tmp_path):
  encoder, *_ = lens
  no_tokens = type(encoder)(encoder.tokenizer, encoder.config, encoder.params, layer_indices=(3,), offset=10_000)
  empty = no_tokens.encode(PAIR)
  assert empty.shape == (2, 0, encoder.config.hidden_size) and empty.mask.shape == (2, 0)
  features = encoder.encode(PAIR)
  path = save_features(str(tmp_path / "lens.safetensors"), PAIR, features, metadata={"offset": encoder.offset})
  again = PrecomputedTextEncoder(path).encode(PAIR[::-1])
  np.testing.assert_array_equal(again.stacked(), features.stacked()[::-1])
  np.testing.assert_array_equal(again.mask, features.mask[::-1])
