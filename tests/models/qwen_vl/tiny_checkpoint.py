"""A tiny Qwen-VL checkpoint directory in the released layout, written by the reference libraries (no download).

`write_checkpoint(directory, family)` writes what a hub repository holds: `config.json` and safetensors
(transformers `save_pretrained` of a randomized tiny model), a byte-level BPE tokenizer trained here with the
`tokenizers` library (Qwen's special tokens), the Qwen2-VL chat template (`chat_template.jinja`), the image
processor's `preprocessor_config.json` and a `generation_config.json` whose stop ids are `<|im_end|>` and
`<|endoftext|>`.
"""

from __future__ import annotations

import json
import os

from tests.models.qwen_vl import tiny

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# The Qwen2-VL / Qwen2.5-VL hub chat template (Qwen/Qwen2-VL-7B-Instruct `chat_template.json`).
CHAT_TEMPLATE = (
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
  "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
  "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
  "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
  "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
  "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
  "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
  "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
  "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
  "<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
  "You are a helpful assistant.", "system user assistant", "How many red shapes are there?",
  "How many green shapes? How many blue shapes?", "What colour is the square? Answer with one word.",
  "The answer is 0 1 2 3 4 5 6 7 8 9.", "<think>Let me count.</think><answer>3</answer>", "(A) (B) (C) (D)",
  "Describe this image. Which option is correct?",
]
VOCAB_SIZE = 320  # the model's embedding rows; the tokenizer holds fewer (HF checkpoints pad the same way)


def train_tokenizer():
  """A byte-level BPE tokenizer (transformers `PreTrainedTokenizerFast`) with Qwen's special tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  model = Tokenizer(models.BPE())
  model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  model.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  model.train_from_iterator(CORPUS * 4, trainer)
  return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=list(SPECIAL_TOKENS[1:]))


def hf_config_dict(family: str, tokenizer, *, seed_changes: dict | None = None) -> dict:
  """The tiny family config with the tokenizer's special-token ids and `VOCAB_SIZE`."""
  config = tiny.with_changes(family, text={"vocab_size": VOCAB_SIZE, **(seed_changes or {})})
  ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
    ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
    ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
  config.update(ids)
  config["text_config"].update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                               bos_token_id=tokenizer.pad_token_id)
  return config


def write_checkpoint(directory, family: str = "qwen2_5_vl", *, seed: int = 0, min_pixels: int = 28 * 28 * 4,
                     max_pixels: int = 28 * 28 * 16) -> str:
  """Writes a complete tiny checkpoint of `family` into `directory` (created) and returns its path."""
  from transformers import GenerationConfig

  directory = str(directory)
  os.makedirs(directory, exist_ok=True)
  tokenizer = train_tokenizer()
  tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(directory)
  model = tiny.hf_model(family, seed=seed, config=hf_config_dict(family, tokenizer))
  model.save_pretrained(directory)
  GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id,
                   do_sample=True, temperature=0.7, top_p=0.8).save_pretrained(directory)
  patch = 16 if family == "qwen3_vl" else 14
  mean = [0.5] * 3 if family == "qwen3_vl" else [0.48145466, 0.4578275, 0.40821073]
  std = [0.5] * 3 if family == "qwen3_vl" else [0.26862954, 0.26130258, 0.27577711]
  processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                     "qwen3_vl": "Qwen3VLProcessor"}[family]
  preprocessor = {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
                  "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": patch, "temporal_patch_size": 2,
                  "merge_size": 2, "image_mean": mean, "image_std": std, "do_rescale": True, "do_normalize": True,
                  "do_resize": True, "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255}
  with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
    json.dump(preprocessor, f, indent=2)
  return directory
