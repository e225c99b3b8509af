"""GUI-Actor inference: patch attention -> ranked regions and a click point, and the grounding verifier's candidate
selection (Wu et al. 2025, arXiv 2506.03143: action regions from the head's attention, and the grounding verifier).

Regions follow microsoft/GUI-Actor `src/gui_actor/inference.py`, `get_prediction_region_point`, on one pointer's
attention a [N] over an n_h × n_w token grid (row-major):
  1. active patches: a_n > 0.3 · max a (strict), in raster order;
  2. 4-connected regions by breadth-first search from each unvisited active patch in that order;
  3. region score = mean a over its patches; centre = Σ a_n c_n / Σ a_n with c_n = ((col + 0.5)/n_w, (row + 0.5)/n_h)
     (`rect_center=True`: the mean of the distinct x and of the distinct y patch centres);
  4. regions sorted by score, descending (stable); the click point is the first centre. Their evaluation keeps the
     top 3 (`inference`'s default is 5).

Verifier candidates follow `verifier/verifier_model.py`, `GroundingVerifier.get_prediction_region_point(...,
top_n=20, no_groups=True)`: threshold 0.2 · max; when more than 20 patches pass, the 20 highest (in `np.argsort`
order, descending) in that order, else all in raster order; regions as above over the kept patches; the list is the
region centres by score, then the centre of every kept patch. `GroundingVerifier.ground_only_positive` then scores the
candidates in order with the verifier (a hollow red circle drawn at the candidate), stops at the first score ≥ τ
(τ = 0.95 for ScreenSpot-Pro, 0.8 for ScreenSpot v1/v2) and returns the first candidate with the highest score seen;
a single candidate is returned unscored. The verifier's score is p(True) / (p(True) + p(False)) from the next-token
distribution after the prompt (`GroundingVerifier.verify`).

Ours: the grid size is checked against the scores (their verifier silently halves n_w and n_h when they disagree,
for grids given in unmerged patches; here that is an error), one pointer's scores [N] are taken (their inference reads
`attn_scores[0]`), and the verifier score is computed as sigmoid(l_True − l_False), which equals their softmax ratio.
Everything here runs on the host in NumPy / Python floats, as theirs does.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# `get_prediction_region_point` in inference.py, and the verifier's candidate threshold and patch cap.
ACTIVATION_THRESHOLD = 0.3
VERIFIER_ACTIVATION_THRESHOLD = 0.2
VERIFIER_TOP_N = 20
# `GroundingVerifier.__init__`: 0.95 when the prediction file is ScreenSpot-Pro's, else 0.8.
VERIFIER_THRESHOLD = 0.8
VERIFIER_THRESHOLD_PRO = 0.95

Point = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Region:
  """A 4-connected group of active patches.

  Attributes:
    score: mean attention of its patches.
    center: (x, y) in [0, 1], the attention-weighted mean of its patch centres (or `rect_center`'s mean).
    patch_indices: row-major token indices, in search order.
    patch_centers: (x, y) in [0, 1] of each patch (their `sorted_points` entry).
  """

  score: float
  center: Point
  patch_indices: tuple[int, ...]
  patch_centers: tuple[Point, ...]


def _check_scores(scores: np.ndarray, n_width: int, n_height: int) -> None:
  if scores.ndim != 1 or scores.shape[0] != n_width * n_height or scores.shape[0] == 0:
    raise ValueError(f"scores: expected one pointer's attention [n_height * n_width] = [{n_height} * {n_width}], "
                     f"got shape {scores.shape}")


def _regions(indices: Sequence[int], values: Sequence[float], n_width: int, n_height: int,
             rect_center: bool) -> list[Region]:
  """Their breadth-first grouping of the given patches (in the given order), regions sorted by mean score."""
  coords = [(int(index) // n_width, int(index) % n_width, int(index)) for index in indices]
  position = {(y, x): j for j, (y, x, _) in enumerate(coords)}
  visited: set[int] = set()
  regions = []
  for i, (y, x, index) in enumerate(coords):
    if index in visited:
      continue
    members = [(y, x, index, values[i])]
    visited.add(index)
    queue = [(y, x)]
    while queue:
      cy, cx = queue.pop(0)
      for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        j = position.get((cy + dy, cx + dx))
        if j is not None and coords[j][2] not in visited:
          ny, nx, n_index = coords[j]
          visited.add(n_index)
          members.append((ny, nx, n_index, values[j]))
          queue.append((ny, nx))
    regions.append(members)

  ranked = []
  for members in regions:
    score = sum(member[3] for member in members) / len(members)
    centers = [((x + 0.5) / n_width, (y + 0.5) / n_height) for y, x, _, _ in members]
    weights = [member[3] for member in members]
    if rect_center:
      xs, ys = {c[0] for c in centers}, {c[1] for c in centers}
      center = (sum(xs) / len(xs), sum(ys) / len(ys))
    else:
      total = sum(weights)
      center = (sum(c[0] * w for c, w in zip(centers, weights)) / total,
                sum(c[1] * w for c, w in zip(centers, weights)) / total)
    ranked.append(Region(float(score), (float(center[0]), float(center[1])),
                         tuple(member[2] for member in members), tuple(centers)))
  return sorted(ranked, key=lambda region: region.score, reverse=True)


def prediction_regions(
  scores: np.ndarray | jax.Array,
  n_width: int,
  n_height: int,
  activation_threshold: float = ACTIVATION_THRESHOLD,
  rect_center: bool = False,
) -> list[Region]:
  """Ranked regions of one pointer's patch attention, as `get_prediction_region_point` (module docstring).

  Args:
    scores: [n_height * n_width] attention over the token grid (one row of `patch_attention`, padding dropped).
    n_width, n_height: token grid (`image_grid_thw[1:] / merge_size`).
    activation_threshold: patches above this fraction of the maximum are active.
    rect_center: their `rect_center` option (off in their inference).
  Returns:
    regions by descending mean score; `[0].center` is the predicted point.
  """
  scores = np.asarray(scores)
  _check_scores(scores, n_width, n_height)
  # torch compares a float32 tensor with a Python float in float32, so the threshold is rounded to the scores' dtype.
  threshold = scores.dtype.type(float(scores.max()) * activation_threshold)
  indices = np.nonzero(scores > threshold)[0]
  return _regions(indices, [float(scores[i]) for i in indices], n_width, n_height, rect_center)


def predict_point(scores: np.ndarray | jax.Array, n_width: int, n_height: int) -> Point:
  """The click point (x, y) in [0, 1]: the centre of the best region of `prediction_regions`."""
  return prediction_regions(scores, n_width, n_height)[0].center


def verifier_candidates(
  scores: np.ndarray | jax.Array,
  n_width: int,
  n_height: int,
  activation_threshold: float = VERIFIER_ACTIVATION_THRESHOLD,
  top_n: int = VERIFIER_TOP_N,
  rect_center: bool = False,
) -> list[Point]:
  """Candidate points (x, y) in [0, 1] for the verifier: region centres by score, then each kept patch's centre
  (module docstring; their `get_prediction_region_point(..., no_groups=True)` in verifier_model.py)."""
  scores = np.asarray(scores, dtype=np.float64)  # their verifier reads the scores back from JSON into float64
  _check_scores(scores, n_width, n_height)
  valid = np.nonzero(scores > scores.max() * activation_threshold)[0]
  if len(valid) > top_n:
    valid_scores = scores[valid]
    order = np.argsort(valid_scores)[::-1][:top_n]
    indices, values = valid[order], valid_scores[order]
  else:
    indices, values = valid, scores[valid]
  regions = _regions(indices, [float(v) for v in values], n_width, n_height, rect_center)
  patch_centers = [((int(i) % n_width + 0.5) / n_width, (int(i) // n_width + 0.5) / n_height) for i in indices]
  return [region.center for region in regions] + patch_centers


def _select(verifier_scores: Iterable[float], threshold: float) -> tuple[int, list[float]]:
  seen: list[float] = []
  for score in verifier_scores:
    seen.append(float(score))
    if seen[-1] >= threshold:
      break
  if not seen:
    raise ValueError("verifier selection: expected at least one candidate, got none")
  return seen.index(max(seen)), seen


def select_candidate(
  candidates: Sequence[Point], score_fn: Callable[[Point], float], threshold: float = VERIFIER_THRESHOLD
) -> tuple[int, list[float]]:
  """`ground_only_positive` with method 'score': the index of the chosen candidate and the verifier scores computed.

  Candidates are scored in order by `score_fn` (the verifier's p(True) for a candidate point (x, y) in [0, 1]),
  stopping at the first score ≥ `threshold`; the first candidate with the highest score seen wins. A single
  candidate is chosen without calling the verifier (scores []).
  """
  if len(candidates) == 0:
    raise ValueError("candidates: expected at least one point, got none")
  if len(candidates) == 1:
    return 0, []
  return _select((score_fn(point) for point in candidates), threshold)


def select_from_scores(verifier_scores: Sequence[float] | np.ndarray, threshold: float = VERIFIER_THRESHOLD) -> int:
  """`select_candidate` on verifier scores already computed for every candidate (the early stop replayed)."""
  verifier_scores = np.asarray(verifier_scores, dtype=np.float64).reshape(-1)
  if verifier_scores.size == 1:
    return 0
  return _select(verifier_scores, threshold)[0]


def verifier_probability(logits: jax.Array, true_id: int, false_id: int) -> jax.Array:
  """The verifier's score p(True) / (p(True) + p(False)) from next-token logits [..., V] -> [...] float32.

  Their `verify` takes the softmax over the vocabulary first; the ratio is sigmoid(l_True − l_False), which is what
  this computes (no underflow when both probabilities are tiny).
  """
  logits = jnp.asarray(logits, jnp.float32)
  return jax.nn.sigmoid(logits[..., true_id] - logits[..., false_id])
