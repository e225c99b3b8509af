"""GQA all the way to the kernel: `mminference_attention` hands the kernels K/V with kv heads (never repeated per
query head), never folds heads into the batch ([B * H, S, 1, D]), makes ONE kernel call for all unpermuted heads
and one per permuted group, and permutes K/V once per kv head. The kernel entry point is intercepted and every
call's shapes recorded; the outputs still equal dense attention under the plan's masks."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxagents.sparse.dispatch as dispatch
import jaxagents.sparse.permuted as permuted
from jaxagents.sparse import mminference_attention
from tests.kernels.block_sparse_cases import library_attention
from tests.sparse.oracles import identity_positions, original_token_mask, perm_positions

S, D, BLOCK, HQ, HKV = 192, 16, 32, 8, 2  # S unused elsewhere in the suite: a fresh trace records the calls

CONFIGS = (
  [{"pattern": "vertical_slash", "params": {"v_size": 16, "s_size": 32, "last_q": 32}}] * 2  # kv head 0
  + [{"pattern": "block_topk", "params": {"topk": 2}}] * 2  # kv head 0, another unpermuted group
  + [{"pattern": "grid", "params": {"strides": [4, 8], "last_q": 32}}] * 3  # 3 of kv head 1's 4 query heads
  + [{"pattern": "dense", "boundary": "2d"}]  # kv head 1's last query head, modality-permuted
)


@pytest.fixture
def calls(monkeypatch):
  recorded = []

  def spy(real):
    def wrapped(q, k, v, layout, **kwargs):
      positions = kwargs.get("q_positions")
      recorded.append({
        "q": tuple(q.shape), "k": tuple(k.shape), "v": tuple(v.shape), "layout": tuple(layout.kv_blocks.shape),
        "positions": None if positions is None else tuple(jnp.shape(positions)),
      })
      return real(q, k, v, layout, **kwargs)
    return wrapped

  monkeypatch.setattr(dispatch, "block_sparse_attention", spy(dispatch.block_sparse_attention))
  monkeypatch.setattr(permuted, "block_sparse_attention", spy(permuted.block_sparse_attention))
  return recorded


def _inputs():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((1, S, HQ, D)).astype(np.float32)
  k, v = (rng.standard_normal((1, S, HKV, D)).astype(np.float32) for _ in range(2))
  ids = (np.arange(S)[None] // 40 % 2).astype(np.int32)
  return q, k, v, ids


def test_kernel_calls_take_kv_heads_unrepeated_and_no_head_folding(calls):
  q, k, v, ids = _inputs()
  out, plan = mminference_attention(q, k, v, CONFIGS, ids, block_q=BLOCK, block_kv=BLOCK, backend="xla",
                                    return_plan=True)
  # One call for the 4 unpermuted heads (both groups, on the original q/k/v), one per permuted group.
  assert len(calls) == 3, calls
  unpermuted = calls[-1]
  assert unpermuted["q"] == (1, S, HQ, D) and unpermuted["k"] == unpermuted["v"] == (1, S, HKV, D)
  assert unpermuted["layout"][:2] == (1, HQ)
  for call in calls[:2]:  # grid and boundary: kv head 1 and its 4 query heads, K/V permuted once
    assert call["q"] == (1, S, 4, D) and call["k"] == call["v"] == (1, S, 1, D), call
    assert call["positions"] == (1, 1, S), call  # per kv head (one here) or shared, never per query head
  for call in calls:
    assert call["q"][0] == 1 and call["q"][2] > 1, "heads folded into the batch"
    assert call["q"][2] == call["k"][2] * (HQ // HKV), "K/V repeated per query head"

  mask = np.zeros((1, HQ, S, S), bool)
  for group in plan:
    positions = (identity_positions(1, len(group.heads), S) if group.permutation is None
                 else perm_positions(group.permutation))
    mask[:, list(group.heads)] = original_token_mask(group.layout, *positions)
  np.testing.assert_allclose(out, library_attention(q, k, v, causal=True, mask=jnp.asarray(mask)),
                             atol=1e-5, rtol=1e-6)


def test_a_grid_group_searches_one_permutation_per_kv_head(calls):
  q, k, v, _ = _inputs()
  grid_heads = [{"pattern": "grid", "params": {"strides": [4, 8], "last_q": 32}}] * HQ
  mminference_attention(q, k, v, grid_heads, block_q=BLOCK, block_kv=BLOCK, backend="xla")
  (call,) = calls
  assert call["q"] == (1, S, HQ, D) and call["k"] == (1, S, HKV, D)
  assert call["positions"] == (1, HKV, S)  # each kv head's own permutation
  assert call["layout"][:2] == (1, HKV)  # shared by the kv head's query heads: K/V blocks loaded once for them
