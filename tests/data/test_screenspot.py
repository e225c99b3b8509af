"""ScreenSpot / ScreenSpot-Pro loading and scoring on tiny local copies laid out as the public ones: SeeClick's
`ScreenSpot/screenspot_{split}.json` with [left, top, width, height] boxes beside `screenspot_imgs/`, the Hugging Face
parquet shards with embedded images and [x1, y1, x2, y2] boxes, and ScreenSpot-Pro's `annotations/*.json` beside
`images/`. Boxes come out as pixel [x0, y0, x1, y1]; hits are closed point-in-box tests; the per-split, per-ui_type,
per-group and per-application numbers and SeeClick's split x ui_type macro average match hand counts; bad files raise
errors naming the file and the record index; our rendered click records score 100% with their box centres."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from jaxagents.data import gui_tasks
from jaxagents.data import screenspot as ss


def _png(path, width, height):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (width, height), (200, 210, 220)).save(path)


def _v1_row(name, bbox, data_type, source, instruction="open it"):
  return {"img_filename": name, "bbox": bbox, "instruction": instruction, "data_type": data_type,
          "data_source": source}


@pytest.fixture
def seeclick_root(tmp_path):
  """SeeClick's download: ScreenSpot/screenspot_{mobile,desktop,web}.json and screenspot_imgs/."""
  images = tmp_path / "screenspot_imgs"
  _png(images / "mobile_0.png", 40, 80)
  _png(images / "pc_0.png", 120, 60)
  _png(images / "web_0.png", 100, 50)
  annotations = {
    "mobile": [_v1_row("mobile_0.png", [10, 20, 8, 4], "text", "ios"),
               _v1_row("mobile_0.png", [0, 0, 5, 5], "icon", "android")],
    "desktop": [_v1_row("pc_0.png", [30, 10, 20, 10], "text", "windows"),
                _v1_row("pc_0.png", [60, 40, 10, 10], "icon", "macos"),
                _v1_row("pc_0.png", [90, 5, 10, 6], "icon", "macos")],
    "web": [_v1_row("web_0.png", [50, 25, 30, 10], "text", "gitlab")]}
  (tmp_path / "ScreenSpot").mkdir()
  for split, rows in annotations.items():
    (tmp_path / "ScreenSpot" / f"screenspot_{split}.json").write_text(json.dumps(rows))
  return tmp_path


def _pro_row(app, platform, index, bbox, size, ui_type, group):
  return {"img_filename": f"{app}_{platform[:3]}/shot_{index}.png", "bbox": bbox, "instruction": f"do {index}",
          "instruction_cn": "做", "id": f"{app}_{platform}_{index}", "application": app, "platform": platform,
          "img_size": list(size), "ui_type": ui_type, "group": group}


@pytest.fixture
def pro_root(tmp_path):
  """ScreenSpot-Pro's layout: annotations/<application>_<platform>.json and images/<app dir>/..."""
  files = {"vscode_macos": [_pro_row("vscode", "macos", 0, [10, 10, 30, 20], (160, 90), "text", "Dev"),
                            _pro_row("vscode", "macos", 1, [100, 50, 110, 60], (160, 90), "icon", "Dev")],
           "photoshop_windows": [_pro_row("photoshop", "windows", 0, [0, 0, 20, 20], (120, 80), "icon", "Creative"),
                                 _pro_row("photoshop", "windows", 1, [40, 40, 80, 50], (120, 80), "text", "Creative"),
                                 _pro_row("photoshop", "windows", 2, [90, 60, 100, 70], (120, 80), "icon", "Creative")]}
  (tmp_path / "annotations").mkdir()
  for stem, rows in files.items():
    (tmp_path / "annotations" / f"{stem}.json").write_text(json.dumps(rows))
    for row in rows:
      _png(tmp_path / "images" / row["img_filename"], *row["img_size"])
  return tmp_path


def _centre(box):
  return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def test_seeclick_boxes_become_pixel_xyxy_and_splits_come_from_file_names(seeclick_root):
  records = ss.load_screenspot(seeclick_root, check_images=True)
  assert [r["split"] for r in records] == ["desktop"] * 3 + ["mobile"] * 2 + ["web"]  # files sorted by name
  assert {r["variant"] for r in records} == {"screenspot"}
  desktop_text = records[0]
  assert desktop_text["target_box"] == [30.0, 10.0, 50.0, 20.0]
  assert desktop_text["image"] == str(seeclick_root / "screenspot_imgs" / "pc_0.png")
  assert (desktop_text["ui_type"], desktop_text["platform"]) == ("text", "windows")
  assert records[3]["target_box"] == [10.0, 20.0, 18.0, 24.0]
  assert desktop_text["width"] is None and ss.image_size(desktop_text) == (120, 60)
  assert desktop_text["width"] == 120  # cached on the record
  single = ss.load_screenspot(seeclick_root / "ScreenSpot" / "screenspot_web.json")
  assert len(single) == 1 and single[0]["split"] == "web" and single[0]["image"] == records[5]["image"]


def test_seeclick_report_matches_hand_counts_and_paper_macro(seeclick_root):
  records = ss.load_screenspot(seeclick_root)
  # desktop: text hit, icon hit on its corner, icon just outside; mobile: text hit, icon missing; web: text hit.
  points = [(40, 15), (70, 50), (100.01, 8), (14, 22), None, (65, 30)]
  report = ss.screenspot_accuracy(records, points)
  assert report["hits"] == 4 and report["count"] == 6 and report["wrong_format"] == 1
  assert report["accuracy"] == pytest.approx(4 / 6)
  assert report["by_ui_type"] == {"icon": pytest.approx(1 / 3), "text": 1.0}
  assert report["by_split"]["desktop"] == {"avg": pytest.approx(2 / 3), "count": 3, "icon": 0.5, "text": 1.0}
  assert report["by_split"]["mobile"] == {"avg": 0.5, "count": 2, "icon": 0.0, "text": 1.0}
  assert report["by_split"]["web"] == {"avg": 1.0, "count": 1, "text": 1.0}
  assert report["by_platform"]["macos"]["avg"] == 0.5 and "by_group" not in report
  # cells (desktop, text) 1, (desktop, icon) 0.5, (mobile, text) 1, (mobile, icon) 0, (web, text) 1 -> 3.5 / 5
  assert report["split_ui_type_macro"] == pytest.approx(3.5 / 5)


def test_normalized_points_are_compared_with_the_box_over_the_image_size(seeclick_root):
  records = ss.load_screenspot(seeclick_root)
  pixels = [_centre(r["target_box"]) for r in records]
  fractions = [(x / ss.image_size(r)[0], y / ss.image_size(r)[1]) for (x, y), r in zip(pixels, records)]
  assert ss.screenspot_accuracy(records, fractions, normalized=True)["accuracy"] == 1.0
  assert ss.screenspot_accuracy(records, fractions)["accuracy"] < 1.0  # fractions read as pixels miss


def test_pro_loads_annotations_and_reports_per_group_and_application(pro_root):
  records = ss.load_screenspot(pro_root, check_images=True)
  assert len(records) == 5 and {r["variant"] for r in records} == {"screenspot_pro"}
  first = records[0]  # photoshop_windows.json sorts first
  assert first["target_box"] == [0.0, 0.0, 20.0, 20.0] and (first["width"], first["height"]) == (120, 80)
  assert (first["split"], first["application"], first["platform"], first["group"]) == (
    "photoshop_windows", "photoshop", "windows", "Creative")
  assert first["id"] == "photoshop_windows_0"
  assert first["image"] == str(pro_root / "images" / "photoshop_win" / "shot_0.png")
  # photoshop: icon edge hit (20, 20), text just below (60, 50.5), icon centre; vscode: text centre, icon miss.
  points = [(20, 20), (60, 50.5), (95, 65), (20, 15), (99.9, 55)]
  report = ss.screenspot_accuracy(records, points)
  assert report["accuracy"] == pytest.approx(3 / 5)
  assert report["overall"] == {"avg": pytest.approx(0.6), "count": 5, "icon": pytest.approx(2 / 3), "text": 0.5}
  assert report["by_group"] == {"Creative": {"avg": pytest.approx(2 / 3), "count": 3, "icon": 1.0, "text": 0.0},
                                "Dev": {"avg": 0.5, "count": 2, "icon": 0.0, "text": 1.0}}
  assert report["by_application"]["photoshop"] == report["by_group"]["Creative"]
  assert report["by_platform"]["macos"] == report["by_group"]["Dev"]


def test_hf_parquet_with_embedded_images_and_normalised_boxes(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")

  def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()

  rows = [{"file_name": "a.png", "bbox": [10.0, 20.0, 30.0, 40.0], "instruction": "x", "data_type": "text",
           "data_source": "android", "image": {"bytes": png_bytes(50, 60), "path": None}},
          {"file_name": "b.png", "bbox": [0.5, 0.25, 0.75, 0.5], "instruction": "y", "data_type": "icon",
           "data_source": "shop", "image": {"bytes": png_bytes(200, 100), "path": None}}]
  (tmp_path / "data").mkdir()
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
  records = ss.load_screenspot(tmp_path, check_images=True)
  assert [r["variant"] for r in records] == ["screenspot_hf"] * 2
  assert records[0]["target_box"] == [10.0, 20.0, 30.0, 40.0] and records[0]["split"] == "mobile"
  assert records[1]["target_box"] == [100.0, 25.0, 150.0, 50.0] and records[1]["split"] == "web"
  assert (records[1]["width"], records[1]["height"]) == (200, 100) and records[1]["image"] is None
  assert ss.load_image(records[1]).shape == (100, 200, 3)
  assert ss.screenspot_accuracy(records, [_centre(r["target_box"]) for r in records])["accuracy"] == 1.0


@pytest.mark.parametrize("row, message", [
  ({"img_filename": "a.png", "instruction": "x", "data_type": "text"}, r"record 1: missing key\(s\) \['bbox'\]"),
  (_v1_row("a.png", [1, 2, -3, 4], "text", "ios"), r"record 1: bbox: expected \[left, top, width, height\]"),
  (_v1_row("a.png", [1, 2, 3], "text", "ios"), r"record 1: bbox: expected 4 numbers"),
  (_v1_row("a.png", [1, 2, "w", 4], "text", "ios"), r"record 1: bbox: expected 4 numbers"),
  ("not an object", r"record 1: expected a JSON object")])
def test_bad_seeclick_records_name_file_and_index(tmp_path, row, message):
  path = tmp_path / "screenspot_mobile.json"
  path.write_text(json.dumps([_v1_row("a.png", [1, 2, 3, 4], "text", "ios"), row]))
  with pytest.raises(ValueError, match=message) as error:
    ss.load_screenspot(path)
  assert str(path) in str(error.value)


def test_bad_pro_records_name_file_and_index(tmp_path):
  good = _pro_row("excel", "windows", 0, [1, 1, 5, 5], (10, 10), "text", "Office")
  path = tmp_path / "annotations" / "excel_windows.json"
  path.parent.mkdir()
  for bad, message in (({"bbox": [5, 1, 1, 5]}, r"record 2: bbox: expected x0 <= x1"),
                       ({"img_size": [10]}, r"record 2: img_size: expected \[width, height\]"),
                       ({"img_size": [10, 0]}, r"record 2: img_size: expected two positive integers"),
                       ({"bbox": [0, 0, float("nan"), 1]}, r"record 2: bbox: expected finite")):
    path.write_text(json.dumps([good, good, {**good, **bad}]))
    with pytest.raises(ValueError, match=message) as error:
      ss.load_screenspot(tmp_path)
    assert str(path) in str(error.value)
  path.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "img_size"}]))
  with pytest.raises(ValueError, match=r"record 1: missing key\(s\) \['img_size'\] of a screenspot_pro record"):
    ss.load_screenspot(path, variant="screenspot_pro")
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not JSON"):
    ss.load_screenspot(path)


def test_missing_images_and_files_are_reported(pro_root, tmp_path):
  (pro_root / "images" / "vscode_mac" / "shot_1.png").unlink()
  records = ss.load_screenspot(pro_root)  # not checked by default
  with pytest.raises(FileNotFoundError, match=r"vscode_macos.json: record 1: image .*shot_1.png does not exist "
                                              r"\(1 of 5 images missing"):
    ss.load_screenspot(pro_root, check_images=True)
  records[4]["width"] = None
  with pytest.raises(FileNotFoundError, match="record 1: image"):
    ss.image_size(records[4])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ss.load_screenspot(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no .json, .jsonl or .parquet"):
    ss.load_screenspot(tmp_path / "empty")
  with pytest.raises(ValueError, match="variant"):
    ss.load_screenspot(pro_root, variant="screenspot_v2")


def test_points_must_match_records(seeclick_root):
  records = ss.load_screenspot(seeclick_root)
  with pytest.raises(ValueError, match="one per record"):
    ss.screenspot_accuracy(records, [(0, 0)])
  with pytest.raises(ValueError, match=r"\(x, y\) or None"):
    ss.screenspot_hits(records, [(0, 0, 0)] * len(records))
  assert ss.screenspot_hits(records[:2], [[], (np.nan, 1.0)]) == [None, None]


def test_rendered_click_records_round_trip_and_score_full_marks_at_centres(tmp_path):
  directory = gui_tasks.write_dataset(tmp_path / "gui", 2, seed=5, screens=((480, 320, 1.0),), tasks_per_screen=6)
  gui_records = gui_tasks.read_records(directory)
  records = ss.from_gui_tasks(directory)
  clicks = [r for r in gui_records if r["action"] in ss.POINT_ACTIONS]
  assert len(records) == len(clicks) > 0
  for record, gui_record in zip(records, clicks):
    assert record["target_box"] == gui_record["target_box"] and record["id"] == gui_record["id"]
    assert (record["ui_type"], record["split"], record["group"]) == (
      gui_record["role"], gui_record["action"], gui_record["modality"])
    assert ss.image_size(record) == (gui_record["width"], gui_record["height"])
    assert record["image"] == str(directory / gui_record["image"])
  report = ss.screenspot_accuracy(records, [_centre(r["target_box"]) for r in records])
  assert report["accuracy"] == 1.0 and set(report["by_split"]) == {r["action"] for r in clicks}
  assert report["by_ui_type"] == {role: 1.0 for role in {r["role"] for r in clicks}}
  outside = [(r["target_box"][2] + 1.0, r["target_box"][3]) for r in records]
  assert ss.screenspot_accuracy(records, outside)["accuracy"] == 0.0
  assert len(ss.from_gui_tasks(gui_records, actions=("click",))) == sum(r["action"] == "click" for r in gui_records)
  with pytest.raises(ValueError, match="drag and draw"):
    ss.from_gui_tasks(gui_records, actions=("drag",))
