"""The counting environment: answers agree with what the image shows, examples are a pure function of
(seed, index), the prompt/answer encoding round-trips with one image placeholder per image, the verifier is exact
match, and its grain source serves records that turn back into the same examples."""

import pickle

import numpy as np
import pytest

from jaxagents.data import make_pipeline
from jaxagents.envs import counting


def _count_by_pixels(example, config):
  """Counts cells whose centre pixel has the asked colour (every shape covers its cell's centre)."""
  centre = config.cell // 2
  image = example["image"]
  color = np.array(counting.RGB[example["color"]])
  return sum(
    bool((image[r * config.cell + centre, c * config.cell + centre] == color).all())
    for r in range(config.grid) for c in range(config.grid)
  )


def test_answers_match_the_rendered_image():
  config = counting.CountingConfig()
  for index in range(200):
    example = counting.make_example(config, 7, index)
    assert example["count"] == _count_by_pixels(example, config)
    assert 0 <= example["count"] <= config.max_count


def test_examples_are_a_pure_function_of_seed_and_index():
  config = counting.CountingConfig()
  a, b = counting.make_example(config, 3, 11), counting.make_example(config, 3, 11)
  assert np.array_equal(a["image"], b["image"]) and a["count"] == b["count"]
  assert not np.array_equal(a["image"], counting.make_example(config, 4, 11)["image"])


def test_prompt_holds_one_image_placeholder_between_vision_start_and_end():
  config = counting.CountingConfig()
  example = counting.make_example(config, 0, 1)
  ids = counting.prompt_ids(config, example)
  assert ids[:3] == [counting.VISION_START, counting.IMAGE_PAD, counting.VISION_END]
  assert ids.count(counting.IMAGE_PAD) == 1 and counting.VIDEO_PAD not in ids
  assert counting.decode(ids[3:]) == example["prompt"]
  assert counting.prompt_ids(counting.CountingConfig(grid=8, format="rows"), example) == ids  # no grid in the prompt


def test_prompt_and_answer_encoding():
  config = counting.CountingConfig()
  example = counting.make_example(config, 0, 1)
  answer = counting.answer_ids(example)
  assert counting.decode(answer + [counting.TOKEN_ID["3"]]) == str(example["count"])  # stops at <eos>
  with pytest.raises(ValueError, match="not in the counting vocabulary"):
    counting.encode("how many purple shapes ?")
  with pytest.raises(ValueError, match="max_count"):
    counting.CountingConfig(max_count=12)


@pytest.mark.parametrize("format_", counting.FORMATS)
def test_reward_is_one_exactly_when_the_parsed_answer_is_the_count(format_):
  config = counting.CountingConfig(format=format_)
  digit = counting.TOKEN_ID
  for index in range(20):
    example = counting.make_example(config, 1, index)
    assert counting.reward(config, counting.target_ids(config, example), example) == 1.0
  example = {"count": 3, "row_counts": (1, 0, 2, 0)}
  wrong = {"answer": [digit["2"], counting.EOS], "rows": [digit["="], digit["2"], counting.EOS]}[format_]
  right = {"answer": [digit["3"], counting.EOS], "rows": [digit["="], digit["3"], counting.EOS]}[format_]
  assert counting.reward(config, wrong, example) == 0.0
  assert counting.reward(config, right, example) == 1.0
  assert counting.reward(config, [counting.EOS, *right], example) == 0.0  # nothing after <eos> counts
  assert counting.reward(config, [], example) == 0.0  # no answer
  assert isinstance(counting.reward(config, np.array(right), example), float)


def test_source_records_are_numpy_arrays_that_turn_back_into_the_same_examples():
  config = counting.CountingConfig(format="rows", colors=("green", "yellow", "red"))
  source = counting.CountingSource(config, seed=5, size=12)
  assert len(source) == 12
  for index in (0, 7, np.int64(11)):
    record = source[index]
    assert all(isinstance(value, np.ndarray | np.generic) for value in record.values())
    assert record["image"].dtype == np.uint8 and record["image"].shape == (config.image_size,) * 2 + (3,)
    assert record["row_counts"].shape == (config.grid,) and int(record["index"]) == index
    expected = counting.make_example(config, 5, int(index))
    example = counting.example_from_record(config, record)
    assert np.array_equal(example["image"], expected["image"])
    assert {k: v for k, v in example.items() if k != "image"} == {k: v for k, v in expected.items() if k != "image"}
  for bad in (12, -1):
    with pytest.raises(IndexError):
      source[bad]
  with pytest.raises(ValueError, match="size"):
    counting.CountingSource(config, seed=0, size=-1)
  clone = pickle.loads(pickle.dumps(source))  # grain's worker processes receive the source pickled
  assert np.array_equal(clone[3]["image"], source[3]["image"])


def test_pipeline_batches_of_the_source_turn_back_into_the_examples_they_index():
  config = counting.CountingConfig()
  source = counting.CountingSource(config, seed=2, size=10)
  batch = next(iter(make_pipeline(source, batch_size=4, seed=0, shard_index=0, shard_count=1,
                                  prefetch_buffer_size=0)))
  assert batch["image"].shape == (4, config.image_size, config.image_size, 3)
  examples = counting.examples_from_batch(config, batch)
  assert len(examples) == 4
  for index, example in zip(batch["index"].tolist(), examples, strict=True):
    expected = counting.make_example(config, 2, index)
    assert np.array_equal(example["image"], expected["image"]) and example["count"] == expected["count"]
    assert example["prompt"] == expected["prompt"] and example["row_counts"] == expected["row_counts"]
  with pytest.raises(ValueError, match="batch"):
    counting.examples_from_batch(config, {"image": batch["image"], "count": batch["count"][:2]})


def test_color_last_moves_the_colour_to_the_prompts_last_word_and_changes_nothing_else():
  plain, last = counting.CountingConfig(), counting.CountingConfig(color_last=True)
  for index in range(5):
    a, b = counting.make_example(plain, 2, index), counting.make_example(last, 2, index)
    assert np.array_equal(a["image"], b["image"]) and a["count"] == b["count"] and a["color"] == b["color"]
    assert a["prompt"] == f"how many {a['color']} shapes ?" and b["prompt"] == f"how many shapes ? {b['color']}"
    assert counting.decode(counting.prompt_ids(last, b)[-1:]) == b["color"]  # the answer is predicted at the colour
