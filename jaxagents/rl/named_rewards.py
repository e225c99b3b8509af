"""The reward of a config, by name: verifiable rewards picked by name, combined with weights, optionally gated.

A reward is `fn(response: str, record: Mapping) -> float in [0, 1]` (or None to abstain). The ground truth is
`record["answer"]`, so one JSONL record `{"answer": ...}` serves every reward:

  exact_match        a string, a number or a list of acceptable ones; normalised string equality.
  numeric, math      a number or numeric string ("1/2", "\\frac{1}{2}", "$1,000"), or a list of them; tolerance match.
  choice             a letter ("B", "(B)") or a list of letters.
  relative_accuracy  a number (or a list): VSI-Bench mean relative accuracy.
  format             no answer needed: 1 if the response is exactly `<think>...</think>` then `<answer>...</answer>`.
  box_iou            boxes [4] or [K, 4] (x1, y1, x2, y2): greedily matched IoU of the parsed boxes.
  point_in_box       boxes [4] or [K, 4]: the fraction of parsed points inside them.
  temporal_iou       segments [2] or [K, 2] (start, end): greedily matched 1-D IoU.
  "pkg.mod:fn"       a user function with the same signature, imported by path.

Parsing rules (`\\boxed{}` / `<answer>` extraction, reasoning inside `<think>` ignored, fractions, separators, units,
choice letters) are those of `rewards.py`. The names-and-weights interface follows open-r1 (huggingface/open-r1,
src/open_r1/rewards.py, `get_reward_funcs`) and TRL's `GRPOConfig.reward_weights`; TRL sums the weighted rewards,
here the total is the weighted mean R = sum_k w_k s_k / sum_k w_k, so it stays in [0, 1]. A term that returns None
abstains and is left out of the mean, as TRL does with its NaN rewards.

The format reward follows the accuracy-plus-format rewards of DeepSeek-R1 (arXiv 2501.12948, Sec. 2.2.2) as coded by
R1-V (Deep-Agent/R1-V, src/r1-v/src/open_r1/grpo.py, `format_reward`: a full match of
`<think>.*?</think>\\s*<answer>.*?</answer>`). Stricter here: whitespace may surround the two blocks, each tag
appears once, and the answer is not empty (the reasoning may be). If the chat template opens `<think>` in the
prompt, prepend it to the response before scoring.

Optional gate, the Argos-style aggregation of `argos.py` (Argos, arXiv 2512.03438; a reconstruction, the paper's
formula was not found): the accuracy term always counts, the others only once it reaches the threshold,

    R = s_acc + 1[s_acc >= threshold] * sum_k w_k s_k / sum_k w_k   (k over the other terms),

computed by `argos.argos_reward`, so a gated R lies in [0, 2]. The accuracy term is the gate's `accuracy` name, by
default the first term; its own weight is unused.

A record may carry "reward" (a spec as below; None: none) that replaces the config's terms for that record.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxagents.rl import argos, rewards

Reward = Callable[[str, Mapping[str, Any]], float | None]

_TAG_FREE = r"(?:(?!</?(?:think|answer)>).)*"
_FORMAT_RE = re.compile(rf"\s*<think>{_TAG_FREE}</think>\s*<answer>({_TAG_FREE})</answer>\s*", re.DOTALL)


def format_reward(response: str) -> float:
  """1.0 if the response is exactly `<think>..</think>` then a non-empty `<answer>..</answer>`, whitespace around."""
  match = _FORMAT_RE.fullmatch(response)
  return float(match is not None and bool(match.group(1).strip()))


def _answer(record: Mapping[str, Any], name: str) -> Any:
  if "answer" not in record:
    raise ValueError(f"record: reward {name!r} needs an 'answer' field, got keys {sorted(record)}.")
  return record["answer"]


def _answers(record: Mapping[str, Any], name: str) -> list[Any]:
  """The acceptable answers: one string or number, or a list of them."""
  answer = _answer(record, name)
  return [answer] if isinstance(answer, str | numbers.Number) else list(answer)


def _best(score: Callable[[Any], float], targets: list[Any]) -> float:
  return max((score(target) for target in targets), default=0.0)


def _numeric(response: str, record: Mapping[str, Any]) -> float:
  return _best(lambda target: rewards.numeric_match(response, target), _answers(record, "numeric"))


REWARDS: dict[str, Reward] = {
  "exact_match": lambda response, record: rewards.exact_match(
    response, [str(target) for target in _answers(record, "exact_match")]),
  "numeric": _numeric,
  "math": _numeric,
  "choice": lambda response, record: _best(
    lambda target: rewards.choice_match(response, str(target)), _answers(record, "choice")),
  "relative_accuracy": lambda response, record: _best(
    lambda target: rewards.relative_accuracy(response, target), _answers(record, "relative_accuracy")),
  "format": lambda response, record: format_reward(response),
  "box_iou": lambda response, record: rewards.box_iou_reward(response, _answer(record, "box_iou")),
  "point_in_box": lambda response, record: rewards.points_in_box(
    rewards.parse_points(response), _answer(record, "point_in_box")),
  "temporal_iou": lambda response, record: rewards.temporal_iou_reward(response, _answer(record, "temporal_iou")),
}


def resolve_reward(name: str) -> Reward:
  """The reward function of a built-in name or of an import path "package.module:function"."""
  if isinstance(name, str) and name in REWARDS:
    return REWARDS[name]
  if not isinstance(name, str) or ":" not in name:
    raise ValueError(f"reward: unknown name {name!r}; expected one of {sorted(REWARDS)} or an import path "
                     "'package.module:function'.")
  module_name, _, attribute = name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except Exception as error:  # noqa: BLE001 (any import failure is a bad path)
    failure = f"{type(error).__name__}: {error}"
    raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({failure}).") from error
  try:
    function = operator.attrgetter(attribute)(module)
  except AttributeError as error:
    raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attribute!r}.") from error
  if not callable(function):
    raise ValueError(f"reward {name!r}: expected a callable (response, record) -> float, got {type(function)}.")
  return function


@dataclasses.dataclass(frozen=True)
class RewardTerm:
  """One named reward and its non-negative, finite weight."""

  name: str
  weight: float = 1.0

  def __post_init__(self):
    resolve_reward(self.name)
    is_number = isinstance(self.weight, numbers.Real) and not isinstance(self.weight, bool)
    if not (is_number and math.isfinite(self.weight) and self.weight >= 0):
      raise ValueError(f"weight of {self.name!r}: expected a finite number >= 0, got {self.weight!r}.")
    object.__setattr__(self, "weight", float(self.weight))


def _as_dict(value: Any) -> dict | None:
  """A plain dict for any mapping-like value (dict, ml_collections ConfigDict / FrozenConfigDict), else None."""
  if isinstance(value, Mapping):
    return dict(value)
  if not isinstance(value, str) and callable(getattr(value, "items", None)) and hasattr(value, "keys"):
    return dict(value.items())
  return None


def _is_term_dict(mapping: dict) -> bool:
  return "name" in mapping and set(mapping) <= {"name", "weight"}


def _term(item: Any) -> RewardTerm:
  if isinstance(item, RewardTerm):
    return item
  if isinstance(item, str):
    return RewardTerm(item)
  mapping = _as_dict(item)
  if mapping is not None and _is_term_dict(mapping):
    return RewardTerm(mapping["name"], mapping.get("weight", 1.0))
  raise ValueError(f"rewards: expected a name, a RewardTerm or a {{'name': ..., 'weight': ...}} mapping, got {item!r}.")


def parse_rewards(spec: Any) -> tuple[RewardTerm, ...]:
  """Terms of a spec: "name", a list of names, {name: weight}, or a list of {"name": .., "weight": ..} mappings."""
  mapping = _as_dict(spec)
  if mapping is not None and not _is_term_dict(mapping):
    terms = tuple(RewardTerm(name, weight) for name, weight in mapping.items())
  elif mapping is not None or isinstance(spec, str | RewardTerm):
    terms = (_term(spec),)
  elif isinstance(spec, Sequence):
    terms = tuple(_term(item) for item in spec)
  else:
    raise ValueError(f"rewards: expected a name, a list, or a mapping of names to weights, got {spec!r}.")
  names = [term.name for term in terms]
  if not terms or len(set(names)) != len(names):
    raise ValueError(f"rewards: expected one or more distinct reward names, got {names}.")
  if sum(term.weight for term in terms) <= 0:
    raise ValueError(f"rewards: expected a positive total weight, got {[(t.name, t.weight) for t in terms]}.")
  return terms


@dataclasses.dataclass(frozen=True)
class Gate:
  """Argos-style gate: the other terms count once the accuracy term reaches `threshold` (default the first term)."""

  threshold: float = 0.5
  accuracy: str | None = None

  def __post_init__(self):
    if self.accuracy is not None:
      resolve_reward(self.accuracy)
    if not isinstance(self.threshold, numbers.Real) or not math.isfinite(self.threshold):
      raise ValueError(f"gate threshold: expected a finite number, got {self.threshold!r}.")


def parse_gate(gate: Any) -> Gate | None:
  """None / False: no gate; True: the default gate; a Gate; or a mapping with "threshold" and/or "accuracy"."""
  if gate is None or gate is False:
    return None
  if gate is True or isinstance(gate, Gate):
    return Gate() if gate is True else gate
  mapping = _as_dict(gate)
  if mapping is None or not set(mapping) <= {"threshold", "accuracy"}:
    raise ValueError(f"gate: expected None, True or a mapping with 'threshold' and 'accuracy', got {gate!r}.")
  return Gate(**mapping)


def _score(name: str, response: str, record: Mapping[str, Any]) -> float | None:
  value = resolve_reward(name)(response, record)
  if value is None:
    return None
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"reward {name!r}: expected a score in [0, 1] or None, got {value}.")
  return value


class RewardFunction:
  """Weighted mean of named rewards (in [0, 1]), or the Argos-style gated sum (in [0, 2]) when `gate` is set."""

  def __init__(self, terms: Any, gate: Any = None):
    self.terms = parse_rewards(terms)
    self.gate = parse_gate(gate)

  def __repr__(self) -> str:
    return f"RewardFunction(terms={self.terms}, gate={self.gate})"

  def __call__(self, response: str, record: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    """(total, {name: score}); a score is NaN where its term abstained."""
    terms = self.terms if record.get("reward") is None else parse_rewards(record["reward"])
    weights = {term.name: term.weight for term in terms}
    scores = {name: _score(name, response, record) for name in weights}
    if self.gate is None:
      counted = [name for name in weights if scores[name] is not None]
      total_weight = sum(weights[name] for name in counted)
      total = sum(weights[name] * scores[name] for name in counted) / total_weight if total_weight > 0 else 0.0
    else:
      accuracy = self.gate.accuracy or terms[0].name
      if accuracy not in scores:
        scores[accuracy] = _score(accuracy, response, record)
      gated = {**scores, accuracy: scores[accuracy] or 0.0}  # an abstaining accuracy term counts as 0
      total = argos.argos_reward(gated, list(gated), accuracy, self.gate.threshold, weights)
    return float(total), {name: math.nan if score is None else score for name, score in scores.items()}

  def batch(self, responses: Sequence[str], records: Sequence[Mapping[str, Any]]
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Totals `[B]` float32 and each term's scores `[B]` float32 (NaN where a record's reward lacks the term)."""
    if len(responses) != len(records):
      raise ValueError(f"records: expected one per response ({len(responses)}), got {len(records)}.")
    totals = np.zeros(len(responses), np.float32)
    per_term: dict[str, np.ndarray] = {}
    for index, (response, record) in enumerate(zip(responses, records)):
      totals[index], scores = self(response, record)
      for name, score in scores.items():
        per_term.setdefault(name, np.full(len(responses), np.nan, np.float32))[index] = score
    return totals, per_term


def from_config(config: Any, gate: Any = None) -> RewardFunction:
  """A RewardFunction from a spec, or from a mapping-like {"rewards": spec, "gate": ...} (e.g. a ConfigDict)."""
  if isinstance(config, RewardFunction):
    return config
  mapping = _as_dict(config)
  if mapping is not None and "rewards" in mapping:
    if not set(mapping) <= {"rewards", "gate"}:
      raise ValueError(f"config: expected keys 'rewards' and optionally 'gate', got {sorted(mapping)}.")
    return RewardFunction(mapping["rewards"], mapping.get("gate", gate))
  return RewardFunction(config, gate)
