"""A word-level tokenizer for Sokoban prompts and responses, and the compact board view tiny policies read.

`SokobanCodec` is a `TextCodec` (`generation.multi_turn`) over a closed vocabulary: the special tokens (`<pad>`,
`<eos>`), the newline and the space, every board symbol (RAGEN's, `envs.sokoban`), punctuation, the tags
`<think>`, `</think>`, `<answer>`, `</answer>`, the numbers 0..`max_number`, and every word of the environment's
instructions and refusal messages plus a small reasoning vocabulary (`REASONING_WORDS`). Spaces and newlines are
tokens, so `decode` is a plain join and `decode(encode(text)) == text` holds for every text over the vocabulary;
a word outside it raises ValueError. A line made only of board symbols is a board row and becomes one token per
cell (so "OX" in a row is two cells, not a word); other lines split into tags, words, numbers and single
characters.

`InteriorSokoban` shows the board without its outer ring, which is always wall (the level generator keeps it so):
a (6, 6) room reads as 4 rows of 4 cells, 19 tokens instead of 41. Our choice, for short prompts and short
simulated boards in ReSim traces; the dynamics, rewards and refusals are `envs.sokoban.Sokoban`'s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jaxagents.envs import sokoban
from jaxagents.envs.base import Observation

PAD, EOS = "<pad>", "<eos>"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
ACTIONS = ("up", "down", "left", "right")
# Words of the ReSim traces (`envs.resim`): "plan" opens the planned actions, "dead" marks a state with no solution.
REASONING_WORDS = ("plan", "dead", "best", "goal")
# Every message the environment prints besides the board (`Sokoban._outcome`).
_REFUSALS = (
  "No action found. Answer with up, down, left or right inside <answer></answer>.",
  "You cannot move up: a wall is in the way. Nothing moved.",
  "You cannot push the box up: a wall is behind it. Nothing moved.",
  "You cannot push the box up: another box is behind it. Nothing moved.",
  "'x' is not an action. The actions are up, down, left, right.",
)
_TOKEN = re.compile(r"</?(?:think|answer)>|[A-Za-z]+|\d+|\n| |.", re.DOTALL)


def interior_text(text: str) -> str:
  """A board's text without its outer ring (first and last rows, first and last cells of the others)."""
  rows = text.split("\n")
  if len(rows) < 3 or any(len(row) < 3 for row in rows):
    raise ValueError(f"text: expected a board of at least 3x3 cells, got {text!r}")
  return "\n".join(row[1:-1] for row in rows[1:-1])


class InteriorSokoban(sokoban.Sokoban):
  """`Sokoban` whose observations show the board without its outer wall ring (module docstring)."""

  def observe(self) -> Observation:
    return Observation(interior_text(sokoban.render_text(self.state)))


class SokobanCodec:
  """`encode(text) -> ids`, `decode(ids) -> text` over the closed Sokoban vocabulary (module docstring)."""

  def __init__(self, max_number: int = 32, extra_words: Sequence[str] = ()):
    words = set(ACTIONS) | set(REASONING_WORDS) | set(extra_words)
    for text in (sokoban.INSTRUCTIONS, *_REFUSALS):
      words |= {piece for piece in _TOKEN.findall(text) if piece.isalpha()}
    punctuation = set()
    for text in (sokoban.INSTRUCTIONS, *_REFUSALS):
      punctuation |= {piece for piece in _TOKEN.findall(text) if len(piece) == 1 and not piece.isalnum()}
    punctuation -= {"\n", " ", *sokoban.SYMBOLS}
    self.tokens: tuple[str, ...] = (PAD, EOS, "\n", " ", *sokoban.SYMBOLS, *TAGS, *sorted(punctuation),
                                    *map(str, range(max_number + 1)), *sorted(words - set(sokoban.SYMBOLS)))
    self.ids = {token: index for index, token in enumerate(self.tokens)}
    if len(self.ids) != len(self.tokens):
      raise ValueError(f"extra_words: expected words not already in the vocabulary, got {list(extra_words)}")
    self.pad_id, self.eos_id = self.ids[PAD], self.ids[EOS]

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def tokenize(self, text: str) -> list[str]:
    pieces = []
    for index, line in enumerate(text.split("\n")):
      if index:
        pieces.append("\n")
      if line and set(line) <= set(sokoban.SYMBOLS):
        pieces.extend(line)  # a board row: one token per cell
      else:
        pieces.extend(_TOKEN.findall(line))
    return pieces

  def encode(self, text: str) -> list[int]:
    pieces = self.tokenize(text)
    unknown = sorted({piece for piece in pieces if piece not in self.ids})
    if unknown:
      raise ValueError(f"text: expected only words of the Sokoban vocabulary, got unknown {unknown} in {text!r}")
    return [self.ids[piece] for piece in pieces]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.tokens[int(i)] for i in ids)
