"""Counting coloured shapes: a verifiable visual task generated on the fly, small enough for a tiny VLM on CPU.

Each example is an RGB image of a `grid x grid` board of cells (one ViT patch each). Some cells hold a coloured
shape (a filled square, a disc or a cross, in one of `colors`); the prompt asks how many shapes of one colour the
board holds. The completion has one of two formats (`ShapesConfig.format`):

* "answer": the count as one digit, then end-of-sequence (`3 <eos>`).
* "rows": a multi-step answer for process rewards (PDCR, arXiv 2605.13467; PACR, arXiv 2510.22255): the
  count of the asked colour in each board row, top to bottom, each step closed by the delimiter `;`, then `=`
  and the total (`1 ; 0 ; 2 ; 0 ; = 3 <eos>`). The row counts are perception steps (they need the image); the total is
  reasoning (the sum of the steps). `answer_template_ids` is the ground-truth answer `= Y <eos>` that PDCR appends
  after the first k steps to measure its confidence c_k (our choice: the paper leaves the template to the task).

The reward is exact match of the parsed answer (`parse_answer`) with the count, so it is verifiable without a judge.

Examples are a pure function of (seed, index): a run that resumes at step k sees exactly the prompts it would have
seen, and held-out prompts come from another seed. The text side uses a word-level vocabulary with Qwen-VL's
special-token roles (vision start/end, image pad), so prompts go through the same `prepare_inputs` as real
Qwen-VL batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPECIALS = ("<pad>", "<eos>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
WORDS = ("how", "many", "shapes", "?", "red", "green", "blue", "yellow")
DIGITS = tuple(str(d) for d in range(10))
STEP_WORDS = (";", "=")  # the "rows" format's step delimiter and answer marker
# New tokens go at the end so the ids of the "answer" format never move; its model keeps the first
# `ANSWER_VOCAB_SIZE` ids only, so its parameters (and the GRPO job) are exactly what they were before "rows" existed.
VOCAB = SPECIALS + WORDS + DIGITS + STEP_WORDS
ANSWER_VOCAB_SIZE = len(SPECIALS + WORDS + DIGITS)
FORMATS = ("answer", "rows")
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
PAD, EOS = TOKEN_ID["<pad>"], TOKEN_ID["<eos>"]
VISION_START, VISION_END = TOKEN_ID["<|vision_start|>"], TOKEN_ID["<|vision_end|>"]
IMAGE_PAD, VIDEO_PAD = TOKEN_ID["<|image_pad|>"], TOKEN_ID["<|video_pad|>"]
STEP, EQUALS = TOKEN_ID[";"], TOKEN_ID["="]
NEVER_GENERATED = (PAD, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)  # a sampler's `suppress_ids`
RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """Attributes:
    grid: cells per side; each cell is one `cell x cell` pixel patch (the ViT patch size).
    cell: pixels per cell side.
    colors: colours that appear (prompts ask about one of them).
    max_count: at most this many shapes of each colour (answers are 0..max_count).
    fill: probability that a cell holds a shape at all (before the per-colour cap).
    format: the completion format, "answer" (one digit) or "rows" (per-row counts, then the total).
  """

  grid: int = 4
  cell: int = 14
  colors: tuple[str, ...] = ("red", "green", "blue")
  max_count: int = 4
  fill: float = 0.5
  format: str = "answer"

  def __post_init__(self):
    unknown = [c for c in self.colors if c not in RGB]
    if unknown:
      raise ValueError(f"colors: {unknown} are not in the vocabulary; choose from {sorted(RGB)}")
    if not 0 <= self.max_count <= 9:
      raise ValueError(f"max_count: answers are one digit, so it must be in [0, 9], got {self.max_count}")
    if self.format not in FORMATS:
      raise ValueError(f"format: expected one of {FORMATS}, got {self.format!r}")

  @property
  def image_size(self) -> int:
    return self.grid * self.cell

  @property
  def vocab_size(self) -> int:
    """The model's vocabulary: the "answer" format never uses the step tokens, so its model does not have them."""
    return len(VOCAB) if self.format == "rows" else ANSWER_VOCAB_SIZE

  @property
  def completion_length(self) -> int:
    """Tokens in a well-formed completion (EOS included): 2 for "answer", 2 * grid + 3 for "rows"."""
    return 2 * self.grid + 3 if self.format == "rows" else 2


def _draw(canvas: np.ndarray, row: int, col: int, cell: int, shape: int, color: tuple[int, int, int]) -> None:
  y, x = np.mgrid[:cell, :cell] + 0.5 - cell / 2
  radius = cell / 2 - 1.5
  if shape == 0:  # square
    inside = (np.abs(y) <= radius) & (np.abs(x) <= radius)
  elif shape == 1:  # disc
    inside = y**2 + x**2 <= radius**2
  else:  # cross
    inside = ((np.abs(y) <= radius / 3) | (np.abs(x) <= radius / 3)) & (np.maximum(np.abs(y), np.abs(x)) <= radius)
  canvas[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell][inside] = color


def make_example(config: ShapesConfig, seed: int, index: int) -> dict:
  """Example `index` of stream `seed`: {'image': uint8 [S, S, 3], 'color': str, 'count': int, 'prompt': str,
  'row_counts': tuple of `grid` ints (shapes of the asked colour in each board row, top to bottom)}. The format
  does not change the example."""
  rng = np.random.default_rng([seed, index])
  image = np.full((config.image_size, config.image_size, 3), 245, np.uint8)
  counts = dict.fromkeys(config.colors, 0)
  row_counts = {color: [0] * config.grid for color in config.colors}
  for cell_index in rng.permutation(config.grid**2):
    if rng.random() >= config.fill:
      continue
    color = config.colors[rng.integers(len(config.colors))]
    if counts[color] == config.max_count:
      continue
    counts[color] += 1
    row_counts[color][cell_index // config.grid] += 1
    _draw(image, cell_index // config.grid, cell_index % config.grid, config.cell, int(rng.integers(3)),
          RGB[color])
  asked = config.colors[rng.integers(len(config.colors))]
  return dict(image=image, color=asked, count=counts[asked], prompt=f"how many {asked} shapes ?",
              row_counts=tuple(row_counts[asked]))


def encode(text: str) -> list[int]:
  """Words (split on spaces) to ids; raises on a word outside `VOCAB`."""
  words = text.split()
  unknown = [w for w in words if w not in TOKEN_ID]
  if unknown:
    raise ValueError(f"text: words {unknown} are not in the shapes vocabulary {VOCAB}")
  return [TOKEN_ID[w] for w in words]


def decode(ids) -> str:
  """Ids to words, stopping at the first <eos> and dropping padding."""
  words = []
  for i in np.asarray(ids).tolist():
    if i == EOS:
      break
    if i != PAD and 0 <= i < len(VOCAB):
      words.append(VOCAB[i])
  return " ".join(words)


def prompt_ids(config: ShapesConfig, example: dict, merge_size: int = 2) -> list[int]:
  """[vision_start, image_pad x (grid / merge)^2, vision_end, question words...] for one example."""
  units = (config.grid // merge_size) ** 2
  return [VISION_START, *[IMAGE_PAD] * units, VISION_END, *encode(example["prompt"])]


def answer_ids(example: dict) -> list[int]:
  """The "answer" format's completion: [count digit, <eos>]."""
  return [TOKEN_ID[str(example["count"])], EOS]


def answer_template_ids(count: int) -> list[int]:
  """The "rows" format's answer: [=, count digit, <eos>] (what follows the last step)."""
  return [EQUALS, TOKEN_ID[str(count)], EOS]


def rows_ids(example: dict) -> list[int]:
  """The "rows" format's completion: [row count, ;] per board row, then `answer_template_ids`."""
  steps = [token for n in example["row_counts"] for token in (TOKEN_ID[str(n)], STEP)]
  return steps + answer_template_ids(example["count"])


def target_ids(config: ShapesConfig, example: dict) -> list[int]:
  """The reference completion of an example in `config.format` (the SFT target)."""
  return rows_ids(example) if config.format == "rows" else answer_ids(example)


def parse_answer(config: ShapesConfig, ids) -> int | None:
  """The answer of a completion (token ids, read up to the first <eos>), or None if it has none.

  "answer": the last digit of the completion; this is what `jaxagents.rl.rewards.numeric_match` reads from text in
  this vocabulary (the GRPO job's reward), so that job scores exactly as before.
  "rows": the digit after the first `=`, which must be the completion's last word (`... ; = 3`); the steps are
  not checked (the reward is outcome-only).
  """
  words = decode(ids).split()
  if config.format == "answer":
    digits = [w for w in words if w in DIGITS]
    return int(digits[-1]) if digits else None
  if "=" not in words:
    return None
  tail = words[words.index("=") + 1:]
  return int(tail[0]) if len(tail) == 1 and tail[0] in DIGITS else None


def qwen_vl_config(config: ShapesConfig, *, hidden: int = 64, layers: int = 2, vision_depth: int = 2,
                   vision_width: int = 32):
  """A tiny Qwen2-VL-family model whose vocabulary and special tokens are this task's (trained from scratch)."""
  from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig

  heads = max(hidden // 16, 1)
  text = TextConfig(vocab_size=config.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                    num_heads=heads, num_kv_heads=max(heads // 2, 1), head_dim=16, mrope_section=(2, 3, 3))
  vision = VisionConfig(depth=vision_depth, width=vision_width, num_heads=2, mlp_dim=2 * vision_width,
                        out_dim=hidden, patch_size=config.cell)
  return QwenVLConfig(family="qwen2_vl", text=text, vision=vision, image_token_id=IMAGE_PAD,
                      video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
                      tie_word_embeddings=True)


def model_batch(config: ShapesConfig, model_config, examples: list[dict], completions: list[list[int]] | None = None,
                repeat: int = 1):
  """Host batch for `QwenVL`: prompts (each repeated `repeat` times, e.g. a GRPO group) left-padded, images
  preprocessed like a Qwen2-VL processor (CLIP normalisation, no resize: the board is already patch-aligned).

  With `completions` (one token list per row), the rows are prompt + completion and the result also holds
  `completion_mask` [B, L] marking the completion tokens. Returns (`ModelInputs`, completion_mask or None).
  """
  from jaxagents.models.qwen_vl.inputs import prepare_inputs
  from jaxagents.models.qwen_vl.preprocess import ImageOptions, preprocess_images

  size = config.image_size**2
  options = ImageOptions(min_pixels=size, max_pixels=size, patch_size=config.cell,
                         merge_size=model_config.vision.merge_size)
  rows = [prompt_ids(config, e, model_config.vision.merge_size) for e in examples for _ in range(repeat)]
  completion_rows = [[] for _ in rows] if completions is None else [list(c) for c in completions]
  if len(completion_rows) != len(rows):
    raise ValueError(f"completions: expected {len(rows)} rows (examples x repeat), got {len(completion_rows)}")
  full = [p + c for p, c in zip(rows, completion_rows, strict=True)]
  length = max(len(r) for r in full)
  ids = np.full((len(full), length), PAD, np.int32)
  mask = np.zeros_like(ids)
  completion_mask = np.zeros_like(ids)
  for b, (row, completion) in enumerate(zip(full, completion_rows, strict=True)):
    ids[b, length - len(row):] = row
    mask[b, length - len(row):] = 1
    completion_mask[b, length - len(completion):] = 1 if completion else 0
  # Every board has the same size, so each example's patches are computed once and repeated for its group.
  pixel_values, grid = preprocess_images([e["image"] for e in examples], options)
  pixel_values = np.repeat(pixel_values.reshape(len(examples), -1, pixel_values.shape[-1]), repeat, axis=0)
  pixel_values, grid = pixel_values.reshape(-1, pixel_values.shape[-1]), np.repeat(grid, repeat, axis=0)
  inputs = prepare_inputs(model_config, ids, mask, pixel_values=pixel_values, image_grid_thw=grid)
  return inputs, (completion_mask if completions is not None else None)
