"""Verifiable rewards and the Argos-style verifier (jaxagents/rl/rewards.py) on hand-made responses; expected values
are worked out by hand or by plain loops here (Argos, arXiv 2512.03438)."""

import numpy as np
import pytest

from jaxagents.rl import argos, rewards


@pytest.mark.parametrize(
  "text, expected",
  [
    ("so the result is \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("\\boxed{3} then corrected: \\boxed{4}", "4"),
    ("\\boxed{7} and a broken \\boxed{8", "7"),  # the last *complete* box
    ("<think>..</think><answer> Paris </answer>", "Paris"),
    ("reasoning...\nThe answer is: 42.\nextra line", "42."),
    ("Final Answer: B", "B"),
    ("  just text  ", "just text"),
  ],
)
def test_extract_answer_follows_the_documented_rules(text, expected):
  assert rewards.extract_answer(text) == expected


def test_exact_match_normalises_case_whitespace_punctuation_articles_and_latex_text():
  assert rewards.exact_match("The answer is: The  Eiffel Tower.", "eiffel tower") == 1.0
  assert rewards.exact_match("\\boxed{\\text{Blue}}", ["red", "blue"]) == 1.0
  assert rewards.exact_match("<answer>$x+1$</answer>", "x+1") == 1.0
  assert rewards.exact_match("<answer>towers</answer>", "tower") == 0.0


@pytest.mark.parametrize(
  "text, expected",
  [
    ("\\boxed{\\frac{3}{4}}", 0.75),
    ("The answer is 1,234.5 apples", 1234.5),
    ("answer: -3e-4", -3e-4),
    ("<answer>50%</answer>", 50.0),
    ("<answer>\u22127</answer>", -7.0),
    ("<answer>5-3</answer>", 3.0),  # '-' after a digit is an operator, not a sign
    ("<answer>7/2</answer>", 3.5),
    ("<answer>none</answer>", None),
  ],
)
def test_parse_number_takes_the_last_number_of_the_answer(text, expected):
  got = rewards.parse_number(text)
  assert got == (None if expected is None else pytest.approx(expected))


def test_numeric_match_uses_the_tolerances():
  assert rewards.numeric_match("\\boxed{3.14159}", 3.1416, rel_tol=1e-4) == 1.0
  assert rewards.numeric_match("\\boxed{3.2}", 3.1416, rel_tol=1e-4) == 0.0
  assert rewards.numeric_match("no number", 1.0) == 0.0


def test_mean_relative_accuracy_matches_a_loop_over_the_ten_thresholds():
  def mra(pred, target):
    thetas = [0.5 + 0.05 * k for k in range(10)]
    return np.mean([abs(pred - target) / abs(target) < 1 - theta for theta in thetas])

  for pred in (10.0, 10.4, 12.0, 7.5, 14.9, 16.0, -3.0):
    assert rewards.mean_relative_accuracy(pred, 10.0) == pytest.approx(mra(pred, 10.0))
  assert rewards.mean_relative_accuracy(12.0, 10.0) == pytest.approx(0.6)  # error 0.2 < 1 - theta for 6 thetas
  assert rewards.mean_relative_accuracy(0.0, 0.0) == 1.0 and rewards.mean_relative_accuracy(0.1, 0.0) == 0.0
  assert rewards.relative_accuracy("<answer>about 12 meters</answer>", "10") == pytest.approx(0.6)


def test_parse_choice_reads_the_leading_letter_or_option():
  assert rewards.parse_choice("\\boxed{B}") == "B"
  assert rewards.parse_choice("<answer>(c) the red one</answer>") == "C"
  assert rewards.parse_choice("I pick option D.") == "D"
  assert rewards.parse_choice("B because it is larger") is None
  assert rewards.choice_match("<answer>(B)</answer>", "B") == 1.0
  assert rewards.choice_match("<answer>A.</answer>", "(B)") == 0.0


def test_box_iou_matches_hand_computed_overlaps():
  # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
  np.testing.assert_allclose(rewards.box_iou([0, 0, 2, 2], [[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]),
                             [[1 / 7, 1.0, 0.0]])
  assert rewards.box_iou([2, 2, 1, 1], [0, 0, 3, 3])[0, 0] == 0.0  # inverted box: zero area
  assert rewards.box_iou([1, 1, 1, 1], [1, 1, 1, 1])[0, 0] == 0.0  # zero union


def test_parse_boxes_reads_brackets_json_and_corner_pairs():
  text = 'a {"bbox_2d": [10, 20, 30.5, 40]} b <box>(1,2),(3,4)</box>'
  np.testing.assert_allclose(rewards.parse_boxes(text), [[10, 20, 30.5, 40], [1, 2, 3, 4]])
  assert rewards.parse_boxes("no boxes").shape == (0, 4)


def test_box_reward_matches_greedily_and_penalises_extra_and_missing_boxes():
  target = [[0, 0, 2, 2], [10, 10, 12, 12]]
  assert rewards.box_iou_reward("[0, 0, 2, 2] and [10, 10, 12, 12]", target) == pytest.approx(1.0)
  assert rewards.box_iou_reward("[0, 0, 2, 2]", target) == pytest.approx(0.5)  # one of two found
  assert rewards.box_iou_reward("[1, 1, 3, 3]", [0, 0, 2, 2]) == pytest.approx(1 / 7)
  extra = "[0, 0, 2, 2] [10, 10, 12, 12] [20, 20, 21, 21]"
  assert rewards.box_iou_reward(extra, target) == pytest.approx(2 / 3)
  assert rewards.box_iou_reward("nothing", target) == 0.0


def test_points_in_box_and_mask_count_the_fraction_of_points_inside():
  text = '(1, 1) and [5, 5] and <point x="1.5" y="2.5" alt="cup">cup</point>'
  points = rewards.parse_points(text)
  np.testing.assert_allclose(points, [[1, 1], [5, 5], [1.5, 2.5]])
  assert rewards.points_in_box(points, [0, 0, 2, 3]) == pytest.approx(2 / 3)
  mask = np.zeros((4, 4), bool)
  mask[2, 1] = True  # row y=2, column x=1: holds (1.5, 2.5)
  mask[1, 1] = True  # holds (1, 1)
  assert rewards.points_in_mask(points, mask) == pytest.approx(2 / 3)  # (5, 5) is outside the image
  molmo = rewards.parse_points('<points x1="10" y1="20" x2="30" y2="40" alt="two">two</points>')
  np.testing.assert_allclose(molmo, [[10, 20], [30, 40]])
  assert rewards.points_in_box(np.zeros((0, 2)), [0, 0, 1, 1]) == 0.0


def test_temporal_iou_matches_hand_computed_overlaps_and_parses_ranges():
  np.testing.assert_allclose(rewards.temporal_iou([0, 10], [[5, 15], [20, 30]]), [[5 / 15, 0.0]])
  np.testing.assert_allclose(rewards.parse_segments("The event happens from 3.5 to 7.2 seconds."), [[3.5, 7.2]])
  np.testing.assert_allclose(rewards.parse_segments("<answer>[1.0, 2.5]</answer>"), [[1.0, 2.5]])
  assert rewards.temporal_iou_reward("from 5s - 15s", [0, 10]) == pytest.approx(1 / 3)


def test_argos_reward_gates_the_other_scores_on_accuracy():
  scores = {"exact_match": 1.0, "box_iou": 0.5, "reasoning": 0.9, "point_in_box": None}
  selected = ["exact_match", "box_iou", "reasoning", "point_in_box"]
  # Gate open: 1 + (2 * 0.5 + 1 * 0.9) / (2 + 1); the abstaining scorer is dropped, not scored 0.
  got = argos.argos_reward(scores, selected, "exact_match", 0.5, {"box_iou": 2.0, "point_in_box": 5.0})
  assert got == pytest.approx(1.0 + (2 * 0.5 + 0.9) / 3)
  assert argos.argos_reward({**scores, "exact_match": 0.0}, selected, "exact_match", 0.5) == 0.0
  at_gate = {"relative_accuracy": 0.5, "box_iou": 1.0}
  assert argos.argos_reward(at_gate, list(at_gate), "relative_accuracy", 0.5) == pytest.approx(1.5)  # >= opens
  by_flags = {"exact_match": True, "box_iou": True, "reasoning": False}
  assert argos.argos_reward(scores, by_flags, "exact_match", 0.5) == pytest.approx(1.5)
  with pytest.raises(ValueError, match="accuracy_key"):
    argos.argos_reward({"box_iou": 1.0}, ["box_iou"], "exact_match", 0.5)


def test_argos_verifier_selects_scorers_from_the_sample_and_gates_the_judge():
  calls = []

  def judge(response, sample):
    calls.append(response)
    return 0.8

  verifier = argos.ArgosVerifier(gate_threshold=0.5, judge=judge)
  sample = {"answer": "cat", "box": [0, 0, 2, 2]}
  right = verifier.score("It is at [1, 1, 3, 3]. <answer>cat</answer>", sample)
  assert right.accuracy_key == "exact_match" and right.selected == ("exact_match", "box_iou", "reasoning")
  assert right.gate_open and right.reward == pytest.approx(1.0 + (1 / 7 + 0.8) / 2)
  wrong = verifier.score("It is at [0, 0, 2, 2]. <answer>dog</answer>", sample)
  assert not wrong.gate_open and wrong.reward == 0.0 and len(calls) == 1  # no judge call with the gate closed
  grounding = verifier.score("[0, 0, 2, 2]", {"box": [0, 0, 2, 2], "segment": [0, 10]})
  assert grounding.accuracy_key == "box_iou"
  assert grounding.reward == pytest.approx(1.0 + 0.8 / 2)  # temporal IoU 0 (no segment parsed) and judge 0.8
  numbers = verifier(["<answer>12</answer>", "<answer>30</answer>"], [{"answer": 10, "answer_type": "number"}] * 2)
  np.testing.assert_allclose(numbers, [0.6 + 0.8, 0.0])
  assert numbers.dtype == np.float32


def test_a_failing_or_abstaining_judge_is_dropped_not_scored_zero():
  def failing(response, sample):
    raise RuntimeError("judge unavailable")

  for judge in (failing, lambda response, sample: None):
    result = argos.ArgosVerifier(judge=judge).score("[0, 0, 2, 2] <answer>cat</answer>",
                                                      {"answer": "cat", "box": [0, 0, 2, 2]})
    assert result.dropped == ("reasoning",) and result.reward == pytest.approx(2.0)


def test_bad_samples_raise_value_errors_naming_the_field():
  verifier = argos.ArgosVerifier()
  with pytest.raises(ValueError, match="sample"):
    verifier.score("x", {"question": "?"})
  with pytest.raises(ValueError, match="answer_type"):
    verifier.score("x", {"answer": "a", "answer_type": "date"})
  with pytest.raises(ValueError, match="target_boxes"):
    rewards.box_iou_reward("[0, 0, 1, 1]", [0, 0, 1])
  with pytest.raises(ValueError, match="mask"):
    rewards.points_in_mask([[0, 0]], np.zeros(3))
  with pytest.raises(ValueError, match="number_scorer"):
    argos.ArgosVerifier(number_scorer="exact")
