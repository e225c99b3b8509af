"""`export_hf`: the exported directory is a checkpoint transformers loads, with our fp32 logits, our tokenizer,
chat template, image options and stop ids."""

import json

import jax
import numpy as np
import pytest

from jaxagents.models.qwen_vl import QwenVL, load_params
from jaxagents.models.qwen_vl.export import export_hf
from jaxagents.models.qwen_vl.processor import Processor
from tests.models.qwen_vl import tiny_checkpoint
from tests.models.qwen_vl.test_processor import conversations, hf_processor, images

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny checkpoint whose params moved away from the saved ones (as training would)."""
  directory = tiny_checkpoint.write_checkpoint(tmp_path_factory.mktemp("ckpt"), "qwen2_5_vl", seed=3)
  config, params = load_params(directory)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  processor = Processor.from_pretrained(directory, config=config, max_pixels=28 * 28 * 8)
  return config, params, processor


def test_transformers_reloads_the_export_with_our_logits(trained, tmp_path):
  import transformers

  config, params, processor = trained
  out = export_hf(str(tmp_path / "export"), config, params, processor)
  reloaded = Processor.from_pretrained(out)
  assert reloaded.stop_ids == processor.stop_ids and reloaded.pad_id == processor.pad_id
  assert reloaded.image_options == processor.image_options
  assert reloaded.tokenizer.chat_template == processor.tokenizer.chat_template
  row_images = [[images(2)[0]], [images(2)[1]]]
  inputs = reloaded(conversations(), images=row_images)
  logits = np.asarray(QwenVL(config).apply({"params": params}, inputs)[0])
  hf = hf_processor(out)
  texts = [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations()]
  batch = hf(text=texts, images=[im for row in row_images for im in row], padding=True, padding_side="left",
             return_tensors="pt")
  np.testing.assert_array_equal(batch["input_ids"].numpy(), inputs.input_ids)
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
  with torch.no_grad():
    expected = model(**batch).logits.numpy()
  mask = inputs.attention_mask.astype(bool)
  error = np.abs(logits[mask] - expected[mask]).max() / np.ptp(expected[mask])
  assert error < 1e-5, error
  generation = transformers.GenerationConfig.from_pretrained(out)
  assert list(generation.eos_token_id) == list(processor.stop_ids) and generation.do_sample is False


def test_export_refuses_a_non_empty_directory_and_leaves_no_partial_files(trained, tmp_path):
  config, params, processor = trained
  target = tmp_path / "export"
  target.mkdir()
  (target / "keep.txt").write_text("user file")
  with pytest.raises(FileExistsError, match="not empty"):
    export_hf(str(target), config, params, processor)
  assert (target / "keep.txt").read_text() == "user file"
  export_hf(str(target), config, params, processor, overwrite=True, sampling={"do_sample": True, "temperature": 0.7})
  assert not (target / "keep.txt").exists()
  assert json.loads((target / "generation_config.json").read_text())["temperature"] == 0.7
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")] == []
