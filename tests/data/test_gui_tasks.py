"""GUI tasks: instructions name elements that exist (uniquely), reference traces land where the records say and pass
both scorers, every action kind is generated, the on-disk format round-trips records and pixels exactly, and the
grain dataset yields the records."""

import json
import pickle
import re

import grain
import numpy as np
import pytest

from jaxagents.data import gui_scoring, gui_tasks, vlm_records

SCREENS = ((640, 400, 1.0), (960, 600, 1.5), (800, 600, 1.25))


@pytest.fixture(scope="module")
def generated():
  return [gui_tasks.generate_screen_tasks(3, index, SCREENS, tasks_per_screen=10) for index in range(9)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("gui")
  return gui_tasks.write_dataset(directory, 3, seed=11, screens=SCREENS, tasks_per_screen=3)


def _name(text):
  return text.rstrip(".").lower()


def test_every_action_kind_and_modality_is_generated(generated):
  tasks = [task for _, tasks in generated for task in tasks]
  assert {task.action for task in tasks} == set(gui_tasks.ACTIONS)
  assert {task.modality for task in tasks} == set(gui_scoring.CUACTSPOT_MODALITIES)
  assert {task.role for task in tasks if task.action == "click"} >= {"button", "menu_button", "text_input"}


def test_instructions_name_existing_elements_and_quote_only_texts_on_screen(generated):
  for screen, tasks in generated:
    texts = {_name(e.text) for e in screen.elements} | {_name(w) for e in screen.elements for w in e.text.split()}
    for task in tasks:
      element = screen.elements[task.element_id]
      assert (element.role, element.text) == (task.role, task.element_text), task
      for quoted in re.findall(r"'([^']+)'", task.instruction):
        assert quoted == task.text or _name(quoted) in texts, (quoted, task.instruction)
      if task.role in ("button", "text_input", "checkbox", "tab", "slider", "image", "canvas_shape"):
        assert element.text in task.instruction, task
        same = [e for e in screen.elements if (e.role, e.text) == (element.role, element.text)]
        assert len(same) == 1, task
      if task.role == "word":
        assert task.instruction.count("'") == 2 and _name(element.text) in task.instruction.lower()
        assert sum(_name(e.text) == _name(element.text) for e in screen.elements if e.role == "word") == 1
      if task.role == "table_cell" and not element.state["header"]:
        assert element.state["column"] in task.instruction and f"row {element.state['row']}" in task.instruction
      if task.action == "type":
        assert task.text and f"'{task.text}'" in task.instruction


def test_reference_traces_land_on_their_targets_and_pass_both_scorers(generated):
  for screen, tasks in generated:
    for index, task in enumerate(tasks):
      record = gui_tasks.task_record(task, screen, "images/x.png", f"r{index}")
      trace = np.asarray(task.trace)
      assert (trace >= 0).all() and (trace[:, 0] <= screen.width).all() and (trace[:, 1] <= screen.height).all()
      if task.action in ("click", "double_click", "type"):
        assert task.target_box == tuple(map(float, screen.elements[task.element_id].box)) and len(trace) == 1
      if task.action == "drag":
        assert gui_scoring.point_in_box(trace[0], task.target_box) and gui_scoring.point_in_box(trace[-1],
                                                                                               task.end_box)
      if task.action == "draw":
        assert task.tolerance > 0 and len(trace) >= 2
        if task.closed:
          np.testing.assert_allclose(trace[0], trace[-1])
      assert gui_scoring.score_action(record, {"points": trace, "text": task.text, "action": task.action})["passed"]
      assert gui_scoring.cuactspot_score(task.trace, record) == (True, ""), task
      if len(trace) == 2 and task.action == "drag":  # CUActSpot's ranks order the points
        assert not gui_scoring.cuactspot_score(task.trace[::-1], record)[0]


def test_slider_drag_targets_the_value_named_in_the_instruction(generated):
  drags = [(screen, task) for screen, tasks in generated for task in tasks if task.role == "slider"]
  assert drags
  for screen, task in drags:
    slider = screen.elements[task.element_id]
    value = int(re.search(r"to (\d+)", task.instruction).group(1))
    low, high = slider.state["track"]
    x_end = task.trace[-1][0]
    assert round((x_end - low) / (high - low) * 100) == value
    thumb = next(e for e in screen.children(slider.id) if e.role == "slider_thumb")
    assert task.target_box == tuple(map(float, thumb.box))


def test_a_seed_fixes_the_tasks(generated):
  again = gui_tasks.generate_screen_tasks(3, 4, SCREENS, tasks_per_screen=10)
  assert again[1] == generated[4][1]
  np.testing.assert_array_equal(again[0].image, generated[4][0].image)
  other = gui_tasks.generate_screen_tasks(4, 4, SCREENS, tasks_per_screen=10)
  assert other[1] != generated[4][1]


def test_disk_round_trip_keeps_records_and_pixels(dataset_dir):
  records = gui_tasks.read_records(dataset_dir)
  screens = gui_tasks.read_screens(dataset_dir)
  assert len(records) == 9 and len(screens) == 3
  for index in range(3):
    screen, tasks = gui_tasks.generate_screen_tasks(11, index, SCREENS, tasks_per_screen=3)
    np.testing.assert_array_equal(gui_tasks.load_image(dataset_dir, records[3 * index]), screen.image)
    assert screens[index]["elements"] == screen.elements and screens[index]["image"] == records[3 * index]["image"]
    for task_index, task in enumerate(tasks):
      expected = gui_tasks.task_record(task, screen, screens[index]["image"], f"gui-11-{index}-{task_index}", index)
      assert records[3 * index + task_index] == json.loads(json.dumps(expected))
  first = records[0]
  assert set(first) >= {"image", "width", "height", "instruction", "action", "target_box", "trace", "role"}
  assert not list(dataset_dir.glob("*.partial"))


def test_grain_dataset_yields_the_records_with_their_pixels(dataset_dir):
  records = gui_tasks.read_records(dataset_dir)
  dataset = gui_tasks.gui_dataset(dataset_dir)
  assert isinstance(dataset, grain.MapDataset) and len(dataset) == len(records)
  for index, item in enumerate(dataset):
    record = records[index]
    assert item["instruction"] == record["instruction"] and item["action"] == record["action"]
    assert item["image"].shape == (record["height"], record["width"], 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["trace"], np.asarray(record["trace"]).reshape(-1, 2))
    np.testing.assert_array_equal(item["target_box"], record["target_box"])
  shuffled = list(dataset.shuffle(seed=0).map(lambda item: item["id"]))
  assert sorted(shuffled) == sorted(record["id"] for record in records)


def test_synthetic_source_serves_what_write_dataset_writes(dataset_dir):
  records = gui_tasks.read_records(dataset_dir)
  source = gui_tasks.SyntheticGuiSource(3, seed=11, screens=SCREENS, tasks_per_screen=3)
  restored = pickle.loads(pickle.dumps(source))
  assert len(source) == len(records)
  for index in (0, 4, 8):
    item, stored = restored[index], gui_tasks.GuiTaskSource(dataset_dir)[index]
    np.testing.assert_array_equal(item["image"], stored["image"])
    assert {k: v for k, v in item.items() if not isinstance(v, np.ndarray)} == {
      k: v for k, v in stored.items() if not isinstance(v, np.ndarray)}
  assert len(list(gui_tasks.gui_dataset(source).slice(slice(0, 3)))) == 3
  with pytest.raises(IndexError):
    source[len(source)]


def test_records_read_as_vlm_records_with_a_pyautogui_answer(dataset_dir):
  dataset = vlm_records.open_dataset(dataset_dir / gui_tasks.RECORDS_FILE)
  records = gui_tasks.read_records(dataset_dir)
  first = dataset[0]
  assert len(first["images"]) == 1 and first["images"][0].size == (records[0]["width"], records[0]["height"])
  assert first["messages"][0]["content"][-1]["text"] == records[0]["instruction"]
  for record in records:
    x, y = record["trace"][0]
    assert f"x={x / record['width']:.4f}, y={y / record['height']:.4f}" in record["answer"]


def test_task_polygons_follow_the_cuactspot_schema(generated):
  for _, tasks in generated:
    for task in tasks:
      polygons = task.polygons()
      assert all(p["type"] == "Target" and len(p["points"]) == 4 for p in polygons)
      ranks = [p["rank"] for p in polygons]
      if task.action in ("drag", "draw"):
        assert ranks == [str(i + 1) for i in range(len(polygons))] and len(polygons) == len(task.trace)
      else:
        assert ranks == [""]


def test_invalid_arguments_raise_naming_them(generated, tmp_path):
  screen = next(screen for screen, _ in generated if any(e.role == "text_input" for e in screen.elements))
  with pytest.raises(ValueError, match="actions"):
    gui_tasks.make_tasks(screen, np.random.default_rng(0), 3, actions=("scroll",))
  with pytest.raises(ValueError, match="num_screens"):
    gui_tasks.write_dataset(tmp_path, 0, seed=0)
  with pytest.raises(FileNotFoundError, match="directory"):
    gui_tasks.read_records(tmp_path / "missing")
  only_type = gui_tasks.make_tasks(screen, np.random.default_rng(0), 2, actions=("type",))
  assert only_type and all(task.action == "type" for task in only_type)
