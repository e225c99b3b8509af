"""Rewards by name (jaxagents/rl/named_rewards.py): spec parsing, the weighted mean, per-record rewards, the
Argos-style gate against `argos.argos_reward` (Argos, arXiv 2512.03438), user functions by import path, batching.
Expected totals are worked out by hand."""

import math

import ml_collections
import numpy as np
import pytest

from jaxagents.rl import argos, named_rewards
from jaxagents.rl.named_rewards import RewardFunction, RewardTerm, from_config, parse_rewards

RIGHT = "<think>it is a cat</think><answer>cat</answer>"  # exact_match 1, format 1
WRONG_FORMATTED = "<think>it is a dog</think><answer>dog</answer>"  # exact_match 0, format 1
RIGHT_UNFORMATTED = "cat"  # exact_match 1, format 0
CAT = {"answer": "cat"}


def length_reward(response, record):
  """A user reward for the import-path tests: 1 for a response of `record["length"]` characters."""
  return float(len(response) == record.get("length", 3))


def abstaining_reward(response, record):
  return None


def out_of_range_reward(response, record):
  return 2.0


NOT_CALLABLE = 3


@pytest.mark.parametrize(
  "spec",
  [
    {"exact_match": 1.0, "format": 0.5},
    [{"name": "exact_match"}, {"name": "format", "weight": 0.5}],
    [RewardTerm("exact_match"), {"name": "format", "weight": 0.5}],
    ml_collections.ConfigDict({"exact_match": 1.0, "format": 0.5}),
    ml_collections.FrozenConfigDict({"exact_match": 1.0, "format": 0.5}),
    ml_collections.ConfigDict({"rewards": [{"name": "exact_match"}, {"name": "format", "weight": 0.5}]}).rewards,
  ],
  ids=["dict", "list-of-dicts", "mixed", "configdict", "frozenconfigdict", "configdict-list"],
)
def test_parse_rewards_reads_weighted_forms(spec):
  assert parse_rewards(spec) == (RewardTerm("exact_match", 1.0), RewardTerm("format", 0.5))


def test_parse_rewards_reads_names_with_unit_weights():
  assert parse_rewards("numeric") == (RewardTerm("numeric"),)
  assert parse_rewards(("choice", "format")) == (RewardTerm("choice"), RewardTerm("format"))
  assert parse_rewards({"name": "box_iou", "weight": 2}) == (RewardTerm("box_iou", 2.0),)
  assert parse_rewards(f"{__name__}:length_reward")[0].name == f"{__name__}:length_reward"


def test_unknown_names_raise_listing_the_known_ones():
  with pytest.raises(ValueError, match="exact_match.*temporal_iou"):
    parse_rewards("exakt_match")
  with pytest.raises(ValueError, match="'bleu'"):
    parse_rewards({"exact_match": 1.0, "bleu": 1.0})


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf, True, "1"])
def test_negative_non_finite_or_non_numeric_weights_raise(weight):
  with pytest.raises(ValueError, match="weight of 'format'"):
    parse_rewards({"exact_match": 1.0, "format": weight})


@pytest.mark.parametrize("spec", [[], ["format", "format"], {"format": 0.0}, 3, [("format", 1.0)]],
                         ids=["empty", "duplicate", "zero-total", "number", "tuple-item"])
def test_malformed_specs_raise(spec):
  with pytest.raises(ValueError, match="rewards"):
    parse_rewards(spec)


def test_total_is_the_weighted_mean_of_the_term_scores():
  reward = RewardFunction({"exact_match": 1.0, "format": 0.25})
  assert reward(RIGHT, CAT) == (1.0, {"exact_match": 1.0, "format": 1.0})
  assert reward(WRONG_FORMATTED, CAT)[0] == pytest.approx(0.25 / 1.25)
  assert reward(RIGHT_UNFORMATTED, CAT)[0] == pytest.approx(1.0 / 1.25)
  assert reward("", CAT) == (0.0, {"exact_match": 0.0, "format": 0.0})


def test_a_record_reward_replaces_the_config_terms():
  reward = RewardFunction("exact_match")
  total, scores = reward("<answer>(B)</answer>", {"answer": "B", "reward": {"choice": 3.0, "format": 1.0}})
  assert total == pytest.approx(3.0 / 4.0) and scores == {"choice": 1.0, "format": 0.0}
  assert reward("<answer>(B)</answer>", {"answer": "B"}) == (0.0, {"exact_match": 0.0})


def test_gate_closed_keeps_only_the_accuracy_score():
  reward = RewardFunction({"exact_match": 1.0, "format": 1.0}, gate={"threshold": 0.5})
  total, scores = reward(WRONG_FORMATTED, CAT)
  assert total == 0.0 and scores == {"exact_match": 0.0, "format": 1.0}


def test_gate_open_adds_the_weighted_mean_of_the_others_and_equals_argos_reward():
  length = f"{__name__}:length_reward"
  weights = {"exact_match": 5.0, "format": 1.0, length: 3.0}  # the accuracy term's own weight is unused
  reward = RewardFunction(weights, gate={"accuracy": "exact_match", "threshold": 1.0})
  total, scores = reward("cat", {"answer": "cat", "length": 3})
  assert scores == {"exact_match": 1.0, "format": 0.0, length: 1.0}
  assert total == pytest.approx(1.0 + (1.0 * 0.0 + 3.0 * 1.0) / (1.0 + 3.0))
  assert total == pytest.approx(argos.argos_reward(scores, list(scores), "exact_match", 1.0, weights))
  assert reward("dog", {"answer": "cat", "length": 3})[0] == 0.0  # 0 < threshold 1: the others do not count


def test_gate_accuracy_defaults_to_the_first_term_and_a_named_one_is_scored_even_if_unlisted():
  first = RewardFunction(["choice", "format"], gate=True)
  assert first("<think>x</think><answer>B</answer>", {"answer": "B"})[0] == pytest.approx(2.0)
  assert first("<think>x</think><answer>C</answer>", {"answer": "B"})[0] == 0.0
  unlisted = RewardFunction(["format"], gate={"accuracy": "exact_match"})
  total, scores = unlisted(RIGHT, CAT)
  assert total == pytest.approx(2.0) and scores == {"format": 1.0, "exact_match": 1.0}


def test_a_user_function_is_imported_by_path():
  reward = from_config({"rewards": [{"name": "tests.rl.test_named_rewards:length_reward", "weight": 1.0}]})
  assert reward("abc", {})[0] == 1.0 and reward("abcd", {})[0] == 0.0


def test_an_abstaining_term_is_left_out_of_the_mean_and_reported_as_nan():
  reward = RewardFunction({"exact_match": 1.0, f"{__name__}:abstaining_reward": 9.0})
  total, scores = reward("cat", CAT)
  assert total == 1.0 and math.isnan(scores[f"{__name__}:abstaining_reward"])


@pytest.mark.parametrize(
  "path, failure",
  [
    ("tests.rl.no_such_module:fn", "cannot import module 'tests.rl.no_such_module'"),
    (f"{__name__}:no_such_function", "has no attribute 'no_such_function'"),
    (f"{__name__}:NOT_CALLABLE", "expected a callable"),
    (":length_reward", "cannot import module ''"),
  ],
)
def test_a_bad_import_path_names_the_path_and_what_failed(path, failure):
  with pytest.raises(ValueError, match=f"{path}.*{failure}"):
    parse_rewards(path)


def test_a_score_outside_the_unit_interval_raises():
  with pytest.raises(ValueError, match=r"out_of_range_reward.*\[0, 1\]"):
    RewardFunction(f"{__name__}:out_of_range_reward")("x", {})


def test_a_missing_answer_raises_naming_the_reward():
  with pytest.raises(ValueError, match="'numeric' needs an 'answer'"):
    RewardFunction("numeric")("\\boxed{1}", {"question": "?"})


def test_batch_returns_float32_arrays_with_nan_where_a_record_lacks_a_term():
  reward = RewardFunction({"exact_match": 1.0, "format": 1.0})
  records = [CAT, CAT, {"answer": "B", "reward": "choice"}]
  totals, per_term = reward.batch([RIGHT, RIGHT_UNFORMATTED, "(B)"], records)
  assert totals.dtype == np.float32 and totals.shape == (3,)
  np.testing.assert_allclose(totals, [1.0, 0.5, 1.0])
  assert set(per_term) == {"exact_match", "format", "choice"}
  assert all(scores.dtype == np.float32 and scores.shape == (3,) for scores in per_term.values())
  np.testing.assert_array_equal(per_term["choice"], [np.nan, np.nan, 1.0])
  np.testing.assert_array_equal(per_term["format"], [1.0, 0.0, np.nan])
  with pytest.raises(ValueError, match="records"):
    reward.batch(["a"], [])


def test_from_config_reads_a_config_dict_with_a_gate_and_rejects_unknown_keys():
  config = ml_collections.ConfigDict({"rewards": {"exact_match": 1.0, "format": 0.5},
                                      "gate": {"threshold": 0.5, "accuracy": "exact_match"}})
  reward = from_config(config)
  assert reward.gate == named_rewards.Gate(threshold=0.5, accuracy="exact_match")
  assert reward(RIGHT, CAT)[0] == pytest.approx(2.0)
  assert from_config("exact_match").terms == (RewardTerm("exact_match"),) and from_config(reward) is reward
  with pytest.raises(ValueError, match="gates"):
    from_config({"rewards": "exact_match", "gates": True})
  with pytest.raises(ValueError, match="gate"):
    from_config({"rewards": "exact_match", "gate": {"treshold": 0.5}})
