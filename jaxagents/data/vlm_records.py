"""Vision-language records on disk: JSONL, Parquet or an HF `datasets` directory, read one record at a time.

A record is either chat `messages` (the HF chat-template layout read by transformers' `apply_chat_template`:
content a string or a list of `{"type": "text" | "image" | "video" | "image_url", ...}` parts; the `messages` +
`images` columns of huggingface/trl's vision SFT datasets) or a `prompt` string, where `<image>` / `<video>`
placeholders mark where each of the top-level `images` / `videos` goes (hiyouga/LLaMA-Factory's
`data/mllm_demo.json` layout). An image is a path (relative to the dataset file's folder, or absolute), raw bytes,
a base64 data URL, the `{"bytes", "path"}` struct of HF datasets' `Image` feature (datasets/features/image.py), or
a PIL image. A video is a list of frames, a GIF, or a folder of frame images (sorted by name).

Every record comes back normalised: `{"messages": [{"role", "content": [parts]}], "images": [PIL RGB],
"videos": [[PIL RGB frames]], "answer", "reward", "id"}`, each image part `{"type": "image"}` standing for the next
entry of `images` (likewise videos). grain carries only indices (`IndexSource`); the host reads the records of a
batch with `records_for_batch`, so shuffling, host sharding and resume stay exact in the pipeline.
"""

from __future__ import annotations

import base64
import io
import json
import operator
import os
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

ROLES = ("system", "user", "assistant")
_PLACEHOLDER = re.compile(r"(<image>|<video>)")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def open_dataset(path: str | os.PathLike, *, split: str | None = None) -> VLMDataset:
  """Opens a `.jsonl` file, a `.parquet` file, or a folder written by HF `datasets` (`save_to_disk`; `split`
  picks one split of a `DatasetDict`)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"path: {path} does not exist")
  if path.is_dir():
    return VLMDataset(path, _HFReader(path, split))
  if path.suffix == ".jsonl":
    return VLMDataset(path, _JsonlReader(path))
  if path.suffix == ".parquet":
    return VLMDataset(path, _ParquetReader(path))
  raise ValueError(f"path: expected a .jsonl file, a .parquet file or an HF datasets folder, got {path}")


class VLMDataset:
  """Random access to normalised records: `len(dataset)`, `dataset[i] -> dict` (images decoded on access)."""

  def __init__(self, path: pathlib.Path, reader: Any):
    self.path, self._reader = path, reader
    self._base_dir = path if path.is_dir() else path.parent

  def __len__(self) -> int:
    return len(self._reader)

  def __getitem__(self, index) -> dict:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records of {self.path}")
    raw, where = self._reader.read(index)
    return normalise_record(raw, self._base_dir, f"{self.path} {where}")

  def __repr__(self) -> str:
    return f"VLMDataset({len(self)} records, {self.path})"


class IndexSource:
  """The grain source of a `VLMDataset`: record `i` is `{"index": int64 i}` (fixed-shape, so grain batches it)."""

  def __init__(self, num_records: int):
    if isinstance(num_records, bool) or not isinstance(num_records, int | np.integer) or num_records < 0:
      raise ValueError(f"num_records: expected a non-negative integer, got {num_records!r}")
    self.num_records = int(num_records)

  def __len__(self) -> int:
    return self.num_records

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} records")
    return {"index": np.int64(index)}

  def __repr__(self) -> str:
    return f"IndexSource({self.num_records} records)"


def records_for_batch(dataset: VLMDataset, batch: Mapping) -> list[dict]:
  """The records of a grain batch of `IndexSource` records (`{"index": int [B]}`), in batch order."""
  indices = np.asarray(batch.get("index") if isinstance(batch, Mapping) else None)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"batch: expected {{'index': integer array [B]}}, got {batch!r}")
  return [dataset[int(i)] for i in indices]


# ----------------------------------------------------------------------------------------------------------------
# Readers: `len(reader)` and `reader.read(i) -> (raw record dict, "line N" / "row N")`.


class _JsonlReader:
  """Indexes the byte offset of every non-blank line once, then reads one line per access."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    offsets, line_numbers, offset = [], [], 0
    with open(path, "rb") as f:
      for number, line in enumerate(f, start=1):
        if line.strip():
          offsets.append(offset)
          line_numbers.append(number)
        offset += len(line)
    self.offsets, self.line_numbers = np.asarray(offsets, np.int64), np.asarray(line_numbers, np.int64)

  def __len__(self) -> int:
    return len(self.offsets)

  def read(self, index: int) -> tuple[dict, str]:
    where = f"line {self.line_numbers[index]}"
    with open(self.path, "rb") as f:
      f.seek(int(self.offsets[index]))
      line = f.readline()
    try:
      raw = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{self.path} {where}: bad JSON ({error})") from None
    if not isinstance(raw, dict):
      raise ValueError(f"{self.path} {where}: expected a JSON object, found {type(raw).__name__}")
    return raw, where


class _ParquetReader:
  """Reads by row group and keeps the last one read (shuffled access re-reads groups; keep them small)."""

  def __init__(self, path: pathlib.Path):
    import pyarrow.parquet as pq

    self.file = pq.ParquetFile(path)
    sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
    self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    self._cached, self._lock = (None, None), threading.Lock()

  def __len__(self) -> int:
    return int(self.starts[-1])

  def read(self, index: int) -> tuple[dict, str]:
    group = int(np.searchsorted(self.starts, index, side="right")) - 1
    with self._lock:
      if self._cached[0] != group:
        self._cached = (group, self.file.read_row_group(group))
      table = self._cached[1]
    return table.slice(index - int(self.starts[group]), 1).to_pylist()[0], f"row {index}"


class _HFReader:
  def __init__(self, path: pathlib.Path, split: str | None):
    try:
      import datasets
    except ImportError as error:
      raise ImportError(f"path: {path} is a folder; reading HF datasets folders needs `datasets` "
                        "(pip install 'jaxagents[data]')") from error
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
      if split is None and len(loaded) == 1:
        split = next(iter(loaded))
      if split not in loaded:
        raise ValueError(f"split: {path} holds splits {sorted(loaded)}; expected one of them, got {split!r}")
      loaded = loaded[split]
    self.dataset = loaded

  def __len__(self) -> int:
    return len(self.dataset)

  def read(self, index: int) -> tuple[dict, str]:
    return self.dataset[index], f"row {index}"


# ----------------------------------------------------------------------------------------------------------------
# Normalisation.


def normalise_record(raw: Mapping, base_dir: pathlib.Path, where: str) -> dict:
  """One stored record -> the normalised dict (see the module docstring); `where` prefixes every error."""
  images, videos = _list(raw, "images", where), _list(raw, "videos", where)
  pending = {"image": [], "video": []}  # (field, value) of each part, in order; None value: the next top-level one
  if raw.get("messages") is not None:
    messages = _list(raw, "messages", where)
    messages = [_message(m, f"messages[{i}]", pending, where) for i, m in enumerate(messages)]
  elif raw.get("prompt") is not None:
    if not isinstance(raw["prompt"], str):
      raise ValueError(f"{where}: prompt: expected a string, found {type(raw['prompt']).__name__}")
    content = _text_parts(raw["prompt"], "prompt", pending)
    for kind, stored in (("video", videos), ("image", images)):  # without placeholders, images then videos lead
      if not pending[kind]:
        content = [{"type": kind}] * len(stored) + content
        pending[kind] = [(f"{kind}s", None)] * len(stored)
    messages = [{"role": "user", "content": content}]
  else:
    raise ValueError(f"{where}: expected a 'messages' or a 'prompt' field, found fields {sorted(raw)}")
  if raw.get("system") is not None:
    messages.insert(0, {"role": "system", "content": [{"type": "text", "text": str(raw["system"])}]})
  loaded = {}
  for kind, stored, load in (("image", images, _image), ("video", videos, _video)):
    bare = sum(value is None for _, value in pending[kind])
    if bare != len(stored):
      raise ValueError(f"{where}: {kind}s: the record has {bare} {kind} parts or <{kind}> placeholders without "
                       f"an inline {kind}, but '{kind}s' holds {len(stored)} {kind}s")
    top = iter(enumerate(stored))
    loaded[kind] = []
    for field, value in pending[kind]:
      if value is None:
        position, value = next(top)
        field = f"{kind}s[{position}]"
      loaded[kind].append(load(value, base_dir, f"{where}: {field}"))
  record_id = raw.get("id")
  return {"messages": messages, "images": loaded["image"], "videos": loaded["video"], "answer": raw.get("answer"),
          "reward": raw.get("reward"), "id": None if record_id is None else str(record_id)}


def _list(raw: Mapping, key: str, where: str) -> list:
  value = raw.get(key)
  if value is None:
    return []
  if not isinstance(value, list | tuple):
    raise ValueError(f"{where}: {key}: expected a list, found {type(value).__name__}")
  return list(value)


def _text_parts(text: str, field: str, pending: dict) -> list[dict]:
  parts = []
  for piece in _PLACEHOLDER.split(text):
    if piece in ("<image>", "<video>"):
      kind = piece[1:-1]
      parts.append({"type": kind})
      pending[kind].append((field, None))
    elif piece:
      parts.append({"type": "text", "text": piece})
  return parts


def _message(message: Any, field: str, pending: dict, where: str) -> dict:
  if not isinstance(message, Mapping) or message.get("role") not in ROLES:
    raise ValueError(f"{where}: {field}: expected {{'role': one of {ROLES}, 'content': ...}}, found {message!r}")
  content = message.get("content")
  if isinstance(content, str):
    return {"role": message["role"], "content": _text_parts(content, f"{field}.content", pending)}
  if not isinstance(content, list):
    raise ValueError(f"{where}: {field}.content: expected a string or a list of parts, found {content!r}")
  parts = []
  for j, part in enumerate(content):
    kind = part.get("type") if isinstance(part, Mapping) else None
    part_field = f"{field}.content[{j}]"
    if kind == "text":
      parts.append({"type": "text", "text": part.get("text") or ""})
    elif kind == "image_url":
      url = part.get("image_url")
      parts.append({"type": "image"})
      pending["image"].append((part_field, url.get("url") if isinstance(url, Mapping) else url))
    elif kind in ("image", "video"):
      inline = next((part[key] for key in (kind, "url", "path") if part.get(key) is not None), None)
      parts.append({"type": kind})
      pending[kind].append((part_field, inline))
    else:
      raise ValueError(f"{where}: {part_field}: expected a part of type text, image, image_url or video, "
                       f"found {part!r}")
  return {"role": message["role"], "content": parts}


def _data(value: Any, base_dir: pathlib.Path, field: str) -> bytes | pathlib.Path | Image.Image:
  """Bytes, a resolved existing path, or a PIL image."""
  if isinstance(value, Mapping):  # HF datasets' Image struct: bytes if embedded, else a path
    value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
  if isinstance(value, np.ndarray):
    return Image.fromarray(value)
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if isinstance(value, Image.Image | bytes | bytearray):
    return value
  if not isinstance(value, str):
    raise ValueError(f"{field}: expected a path, bytes, a data URL, {{'bytes', 'path'}} or a PIL image, "
                     f"found {type(value).__name__}")
  if value.startswith("data:"):
    try:
      return base64.b64decode(value.partition(",")[2], validate=True)
    except ValueError as error:
      raise ValueError(f"{field}: expected a base64 data URL, found {value[:40]!r}...: {error}") from None
  path = base_dir / value  # an absolute `value` replaces base_dir
  if not path.exists():
    raise FileNotFoundError(f"{field}: file {path} does not exist")
  return path


def _opened(data: Any, field: str) -> Image.Image:
  if isinstance(data, Image.Image):
    return data
  try:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
    image.load()
  except (UnidentifiedImageError, OSError) as error:
    found = data if isinstance(data, pathlib.Path) else f"{len(data)} bytes"
    raise ValueError(f"{field}: expected an image, found undecodable data ({found}): {error}") from None
  return image


def _image(value: Any, base_dir: pathlib.Path, field: str) -> Image.Image:
  return _opened(_data(value, base_dir, field), field).convert("RGB")


def _video(value: Any, base_dir: pathlib.Path, field: str) -> list[Image.Image]:
  if isinstance(value, list | tuple):
    return [_image(frame, base_dir, f"{field}[{k}]") for k, frame in enumerate(value)]
  data = _data(value, base_dir, field)
  if isinstance(data, pathlib.Path) and data.is_dir():
    frames = sorted(p for p in data.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
    if not frames:
      raise ValueError(f"{field}: expected frame images ({', '.join(_FRAME_SUFFIXES)}) in folder {data}, found none")
    return [_image(frame, base_dir, f"{field} frame {frame.name}") for frame in frames]
  return [frame.convert("RGB") for frame in ImageSequence.Iterator(_opened(data, field))]
