"""Counting coloured shapes: a verifiable visual task generated on the fly, small enough for a tiny VLM on CPU.

Each example is an RGB image of a `grid x grid` board of cells (one ViT patch each). Some cells hold a coloured
shape (a filled square, a disc or a cross, in one of `colors`); the prompt asks how many shapes of one colour the
board holds, "how many red shapes ?" or, with `CountingConfig.color_last`, "how many shapes ? red". The completion
has one of two formats (`CountingConfig.format`):

* "answer": the count as one digit, then end-of-sequence (`3 <eos>`).
* "rows": a multi-step answer for process rewards (PDCR, arXiv 2605.13467; PACR, arXiv 2510.22255): the
  count of the asked colour in each board row, top to bottom, each step closed by the delimiter `;`, then `=`
  and the total (`1 ; 0 ; 2 ; 0 ; = 3 <eos>`). The row counts are perception steps (they need the image); the total is
  reasoning (the sum of the steps). `answer_template_ids` is the ground-truth answer `= Y <eos>` that PDCR appends
  after the first k steps to measure its confidence c_k (our choice: the paper leaves the template to the task).

The verifier (`reward`) is exact match of the parsed answer (`parse_answer`) with the count: no judge.

The environment knows no model. Its text side is a word-level tokenizer with Qwen-VL's special-token roles (vision
start/end, image pad); `prompt_ids` holds ONE `<|image_pad|>` per image, as a chat template does before an HF
processor expands it, so the model side (Qwen-VL: `token_batch` in `models/qwen_vl/batching.py`) expands each
placeholder by the image's grid.

Examples are a pure function of (seed, index): a run that resumes at step k sees exactly the prompts it would have
seen, and held-out prompts come from another seed. `CountingSource` serves them to a grain pipeline as records of
numpy arrays; `example_from_record` / `examples_from_batch` turn records back into examples.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping

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
class CountingConfig:
  """Attributes:
    grid: cells per side; each cell is one `cell x cell` pixel patch (the ViT patch size).
    cell: pixels per cell side.
    colors: colours that appear (prompts ask about one of them).
    max_count: at most this many shapes of each colour (answers are 0..max_count).
    fill: probability that a cell holds a shape at all (before the per-colour cap).
    format: the completion format, "answer" (one digit) or "rows" (per-row counts, then the total).
    color_last: end the prompt with the colour word ("how many shapes ? red") instead of "how many red shapes ?".
      A decoder then predicts the answer at the colour word itself, so one attention layer can match the colour
      against the image tokens; with the colour inside the question, the answer position must first copy the colour
      (one layer) before any colour-matching attention can pay off (a second), and a tiny model trained from
      scratch sat at the answer prior for a seed-dependent 150-300+ SFT steps in our runs (50-100 with this).
  """

  grid: int = 4
  cell: int = 14
  colors: tuple[str, ...] = ("red", "green", "blue")
  max_count: int = 4
  fill: float = 0.5
  format: str = "answer"
  color_last: bool = False

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


def make_example(config: CountingConfig, seed: int, index: int) -> dict:
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
  return dict(image=image, color=asked, count=counts[asked], prompt=question(config, asked),
              row_counts=tuple(row_counts[asked]))


def question(config: CountingConfig, color: str) -> str:
  """The prompt's words asking for the shapes of `color` (`CountingConfig.color_last` says where the colour goes)."""
  return f"how many shapes ? {color}" if config.color_last else f"how many {color} shapes ?"


def encode(text: str) -> list[int]:
  """Words (split on spaces) to ids; raises on a word outside `VOCAB`."""
  words = text.split()
  unknown = [w for w in words if w not in TOKEN_ID]
  if unknown:
    raise ValueError(f"text: words {unknown} are not in the counting vocabulary {VOCAB}")
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


def prompt_ids(config: CountingConfig, example: dict) -> list[int]:
  """[vision_start, image_pad, vision_end, question words...]: one placeholder for the board, before expansion
  (the model's batching turns it into one pad per merged patch, as an HF processor does)."""
  del config  # every format asks the same question
  return [VISION_START, IMAGE_PAD, VISION_END, *encode(example["prompt"])]


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


def target_ids(config: CountingConfig, example: dict) -> list[int]:
  """The reference completion of an example in `config.format` (the SFT target)."""
  return rows_ids(example) if config.format == "rows" else answer_ids(example)


def parse_answer(config: CountingConfig, ids) -> int | None:
  """The answer of a completion (token ids, read up to the first <eos>), or None if it has none.

  "answer": the last digit of the completion; this is what `jaxagents.rl.rewards.numeric_match` reads from text in
  this vocabulary, so a reward on the decoded text scores exactly as this parser does.
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


def reward(config: CountingConfig, completion_ids, example: Mapping) -> float:
  """The verifier: 1.0 when the completion's parsed answer (`parse_answer`) equals the example's count, else 0.0
  (no answer scores 0)."""
  return float(parse_answer(config, completion_ids) == int(example["count"]))


# ----------------------------------------------------------------------------------------------------------------
# Records: what a grain pipeline carries (numpy arrays only), and back.


class CountingSource:
  """Random-access source of counting examples for `jaxagents.data.make_pipeline` (grain): record `i` is example
  `i` of stream `seed` as numpy arrays, {'image': uint8 [S, S, 3], 'count': int32 [], 'color': int32 [] (index
  into `config.colors`), 'row_counts': int32 [grid], 'index': int64 []}.

  Picklable (grain's worker processes rebuild records from (config, seed, index)); an index outside [0, size)
  raises `IndexError` rather than wrapping around.
  """

  def __init__(self, config: CountingConfig, seed: int, size: int):
    if not isinstance(config, CountingConfig):
      raise TypeError(f"config: expected a CountingConfig, got {type(config).__name__}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
      raise ValueError(f"size: expected a non-negative integer, got {size!r}")
    self.config, self.seed, self.size = config, int(seed), int(size)

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)  # ints and numpy integers; no floats or slices
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self.size} records")
    example = make_example(self.config, self.seed, index)
    return {"image": example["image"], "count": np.int32(example["count"]),
            "color": np.int32(self.config.colors.index(example["color"])),
            "row_counts": np.asarray(example["row_counts"], np.int32), "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"CountingSource({self.size} records, seed {self.seed}, {self.config})"


def example_from_record(config: CountingConfig, record: Mapping) -> dict:
  """The example (as `make_example` returns it) of one `CountingSource` record."""
  color = config.colors[int(record["color"])]
  return dict(image=np.asarray(record["image"]), color=color, count=int(record["count"]),
              prompt=question(config, color),
              row_counts=tuple(int(n) for n in np.asarray(record["row_counts"])))


def examples_from_batch(config: CountingConfig, batch: Mapping) -> list[dict]:
  """The examples of a batch of records (every leaf with a leading batch axis, as a grain pipeline yields them)."""
  sizes = {name: np.shape(value)[0] if np.ndim(value) else None for name, value in batch.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f"batch: expected every leaf to have the same leading batch axis, got sizes {sizes}")
  return [example_from_record(config, {name: value[i] for name, value in batch.items()})
          for i in range(next(iter(sizes.values())))]
