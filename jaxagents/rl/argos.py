"""Argos-style reward agent (Argos, arXiv 2512.03438, and the Microsoft Research blog post of 2026-01-20; its code
is not public): picks the verifiable scorers of `rewards.py` per sample and gates them on accuracy.

Argos-style verifier (`ArgosVerifier`): per sample, the ground-truth fields choose the scorers ("answer" with
"answer_type" text/choice/number, "box", "region_box", "region_mask", "segment", plus an optional reasoning judge).
The accuracy scorer is the answer scorer, or for answer-free samples the first of box_iou, temporal_iou,
point_in_box, point_in_mask. The others are combined by a gated aggregation, a reconstruction
(the paper's formula was not found; it "emphasizes reasoning checks only when the final output is correct"):

    R = s_acc + 1[s_acc >= gate_threshold] * sum_k w_k s_k / sum_k w_k,

over the selected non-accuracy scorers that returned a score: a scorer that abstains (returns None) or, for the
judge, raises, is dropped rather than scored 0. Deviations: Argos obtains referred masks with Grounding DINO / SAM-2
and scores reasoning with an LLM (GLM-4.5V, MOLMO-7B); here masks and boxes come with the sample and the judge is a
callable the caller supplies (none ships with the library). With the gate closed the judge is not called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxagents.rl.rewards import (
  box_iou_reward,
  choice_match,
  exact_match,
  numeric_match,
  parse_points,
  points_in_box,
  points_in_mask,
  relative_accuracy,
  temporal_iou_reward,
)

# Scorers by name: (response, sample) -> score in [0, 1]. Each reads the ground-truth field named in `_FIELD_OF`.
SCORERS: dict[str, Callable[[str, Mapping[str, Any]], float]] = {
  "exact_match": lambda response, sample: exact_match(response, sample["answer"]),
  "choice": lambda response, sample: choice_match(response, sample["answer"]),
  "numeric": lambda response, sample: numeric_match(response, sample["answer"]),
  "relative_accuracy": lambda response, sample: relative_accuracy(response, sample["answer"]),
  "box_iou": lambda response, sample: box_iou_reward(response, sample["box"]),
  "point_in_box": lambda response, sample: points_in_box(parse_points(response), sample["region_box"]),
  "point_in_mask": lambda response, sample: points_in_mask(parse_points(response), sample["region_mask"]),
  "temporal_iou": lambda response, sample: temporal_iou_reward(response, sample["segment"]),
}
_SPATIAL_TEMPORAL = (("box", "box_iou"), ("segment", "temporal_iou"), ("region_box", "point_in_box"),
                     ("region_mask", "point_in_mask"))
REASONING = "reasoning"


def argos_reward(
  scores: Mapping[str, float | None],
  selected: Iterable[str] | Mapping[str, bool],
  accuracy_key: str,
  gate_threshold: float,
  weights: Mapping[str, float] | None = None,
) -> float:
  """Gated aggregation (reconstruction): s_acc + 1[s_acc >= gate_threshold] * sum_k w_k s_k / sum_k w_k.

  Args:
    scores: name -> score in [0, 1], or None for a scorer that abstained or failed.
    selected: the scorers chosen for this sample (names, or name -> bool).
    accuracy_key: the name of the final-answer scorer; its score must be present.
    gate_threshold: the accuracy at or above which the other scores count.
    weights: name -> non-negative weight (default 1); renormalised over the selected scorers that returned a score.
  """
  if isinstance(selected, Mapping):
    selected = [name for name, chosen in selected.items() if chosen]
  accuracy = scores.get(accuracy_key)
  if accuracy is None:
    raise ValueError(f"scores: expected a score for accuracy_key={accuracy_key!r}, got {dict(scores)}.")
  weights = weights or {}
  others = [name for name in selected if name != accuracy_key and scores.get(name) is not None]
  for name in others:
    if weights.get(name, 1.0) < 0:
      raise ValueError(f"weights[{name!r}]: expected a non-negative weight, got {weights[name]}.")
  total_weight = sum(weights.get(name, 1.0) for name in others)
  if accuracy < gate_threshold or total_weight <= 0:
    return float(accuracy)
  bonus = sum(weights.get(name, 1.0) * scores[name] for name in others) / total_weight
  return float(accuracy + bonus)


@dataclasses.dataclass(frozen=True)
class ArgosResult:
  """One sample's verdict: the reward, what was selected and scored, and whether the gate opened."""

  reward: float
  accuracy_key: str
  selected: tuple[str, ...]
  scores: dict[str, float | None]
  gate_open: bool
  dropped: tuple[str, ...]


@dataclasses.dataclass
class ArgosVerifier:
  """Per-sample scorer selection and gated aggregation (Argos-style; a reconstruction, see the module docstring).

  Samples are mappings with any of: "answer" (str, a list of str, or a number) and "answer_type" ("text",
  "choice" or "number"; default "text"), "box" ([4] or [K, 4]), "region_box" ([4] or [K, 4]: points must fall
  inside), "region_mask" ([H, W] bool), "segment" ([2] or [K, 2] seconds).

  Attributes:
    gate_threshold: accuracy needed before the other scores count (reconstruction).
    weights: name -> weight of the non-accuracy scorers (default 1 each).
    number_scorer: "relative_accuracy" (MRA, Argos) or "numeric" (tolerance match) for answer_type "number".
    judge: optional reasoning scorer `(response, sample) -> float in [0, 1] | None`, an LLM call in Argos; it
      runs only when the gate is open, and a None or an exception drops it.
  """

  gate_threshold: float = 0.5
  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  number_scorer: str = "relative_accuracy"
  judge: Callable[[str, Mapping[str, Any]], float | None] | None = None

  def __post_init__(self):
    if self.number_scorer not in ("relative_accuracy", "numeric"):
      raise ValueError(f"number_scorer: expected 'relative_accuracy' or 'numeric', got {self.number_scorer!r}.")

  def select(self, sample: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(accuracy scorer, all selected scorers) for a sample, from its ground-truth fields."""
    selected = []
    if "answer" in sample:
      answer_type = sample.get("answer_type", "text")
      by_type = {"text": "exact_match", "choice": "choice", "number": self.number_scorer}
      if answer_type not in by_type:
        raise ValueError(f"sample['answer_type']: expected one of {sorted(by_type)}, got {answer_type!r}.")
      selected.append(by_type[answer_type])
    selected += [scorer for field, scorer in _SPATIAL_TEMPORAL if field in sample]
    if not selected:
      fields = ["answer"] + [field for field, _ in _SPATIAL_TEMPORAL]
      raise ValueError(f"sample: expected at least one ground-truth field of {fields}, got keys {sorted(sample)}.")
    if self.judge is not None:
      selected.append(REASONING)
    return selected[0], selected

  def score(self, response: str, sample: Mapping[str, Any]) -> ArgosResult:
    accuracy_key, selected = self.select(sample)
    scores: dict[str, float | None] = {accuracy_key: SCORERS[accuracy_key](response, sample)}
    gate_open = scores[accuracy_key] >= self.gate_threshold
    dropped = []
    if gate_open:
      for name in selected[1:]:
        if name == REASONING:
          try:
            value = self.judge(response, sample)
          except Exception:  # noqa: BLE001 (a failing judge is dropped, not scored 0)
            value = None
          scores[name] = None if value is None else float(np.clip(value, 0.0, 1.0))
        else:
          scores[name] = SCORERS[name](response, sample)
        if scores[name] is None:
          dropped.append(name)
    reward = argos_reward(scores, selected, accuracy_key, self.gate_threshold, self.weights)
    return ArgosResult(reward, accuracy_key, tuple(selected), scores, bool(gate_open), tuple(dropped))

  def __call__(self, responses: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Rewards `[B]` float32 for B responses and their samples."""
    if len(responses) != len(samples):
      raise ValueError(f"samples: expected one per response ({len(responses)}), got {len(samples)}.")
    return np.asarray([self.score(r, s).reward for r, s in zip(responses, samples)], np.float32)
