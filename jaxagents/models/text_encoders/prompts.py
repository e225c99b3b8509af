"""Prompt wrapping and tokenisation of the text-to-image encoders, with HF tokenizers read from a local directory.

Lens (diffusers `pipelines/lens/pipeline_lens.py`, `LensPipeline._build_chat_inputs` and `_get_text_embeddings`):
each prompt becomes a Harmony chat -- a system message (which GPT-OSS's chat template renders as the developer
"# Instructions"), the user prompt, and an assistant turn whose "thinking" is a fixed sentence and whose content is
empty -- rendered by the tokenizer's chat template without a generation prompt and cut at the first `<|return|>`.
The texts are tokenised with special tokens, truncated to 512 tokens and right-padded to the longest (pad token =
EOS when the tokenizer has none). The encoder's features then drop the first `LENS_TXT_OFFSET` = 97 tokens.
[R] Those 97 tokens are the Harmony prefix up to and including `<|start|>user<|message|>` (the rendered system
message with its current date, the developer instructions), so the features start at the prompt's first token;
`lens_prefix_length(tokenizer)` counts that prefix for any tokenizer, to check the constant against the one in use.

FLUX.2-klein (diffusers `pipelines/flux2/pipeline_flux2_klein.py`, `Flux2KleinPipeline._get_qwen3_prompt_embeds`):
one user message per prompt through the Qwen3 chat template with `add_generation_prompt=True,
enable_thinking=False`, padded (on the tokenizer's side) and truncated to exactly `max_length` = 512 tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Strings and constants of diffusers `pipelines/lens/pipeline_lens.py` (CHAT_SYSTEM, CHAT_ASSISTANT_THINKING,
# DEFAULT_TXT_OFFSET) and the pipeline's default `max_sequence_length`.
LENS_SYSTEM_PROMPT = (
  "Describe the image by detailing the color, shape, size, texture, "
  "quantity, text, spatial relationships of the objects and background."
)
LENS_ASSISTANT_THINKING = "Need to generate one image according to the description."
LENS_TXT_OFFSET = 97
LENS_MAX_LENGTH = 512
FLUX2_KLEIN_MAX_LENGTH = 512
_RETURN = "<|return|>"


def load_tokenizer(directory: str):
  """A transformers tokenizer from a local directory (never downloads).

  Raises FileNotFoundError naming `directory` when it does not exist or has no tokenizer files.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"load_tokenizer: `directory` {directory!r} does not exist (tokenizers are read locally)")
  from transformers import AutoTokenizer

  try:
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
  except (OSError, ValueError) as error:
    raise FileNotFoundError(
      f"load_tokenizer: no loadable tokenizer in {directory!r} (expected tokenizer.json or the files of a "
      f"transformers tokenizer): {error}"
    ) from error


def _check_prompts(prompts: Sequence[str], where: str) -> list[str]:
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"{where}: `prompts` must be a non-empty sequence of str, got {prompts!r}")
  return prompts


def lens_conversation(prompt: str) -> list[dict]:
  """The Harmony conversation Lens renders for one prompt (`LensPipeline._build_chat_inputs`)."""
  return [
    {"role": "system", "content": LENS_SYSTEM_PROMPT, "thinking": None},
    {"role": "user", "content": prompt, "thinking": None},
    {"role": "assistant", "thinking": LENS_ASSISTANT_THINKING, "content": ""},
  ]


def lens_chat_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
  """Each prompt rendered by the tokenizer's chat template, cut before the first `<|return|>`."""
  prompts = _check_prompts(prompts, "lens_chat_texts")
  if getattr(tokenizer, "chat_template", None) is None:
    raise ValueError("lens_chat_texts: `tokenizer` has no chat_template (GPT-OSS's Harmony template is needed)")
  return [
    tokenizer.apply_chat_template(lens_conversation(p), tokenize=False, add_generation_prompt=False).split(_RETURN)[0]
    for p in prompts
  ]


def _pad_id(tokenizer, where: str) -> int:
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  if pad is None:
    raise ValueError(f"{where}: `tokenizer` has neither a pad nor an EOS token to pad with")
  return int(pad)


def lens_token_ids(
  tokenizer, prompts: Sequence[str], *, max_length: int = LENS_MAX_LENGTH, pad_to_multiple: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Lens's token ids int32 [B, T] and mask bool [B, T]: special tokens added, truncated to `max_length`,
  right-padded with the pad token (EOS if none) to the longest row, or further up to a multiple of
  `pad_to_multiple` (extra masked tokens change no valid feature of a causal encoder)."""
  if max_length < 1:
    raise ValueError(f"lens_token_ids: `max_length` must be >= 1, got {max_length}")
  if pad_to_multiple is not None and pad_to_multiple < 1:
    raise ValueError(f"lens_token_ids: `pad_to_multiple` must be None or >= 1, got {pad_to_multiple}")
  texts = lens_chat_texts(tokenizer, prompts)
  rows = tokenizer(texts, padding=False, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
  length = max(len(r) for r in rows)
  if pad_to_multiple:
    length = -(-length // pad_to_multiple) * pad_to_multiple
  ids = np.full((len(rows), length), _pad_id(tokenizer, "lens_token_ids"), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for b, row in enumerate(rows):
    ids[b, : len(row)] = row
    mask[b, : len(row)] = True
  return ids, mask


def lens_prefix_length(tokenizer) -> int:
  """[R] The number of tokens before a prompt's first token in Lens's rendering with `tokenizer` (the quantity
  `LENS_TXT_OFFSET` = 97 stands for; see the module docstring)."""
  marker = "\u2063lens-prompt\u2063"
  text = lens_chat_texts(tokenizer, [marker])[0]
  head = text.split(marker)[0]
  return len(tokenizer(head, add_special_tokens=True)["input_ids"])


def flux2_klein_chat_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
  """Each prompt as one user message through the tokenizer's chat template, generation prompt on, thinking off."""
  prompts = _check_prompts(prompts, "flux2_klein_chat_texts")
  if getattr(tokenizer, "chat_template", None) is None:
    raise ValueError("flux2_klein_chat_texts: `tokenizer` has no chat_template (Qwen3's template is needed)")
  return [
    tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False)
    for p in prompts
  ]


def flux2_klein_token_ids(
  tokenizer, prompts: Sequence[str], *, max_length: int = FLUX2_KLEIN_MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
  """FLUX.2-klein's token ids int32 [B, max_length] and mask bool [B, max_length] (padded on the tokenizer's
  side to exactly `max_length`, truncated to it)."""
  if max_length < 1:
    raise ValueError(f"flux2_klein_token_ids: `max_length` must be >= 1, got {max_length}")
  if tokenizer.pad_token_id is None:
    raise ValueError("flux2_klein_token_ids: `tokenizer` has no pad token (the pipeline pads to max_length with it)")
  encoded = tokenizer(flux2_klein_chat_texts(tokenizer, prompts), padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="np")
  return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(bool)
