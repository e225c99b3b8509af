"""`mminference_attention` end to end: density-1 configs equal dense causal attention
(`jaxagents.layers.attention`); sparse, permuted and boundary configs equal dense attention under the layouts'
token masks mapped back to the original order, in float32 to 1e-5, on the XLA backend and on the Pallas
Triton kernel in interpret mode; two runs are bitwise equal; bad configs raise ValueErrors."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.sparse import make_permutation, mminference_attention, permuted_sparse_attention
from kernels_pallas.block_sparse import from_block_mask
from tests.kernels.block_sparse_cases import library_attention
from tests.sparse.oracles import identity_positions, original_token_mask, perm_positions

S, D, BLOCK = 256, 16, 32
F32 = {"atol": 1e-5, "rtol": 1e-6}


def _inputs(q_heads, kv_heads, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, S, q_heads, D)).astype(np.float32)
  k = rng.standard_normal((batch, S, kv_heads, D)).astype(np.float32)
  v = rng.standard_normal((batch, S, kv_heads, D)).astype(np.float32)
  ids = np.zeros((batch, S), np.int32)
  for b, edges in enumerate([(40, 100, 130, 200), (10, 70, 150, 180)]):  # interleaved vision (0) / text (1) runs
    for j, (lo, hi) in enumerate(zip([0, *edges], [*edges, S])):
      ids[b, lo:hi] = j % 2
  return q, k, v, ids


def _plan_mask(plan, num_q_heads, batch=2):
  """bool [B, Hq, S, S]: every head's layout token mask in the original order."""
  mask = np.zeros((batch, num_q_heads, S, S), bool)
  for group in plan:
    positions = (
      identity_positions(batch, len(group.heads), S) if group.permutation is None else perm_positions(group.permutation)
    )
    mask[:, list(group.heads)] = original_token_mask(group.layout, *positions)
  return mask


DENSE_CONFIGS = [
  {"pattern": "dense"},
  {"pattern": "a_shape", "params": {"n_init": 0, "n_local": S}},
  {"pattern": "vertical_slash", "params": {"v_size": S, "s_size": 0}},
  {"pattern": "block_topk", "params": {"topk": S // BLOCK}},
  {"pattern": "dense", "boundary": "2d"},
  {"pattern": "block_topk", "params": {"topk": S // BLOCK}, "boundary": "q"},
]

SPARSE_CONFIGS = [
  {"pattern": "a_shape", "params": {"n_init": 16, "n_local": 48, "max_blocks": 3}},
  {"pattern": "vertical_slash", "params": {"v_size": 16, "s_size": 32, "last_q": 32}, "score": 0.9},
  {"pattern": "block_topk", "params": {"topk": 2}},
  {"pattern": "grid", "params": {"strides": [4, 8], "last_q": 32, "max_blocks": 4}},
  {"pattern": "vertical_slash", "params": {"v_size": 16, "s_size": 16, "last_q": 16}, "boundary": "q"},
  {
    "pattern": "a_shape",
    "params": {"n_init": 0, "n_local": 32},
    "boundary": "2d",
    "per_modality": {"0,0": {"pattern": "vertical_slash", "params": {"v_size": 8, "s_size": 16, "last_q": 16}}},
  },
]


def test_density_one_configs_equal_dense_causal_attention():
  q, k, v, ids = _inputs(q_heads=6, kv_heads=2)
  out = mminference_attention(q, k, v, DENSE_CONFIGS, ids, block_q=BLOCK, block_kv=BLOCK, backend="xla")
  np.testing.assert_allclose(out, library_attention(q, k, v, causal=True), **F32)


def test_sparse_configs_equal_dense_attention_under_the_layout_masks_in_original_order():
  q, k, v, ids = _inputs(q_heads=6, kv_heads=2)
  out, plan = mminference_attention(
    q, k, v, SPARSE_CONFIGS, ids, block_q=BLOCK, block_kv=BLOCK, backend="xla", return_plan=True
  )
  assert sorted(h for group in plan for h in group.heads) == list(range(6))
  mask = _plan_mask(plan, 6)
  causal = np.tri(S, dtype=bool)
  assert ((mask & causal).sum((-1, -2)) < causal.sum()).all(), "every head should be sparse"
  np.testing.assert_allclose(out, library_attention(q, k, v, causal=True, mask=jnp.asarray(mask)), **F32)
  again = mminference_attention(q, k, v, SPARSE_CONFIGS, ids, block_q=BLOCK, block_kv=BLOCK, backend="xla")
  np.testing.assert_array_equal(again, out)  # bitwise deterministic


def test_equal_head_configs_share_one_group_and_output_keeps_head_order():
  q, k, v, ids = _inputs(q_heads=4, kv_heads=2)
  configs = [SPARSE_CONFIGS[2], SPARSE_CONFIGS[0], SPARSE_CONFIGS[2], SPARSE_CONFIGS[0]]
  out, plan = mminference_attention(q, k, v, configs, block_q=BLOCK, block_kv=BLOCK, backend="xla", return_plan=True)
  assert [group.heads for group in plan] == [(0, 2), (1, 3)]
  mask = _plan_mask(plan, 4)
  np.testing.assert_allclose(out, library_attention(q, k, v, causal=True, mask=jnp.asarray(mask)), **F32)


def test_permuted_path_on_the_pallas_triton_kernel_in_interpret_mode_matches_dense_attention():
  q, k, v, ids = _inputs(q_heads=1, kv_heads=1, batch=2)
  configs = [SPARSE_CONFIGS[5]]  # 2D boundary: queries and keys permuted by modality
  out, plan = mminference_attention(
    q, k, v, configs, ids, block_q=64, block_kv=64, backend="pallas_triton", interpret=True, return_plan=True
  )
  assert plan[0].permutation is not None
  expected = library_attention(q, k, v, causal=True, mask=jnp.asarray(_plan_mask(plan, 1)))
  np.testing.assert_allclose(out, expected, **F32)


@pytest.mark.parametrize("layout_heads", [4, 2], ids=["per-q-head-layout", "per-kv-head-layout"])
def test_permuted_sparse_attention_is_permutation_invariant_with_a_different_permutation_per_kv_head(layout_heads):
  # pi^-1(kernel(pi q, pi k, pi v)) == attention(q, k, v) under the mask M[pi^-1, pi^-1]; the query heads of a
  # kv head share its permutation.
  q, k, v, _ = _inputs(q_heads=4, kv_heads=2)
  rng = np.random.default_rng(4)
  perms = np.stack([np.stack([rng.permutation(S) for _ in range(2)]) for _ in range(2)]).astype(np.int32)
  perm = make_permutation(perms, perms)
  block_mask = rng.random((2, layout_heads, S // BLOCK, S // BLOCK)) < 0.5
  block_mask |= np.eye(S // BLOCK, dtype=bool)
  layout = from_block_mask(block_mask, BLOCK, BLOCK)
  out = permuted_sparse_attention(q, k, v, perm, layout, backend="xla")
  layout_perms = np.repeat(perms, layout_heads // 2, axis=1)  # each layout head's permutation
  mask = np.repeat(original_token_mask(layout, layout_perms, layout_perms), 4 // layout_heads, axis=1)
  np.testing.assert_allclose(out, library_attention(q, k, v, causal=True, mask=jnp.asarray(mask)), **F32)


@pytest.mark.parametrize(
  "configs, kwargs, message",
  [
    ([{"pattern": "sliding"}] * 2, {}, "pattern"),
    ([{"pattern": "a_shape", "params": {"n_init": 4}}] * 2, {}, "missing"),
    ([{"pattern": "block_topk", "params": {"topk": 2, "k": 3}}] * 2, {}, "unknown"),
    ([{"pattern": "dense", "extra": 1}] * 2, {}, "config entry"),
    ([{"pattern": "grid", "params": {"strides": [4]}, "boundary": "q"}] * 2, {}, "grid"),
    ([{"pattern": "dense", "boundary": "3d"}] * 2, {}, "boundary"),
    ([{"pattern": "dense", "boundary": "q"}] * 2, {}, "modality_ids"),
    ([{"pattern": "dense", "boundary": "q", "per_modality": {"0,1": {"pattern": "dense"}}}] * 2, {"ids": True}, "key"),
    ([{"pattern": "dense"}], {}, "Hq=2"),
    (
      [{"pattern": "dense", "boundary": "2d", "per_modality": {"0,0": {"pattern": "dense", "x": 1}}}] * 2,
      {},
      "per_modality",
    ),
  ],
)
def test_bad_head_configs_raise_value_errors_naming_the_problem(configs, kwargs, message):
  q, k, v, ids = _inputs(q_heads=2, kv_heads=1, batch=2)
  with pytest.raises(ValueError, match=message):
    mminference_attention(q, k, v, configs, ids if kwargs.get("ids") else None, block_q=BLOCK, block_kv=BLOCK)
