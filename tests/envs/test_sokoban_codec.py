"""`SokobanCodec`: exact round trips over everything the environment and ReSim print, one token per board cell,
named refusal of unknown words; `InteriorSokoban` shows the board without its wall ring."""

import pytest

from jaxagents.envs import resim, sokoban
from jaxagents.envs.sokoban_codec import InteriorSokoban, SokobanCodec, interior_text

CONFIG = sokoban.SokobanConfig(dim=(6, 6), max_pushes=2, max_steps=10, render_image=False)


@pytest.fixture(scope="module")
def codec():
  return SokobanCodec()


def test_round_trip_is_exact_on_instructions_refusals_boards_and_traces(codec):
  env = InteriorSokoban(CONFIG)
  texts = [sokoban.INSTRUCTIONS, "<think>\n</think><answer>left</answer>"]
  for seed in range(5):
    env.reset(seed)
    texts += [env.observe().text, sokoban.render_text(env.state), resim.resim_trace(env)]
    for action in ("up", "down", "left", "right", None):
      clone = env.clone()
      texts.append(clone.step(action).observation.text)  # refusals print their reason before the board
  for text in texts:
    assert codec.decode(codec.encode(text)) == text


def test_board_rows_are_one_token_per_cell(codec):
  env = InteriorSokoban(CONFIG)
  board = env.reset(3).text
  ids = codec.encode(board)
  assert len(ids) == 4 * 4 + 3  # 4 rows of 4 cells and 3 newlines
  assert [codec.tokens[i] for i in ids if codec.tokens[i] != "\n"] == list(board.replace("\n", ""))


def test_unknown_word_is_refused_by_name(codec):
  with pytest.raises(ValueError, match="banana"):
    codec.encode("push the banana")


def test_special_tokens_and_vocabulary_are_distinct(codec):
  assert codec.pad_id == 0 and codec.eos_id == 1
  assert len(set(codec.tokens)) == codec.vocab_size


def test_interior_view_drops_exactly_the_wall_ring():
  env = InteriorSokoban(CONFIG)
  env.reset(0)
  full = sokoban.render_text(env.state).split("\n")
  assert set(full[0]) == set(full[-1]) == {"#"} and all(row[0] == row[-1] == "#" for row in full)
  assert env.observe().text == interior_text("\n".join(full)) == "\n".join(row[1:-1] for row in full[1:-1])
