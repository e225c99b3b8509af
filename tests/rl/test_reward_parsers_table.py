"""Reward parsers on a table of hand-written answers, adversarial ones included (jaxagents/rl/rewards.py through the
named rewards of jaxagents/rl/named_rewards.py): two boxed answers, an answer only inside `<think>`, `1/2` vs `0.5`,
`B)` vs `(B)`, empty completions. Expected scores are worked out by hand."""

import pytest

from jaxagents.rl import named_rewards, rewards

BOX = [0, 0, 2, 2]

# (response, record["answer"], reward name, expected score)
TABLE = [
  # exact_match
  pytest.param("<answer>Paris</answer>", "paris", "exact_match", 1.0, id="exact-answer-tag"),
  pytest.param("The answer is: The Eiffel Tower.", "eiffel tower", "exact_match", 1.0, id="exact-article-punct"),
  pytest.param("\\boxed{\\text{Blue}}", ["red", "blue"], "exact_match", 1.0, id="exact-any-of-list"),
  pytest.param("**Answer:** Paris", "Paris", "exact_match", 1.0, id="exact-markdown-bold"),
  pytest.param("<answer>42</answer>", 42, "exact_match", 1.0, id="exact-number-target"),
  pytest.param("<answer>towers</answer>", "tower", "exact_match", 0.0, id="exact-plural-differs"),
  pytest.param("<think>The answer is Paris</think>", "Paris", "exact_match", 0.0, id="exact-only-in-think"),
  pytest.param("<think>Paris?</think><answer>Rome</answer>", "Paris", "exact_match", 0.0, id="exact-think-vs-answer"),
  pytest.param("", "Paris", "exact_match", 0.0, id="exact-empty"),
  pytest.param("<answer> </answer>", "", "exact_match", 0.0, id="exact-empty-answer-empty-target"),
  # numeric / math
  pytest.param("\\boxed{1/2}", "0.5", "numeric", 1.0, id="num-fraction-vs-decimal"),
  pytest.param("\\boxed{0.5}", "1/2", "numeric", 1.0, id="num-decimal-vs-fraction"),
  pytest.param("\\boxed{\\frac{1}{2}}", 0.5, "math", 1.0, id="math-latex-frac-nested-braces"),
  pytest.param("\\boxed{\\dfrac{3}{4}}", "0.75", "math", 1.0, id="math-dfrac"),
  pytest.param("The answer is 1,234.", 1234, "numeric", 1.0, id="num-thousands"),
  pytest.param("\\boxed{1{,}234}", 1234, "math", 1.0, id="math-latex-thousands"),
  pytest.param("<answer>12 cm</answer>", 12, "numeric", 1.0, id="num-unit"),
  pytest.param("<answer>12 m^2</answer>", 12, "numeric", 1.0, id="num-unit-exponent"),
  pytest.param("<answer>$1,000</answer>", "1000", "numeric", 1.0, id="num-currency"),
  pytest.param("<answer>50%</answer>", 50, "numeric", 1.0, id="num-percent"),
  pytest.param("<answer>3 \\times 10^{-4}</answer>", 0.0003, "math", 1.0, id="math-times-ten"),
  pytest.param("\\boxed{-3}", 3, "numeric", 0.0, id="num-sign-matters"),
  pytest.param("\\boxed{3} wait, no: \\boxed{4}", 4, "numeric", 1.0, id="num-two-boxed-last-counts"),
  pytest.param("\\boxed{3} wait, no: \\boxed{4}", 3, "numeric", 0.0, id="num-two-boxed-first-ignored"),
  pytest.param("<think>\\boxed{7}</think> I am not sure", 7, "math", 0.0, id="math-boxed-only-in-think"),
  pytest.param("so it is 5 </think> \\boxed{5}", 5, "math", 1.0, id="math-think-opened-in-prompt"),
  pytest.param("<answer>3</answer>", [2, 3], "numeric", 1.0, id="num-any-of-list"),
  pytest.param("", 0, "numeric", 0.0, id="num-empty"),
  # choice
  pytest.param("<answer>(B)</answer>", "B", "choice", 1.0, id="choice-paren-vs-bare"),
  pytest.param("<answer>B)</answer>", "(B)", "choice", 1.0, id="choice-close-paren-vs-paren"),
  pytest.param("B.", "B", "choice", 1.0, id="choice-dot"),
  pytest.param("\\boxed{\\text{C}}", "C", "choice", 1.0, id="choice-boxed-text"),
  pytest.param("<answer>(c) the red one</answer>", "C", "choice", 1.0, id="choice-lowercase-with-text"),
  pytest.param("**B**", "B", "choice", 1.0, id="choice-markdown"),
  pytest.param("<answer>[D]</answer>", ["C", "D"], "choice", 1.0, id="choice-any-of-list"),
  pytest.param("I think B", "B", "choice", 0.0, id="choice-letter-in-sentence"),
  pytest.param("<think>It must be B</think><answer>A</answer>", "B", "choice", 0.0, id="choice-think-vs-answer"),
  pytest.param("<think>The answer is B</think>", "B", "choice", 0.0, id="choice-only-in-think"),
  pytest.param("", "B", "choice", 0.0, id="choice-empty"),
  # format
  pytest.param("<think>reason</think><answer>42</answer>", None, "format", 1.0, id="format-tight"),
  pytest.param("  <think>\nreason\n</think>\n<answer>\n42\n</answer>\n", None, "format", 1.0, id="format-whitespace"),
  pytest.param("<think></think><answer>42</answer>", None, "format", 1.0, id="format-empty-think"),
  pytest.param("<answer>42</answer>", None, "format", 0.0, id="format-no-think"),
  pytest.param("<think>x</think><answer>42</answer> ok?", None, "format", 0.0, id="format-trailing-text"),
  pytest.param("<think>x</think><answer>1</answer><answer>2</answer>", None, "format", 0.0, id="format-two-answers"),
  pytest.param("<think><think>x</think><answer>4</answer>", None, "format", 0.0, id="format-nested-think"),
  pytest.param("<think>x</think><answer> </answer>", None, "format", 0.0, id="format-blank-answer"),
  pytest.param("", None, "format", 0.0, id="format-empty"),
  # box_iou ([0,0,2,2] vs [1,1,3,3]: intersection 1, union 7)
  pytest.param("<answer>[0, 0, 2, 2]</answer>", [BOX], "box_iou", 1.0, id="box-exact"),
  pytest.param("[1, 1, 3, 3]", BOX, "box_iou", 1 / 7, id="box-partial"),
  pytest.param('{"bbox_2d": [0, 0, 2, 2]} [10, 10, 12, 12]', [BOX, [10, 10, 12, 12]], "box_iou", 1.0, id="box-two"),
  pytest.param("[0, 0, 2, 2]", [BOX, [10, 10, 12, 12]], "box_iou", 0.5, id="box-one-missing"),
  pytest.param("<think>[0, 0, 2, 2]</think><answer>none</answer>", BOX, "box_iou", 0.0, id="box-only-in-think"),
  pytest.param("", BOX, "box_iou", 0.0, id="box-empty"),
  # point_in_box
  pytest.param("(1, 1) and (5, 5)", BOX, "point_in_box", 0.5, id="point-half-inside"),
  pytest.param('<point x="1.5" y="0.5">cup</point>', [[0, 0, 1, 1], [1, 0, 2, 1]], "point_in_box", 1.0,
               id="point-molmo-second-box"),
  pytest.param("", BOX, "point_in_box", 0.0, id="point-empty"),
  # temporal_iou
  pytest.param("from 3.5 to 7.5 seconds", [3.5, 7.5], "temporal_iou", 1.0, id="temporal-range-text"),
  pytest.param("<answer>[0, 5]</answer>", [0, 10], "temporal_iou", 0.5, id="temporal-half"),
  pytest.param("", [0, 10], "temporal_iou", 0.0, id="temporal-empty"),
  # relative_accuracy (error 0.2 < 1 - theta for 6 of the 10 thresholds)
  pytest.param("<answer>about 12 meters</answer>", 10, "relative_accuracy", 0.6, id="mra-12-vs-10"),
  pytest.param("<answer>10</answer>", "10", "relative_accuracy", 1.0, id="mra-exact"),
  pytest.param("", 10, "relative_accuracy", 0.0, id="mra-empty"),
]


@pytest.mark.parametrize("response, answer, name, expected", TABLE)
def test_named_reward_scores_the_hand_written_answer(response, answer, name, expected):
  score = named_rewards.resolve_reward(name)(response, {"answer": answer})
  assert score == pytest.approx(expected)
  assert 0.0 <= score <= 1.0


def test_the_table_covers_every_built_in_reward():
  assert {param.values[2] for param in TABLE} == set(named_rewards.REWARDS)


@pytest.mark.parametrize(
  "text, expected",
  [
    ("(B)", "B"), ("B)", "B"), ("B.", "B"), ("B", "B"), ("b", "B"), ("[B]", "B"), ("B: blue", "B"),
    ("**B**", "B"), ("\\boxed{\\text{B}}", "B"), ("The answer is (B).", "B"), ("the answer is \\(B\\)", "B"),
    ("I pick option D.", "D"), ("<answer>(A) a cat</answer>", "A"), ("<think>B</think><answer>C</answer>", "C"),
    ("B because it is larger", None), ("I think B", None), ("Both A and C", None), ("<think>B</think>", None),
    ("", None),
  ],
)
def test_parse_choice_on_hand_written_answers(text, expected):
  assert rewards.parse_choice(text) == expected


@pytest.mark.parametrize(
  "text, expected",
  [
    ("\\boxed{1/2}", 0.5), ("<answer>0.5</answer>", 0.5), ("\\boxed{\\frac{1}{2}}", 0.5),
    ("\\boxed{-\\frac{1}{2}}", -0.5), ("1,234", 1234.0), ("\\boxed{1{,}234}", 1234.0), ("1\\,234", 1234.0),
    ("12 cm", 12.0), ("$1,000", 1000.0), ("-3", -3.0), ("\u22123", -3.0), ("5-3", 3.0), ("2^{10}", 1024.0),
    ("12 m^2", 12.0), ("3 \\times 10^{-4}", 3e-4), ("\\boxed{2} or \\boxed{3}", 3.0), ("<think>7</think>", None),
    ("1/0", None), ("none", None), ("", None),
  ],
)
def test_parse_number_on_hand_written_answers(text, expected):
  got = rewards.parse_number(text)
  assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<think>a</think> b <think>c</think> d", "b d"),
    ("reasoning </think>answer", "answer"),  # the template opened <think> in the prompt
    ("answer <think>cut off mid-thou", "answer"),
    ("<THINK>x</THINK>y", "y"),
    ("", ""),
  ],
)
def test_strip_thinking_drops_complete_opened_and_cut_off_blocks(text, expected):
  assert " ".join(rewards.strip_thinking(text).split()) == expected
