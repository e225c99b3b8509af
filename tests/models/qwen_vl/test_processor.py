"""`Processor` against transformers' processor and model on a tiny checkpoint directory written by the reference
libraries: the same token ids and pixels, the same logits (fp32, 1e-5 relative), and named errors."""

import numpy as np
import pytest

from jaxagents.models.qwen_vl.processor import Processor
from tests.models.qwen_vl import tiny_checkpoint

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return tiny_checkpoint.write_checkpoint(tmp_path_factory.mktemp("ckpt"), "qwen2_5_vl")


def images(seed, sizes=((60, 90), (40, 40))):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def conversations():
  return [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red shapes?"}]}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": [{"type": "text", "text": "Which option is correct?"}, {"type": "image"}]}],
  ]


def hf_processor(directory):
  import transformers
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

  class Processor(transformers.Qwen2_5_VLProcessor):  # the video processor class check needs torchvision
    def check_argument_for_proper_class(self, argument_name, argument):
      return None if argument_name == "video_processor" else super().check_argument_for_proper_class(
        argument_name, argument)

  import json
  config = json.load(open(f"{directory}/preprocessor_config.json"))
  keep = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
  image_processor = Qwen2VLImageProcessorPil(**{k: config[k] for k in keep})
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  return Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                   chat_template=tokenizer.chat_template)


def test_processor_reads_the_checkpoint_files(checkpoint):
  processor = Processor.from_pretrained(checkpoint)
  im_end, endoftext = (processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
  assert processor.stop_ids == (im_end, endoftext)
  assert processor.pad_id == endoftext
  assert (processor.image_options.min_pixels, processor.image_options.max_pixels) == (28 * 28 * 4, 28 * 28 * 16)
  assert Processor.from_pretrained(checkpoint, max_pixels=28 * 28 * 8).image_options.max_pixels == 28 * 28 * 8
  from jaxagents.generation import SamplingConfig
  sampling = SamplingConfig(8, **processor.stop_options)
  assert sampling.eos_ids == processor.stop_ids and processor.config.image_token_id in sampling.suppress_ids


def test_processor_matches_the_transformers_processor_token_for_token(checkpoint):
  ours = Processor.from_pretrained(checkpoint)
  hf = hf_processor(checkpoint)
  row_images = [[images(0)[0]], [images(0)[1]]]
  inputs = ours(conversations(), images=row_images)
  texts = [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations()]
  expected = hf(text=texts, images=[im for row in row_images for im in row], padding=True, padding_side="left",
                return_tensors="np")
  np.testing.assert_array_equal(inputs.input_ids, expected["input_ids"])
  np.testing.assert_array_equal(inputs.attention_mask, expected["attention_mask"])
  patches = inputs.vision.patches.reshape(-1, inputs.vision.patches.shape[-1])
  valid = patches[np.abs(patches).sum(-1) > 0]
  np.testing.assert_allclose(valid, expected["pixel_values"], rtol=1e-5, atol=1e-5)


def test_processor_and_model_give_the_transformers_logits(checkpoint):
  import jax.numpy as jnp
  import transformers

  from jaxagents.models.qwen_vl import QwenVL, load_params

  config, params = load_params(checkpoint)
  processor = Processor.from_pretrained(checkpoint, config=config)
  row_images = [[images(1)[0]], [images(1)[1]]]
  inputs = processor(conversations(), images=row_images)
  logits, _ = QwenVL(config).apply({"params": params}, inputs)  # a ModelInputs is accepted as it is
  hf = hf_processor(checkpoint)
  texts = [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations()]
  batch = hf(text=texts, images=[im for row in row_images for im in row], padding=True, padding_side="left",
             return_tensors="pt")
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager")
  with torch.no_grad():
    expected = model(**batch).logits.numpy()
  mask = inputs.attention_mask.astype(bool)
  ours = np.asarray(logits)[mask]
  error = np.abs(ours - expected[mask]).max() / np.ptp(expected[mask])
  assert error < 1e-5, error
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1))[mask], expected[mask].argmax(-1))


def test_completions_are_closed_by_the_stop_id_and_decode_back(checkpoint):
  processor = Processor.from_pretrained(checkpoint)
  inputs, mask = processor(conversations(), images=[[images(0)[0]], [images(0)[1]]], completions=["3", "(B)"])
  stop = processor.stop_ids[0]
  for b, text in enumerate(["3", "(B)"]):
    row = inputs.input_ids[b][mask[b]]
    assert row[-1] == stop
    assert processor.decode(row[None]) == [text]
  assert processor.decode(np.array([[40, 41, stop, 42]]), np.array([3]))[0] == processor.tokenizer.decode([40, 41])


def test_videos_and_images_in_one_batch_get_positions_and_vision_inputs(checkpoint):
  processor = Processor.from_pretrained(checkpoint)
  frames = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
  conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe this"}]}]
  inputs = processor([conversation, conversations()[0]], images=[[], [images(0)[1]]], videos=[[frames], []])
  video_tokens = (inputs.input_ids == processor.config.video_token_id).sum()
  assert video_tokens == 2 * 2 * 2  # 4 frames -> 2 temporal groups of a 4x4 patch grid merged 2x2
  assert inputs.positions.shape == (3, *inputs.input_ids.shape)


def test_bad_inputs_are_refused_with_their_row(checkpoint):
  processor = Processor.from_pretrained(checkpoint)
  with pytest.raises(ValueError, match=r"conversations\[0\].*1 <\|image_pad\|>.*images\[0\] holds 0"):
    processor(conversations()[:1], images=[[]])
  with pytest.raises(ValueError, match=r"conversations\[0\].*max_prompt_tokens=10.*not truncated"):
    processor(conversations()[:1], images=[[images(0)[0]]], max_prompt_tokens=10)
  with pytest.raises(ValueError, match="images: expected one list per conversation"):
    processor(conversations(), images=[[images(0)[0]]])
  with pytest.raises(FileNotFoundError, match="directory"):
    Processor.from_pretrained(f"{checkpoint}/missing")


def test_shape_buckets_pad_rows_and_patches_without_changing_the_logits(checkpoint):
  from jaxagents.models.qwen_vl import QwenVL, load_params

  config, params = load_params(checkpoint)
  processor = Processor.from_pretrained(checkpoint, config=config)
  row_images = [[images(4)[0]], [images(4)[1]]]
  plain = processor(conversations(), images=row_images)
  bucketed = processor(conversations(), images=row_images, length_multiple=64, patch_multiple=64)
  assert bucketed.input_ids.shape[1] % 64 == 0 and bucketed.input_ids.shape[1] > plain.input_ids.shape[1]
  assert bucketed.vision.patches.shape[1] % 64 == 0
  model = QwenVL(config)
  a = np.asarray(model.apply({"params": params}, plain)[0])[:, -1]
  b = np.asarray(model.apply({"params": params}, bucketed)[0])[:, -1]
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
