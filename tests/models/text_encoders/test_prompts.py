"""Prompt wrapping and tokenisation against the pipelines' own lines (restated here), with tiny local tokenizers:
Lens (diffusers `pipelines/lens/pipeline_lens.py`, `LensPipeline.__init__` and `_build_chat_inputs`) and
FLUX.2-klein (`pipelines/flux2/pipeline_flux2_klein.py`, `_get_qwen3_prompt_embeds`).
"""

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from jaxagents.models.text_encoders import prompts  # noqa: E402
from tests.models.text_encoders import tiny  # noqa: E402

PROMPTS = ["a red cube on a blue table", "cat", "Ünïcödé — façade at dusk, 35mm"]


def _lens_pipeline(directory, texts, max_length):
  """`LensPipeline.__init__`'s tokenizer set-up, then `_build_chat_inputs` (numpy instead of torch tensors)."""
  tokenizer = prompts.load_tokenizer(directory)
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = "right"
  rendered = []
  for prompt in texts:
    conversation = [
      {"role": "system", "content": prompts.LENS_SYSTEM_PROMPT, "thinking": None},
      {"role": "user", "content": prompt, "thinking": None},
      {"role": "assistant", "thinking": prompts.LENS_ASSISTANT_THINKING, "content": ""},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    rendered.append(text.split("<|return|>")[0])
  encoded = tokenizer(rendered, padding=True, truncation=True, max_length=max_length, return_tensors="np",
                      add_special_tokens=True)
  return encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("with_pad", [True, False])
@pytest.mark.parametrize("max_length", [512, 240])
def test_lens_ids_and_mask_equal_the_pipelines(tmp_path, with_pad, max_length):
  directory = tiny.save_harmony_tokenizer(tmp_path, pad=with_pad)
  ids, mask = prompts.lens_token_ids(prompts.load_tokenizer(directory), PROMPTS, max_length=max_length)
  reference_ids, reference_mask = _lens_pipeline(directory, PROMPTS, max_length)
  np.testing.assert_array_equal(ids, reference_ids)
  np.testing.assert_array_equal(mask, reference_mask.astype(bool))
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.shape[1] <= max_length


def test_the_offset_drops_the_harmony_prefix_and_keeps_the_prompt(tmp_path):
  tokenizer = prompts.load_tokenizer(tiny.save_harmony_tokenizer(tmp_path))
  prefix = prompts.lens_prefix_length(tokenizer)
  ids, mask = prompts.lens_token_ids(tokenizer, PROMPTS)
  for row, text in zip(ids, PROMPTS, strict=True):
    own = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert row[prefix:prefix + len(own)].tolist() == own  # the features start at the prompt's first token
    assert tokenizer.decode(row[:prefix]).endswith("<|start|>user<|message|>")
  # The prefix is the same for every prompt: the system message, the developer instructions, the user header.
  assert len({tuple(row[:prefix]) for row in ids}) == 1
  assert mask[:, :prefix].all()


def test_lens_padding_to_a_multiple_only_adds_masked_pad_tokens(tmp_path):
  tokenizer = prompts.load_tokenizer(tiny.save_harmony_tokenizer(tmp_path))
  ids, mask = prompts.lens_token_ids(tokenizer, PROMPTS)
  padded_ids, padded_mask = prompts.lens_token_ids(tokenizer, PROMPTS, pad_to_multiple=64)
  assert padded_ids.shape[1] % 64 == 0 and padded_ids.shape[1] >= ids.shape[1]
  np.testing.assert_array_equal(padded_ids[:, : ids.shape[1]], ids)
  assert not padded_mask[:, ids.shape[1]:].any()
  assert (padded_ids[:, ids.shape[1]:] == tokenizer.pad_token_id).all()


def test_flux2_klein_ids_and_mask_equal_the_pipelines(tmp_path):
  tokenizer = prompts.load_tokenizer(tiny.save_qwen_tokenizer(tmp_path))
  ids, mask = prompts.flux2_klein_token_ids(tokenizer, PROMPTS, max_length=60)
  rows, masks = [], []
  for prompt in PROMPTS:  # one prompt at a time, as the pipeline does
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    encoded = tokenizer(text, return_tensors="np", padding="max_length", truncation=True, max_length=60)
    rows.append(encoded["input_ids"])
    masks.append(encoded["attention_mask"])
  np.testing.assert_array_equal(ids, np.concatenate(rows))
  np.testing.assert_array_equal(mask, np.concatenate(masks).astype(bool))
  assert ids.shape == (3, 60)
  assert "<think>\n\n</think>\n\n" in prompts.flux2_klein_chat_texts(tokenizer, ["x"])[0]


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prompts.load_tokenizer(str(tmp_path / "absent"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no loadable tokenizer"):
    prompts.load_tokenizer(str(tmp_path / "empty"))
  tokenizer = prompts.load_tokenizer(tiny.save_harmony_tokenizer(tmp_path / "harmony"))
  with pytest.raises(ValueError, match="`prompts` must be a non-empty sequence of str"):
    prompts.lens_token_ids(tokenizer, [])
  with pytest.raises(ValueError, match="`prompts`"):
    prompts.lens_token_ids(tokenizer, ["ok", 3])
  with pytest.raises(ValueError, match="`max_length` must be >= 1, got 0"):
    prompts.lens_token_ids(tokenizer, ["ok"], max_length=0)
  tokenizer.chat_template = None
  with pytest.raises(ValueError, match="no chat_template"):
    prompts.lens_token_ids(tokenizer, ["ok"])
