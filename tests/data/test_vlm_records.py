"""VLM records on disk: every stored form normalises to the same record, errors say where and what, and the index
stream through grain is sharded, reshuffled per epoch and resumable."""

import base64
import io
import json
import pathlib
import re
import sys

import numpy as np
import pytest
from PIL import Image

from jaxagents.data import make_pipeline
from jaxagents.data.vlm_records import IndexSource, open_dataset, records_for_batch

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "data"
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (90, 90, 90)}


def _png(color: str, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", (6, 4), COLORS[color]).save(buffer, fmt)
  return buffer.getvalue()


def _color(image: Image.Image) -> str:
  """The name of a one-colour image (checks that it decoded to RGB of the expected size)."""
  assert image.mode == "RGB" and image.size == (6, 4)
  pixel = tuple(int(v) for v in np.asarray(image)[0, 0])
  return next(name for name, rgb in COLORS.items() if rgb == pixel)


def _data_url(color: str) -> str:
  return "data:image/png;base64," + base64.b64encode(_png(color)).decode()


def _write_jsonl(path: pathlib.Path, records: list) -> pathlib.Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return path


@pytest.fixture
def folder(tmp_path):
  (tmp_path / "img").mkdir()
  for color in COLORS:
    (tmp_path / "img" / f"{color}.png").write_bytes(_png(color))
  return tmp_path


def test_jsonl_images_from_relative_and_absolute_paths_data_urls_and_hf_structs(folder):
  path = _write_jsonl(folder / "d.jsonl", [{
    "prompt": "which colours?", "answer": 3, "reward": "numeric", "id": 7,
    "images": ["img/red.png", str(folder / "img" / "green.png"), _data_url("blue"),
               {"bytes": None, "path": "img/gray.png"}]}])
  record = open_dataset(path)[0]
  assert [_color(image) for image in record["images"]] == ["red", "green", "blue", "gray"]
  assert record["messages"] == [{"role": "user", "content": [{"type": "image"}] * 4
                                 + [{"type": "text", "text": "which colours?"}]}]
  assert (record["answer"], record["reward"], record["id"], record["videos"]) == (3, "numeric", "7", [])


def test_messages_image_parts_become_bare_parts_with_images_in_part_order(folder):
  path = _write_jsonl(folder / "d.jsonl", [{"system": "be brief", "images": ["img/green.png"], "messages": [
    {"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": _data_url("red")}}, {"type": "text", "text": "and"},
      {"type": "image"}, {"type": "image", "image": "img/blue.png"}, {"type": "text", "text": "?"}]},
    {"role": "assistant", "content": "three"}, {"role": "user", "content": "<image> too?"}],
    "videos": []}])
  with pytest.raises(ValueError, match="has 2 image parts"):  # the string turn's <image> is bare too
    open_dataset(path)[0]
  raw = json.loads(path.read_text())
  raw["images"].append("img/gray.png")
  record = open_dataset(_write_jsonl(path, [raw]))[0]
  assert [_color(image) for image in record["images"]] == ["red", "green", "blue", "gray"]
  image, text = {"type": "image"}, lambda t: {"type": "text", "text": t}
  assert record["messages"] == [
    {"role": "system", "content": [text("be brief")]},
    {"role": "user", "content": [image, text("and"), image, image, text("?")]},
    {"role": "assistant", "content": [text("three")]},
    {"role": "user", "content": [image, text(" too?")]}]


def test_prompt_placeholders_place_each_image_and_video(folder):
  frames = folder / "frames"
  frames.mkdir()
  for name, color in (("b.png", "green"), ("a.png", "red"), ("c.png", "blue")):
    (frames / name).write_bytes(_png(color))
  gif = [Image.new("RGB", (6, 4), COLORS[c]) for c in ("blue", "gray")]
  gif[0].save(folder / "clip.gif", save_all=True, append_images=gif[1:])
  path = _write_jsonl(folder / "d.jsonl", [{
    "prompt": "<image>left<image>right<video>", "images": ["img/red.png", "img/blue.png"],
    "videos": ["frames", "clip.gif", ["img/gray.png", _data_url("green")]]}])
  with pytest.raises(ValueError, match=r"videos: the record has 1 video parts .* 'videos' holds 3 videos"):
    open_dataset(path)[0]
  raw = json.loads(path.read_text())
  raw["prompt"] += "<video><video>"
  record = open_dataset(_write_jsonl(path, [raw]))[0]
  image, video, text = {"type": "image"}, {"type": "video"}, lambda t: {"type": "text", "text": t}
  assert record["messages"][0]["content"] == [image, text("left"), image, text("right"), video, video, video]
  assert [_color(i) for i in record["images"]] == ["red", "blue"]
  assert [[_color(f) for f in v] for v in record["videos"]] == [["red", "green", "blue"], ["blue", "gray"],
                                                                 ["gray", "green"]]


def test_parquet_with_an_image_bytes_column_read_across_row_groups(tmp_path):
  pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
  colors = ["red", "green", "blue", "gray", "red"]
  table = pa.table({"prompt": [f"record {i}" for i in range(5)], "images": [[_png(c)] for c in colors],
                    "answer": [str(i) for i in range(5)], "reward": ["choice", None, None, None, None]})
  pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
  dataset = open_dataset(tmp_path / "d.parquet")
  assert len(dataset) == 5
  for i in (4, 0, 3, 1, 2, 2):
    record = dataset[i]
    assert _color(record["images"][0]) == colors[i] and record["answer"] == str(i)
  assert dataset[0]["reward"] == "choice" and dataset[1]["reward"] is None


def test_hf_datasets_folder_with_image_features_and_chat_messages(tmp_path):
  datasets = pytest.importorskip("datasets")
  images = [[Image.new("RGB", (6, 4), COLORS[c])] for c in ("red", "blue")]
  messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"q{i}"}]}] for i in range(2)]
  features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "answer": datasets.Value("string"),
                                "messages": [{"role": datasets.Value("string"), "content": [
                                  {"type": datasets.Value("string"), "text": datasets.Value("string")}]}]})
  data = datasets.Dataset.from_dict({"images": images, "answer": ["1", "2"], "messages": messages}, features)
  datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "hf"))
  with pytest.raises(ValueError, match=r"split: .* holds splits \['test', 'train'\]"):
    open_dataset(tmp_path / "hf")
  dataset = open_dataset(tmp_path / "hf", split="test")
  assert len(dataset) == 2
  record = dataset[1]
  assert [_color(i) for i in record["images"]] == ["blue"] and record["answer"] == "2"
  assert record["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "q1"}]


def test_errors_name_the_file_the_line_the_field_and_what_was_found(folder):
  (folder / "img" / "broken.png").write_bytes(b"not a png")
  path = _write_jsonl(folder / "d.jsonl", [
    {"answer": "1"},
    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], "images": ["img/red.png"]},
    {"prompt": "x", "images": ["img/missing.png"]},
    {"prompt": "x", "images": ["img/broken.png"]},
    '{"prompt": "x", ',
    {"prompt": "x", "images": "img/red.png"},
    {"messages": [{"role": "robot", "content": "hi"}]},
    {"prompt": "x", "images": ["data:image/png;base64,@@"]}])
  dataset = open_dataset(path)
  where = re.escape(str(path))
  expected = [
    (ValueError, rf"{where} line 1: expected a 'messages' or a 'prompt' field, found fields \['answer'\]"),
    (ValueError, rf"{where} line 2: images: the record has 2 image parts .* 'images' holds 1 images"),
    (FileNotFoundError, rf"{where} line 3: images\[0\]: file {re.escape(str(folder / 'img/missing.png'))} does not"),
    (ValueError, rf"{where} line 4: images\[0\]: expected an image, found undecodable data .*broken.png"),
    (ValueError, rf"{where} line 5: bad JSON"),
    (ValueError, rf"{where} line 6: images: expected a list, found str"),
    (ValueError, rf"{where} line 7: messages\[0\]: expected {{'role': one of .*found .*robot"),
    (ValueError, rf"{where} line 8: images\[0\]: expected a base64 data URL"),
  ]
  for index, (error, message) in enumerate(expected):
    with pytest.raises(error, match=message):
      dataset[index]
  with pytest.raises(IndexError, match="index 8 out of range for 8 records"):
    dataset[8]


def test_parquet_errors_name_the_row(tmp_path):
  pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.table({"prompt": ["ok", "bad"], "images": [[_png("red")], [b"garbage"]]}), tmp_path / "d.parquet")
  with pytest.raises(ValueError, match=r"d.parquet row 1: images\[0\]: expected an image, found undecodable data"):
    open_dataset(tmp_path / "d.parquet")[1]


def test_random_access_equals_sequential_reading_and_blank_lines_are_skipped(folder):
  colors = list(COLORS)
  records = [{"id": i, "prompt": f"p{i}", "images": [f"img/{colors[i % 4]}.png"], "answer": i} for i in range(9)]
  path = _write_jsonl(folder / "d.jsonl", records[:4] + ["", "  "] + records[4:])
  dataset = open_dataset(path)
  assert len(dataset) == 9
  sequential = [dataset[i] for i in range(9)]
  for i in np.random.default_rng(0).permutation(9):
    record = dataset[int(i)]
    assert record["id"] == sequential[i]["id"] == str(i) and record["messages"] == sequential[i]["messages"]
    np.testing.assert_array_equal(np.asarray(record["images"][0]), np.asarray(sequential[i]["images"][0]))


def test_open_dataset_rejects_missing_paths_and_unknown_suffixes(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    open_dataset(tmp_path / "none.jsonl")
  (tmp_path / "d.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match=r"expected a .jsonl file, a .parquet file or an HF datasets folder"):
    open_dataset(tmp_path / "d.csv")
  monkeypatch.setitem(sys.modules, "datasets", None)  # as if the optional package were not installed
  with pytest.raises(ImportError, match=r"is a folder; reading HF datasets folders needs `datasets`"):
    open_dataset(tmp_path)


def _indices(dataset, num_batches=None, iterator=None):
  iterator = iterator or iter(dataset)
  batches = list(iterator) if num_batches is None else [next(iterator) for _ in range(num_batches)]
  return [batch["index"] for batch in batches]


def test_index_stream_host_shards_are_disjoint_and_cover_the_dataset():
  shards = [np.concatenate(_indices(make_pipeline(IndexSource(10), batch_size=1, seed=3, num_epochs=1,
                                                  shard_index=k, shard_count=2))) for k in range(2)]
  assert not set(shards[0]) & set(shards[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(10))


def test_index_stream_reshuffles_every_epoch_and_resumes_exactly():
  def pipeline():
    return make_pipeline(IndexSource(12), batch_size=4, seed=5, shard_index=0, shard_count=1)

  epochs = np.concatenate(_indices(pipeline(), 6)).reshape(2, 12)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
  assert not np.array_equal(epochs[0], epochs[1])
  iterator = iter(pipeline())
  _indices(None, 2, iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  following = _indices(None, 3, iterator)
  resumed = iter(pipeline())
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(_indices(None, 3, resumed)), np.stack(following))


def test_records_for_batch_reads_the_batch_in_order(folder):
  path = _write_jsonl(folder / "d.jsonl", [{"id": f"r{i}", "prompt": "p"} for i in range(6)])
  batch = next(iter(make_pipeline(IndexSource(6), batch_size=4, seed=0, shard_index=0, shard_count=1)))
  records = records_for_batch(open_dataset(path), batch)
  assert [r["id"] for r in records] == [f"r{i}" for i in batch["index"]]
  with pytest.raises(ValueError, match="batch: expected"):
    records_for_batch(open_dataset(path), {"image": np.zeros((2, 3))})
  with pytest.raises(IndexError, match="index 6 out of range for 6 records"):
    IndexSource(6)[6]


@pytest.mark.parametrize("name", ["counting/train.jsonl", "chat_example.jsonl"])
def test_shipped_example_files_open_and_every_image_decodes(name):
  dataset = open_dataset(EXAMPLES / name)
  assert len(dataset) == {"counting/train.jsonl": 16, "chat_example.jsonl": 3}[name]
  for i in range(len(dataset)):
    record = dataset[i]
    parts = [p for m in record["messages"] for p in m["content"] if p["type"] == "image"]
    assert record["images"] and len(parts) == len(record["images"]) and record["answer"] is not None
    assert all(image.mode == "RGB" and image.size == (56, 56) for image in record["images"])
  if name == "chat_example.jsonl":
    assert [dataset[i]["reward"] for i in range(3)] == ["choice", None, None]
