"""The shipped counting task: answers agree with what the image shows, examples are a pure function of
(seed, index), and the prompt/answer encoding round-trips."""

import numpy as np
import pytest

from jaxagents.data import shapes


def _count_by_pixels(example, config):
  """Counts cells whose centre pixel has the asked colour (every shape covers its cell's centre)."""
  centre = config.cell // 2
  image = example["image"]
  color = np.array(shapes.RGB[example["color"]])
  return sum(
    bool((image[r * config.cell + centre, c * config.cell + centre] == color).all())
    for r in range(config.grid) for c in range(config.grid)
  )


def test_answers_match_the_rendered_image():
  config = shapes.ShapesConfig()
  for index in range(200):
    example = shapes.make_example(config, 7, index)
    assert example["count"] == _count_by_pixels(example, config)
    assert 0 <= example["count"] <= config.max_count


def test_examples_are_a_pure_function_of_seed_and_index():
  config = shapes.ShapesConfig()
  a, b = shapes.make_example(config, 3, 11), shapes.make_example(config, 3, 11)
  assert np.array_equal(a["image"], b["image"]) and a["count"] == b["count"]
  assert not np.array_equal(a["image"], shapes.make_example(config, 4, 11)["image"])


def test_prompt_and_answer_encoding():
  config = shapes.ShapesConfig()
  example = shapes.make_example(config, 0, 1)
  ids = shapes.prompt_ids(config, example)
  assert ids[:6] == [shapes.VISION_START, *[shapes.IMAGE_PAD] * 4, shapes.VISION_END]
  assert shapes.decode(ids[6:]) == example["prompt"]
  answer = shapes.answer_ids(example)
  assert shapes.decode(answer + [shapes.TOKEN_ID["3"]]) == str(example["count"])  # stops at <eos>
  with pytest.raises(ValueError, match="not in the shapes vocabulary"):
    shapes.encode("how many purple shapes ?")
  with pytest.raises(ValueError, match="max_count"):
    shapes.ShapesConfig(max_count=12)
