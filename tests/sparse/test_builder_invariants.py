"""Every pattern builder keeps the layout invariants of `layouts.py` (kernel contract, causal-valid in
original positions, own-token block listed, no empty rows) across block sizes, MAXN truncation, GQA and
non-causal use; builders are jit-able and bitwise deterministic; `compose` is the union."""

import functools

import jax
import numpy as np
import pytest

from jaxagents.sparse import a_shape, block_topk, boundary_layout, compose, grid, vertical_slash
from jaxagents.sparse.vertical_slash import vertical_slash_budget
from tests.sparse.oracles import assert_builder_invariants, block_mask, identity_positions, perm_positions

S, D = 256, 16


def _qk(batch=2, q_heads=4, kv_heads=2, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, S, q_heads, D)).astype(np.float32)
  k = rng.standard_normal((batch, S, kv_heads, D)).astype(np.float32)
  return q, k


def _modality_ids(batch=2, seed=3):
  # Interleaved runs of vision (0) and text (1) tokens, different per batch row.
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, S), np.int32)
  for b in range(batch):
    edges = np.sort(rng.choice(np.arange(8, S - 8), size=6, replace=False))
    for j, (lo, hi) in enumerate(zip([0, *edges], [*edges, S])):
      ids[b, lo:hi] = j % 2
  return ids


UNPERMUTED = {
  "a_shape": lambda q, k, **kw: a_shape(S, 8, 40, batch=q.shape[0], num_heads=q.shape[2], **kw),
  "vertical_slash": lambda q, k, **kw: vertical_slash(q, k, 24, 40, last_q=32, **kw),
  "vertical_slash_defaults": lambda q, k, **kw: vertical_slash(q, k, 30, 100, **kw),
  "block_topk": lambda q, k, **kw: block_topk(q, k, 2, **kw),
}
PERMUTED = {
  "grid": lambda q, k, **kw: grid(q, k, (4, 8, 16), last_q=32, **kw),
  "q_boundary_vertical_slash": lambda q, k, **kw: boundary_layout(
    q, k, _modality_ids(), "vertical_slash", {"v_size": 16, "s_size": 16, "last_q": 16}, mode="q", **kw
  ),
  "2d_boundary_topk": lambda q, k, **kw: boundary_layout(
    q, k, _modality_ids(), "block_topk", {"topk": 2}, mode="2d", **kw
  ),
}
# Each builder once, over block shapes and MAXN values that force truncation (compiles dominate the run time).
UNPERMUTED_CASES = [
  ("a_shape", {"block_q": 16, "block_kv": 64, "max_blocks": 1}),
  ("vertical_slash", {"block_q": 64, "block_kv": 32, "max_blocks": 3}),
  ("vertical_slash_defaults", {"block_q": 32, "block_kv": 32}),
  ("block_topk", {"block_q": 32, "block_kv": 64, "max_blocks": 6}),  # MAXN > NK = 4: padded rows
]
PERMUTED_CASES = [
  ("grid", {"block_q": 32, "block_kv": 32, "max_blocks": 2}),
  # Q boundary: keys stay in place, so MAXN must hold every key block of the block's own tokens (modality.py).
  ("q_boundary_vertical_slash", {"block_q": 64, "block_kv": 32}),
  ("2d_boundary_topk", {"block_q": 32, "block_kv": 32, "max_blocks": 2}),
]


def _case_id(case):
  name, blocking = case
  return name + "-" + "-".join(f"{key}{value}" for key, value in blocking.items())


@pytest.mark.parametrize("case", UNPERMUTED_CASES, ids=_case_id)
def test_unpermuted_builders_keep_layout_invariants(case):
  name, blocking = case
  q, k = _qk()
  layout = UNPERMUTED[name](q, k, **blocking)
  # Without max_blocks, MAXN is the pattern's key budget in blocks (at most NK = 8 here).
  default = min(vertical_slash_budget(30, 100, blocking["block_q"], blocking["block_kv"]), S // blocking["block_kv"])
  max_blocks = blocking.get("max_blocks", default)
  assert layout.kv_blocks.shape == (2, 4, S // blocking["block_q"], max_blocks)
  assert_builder_invariants(layout, *identity_positions(2, 4, S))


@pytest.mark.parametrize("case", PERMUTED_CASES, ids=_case_id)
def test_permuted_builders_keep_layout_invariants_in_original_positions(case):
  name, blocking = case
  q, k = _qk()
  perm, layout = PERMUTED[name](q, k, **blocking)
  # Grid: one permutation and layout per kv head (its query heads share them); boundary heads: one permutation
  # for every head (it depends on the modalities only), a layout per query head.
  perm_heads, layout_heads = (2, 2) if name == "grid" else (1, 4)
  assert perm.q_perm.shape == perm.kv_perm.shape == (2, perm_heads, S)
  assert layout.num_heads == layout_heads
  assert_builder_invariants(layout, *perm_positions(perm, layout_heads))


@pytest.mark.parametrize("name", ["a_shape", "block_topk"])
def test_non_causal_builders_keep_the_contract_and_may_look_ahead(name):
  q, k = _qk()
  layout = UNPERMUTED[name](q, k, block_q=32, block_kv=32, causal=False)
  assert_builder_invariants(layout, *identity_positions(2, 4, S), causal=False)
  listed = block_mask(layout, S)
  assert np.triu(listed[0, 0], k=1).any(), "a non-causal layout should list some block above the diagonal"


def test_truncation_to_max_blocks_keeps_the_diagonal_block_first():
  q, k = _qk()
  full = block_mask(block_topk(q, k, 8, block_q=32, block_kv=32), S)
  one = block_mask(block_topk(q, k, 8, block_q=32, block_kv=32, max_blocks=1), S)
  np.testing.assert_array_equal(one, np.broadcast_to(np.eye(S // 32, dtype=bool), one.shape))
  assert (full.sum(-1) > 1).any()


def test_builders_are_jittable_and_bitwise_deterministic():
  q, k = _qk()
  build = PERMUTED["grid"]
  jitted = jax.jit(functools.partial(build, block_q=32, block_kv=32))
  first, second, eager = jitted(q, k), jitted(q, k), build(q, k, block_q=32, block_kv=32)
  for a, b, c in zip(jax.tree.leaves(first), jax.tree.leaves(second), jax.tree.leaves(eager)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_compose_lists_the_union_of_its_inputs():
  q, k = _qk()
  sinks = a_shape(S, 32, 1, block_q=32, block_kv=32, batch=2, num_heads=4)
  top = block_topk(q, k, 1, block_q=32, block_kv=32, max_blocks=2)
  union = compose([sinks, top], kv_len=S)
  assert union.max_blocks == min(sinks.max_blocks + top.max_blocks, S // 32)
  assert_builder_invariants(union, *identity_positions(2, 4, S))
  np.testing.assert_array_equal(block_mask(union, S), block_mask(sinks, S) | block_mask(top, S))


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda q, k: vertical_slash(q, k, 8, 8, block_q=48), "block_q"),
    (lambda q, k: vertical_slash(q, k, S + 1, 8), "v_size"),
    (lambda q, k: vertical_slash(q, k, 8, 8, last_q=S + 1), "last_q"),
    (lambda q, k: vertical_slash(q[:, :128], k, 8, 8), "S == T"),
    (lambda q, k: vertical_slash(q[0], k, 8, 8), "`q` must be"),
    (lambda q, k: block_topk(q, k, 0), "topk"),
    (lambda q, k: block_topk(q, k, 2, max_blocks=0), "max_blocks"),
    (lambda q, k: a_shape(S, 4, 0), "n_local"),
    (lambda q, k: grid(q, k, (1, 8)), "strides"),
    (lambda q, k: grid(q, k, (8, 8)), "strides"),
    (lambda q, k: boundary_layout(q, k, _modality_ids(), "dense", mode="3d"), "mode"),
    (lambda q, k: boundary_layout(q, k, _modality_ids()[:, :10], "dense", mode="q"), "modality_ids"),
    (lambda q, k: boundary_layout(q, k, _modality_ids(), "grid", {"strides": (4,)}, mode="q"), "grid"),
    (lambda q, k: boundary_layout(q, k, _modality_ids(), "a_shape", {"n_init": 1}, mode="q"), "n_local"),
  ],
)
def test_bad_builder_arguments_raise_value_errors_naming_the_argument(build, message):
  q, k = _qk()
  with pytest.raises(ValueError, match=message):
    build(q, k)
