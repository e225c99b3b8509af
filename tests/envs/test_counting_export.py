"""The counting export: reopened through the VLM record reader, it gives the env's boards pixel for pixel and its
counts as answers; the shipped example is exactly what the documented command writes."""

import json
import pathlib

import numpy as np
import pytest

from jaxagents.data.vlm_records import open_dataset
from jaxagents.envs import counting
from jaxagents.envs.counting_export import export_counting, main

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "examples" / "data" / "counting"


def test_export_round_trip_gives_the_env_images_pixel_exactly_and_its_answers(tmp_path):
  config = counting.CountingConfig(grid=3, cell=10, colors=("red", "yellow"), max_count=3)
  path = export_counting(config, tmp_path / "out" / "val.jsonl", examples=7, seed=11)
  dataset = open_dataset(path)
  assert len(dataset) == 7
  for index in range(7):
    example, record = counting.make_example(config, 11, index), dataset[index]
    assert len(record["images"]) == 1
    np.testing.assert_array_equal(np.asarray(record["images"][0]), example["image"])
    assert record["answer"] == str(example["count"]) and record["id"] == f"counting-11-{index}"
    assert record["messages"] == [{"role": "user", "content": [{"type": "image"},
                                                               {"type": "text", "text": example["prompt"]}]}]
  assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"val_{i:05d}.png" for i in range(7)]


def test_cli_writes_split_file_with_its_own_image_names(tmp_path):
  main(["--out", str(tmp_path), "--examples", "3", "--split", "test", "--seed", "4", "--grid", "2", "--cell", "8"])
  records = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
  assert [r["images"] for r in records] == [[f"images/test_{i:05d}.png"] for i in range(3)]
  config = counting.CountingConfig(grid=2, cell=8)
  assert [r["answer"] for r in records] == [str(counting.make_example(config, 4, i)["count"]) for i in range(3)]


def test_shipped_example_is_what_the_readme_command_writes(tmp_path):
  main(["--out", str(tmp_path), "--examples", "16"])
  assert (tmp_path / "train.jsonl").read_text() == (SHIPPED / "train.jsonl").read_text()
  regenerated, shipped = open_dataset(tmp_path / "train.jsonl"), open_dataset(SHIPPED / "train.jsonl")
  for index in range(16):
    np.testing.assert_array_equal(np.asarray(regenerated[index]["images"][0]), np.asarray(shipped[index]["images"][0]))


def test_export_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="examples: expected a positive integer, got 0"):
    export_counting(counting.CountingConfig(), tmp_path / "a.jsonl", examples=0, seed=0)
  with pytest.raises(ValueError, match="path: expected a .jsonl file name"):
    export_counting(counting.CountingConfig(), tmp_path / "a.json", examples=1, seed=0)
  with pytest.raises(TypeError, match="env_config: expected a CountingConfig"):
    export_counting({"grid": 4}, tmp_path / "a.jsonl", examples=1, seed=0)
