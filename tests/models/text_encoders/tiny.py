"""Tiny GPT-OSS / Qwen3 reference models and tiny local tokenizers for the text-encoder tests (no downloads).

The tokenizers are byte-level BPE models without merges (one token per UTF-8 byte) plus the special tokens of
each chat format, built with the `tokenizers` library and saved with `save_pretrained`. Their chat templates are
small Jinja templates written here with the structure of the real ones (GPT-OSS's Harmony template renders a
system message with the current date, a system-role message as developer "# Instructions", the user turn, and a
final assistant turn's thinking on the analysis channel before `<|return|>`; Qwen3's wraps turns in
`<|im_start|>`/`<|im_end|>` and, with thinking off, opens the assistant turn with an empty think block).
"""

import copy

import numpy as np

HARMONY_SPECIALS = ["<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>", "<|endoftext|>"]
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]

HARMONY_TEMPLATE = (
  "<|start|>system<|message|>Knowledge cutoff: 2024-06\nCurrent date: {{ strftime_now('%Y-%m-%d') }}<|end|>"
  "{%- if messages[0].role == 'system' %}"
  "<|start|>developer<|message|># Instructions\n\n{{ messages[0].content }}\n\n<|end|>"
  "{%- set turns = messages[1:] %}{%- else %}{%- set turns = messages %}{%- endif %}"
  "{%- for m in turns %}"
  "{%- if m.role == 'user' %}<|start|>user<|message|>{{ m.content }}<|end|>"
  "{%- elif loop.last and not add_generation_prompt %}"
  "{%- if m.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{%- endif %}"
  "<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|return|>"
  "{%- else %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>{%- endif %}"
  "{%- endfor %}"
  "{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"
)
QWEN_TEMPLATE = (
  "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
  "{%- if add_generation_prompt %}<|im_start|>assistant\n"
  "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{%- endif %}"
)
VOCAB = 262  # 256 bytes + the specials of either format


def _byte_tokenizer(specials):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(specials)
  return tokenizer


def save_harmony_tokenizer(directory, pad=True):
  """A Harmony-format byte tokenizer saved in `directory` (EOS <|return|>; pad <|endoftext|> unless `pad=False`)."""
  from transformers import PreTrainedTokenizerFast

  kwargs = {"pad_token": "<|endoftext|>"} if pad else {}
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer(HARMONY_SPECIALS), eos_token="<|return|>",
                                      chat_template=HARMONY_TEMPLATE, **kwargs)
  tokenizer.save_pretrained(str(directory))
  return str(directory)


def save_qwen_tokenizer(directory):
  """A Qwen-chat byte tokenizer saved in `directory` (pad <|endoftext|>, EOS <|im_end|>, right padding)."""
  from transformers import PreTrainedTokenizerFast

  tokenizer = PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer(QWEN_SPECIALS), eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", chat_template=QWEN_TEMPLATE)
  tokenizer.save_pretrained(str(directory))
  return str(directory)


# GPT-OSS variants: GQA / MQA / MHA, odd widths, expert counts and k, sliding windows and layer patterns, YaRN
# parameters (truncated or not, explicit attention factor), biases on or off, tied or untied embeddings, and a small
# SwiGLU limit so the clamps are active.
GPT_OSS = {
  "gqa_yarn": dict(vocab_size=VOCAB, hidden_size=23, intermediate_size=13, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, num_local_experts=5, num_experts_per_tok=2, sliding_window=3,
                   swiglu_limit=0.7, max_position_embeddings=64,
                   rope_parameters={"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0, "beta_fast": 8.0,
                                    "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16}),
  "mqa_all_experts": dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=10, num_hidden_layers=3,
                          num_attention_heads=3, num_key_value_heads=1, head_dim=6, num_local_experts=4,
                          num_experts_per_tok=4, sliding_window=5, swiglu_alpha=1.3, swiglu_limit=2.0,
                          layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                          max_position_embeddings=96,
                          rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 3.0,
                                           "beta_fast": 16.0, "beta_slow": 2.0, "truncate": True,
                                           "attention_factor": 1.25, "original_max_position_embeddings": 32}),
  "mha_top1_tied": dict(vocab_size=VOCAB, hidden_size=12, intermediate_size=8, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2, head_dim=4, num_local_experts=3,
                        num_experts_per_tok=1, sliding_window=2, attention_bias=False, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def gpt_oss_model(name, seed=0):
  """A tiny `GptOssForCausalLM` (eager attention and experts), every tensor randomised: N(0, 0.3^2), norms
  1 + N(0, 0.1^2).

  HF's init leaves biases at 0 and norms at 1, which would let a converter that drops them pass.
  """
  import torch
  import transformers

  config = transformers.GptOssConfig(**copy.deepcopy(GPT_OSS[name]))
  config._attn_implementation = "eager"
  config._experts_implementation = "eager"  # the reference loop over experts (grouped_mm needs 16-byte strides)
  torch.manual_seed(seed)
  model = transformers.GptOssForCausalLM(config).eval()
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      if "norm" in key:
        tensor.copy_(1 + 0.1 * torch.randn_like(tensor))
      elif tensor.is_floating_point():
        tensor.normal_(0, 0.3)
  return model


QWEN3 = {
  "gqa": dict(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, max_position_embeddings=128,
              rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
  "bias_mha_odd": dict(vocab_size=VOCAB, hidden_size=18, intermediate_size=27, num_hidden_layers=3,
                       num_attention_heads=3, num_key_value_heads=3, head_dim=10, rms_norm_eps=1e-5,
                       attention_bias=True, max_position_embeddings=128,
                       rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
}


def qwen3_model(name, seed=0):
  """A tiny `Qwen3ForCausalLM` (eager attention), randomised like `gpt_oss_model`."""
  import torch
  import transformers

  config = transformers.Qwen3Config(**copy.deepcopy(QWEN3[name]))
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(config).eval()
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      if "norm" in key:
        tensor.copy_(1 + 0.1 * torch.randn_like(tensor))
      elif tensor.is_floating_point():
        tensor.normal_(0, 0.3)
  return model


def right_padded(lengths, vocab=VOCAB - 6, pad=0, seed=0):
  """Random token rows of `lengths`, right-padded: (ids [B, T] int64, mask [B, T] bool)."""
  rng = np.random.default_rng(seed)
  length = max(lengths)
  ids = np.full((len(lengths), length), pad, np.int64)
  mask = np.zeros((len(lengths), length), bool)
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(0, vocab, n)
    mask[b, :n] = True
  return ids, mask


def relative_error(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
