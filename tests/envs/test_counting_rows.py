"""The counting environment's multi-step "rows" format: the row counts are what each board row shows and sum to the
answer, the completion and its parser agree, and the original "answer" format (ids, vocabulary, reward) is
unchanged."""

import numpy as np
import pytest

from jaxagents.envs import counting
from jaxagents.rl import rewards

# Hand-derived from the vocabulary layout: 6 specials, 8 words, the digits 0-9 (ids 14-23), then ";" and "=".
_OLD_VOCAB = ("<pad>", "<eos>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "how", "many",
              "shapes", "?", "red", "green", "blue", "yellow", *(str(d) for d in range(10)))
_DIGIT = {d: 14 + d for d in range(10)}
_STEP, _EQUALS, _EOS = 24, 25, 1


def _row_counts_by_pixels(example, config):
  """Shapes of the asked colour in each board row, read from the image (every shape covers its cell's centre)."""
  centre = config.cell // 2
  color = np.array(counting.RGB[example["color"]])
  return tuple(
    sum(bool((example["image"][r * config.cell + centre, c * config.cell + centre] == color).all())
        for c in range(config.grid))
    for r in range(config.grid)
  )


def test_row_counts_match_the_image_and_sum_to_the_count():
  config = counting.CountingConfig(format="rows")
  for index in range(200):
    example = counting.make_example(config, 5, index)
    assert example["row_counts"] == _row_counts_by_pixels(example, config)
    assert sum(example["row_counts"]) == example["count"]


def test_format_does_not_change_the_examples():
  answer, rows = counting.CountingConfig(), counting.CountingConfig(format="rows")
  for index in range(20):
    a, b = counting.make_example(answer, 1, index), counting.make_example(rows, 1, index)
    assert np.array_equal(a["image"], b["image"])
    assert (a["color"], a["count"], a["prompt"], a["row_counts"]) == (b["color"], b["count"], b["prompt"],
                                                                        b["row_counts"])


def test_rows_completion_of_a_hand_made_example():
  config = counting.CountingConfig(format="rows")
  example = {"row_counts": (1, 0, 2, 0), "count": 3}
  expected = [_DIGIT[1], _STEP, _DIGIT[0], _STEP, _DIGIT[2], _STEP, _DIGIT[0], _STEP, _EQUALS, _DIGIT[3], _EOS]
  ids = counting.target_ids(config, example)
  assert ids == expected
  assert len(ids) == config.completion_length == 11
  assert counting.decode(ids) == "1 ; 0 ; 2 ; 0 ; = 3"
  assert counting.answer_template_ids(3) == [_EQUALS, _DIGIT[3], _EOS] == ids[-3:]
  assert counting.parse_answer(config, ids) == 3


def test_rows_targets_parse_to_the_count():
  config = counting.CountingConfig(format="rows")
  for index in range(50):
    example = counting.make_example(config, 2, index)
    assert counting.parse_answer(config, counting.target_ids(config, example)) == example["count"]


@pytest.mark.parametrize(("text", "expected"), [
  ("1 ; 0 ; 2 ; 0 ; = 3 <eos>", 3),
  ("= 3", 3),  # truncated before <eos>: the answer is still there
  ("1 ; 2 ; = 4 <eos> 5", 4),  # nothing after <eos> counts
  ("1 ; 0 ; 2 ; 0 ; 3 <eos>", None),  # no "="
  ("1 ; 0 ; = 3 4 <eos>", None),  # more than one word after "="
  ("1 ; = = 3 <eos>", None),
  ("1 ; = red <eos>", None),
  ("1 ; 0 ; =", None),
])
def test_rows_parser(text, expected):
  ids = [counting.TOKEN_ID[w] for w in text.split()]
  assert counting.parse_answer(counting.CountingConfig(format="rows"), ids) == expected


def test_answer_format_is_unchanged():
  config = counting.CountingConfig()
  assert config.format == "answer"
  assert counting.VOCAB[:len(_OLD_VOCAB)] == _OLD_VOCAB  # old ids do not move
  assert counting.VOCAB[len(_OLD_VOCAB):] == (";", "=")
  assert config.vocab_size == len(_OLD_VOCAB) == 24  # the model of the "answer" format has no step tokens
  assert counting.CountingConfig(format="rows").vocab_size == 26
  assert counting.target_ids(config, {"count": 3, "row_counts": (1, 0, 2, 0)}) == [_DIGIT[3], _EOS]
  assert counting.answer_ids({"count": 3}) == [_DIGIT[3], _EOS]
  assert config.completion_length == 2


def test_answer_format_parser_scores_like_numeric_match():
  """The GRPO job's reward was `rewards.numeric_match(decode(row), count)`; the format-aware parser must give the
  same reward on every completion, including malformed ones."""
  config = counting.CountingConfig()
  rng = np.random.default_rng(0)
  for _ in range(3000):
    ids = rng.integers(0, len(counting.VOCAB), size=rng.integers(0, 6))
    for target in range(5):
      expected = rewards.numeric_match(counting.decode(ids), target)
      assert float(counting.parse_answer(config, ids) == target) == expected, (counting.decode(ids), target)


def test_bad_format_is_rejected():
  with pytest.raises(ValueError, match="format"):
    counting.CountingConfig(format="steps")
