"""The offline per-head search (`jaxagents.sparse.search`): on synthetic q/k with planted per-head
structure it picks the planted pattern and dense for an unstructured head; its recall, output error and density
equal independent numpy computations (dense softmax / attention over the layouts' token masks); the choice is
the cheapest candidate above the threshold; `min_recall` is the minimum over the chosen heads; runs are
deterministic. (The Qwen-VL calibration CLI is tested in tests/models/qwen_vl/test_sparse_search.py.)"""

import json

import numpy as np
import pytest

from jaxagents.sparse import build_head_layout, parse_head_config
from jaxagents.sparse.search import (
  Candidate,
  LayerScores,
  calibration_hash,
  choose,
  default_candidates,
  search,
)
from tests.sparse.oracles import block_mask, causal_probs, identity_positions, original_token_mask, perm_positions

S, D, BLOCK = 512, 32, 32
GRID, COLUMNS, SINKS = (8, 3), (45, 130, 211, 302, 389, 470), 4
CANDIDATES = [
  Candidate.make(entry)
  for entry in [
    {"pattern": "dense"},
    {"pattern": "a_shape", "params": {"n_init": 16, "n_local": 192}},
    {"pattern": "vertical_slash", "params": {"v_size": 40, "s_size": 16}},
    {"pattern": "block_topk", "params": {"topk": 2}},
    {"pattern": "grid", "params": {"strides": [8, 12]}},
    {"pattern": "vertical_slash", "params": {"v_size": 40, "s_size": 16}, "boundary": "q"},
  ]
]
# Query heads 0, 1 share kv head 0 (the grid keys); heads 2, 3 share kv head 1 (column and A-shape keys).
PLANTED = {0: "grid", 1: "dense", 2: "vertical_slash", 3: "a_shape"}


def _planted_sample(seed):
  """q [S, 4, D], k, v [S, 2, D] with one planted structure per query head (`PLANTED`)."""
  rng = np.random.default_rng(seed)
  tokens = np.arange(S)
  q = np.zeros((S, 4, D))
  k = np.zeros((S, 2, D))
  # Grid: logit 5 on keys of the query's residue mod 8 (slashes) and on keys = 3 (mod 8) (vertical lines).
  stride, phase = GRID
  basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
  scale = np.sqrt(5.0 * np.sqrt(D))
  q[:, 0] = scale * (basis[tokens % stride] + basis[-1])
  k[:, 0] = scale * (basis[tokens % stride] + np.outer(tokens % stride == phase, basis[-1]))
  q[:, 1] = 0.02 * rng.standard_normal((S, D))  # nearly uniform attention: nothing sparse recalls 95 %
  # Columns: logit 8 on the planted keys, in dimension 3.
  q[:, 2, 3] = k[list(COLUMNS), 1, 3] = np.sqrt(8.0 * np.sqrt(D))
  q[:, 2, 4:] = 0.1 * rng.standard_normal((S, D - 4))
  # A-shape: logit a cos(theta (i - j)) ~ a - (i - j)^2 / (2 sigma^2) (a local window), and SINKS sink keys one
  # above the window's peak, in dimensions 0-2.
  sigma, theta = 50.0, np.pi / (1.2 * S)
  amp = D**0.25 / (theta * sigma)
  q[:, 3, 0], q[:, 3, 1] = amp * np.cos(theta * tokens), amp * np.sin(theta * tokens)
  k[:, 1, 0], k[:, 1, 1] = amp * np.cos(theta * tokens), amp * np.sin(theta * tokens)
  k[:SINKS, 1, :2] = 0.0
  q[:, 3, 2], k[:SINKS, 1, 2] = 1.0, (amp**2 / np.sqrt(D) + 1.0) * np.sqrt(D)
  k[:, :, 4:] += 0.05 * rng.standard_normal((S, 2, D - 4))
  v = rng.standard_normal((S, 2, D))
  return q, k, v


def _modality_ids():
  ids = np.zeros(S, np.int32)
  ids[32:288] = ids[320:480] = 1  # vision runs between text runs
  return ids


@pytest.fixture(scope="module")
def planted():
  samples = [_planted_sample(seed) for seed in (0, 1)]
  q, k, v = (np.stack([s[i] for s in samples]).astype(np.float32) for i in range(3))
  ids = np.stack([_modality_ids()] * 2)
  config, (scores,) = search([(q, k, v)], ids, CANDIDATES, block_q=BLOCK, block_kv=BLOCK, model="planted")
  return q, k, v, ids, config, scores


def test_search_picks_the_planted_pattern_per_head_and_dense_for_the_unstructured_head(planted):
  *_, config, _ = planted
  chosen = config.layer_heads(0)
  assert {h: entry["pattern"] for h, entry in enumerate(chosen)} == PLANTED
  assert chosen[0]["params"] == {"strides": [8, 12]}
  assert all(entry.get("boundary", "none") == "none" for entry in chosen)


def _numpy_attention(q, k, v, mask):
  """float64 softmax(q k^T / sqrt(D) + causal + mask) v per head: [N, S, Hq, D]; mask [N, Hq, S, S]."""
  probs = causal_probs(q, k)
  probs = np.where(mask, probs, 0.0)
  probs = probs / probs.sum(-1, keepdims=True)
  v = np.repeat(np.asarray(v, np.float64), q.shape[2] // v.shape[2], axis=2)
  return np.einsum("bhst,bthd->bshd", probs, v)


def test_recall_error_and_density_equal_independent_numpy_computations(planted):
  q, k, v, ids, _, scores = planted
  probs = causal_probs(q, k)  # [N, Hq, S, T]
  dense_out = _numpy_attention(q, k, v, np.ones(probs.shape, bool))
  dense_blocks = (S // BLOCK) * (S // BLOCK + 1) / 2
  k_per_head = np.repeat(k, 2, axis=2)  # the dispatcher builds a group's layouts from K repeated per query head
  for c, candidate in enumerate(CANDIDATES):
    perm, layout = build_head_layout(q, k_per_head, parse_head_config(candidate.entry, S), ids, num_modalities=2,
                                     block_q=BLOCK, block_kv=BLOCK, sm_scale=None)
    positions = identity_positions(2, 4, S) if perm is None else perm_positions(perm, 4)
    mask = original_token_mask(layout, *positions)  # [N, Hq, S, T] in original order
    row_recall = (probs * mask).sum(-1)[:, :, scores.rows]  # [N, Hq, R]
    np.testing.assert_allclose(scores.recall[c], row_recall.mean(-1), atol=1e-5, err_msg=candidate.name)
    np.testing.assert_allclose(scores.min_row_recall[c], row_recall.min(-1), atol=1e-5, err_msg=candidate.name)
    out = _numpy_attention(q, k, v, mask)
    error = np.linalg.norm(out - dense_out, axis=(1, 3)) / np.linalg.norm(dense_out, axis=(1, 3))
    np.testing.assert_allclose(scores.error[c], error, atol=2e-5, err_msg=candidate.name)
    np.testing.assert_allclose(scores.density[c], block_mask(layout, S).sum((-1, -2)) / dense_blocks)


def test_each_head_takes_the_cheapest_candidate_above_threshold_and_min_recall_is_their_minimum(planted):
  *_, config, scores = planted
  recall, density = scores.recall.mean(1), scores.density.mean(1)
  entries = config.layer_heads(0)
  for h, entry in enumerate(entries):
    eligible = [c for c in range(len(CANDIDATES)) if recall[c, h] >= 0.95]
    best = min(eligible, key=lambda c: (density[c, h], c))
    assert {key: value for key, value in entry.items() if key != "score"} == CANDIDATES[best].entry
    assert entry["score"] == (1.0 if entry["pattern"] == "dense" else pytest.approx(recall[best, h], abs=1e-6))
  assert config.min_recall == min(entry["score"] for entry in entries) >= 0.95
  assert (config.block_q, config.block_kv, config.model) == (BLOCK, BLOCK, "planted")


def test_search_is_deterministic_and_hashes_its_calibration_inputs(planted):
  q, k, v, ids, config, _ = planted
  again, _ = search([(q.copy(), k.copy(), v.copy())], ids.copy(), CANDIDATES, block_q=BLOCK, block_kv=BLOCK,
                    model="planted")
  assert again == config and json.dumps(again.to_dict()) == json.dumps(config.to_dict())
  assert config.calib_hash == calibration_hash([q, k, v, ids])
  other = q.copy()
  other[0, 0, 0, 0] += 1.0
  assert calibration_hash([other, k, v, ids]) != config.calib_hash


CHOICES = [
  {"pattern": "dense"},
  {"pattern": "block_topk", "params": {"topk": 1}},
  {"pattern": "block_topk", "params": {"topk": 2}},
  {"pattern": "a_shape", "params": {"n_init": 1, "n_local": 8}},
]


def _scores(recall, density, error=None, first=0):
  """LayerScores of CHOICES[first:] on one sample; recall, density, error [C, Hq]."""
  arrays = [np.asarray(x, float)[first:, None] for x in (recall, density, np.zeros_like(recall) if error is None
                                                           else error)]
  recall, density, error = arrays
  return LayerScores(tuple(Candidate.make(e) for e in CHOICES[first:]), np.arange(4), recall, recall, error, density)


def test_choose_prefers_lower_density_then_the_earlier_candidate_and_falls_back_to_dense():
  # Head 0: candidates 0, 2, 3 qualify, 2 is cheapest. Head 1: 1 and 3 tie on density, 1 comes first.
  # Head 2: only dense qualifies.
  recall = [[1.0, 1.0, 1.0], [0.5, 0.97, 0.2], [0.96, 0.5, 0.9], [0.99, 0.96, 0.94]]
  density = [[1.0, 1.0, 1.0], [0.2, 0.3, 0.1], [0.1, 0.5, 0.1], [0.5, 0.3, 0.1]]
  chosen = choose(_scores(recall, density))
  assert chosen == [{**CHOICES[2], "score": 0.96}, {**CHOICES[1], "score": 0.97}, {"pattern": "dense", "score": 1.0}]
  # Without a dense candidate, a head that nothing serves still falls back to dense.
  assert choose(_scores(recall, density, first=1))[2] == {"pattern": "dense", "score": 1.0}
  # A bound on the output error rules candidate 2 out for head 0; a stricter threshold rules out 3 as well.
  error = [[0.0] * 3, [0.0] * 3, [0.5, 0.0, 0.0], [0.0] * 3]
  assert choose(_scores(recall, density, error), max_error=0.1)[0] == {**CHOICES[3], "score": 0.99}
  assert choose(_scores(recall, density, error), threshold=0.995, max_error=0.1)[0] == {"pattern": "dense",
                                                                                           "score": 1.0}


def test_default_candidates_are_valid_unique_equal_budget_buckets():
  candidates = default_candidates(512, block=32, budgets=(1 / 8, 1 / 2), strides=(1, 8, 16, 600), boundary=True)
  entries = [c.entry for c in candidates]
  assert entries[0] == {"pattern": "dense"} and len({c.entry_json for c in candidates}) == len(candidates)
  for entry in entries:
    parse_head_config(entry, 512)  # raises on an invalid pattern or params
  assert entries[-1] == {"pattern": "grid", "params": {"strides": [8, 16]}}  # strides outside [2, S] dropped
  for budget, keys in ((1 / 8, 32), (1 / 2, 128)):  # f * S / 2 keys per query row
    bucket = [c.entry for c in candidates if c.budget == budget]
    assert {"pattern": "a_shape", "params": {"n_init": keys // 8, "n_local": keys - keys // 8}} in bucket
    assert {"pattern": "block_topk", "params": {"topk": keys // 32}} in bucket
    split = [(e["params"]["v_size"], e["params"]["s_size"]) for e in bucket
             if e["pattern"] == "vertical_slash" and "boundary" not in e]
    assert len(split) == 3 and all(v + s == keys for v, s in split)
    assert sorted(e["boundary"] for e in bucket if "boundary" in e) == ["2d", "q"]
  plain = default_candidates(512, budgets=(1 / 4,), boundary=False, patterns=("a_shape",))
  assert [c.entry["pattern"] for c in plain] == ["dense", "a_shape"]
  for bad in ({"budgets": (0.0,)}, {"budgets": (1.5,)}, {"patterns": ("stripes",)}):
    with pytest.raises(ValueError, match="default_candidates"):
      default_candidates(512, **bad)
