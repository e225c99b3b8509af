"""The GUI-Actor grounding job (`configs/gui_actor_screens.py`): its data, batches and frozen-backbone switch (fast),
and the whole job through the one loop, learning to beat the screen-centre and random-element baselines (slow)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxagents import train as train_lib
from jaxagents.data import gui_scoring
from jaxagents.tasks import TASKS, get_task
from jaxagents.tasks import gui_grounding as gg
from tests.tasks import configs

ROLES = configs.load("gui_actor_screens").data.roles


def test_registered_and_config_variants_load():
  assert TASKS["gui_grounding"] == "jaxagents.tasks.gui_grounding:GUIGrounding"
  for arg in (None, "test"):
    assert configs.load("gui_actor_screens", arg).task == "gui_grounding"
  with pytest.raises(ValueError, match="unknown variant"):
    configs.load("gui_actor_screens", "nope")


def test_vocabulary_covers_the_click_instructions():
  source = gg.GroundingSource(7, (240, 160), gg.CLICK_ROLES)
  for index in range(24):
    _, task, _ = source.task(index)
    assert gg.UNK not in gg.encode(task.instruction), task.instruction
    assert len(gg.encode(task.instruction)) <= gg.MAX_INSTRUCTION


def test_source_records_are_deterministic_and_consistent():
  source = gg.GroundingSource(3, (240, 160), ROLES)
  first, again = source[5], source[5]
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  for index in range(8):
    record = source[index]
    box = record["target_box"]
    assert record["image"].shape == (160, 240, 3) and record["image"].dtype == np.uint8
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    assert ROLES[record["role"]] in ROLES
    assert not gui_scoring.point_in_box(record["negative"], box)  # the verifier's negative misses the target


def test_grounding_batch_has_one_pointer_and_labels_the_target_patches():
  config = configs.load("gui_actor_screens", "test")
  task = get_task("gui_grounding", config)
  records = task.stack([task.train_source[i] for i in range(4)])
  inputs, completion_mask, labels = task.grounding_inputs(records)
  ids = np.asarray(inputs.input_ids)
  assert ((ids == gg.POINTER_PAD).sum(axis=1) == 1).all()
  assert ((ids == gg.IMAGE_PAD).sum(axis=1) == 12 * 8).all()  # 240x160 at 20 px per visual token
  assert labels.shape == (4, 96) and (labels.sum(axis=1) >= 1).all()
  # The response, pointer tokens included, is the completion.
  assert (np.asarray(completion_mask).sum(axis=1) == len(gg.RESPONSE)).all()
  tail = ids[:, -len(gg.RESPONSE):]
  np.testing.assert_array_equal(tail, np.tile(gg.RESPONSE, (4, 1)))


@pytest.mark.parametrize("train_backbone", [False, True])
def test_frozen_backbone_gets_zero_updates(train_backbone):
  config = configs.load("gui_actor_screens", "test")
  config.train_backbone = train_backbone
  task = get_task("gui_grounding", config)
  tx = task.optimizers()["main"].tx
  params = {"backbone": {"w": jnp.ones((3,))}, "action_head": {"w": jnp.ones((2,))}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.tree.norm(updates["action_head"])) > 0
  assert (float(optax.tree.norm(updates["backbone"])) > 0) == train_backbone


def test_mark_draws_a_red_ring_around_the_point():
  image = np.full((160, 240, 3), 255, np.uint8)
  marked = gg.mark(image, (0.5, 0.5))
  red = (marked[..., 0] == 255) & (marked[..., 1] == 0)
  rows, cols = np.nonzero(red)
  assert red.sum() > 10 and abs(rows.mean() - 80) < 1.5 and abs(cols.mean() - 120) < 1.5
  assert not red[80, 120]  # hollow


@pytest.mark.parametrize("field, value", [("data.image_size", (250, 160)), ("grounding.batch_size", 0),
                                          ("eval.max_candidates", 0), ("data.roles", ("slider",)),
                                          ("verifier.negatives", "hard")])
def test_bad_config_field_is_named(field, value):
  config = configs.load("gui_actor_screens", "test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    get_task("gui_grounding", config)


@pytest.mark.slow  # in CI after the suite (.ci/run): the whole two-phase job compiles two models (~2 min on 2 cores)
def test_job_runs_both_phases_through_the_loop(tmp_path):
  config = configs.load("gui_actor_screens", "test")
  config.verifier.negatives = "head"  # also exercises the hard negatives taken from the head's candidates
  result = train_lib.train(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("grounding/pointer_loss" in r for r in records) and any("verifier/loss" in r for r in records)
  for key in ("eval/accuracy", "eval/verifier_accuracy", "eval/centre_accuracy", "eval/random_element_accuracy"):
    assert 0.0 <= result[key] <= 1.0
  assert (tmp_path / "after_grounding.json").exists()


@pytest.mark.slow  # in CI after the suite (.ci/run): a learning run of ~12 minutes on 2 CPU cores
def test_trained_head_beats_the_baselines_and_the_verifier_helps(tmp_path):
  config = configs.load("gui_actor_screens")
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  head, verifier = result["eval/accuracy"], result["eval/verifier_accuracy"]
  centre, random_element = result["eval/centre_accuracy"], result["eval/random_element_accuracy"]
  print(f"held-out point-in-box accuracy: head top-1 {head:.3f}, with verifier {verifier:.3f}, screen centre "
        f"{centre:.3f}, random element {random_element:.3f}")
  assert head > max(centre, random_element) + 0.15
  assert verifier >= head
