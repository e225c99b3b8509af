"""ScreenSpot and ScreenSpot-Pro annotations: a loader for local copies and their point-in-box accuracy report.

Three public layouts are read, each detected from the keys of its records (or named by `variant`):

    "screenspot"      SeeClick (Cheng et al., arXiv 2401.10935; njucckevin/SeeClick, `readme.md` and
                      `pretrain/screenspot_test.py`): `ScreenSpot/screenspot_{mobile,desktop,web}.json`, each a JSON
                      list of {"img_filename", "instruction", "bbox": [left, top, width, height] in pixels, "data_type":
                      "text" | "icon", "data_source": "ios" | "android" | "macos" | "windows" | "tool" | "shop" |
                      "gitlab" | "forum" (the values GUI-Actor's `domain_dict` maps; case is ignored)}; images
                      under a sibling `screenspot_imgs/`. The split is the file's suffix.
    "screenspot_hf"   The Hugging Face copy (rootsautomation/ScreenSpot, dataset card): the same fields with
                      `file_name` for `img_filename` and `bbox` turned into [x1, y1, x2, y2]; as parquet shards
                      `data/test-*.parquet` with the image embedded, or exported rows (.json / .jsonl). A box whose four
                      values all lie in [0, 1] is taken as normalised by the image size, the test of GUI-Actor's
                      `normalize_bbox` (microsoft/GUI-Actor, `eval/screenSpot.py`). The split is `data_source` mapped as
                      there (`SOURCE_SPLIT`).
    "screenspot_pro"  ScreenSpot-Pro (Li et al., arXiv 2504.07981; likaixin2000/ScreenSpot-Pro-GUI-Grounding,
                      `eval_screenspot_pro.py` and `run_ss_pro.sh`): `annotations/<application>_<platform>.json`, each a
                      JSON list of {"img_filename", "bbox": [x1, y1, x2, y2] in pixels, "img_size": [width, height],
                      "instruction", "instruction_cn", "id", "application", "platform", "group", "ui_type": "text" |
                      "icon"}; images under a sibling `images/`. The split is the file's stem (the script's
                      `task_filename`).

Every record becomes one dict: "id", "variant", "image" (a path, or None when the image is embedded), "image_bytes"
(parquet only), "file_name" (as annotated), "width", "height" (None until known: `image_size` reads them from the image
header on first use), "instruction", "target_box" [x0, y0, x1, y1] float pixels, "ui_type", "split", "platform",
"application", "group", "source" (`data_source`), "file" and "index" (where the record came from), and for Pro
"instruction_cn". `from_gui_tasks` turns the click-like records of `jaxagents.data.gui_tasks` (ours) into the same form
(ui_type = element role, split = action, group = CUActSpot modality), so one evaluator scores both.

The rule (both reference scripts): a prediction hits when its point lies in the closed box, x0 <= x <= x1 and
y0 <= y <= y1 (`gui_scoring.point_in_box`); a missing point (the scripts' "wrong format") is a miss. The scripts
compare in coordinates normalised by the image size; `screenspot_accuracy(..., normalized=True)` takes such points and
does the same, the default compares pixels. The report follows the two scripts:

* per group of records, {"avg": hit rate, "text": ..., "icon": ... (one entry per ui_type present), "count"}, which is
  ScreenSpot-Pro's `calc_metric_for_result_list` (action_acc, text_acc, icon_acc) as its leaderboard file names them
  ("avg", "text", "icon"); a ui_type with no records is left out where the script writes 0;
* "overall" over all records (Pro's `evaluate_overall`, SeeClick's per-task "Action Acc" when one split is loaded),
  "by_split", "by_platform", "by_group" (Pro's `leaderboard_simple_style`) and "by_application" (Pro's
  `leaderboard_detailed_style`) for the fields that any record sets;
* "split_ui_type_macro": the unweighted mean over the (split, ui_type) cells, SeeClick's "Average" column (its README
  table: 53.4 = mean of 78.0, 52.0, 72.2, 30.0, 55.7, 32.5 for SeeClick, not the sample-weighted 55.8);
* "accuracy" = overall["avg"], "by_ui_type" = overall's per-ui_type entries, "count", "hits", "wrong_format".

Not covered: ScreenSpot-Pro's negative ground truth (`gt_type` "negative", an evaluation-time flag, not in the
annotation files) and its instruction styles; `instruction_cn` is kept on the record but not selected.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxagents.data import gui_scoring, gui_tasks

VARIANTS = ("screenspot", "screenspot_hf", "screenspot_pro")
SCREENSPOT_SPLITS = ("mobile", "desktop", "web")
SOURCE_SPLIT = {"windows": "desktop", "macos": "desktop", "ios": "mobile", "android": "mobile", "tool": "web",
                "shop": "web", "gitlab": "web", "forum": "web"}
PRO_GROUPS = ("Dev", "Creative", "CAD", "Scientific", "Office", "OS")
POINT_ACTIONS = ("click", "double_click", "type")  # actions scored by the first point in the target box
REQUIRED_KEYS = {"screenspot": ("img_filename", "instruction", "bbox", "data_type"),
                 "screenspot_hf": ("file_name", "instruction", "bbox", "data_type"),
                 "screenspot_pro": ("img_filename", "instruction", "bbox", "img_size", "ui_type")}
IMAGE_DIRS = ("images", "screenspot_imgs")
GROUP_FIELDS = ("split", "platform", "group", "application")


def detect_variant(record: Mapping) -> str:
  """The layout of one annotation record from its keys (see the module docstring)."""
  if "img_size" in record or "ui_type" in record:
    return "screenspot_pro"
  if "file_name" in record:
    return "screenspot_hf"
  if "img_filename" in record:
    return "screenspot"
  raise ValueError(f"expected the keys of a ScreenSpot record (img_filename or file_name), got {sorted(record)}")


def _box(values: Any, where: str) -> list[float]:
  if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray) or len(values) != 4:
    raise ValueError(f"{where}: bbox: expected 4 numbers, got {values!r}")
  try:
    box = [float(v) for v in values]
  except (TypeError, ValueError):
    raise ValueError(f"{where}: bbox: expected 4 numbers, got {values!r}") from None
  if not all(math.isfinite(v) for v in box):
    raise ValueError(f"{where}: bbox: expected finite numbers, got {values!r}")
  return box


def _xyxy(box: list[float], values: Any, where: str) -> list[float]:
  if box[2] < box[0] or box[3] < box[1]:
    raise ValueError(f"{where}: bbox: expected x0 <= x1 and y0 <= y1, got {values!r}")
  return box


def _size(values: Any, where: str) -> tuple[int, int]:
  if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 2:
    raise ValueError(f"{where}: img_size: expected [width, height], got {values!r}")
  if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 and float(v).is_integer()
             for v in values):
    raise ValueError(f"{where}: img_size: expected two positive integers, got {values!r}")
  return int(values[0]), int(values[1])


def _split_from_file(path: pathlib.Path) -> str | None:
  stem = path.stem
  if stem.startswith("screenspot_") and stem[len("screenspot_"):] in SCREENSPOT_SPLITS:
    return stem[len("screenspot_"):]
  return None


def _image_root(annotation_dir: pathlib.Path, images: str | os.PathLike | None) -> pathlib.Path:
  if images is not None:
    return pathlib.Path(images)
  for base in (annotation_dir, annotation_dir.parent):
    for name in IMAGE_DIRS:
      if (base / name).is_dir():
        return base / name
  return annotation_dir


def _read_rows(path: pathlib.Path) -> list[dict]:
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # the `data` extra; only parquet shards need it
    return pq.read_table(path).to_pylist()
  text = path.read_text()
  if path.suffix == ".jsonl":
    rows = []
    for line_number, line in enumerate(text.splitlines()):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as error:
          raise ValueError(f"{path}: line {line_number + 1}: not JSON ({error.msg})") from None
    return rows
  try:
    rows = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
  if not isinstance(rows, list):
    raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
  return rows


def _normalise(row: Any, variant: str, path: pathlib.Path, index: int, image_root: pathlib.Path) -> dict:
  where = f"{path}: record {index}"
  if not isinstance(row, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
  missing = [key for key in REQUIRED_KEYS[variant] if key not in row or row[key] is None]
  if missing:
    raise ValueError(f"{where}: missing key(s) {missing} of a {variant} record (has {sorted(row)})")
  raw_box, width, height, image_bytes = row["bbox"], None, None, None
  box = _box(raw_box, where)
  if variant == "screenspot":
    if box[2] < 0 or box[3] < 0:
      raise ValueError(f"{where}: bbox: expected [left, top, width, height] with width, height >= 0, got {raw_box!r}")
    box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
  else:
    box = _xyxy(box, raw_box, where)
  if variant == "screenspot_pro":
    width, height = _size(row["img_size"], where)
  file_name = row["file_name"] if variant == "screenspot_hf" else row["img_filename"]
  image = row.get("image")
  if isinstance(image, Mapping) and image.get("bytes"):  # an embedded parquet image: {"bytes", "path"}
    image_bytes = image["bytes"]
    with Image.open(io.BytesIO(image_bytes)) as decoded:
      width, height = decoded.size
    image_path = None
  else:
    image_path = str(image_root / file_name)
  record = {"id": str(row.get("id", f"{path.stem}-{index}")), "variant": variant, "image": image_path,
            "image_bytes": image_bytes, "file_name": str(file_name), "width": width, "height": height,
            "instruction": str(row["instruction"]), "target_box": box, "file": str(path), "index": index}
  if variant == "screenspot_pro":
    record.update(ui_type=str(row["ui_type"]), split=path.stem, platform=row.get("platform"),
                  application=row.get("application"), group=row.get("group"), source=None,
                  instruction_cn=row.get("instruction_cn"))
  else:
    source = row.get("data_source")
    split = (_split_from_file(path) if variant == "screenspot" else None) or SOURCE_SPLIT.get(str(source).lower())
    record.update(ui_type=str(row["data_type"]), split=split, platform=source, application=None, group=None,
                  source=source)
  if variant == "screenspot_hf" and all(0.0 <= v <= 1.0 for v in box):
    w, h = image_size(record)
    record["target_box"] = [box[0] * w, box[1] * h, box[2] * w, box[3] * h]
  return record


def _annotation_files(path: pathlib.Path) -> tuple[list[pathlib.Path], pathlib.Path]:
  """(annotation files, the directory they sit in) for a file, a ScreenSpot(-Pro) root or an annotation folder."""
  if path.is_file():
    return [path], path.parent
  if not path.is_dir():
    raise FileNotFoundError(f"directory_or_json: {path} does not exist")
  for folder in (path / "annotations", path / "ScreenSpot", path / "data", path):
    files = [] if not folder.is_dir() else sorted(
      p for p in folder.glob("*") if p.suffix in (".json", ".jsonl", ".parquet"))
    if files:
      return files, folder
  raise FileNotFoundError(f"directory_or_json: no .json, .jsonl or .parquet annotation files in {path}, "
                          f"{path / 'annotations'}, {path / 'ScreenSpot'} or {path / 'data'}")


def load_screenspot(directory_or_json: str | os.PathLike, *, variant: str | None = None,
                    images: str | os.PathLike | None = None, check_images: bool = False) -> list[dict]:
  """The records of a local ScreenSpot / ScreenSpot-Pro copy, normalised (see the module docstring), in file order
  (files sorted by name). `directory_or_json` is one annotation file, a folder of them, or a dataset root holding
  `annotations/` (Pro), `ScreenSpot/` (SeeClick's download) or `data/` (the Hugging Face parquet shards). `variant`
  forces a layout (else each file's first record decides); `images` is the image folder (else the first of `images/`,
  `screenspot_imgs/` beside the annotation folder or one level up, else the annotation folder itself);
  `check_images` raises unless every image file exists. Errors name the file and the record index."""
  if variant is not None and variant not in VARIANTS:
    raise ValueError(f"variant: expected one of {VARIANTS} or None, got {variant!r}")
  files, folder = _annotation_files(pathlib.Path(directory_or_json))
  image_root = _image_root(folder, images)
  records = []
  for path in files:
    rows = _read_rows(path)
    if not rows:
      continue
    if variant is None:
      first = rows[0]
      if not isinstance(first, Mapping):
        raise ValueError(f"{path}: record 0: expected a JSON object, got {type(first).__name__}")
      try:
        file_variant = detect_variant(first)
      except ValueError as error:
        raise ValueError(f"{path}: record 0: {error}") from None
    else:
      file_variant = variant
    records.extend(_normalise(row, file_variant, path, index, image_root) for index, row in enumerate(rows))
  if check_images:
    missing = [r for r in records if r["image_bytes"] is None and not pathlib.Path(r["image"]).is_file()]
    if missing:
      first = missing[0]
      raise FileNotFoundError(f"{first['file']}: record {first['index']}: image {first['image']} does not exist "
                              f"({len(missing)} of {len(records)} images missing; pass images= to point elsewhere)")
  return records


def image_size(record: dict) -> tuple[int, int]:
  """(width, height) of a record's image, read from its header the first time and stored on the record."""
  if record.get("width") is None or record.get("height") is None:
    source = io.BytesIO(record["image_bytes"]) if record.get("image_bytes") else record["image"]
    if not isinstance(source, io.BytesIO) and not pathlib.Path(source).is_file():
      raise FileNotFoundError(f"{record.get('file', 'record')}: record {record.get('index')}: image {source} does not "
                              "exist, so its size is unknown")
    with Image.open(source) as image:
      record["width"], record["height"] = image.size
  return int(record["width"]), int(record["height"])


def load_image(record: Mapping) -> np.ndarray:
  """uint8 [height, width, 3]: the pixels of a record's image."""
  source = io.BytesIO(record["image_bytes"]) if record.get("image_bytes") else record["image"]
  with Image.open(source) as image:
    return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------------------------------
# Our rendered screens in the same form.


def from_gui_tasks(records_or_directory: Sequence[Mapping] | str | os.PathLike, *,
                   directory: str | os.PathLike | None = None, actions: Sequence[str] = POINT_ACTIONS) -> list[dict]:
  """Records of `jaxagents.data.gui_tasks` (a list, or the directory `write_dataset` wrote) whose action is in
  `actions` (those scored by one point in `target_box`), normalised as ScreenSpot records: ui_type = element role,
  split = action, platform = "rendered", group = CUActSpot modality, application = None. Image paths are joined
  to `directory` (the dataset directory when one is read)."""
  unknown = sorted(set(actions) - set(POINT_ACTIONS))
  if unknown or not actions:
    raise ValueError(f"actions: expected a non-empty subset of {POINT_ACTIONS} (drag and draw are not point-in-box "
                     f"tasks), got {tuple(actions)}")
  if isinstance(records_or_directory, str | os.PathLike):
    directory = records_or_directory if directory is None else directory
    records_or_directory = gui_tasks.read_records(records_or_directory)
  out = []
  for index, record in enumerate(records_or_directory):
    if record["action"] not in actions:
      continue
    where = f"gui record {index} ({record.get('id')})"
    box = _xyxy(_box(record["target_box"], where), record["target_box"], where)
    image = str(pathlib.Path(directory) / record["image"]) if directory is not None else str(record["image"])
    out.append({"id": str(record["id"]), "variant": "rendered", "image": image, "image_bytes": None,
                "file_name": str(record["image"]), "width": record.get("width"), "height": record.get("height"),
                "instruction": record["instruction"], "target_box": box, "ui_type": record["role"],
                "split": record["action"], "platform": "rendered", "application": None,
                "group": record.get("modality"), "source": None, "file": gui_tasks.RECORDS_FILE, "index": index})
  return out


# ------------------------------------------------------------------------------------------------------------------
# Scoring.


def _point(point: Any) -> tuple[float, float] | None:
  if point is None:
    return None
  values = np.asarray(point, np.float64).reshape(-1)
  if values.size == 0 or not np.all(np.isfinite(values)):
    return None
  if values.size != 2:
    raise ValueError(f"points: expected (x, y) or None per record, got {point!r}")
  return float(values[0]), float(values[1])


def screenspot_hits(records: Sequence[dict], points: Sequence[Any], *, normalized: bool = False) -> list[bool | None]:
  """Per record: True/False for a point inside/outside its box, None for a missing point (None, empty or NaN: the
  scripts' "wrong format"). `normalized`: points are fractions of the image's width and height, compared with the box
  divided by the image size (read from the image when not on the record) as the reference scripts do."""
  if len(records) != len(points):
    raise ValueError(f"points: expected one per record ({len(records)}), got {len(points)}")
  hits = []
  for record, point in zip(records, points):
    point = _point(point)
    if point is None:
      hits.append(None)
      continue
    box = record["target_box"]
    if normalized:
      width, height = image_size(record)
      box = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    hits.append(bool(gui_scoring.point_in_box(point, box)))
  return hits


def _metrics(hits: Sequence[bool], ui_types: Sequence[str]) -> dict[str, Any]:
  metrics: dict[str, Any] = {"avg": float(np.mean(hits)) if len(hits) else 0.0, "count": len(hits)}
  for ui_type in sorted(set(ui_types)):
    selected = [hit for hit, t in zip(hits, ui_types) if t == ui_type]
    metrics[ui_type] = float(np.mean(selected))
  return metrics


def screenspot_accuracy(records: Sequence[dict], points: Sequence[Any], *, normalized: bool = False) -> dict[str, Any]:
  """The report of the module docstring for one point per record (pixels, or fractions with `normalized`)."""
  raw = screenspot_hits(records, points, normalized=normalized)
  hits = [bool(hit) for hit in raw]
  ui_types = [str(r.get("ui_type")) for r in records]
  report: dict[str, Any] = {"overall": _metrics(hits, ui_types)}
  report["accuracy"], report["count"] = report["overall"]["avg"], len(hits)
  report["by_ui_type"] = {t: report["overall"][t] for t in sorted(set(ui_types))}
  report["hits"], report["wrong_format"] = sum(hits), sum(hit is None for hit in raw)
  for field in GROUP_FIELDS:
    names = [r.get(field) for r in records]
    if all(name is None for name in names):
      continue
    groups: dict[str, tuple[list[bool], list[str]]] = {}
    for name, hit, ui_type in zip(names, hits, ui_types):
      group = groups.setdefault(str(name), ([], []))
      group[0].append(hit)
      group[1].append(ui_type)
    report[f"by_{field}"] = {name: _metrics(*groups[name]) for name in sorted(groups)}
  cells: dict[tuple[str, str], list[bool]] = {}
  for record, hit, ui_type in zip(records, hits, ui_types):
    cells.setdefault((str(record.get("split")), ui_type), []).append(hit)
  report["split_ui_type_macro"] = float(np.mean([np.mean(c) for c in cells.values()])) if cells else 0.0
  return report
