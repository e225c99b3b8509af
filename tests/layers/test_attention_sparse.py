"""`attention(backend='sparse')`: MMInference sparse attention behind the shared attention entry point.

A density-1 config equals the XLA reference backend (float32, 1e-5) with left padding, right padding
(`kv_lengths`) and a sequence length that is no multiple of the block size; a sparse config (grid, A-shape,
vertical-slash, boundary heads) equals the XLA reference under the layouts' token masks mapped back to the
original order (oracle: `tests.sparse.oracles`, layouts from `mminference_attention(return_plan=True)`); padding
rows are finite and padding never leaks into real rows; inputs too short for the config run dense; misuse raises
ValueErrors naming the argument. `SelfAttention` picks its sparse config by a static or traced index, sows the
q/k/v it attends with, and stays dense on calls without `modality_ids`."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention import attention, sparse_min_length
from jaxagents.layers.attention_block import SelfAttention
from jaxagents.sparse import mminference_attention
from jaxagents.sparse.config import SparseAttentionConfig
from tests.sparse.oracles import identity_positions, original_token_mask, perm_positions

B, HQ, HKV, D, BLOCK = 2, 4, 2, 16, 16
F32 = {"atol": 1e-5, "rtol": 1e-6}
SPARSE_HEADS = [
  {"pattern": "grid", "params": {"strides": [4, 8], "last_q": 16}},
  {"pattern": "a_shape", "params": {"n_init": 16, "n_local": 32}},
  {"pattern": "vertical_slash", "params": {"v_size": 8, "s_size": 16, "last_q": 16}, "boundary": "2d"},
  {"pattern": "block_topk", "params": {"topk": 2}, "boundary": "q"},
]


def _inputs(seq_len, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((B, seq_len, HQ, D)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((B, seq_len, HKV, D)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((B, seq_len, HKV, D)), jnp.float32)
  modality = (np.arange(seq_len)[None, :] % 48 >= 16).astype(np.int32).repeat(B, axis=0)  # text, vision runs
  return q, k, v, jnp.asarray(modality)


def _left_padding(seq_len, pads=(5, 23)):
  mask = np.ones((B, seq_len), bool)
  for b, pad in enumerate(pads):
    mask[b, :pad] = False
  return jnp.asarray(mask)


def _config(heads):
  return SparseAttentionConfig.from_layers([heads], block_q=BLOCK, block_kv=BLOCK)


def _dense():
  return _config([{"pattern": "dense"}] * HQ)


def test_dense_config_equals_xla_backend_with_left_padding_and_no_block_multiple():
  q, k, v, _ = _inputs(41)  # front-padded to 48 inside
  kv_mask = _left_padding(41)
  expected = attention(q, k, v, causal=True, kv_mask=kv_mask)
  out = attention(q, k, v, causal=True, kv_mask=kv_mask, backend="sparse", sparse_config=_dense())
  np.testing.assert_allclose(out, expected, **F32)  # padding rows too: zeros on both sides


def test_dense_config_equals_xla_backend_with_kv_lengths():
  q, k, v, _ = _inputs(41)
  lengths = jnp.asarray([41, 30])
  expected = attention(q, k, v, causal=True, kv_lengths=lengths)
  out = attention(q, k, v, causal=True, kv_lengths=lengths, backend="sparse", sparse_config=_dense())
  np.testing.assert_allclose(out, expected, **F32)


def _sparse(q, k, v, kv_mask, modality):
  return attention(q, k, v, causal=True, kv_mask=kv_mask, backend="sparse", sparse_config=_config(SPARSE_HEADS),
                   modality_ids=modality)


def test_sparse_config_equals_xla_under_the_layouts_token_mask():
  seq_len = 96
  q, k, v, modality = _inputs(seq_len, seed=1)
  kv_mask = _left_padding(seq_len)
  out = _sparse(q, k, v, kv_mask, modality)
  _, plan = mminference_attention(q, k, v, SPARSE_HEADS, modality, block_q=BLOCK, block_kv=BLOCK,
                                  sm_scale=float(1 / np.sqrt(D)), kv_mask=kv_mask, return_plan=True)
  layout_mask = np.zeros((B, HQ, seq_len, seq_len), bool)
  for group in plan:
    if group.permutation is None:
      positions = identity_positions(B, len(group.heads), seq_len)
    else:
      positions = perm_positions(group.permutation)
    layout_mask[:, list(group.heads)] = original_token_mask(group.layout, *positions)
  assert not layout_mask[:, :, np.tri(seq_len, dtype=bool)].all()  # the config really is sparse
  expected = attention(q, k, v, causal=True, kv_mask=kv_mask, mask=jnp.asarray(layout_mask))
  np.testing.assert_allclose(out, expected, **F32)


def test_padding_never_leaks_into_real_rows_and_padding_rows_are_finite():
  seq_len = 96
  q, k, v, modality = _inputs(seq_len, seed=2)
  kv_mask = _left_padding(seq_len)
  pad = ~np.asarray(kv_mask)[:, :, None, None]
  out = np.asarray(_sparse(q, k, v, kv_mask, modality))
  noisy = np.asarray(_sparse(*(jnp.where(pad, 1e4, x) for x in (q, k, v)), kv_mask, modality))
  assert np.isfinite(out).all() and np.isfinite(noisy).all()
  real = np.asarray(kv_mask)
  np.testing.assert_array_equal(out[real], noisy[real])  # layouts and outputs ignore what padding holds


_ONE_LAYER = SparseAttentionConfig.uniform({"pattern": "dense"}, 1, HQ, block_q=BLOCK, block_kv=BLOCK)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"backend": "sparse"}, "`sparse_config` must be a one-layer SparseAttentionConfig"),
    ({"backend": "sparse", "sparse_config": [{"pattern": "dense"}] * HQ}, "`sparse_config` must be a one-layer"),
    ({"backend": "sparse", "sparse_config": SparseAttentionConfig.uniform({"pattern": "dense"}, 2, HQ)},
     "`sparse_config` must be one layer of Hq=4"),
    ({"backend": "sparse", "sparse_config": SparseAttentionConfig.uniform({"pattern": "dense"}, 1, 2)},
     "`sparse_config` must be one layer of Hq=4"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "causal": False}, "`causal` must be True"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "mask": jnp.ones((1, 1, 32, 32), bool)},
     "`mask` must be None"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "q_positions": jnp.arange(32)}, "`q_positions` must be None"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "kv_positions": jnp.arange(32)},
     "`kv_positions` must be None"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "q_segment_ids": jnp.zeros((B, 32), jnp.int32),
      "kv_segment_ids": jnp.zeros((B, 32), jnp.int32)}, "`q_segment_ids` must be None"),
    ({"backend": "sparse", "sparse_config": _ONE_LAYER, "modality_ids": jnp.zeros((B, 31), jnp.int32)},
     "`modality_ids` must be int of shape"),
    ({"sparse_config": _ONE_LAYER}, "`sparse_config` must be None unless backend='sparse'"),
    ({"modality_ids": jnp.zeros((B, 32), jnp.int32)}, "`modality_ids` must be None unless backend='sparse'"),
  ],
)
def test_misuse_raises_value_error_naming_the_argument(kwargs, match):
  q, k, v, _ = _inputs(32)
  with pytest.raises(ValueError, match=match):
    attention(q, k, v, **{"causal": True, **kwargs})


def test_sparse_backend_needs_self_attention_lengths():
  q, k, v, _ = _inputs(32)
  with pytest.raises(ValueError, match="`k` must be length S=16"):
    attention(q[:, :16], k, v, causal=True, backend="sparse", sparse_config=_dense())


def test_boundary_heads_without_modality_ids_treat_every_token_as_text():
  q, k, v, _ = _inputs(32)
  heads = [{"pattern": "dense", "boundary": "2d"}] * HQ
  config = dataclasses.replace(_config(heads), num_modalities=2)
  out = attention(q, k, v, causal=True, backend="sparse", sparse_config=config)
  np.testing.assert_allclose(out, attention(q, k, v, causal=True), **F32)


def test_min_length_is_the_longest_length_bound_parameter():
  heads = [
    {"pattern": "vertical_slash", "params": {"v_size": 100, "s_size": 301}},  # s_size <= 2 S - 1 -> S >= 151
    {"pattern": "grid", "params": {"strides": [72, 36]}},  # last_q defaults to 64
    {"pattern": "a_shape", "params": {"n_init": 4, "n_local": 500}},  # a window may exceed S
    {"pattern": "dense", "boundary": "q", "per_modality": {"1": {"pattern": "grid", "params": {"strides": [160]}}}},
  ]
  assert sparse_min_length(_config(heads)) == 160
  assert sparse_min_length(_config(heads[:3])) == 151
  assert sparse_min_length(_dense()) == 1


def test_inputs_shorter_than_the_config_needs_run_dense():
  q, k, v, modality = _inputs(40)  # padded to 48 < last_q = 64
  kv_mask = _left_padding(40)
  heads = [{"pattern": "vertical_slash", "params": {"v_size": 4, "s_size": 4}}] * HQ
  out = attention(q, k, v, causal=True, kv_mask=kv_mask, backend="sparse", sparse_config=_config(heads),
                  modality_ids=modality)
  np.testing.assert_allclose(out, attention(q, k, v, causal=True, kv_mask=kv_mask), **F32)


def test_self_attention_runs_the_indexed_sparse_config_on_the_inputs_it_sows():
  seq_len, embed = 64, 24
  window = _config([{"pattern": "a_shape", "params": {"n_init": 0, "n_local": 16}}] * HQ)
  block = SelfAttention(num_heads=HQ, num_kv_heads=HKV, head_dim=D, sparse_configs=(_dense(), window))
  x = jnp.asarray(np.random.default_rng(4).standard_normal((B, seq_len, embed)), jnp.float32)
  params = nn.unbox(block.init(jax.random.key(0), x))
  assert set(params) == {"params"}  # nothing sown at init
  _, _, _, modality = _inputs(seq_len)
  kw = {"causal": True, "kv_mask": _left_padding(seq_len, pads=(3, 9)), "modality_ids": modality}
  out, state = block.apply(params, x, sparse_index=1, mutable=["attention_inputs"], **kw)
  ((q, k, v),) = state["attention_inputs"]["qkv"]
  core = attention(q, k, v, backend="sparse", sparse_config=window, **kw)
  np.testing.assert_allclose(out, core.reshape(B, seq_len, -1) @ params["params"]["o"]["kernel"], **F32)
  traced = jax.jit(lambda i: block.apply(params, x, sparse_index=i, **kw))(jnp.int32(1))  # the lax.switch path
  np.testing.assert_allclose(traced, out, **F32)
  dense = block.apply(params, x, causal=True, kv_mask=kw["kv_mask"])  # no modality_ids: the dense backend
  np.testing.assert_allclose(block.apply(params, x, sparse_index=0, **kw), dense, **F32)
  assert np.abs(np.asarray(out - dense)).max() > 1e-3
  with pytest.raises(ValueError, match="`sparse_index` must be in"):
    block.apply(params, x, sparse_index=2, **kw)
  with pytest.raises(ValueError, match="`sparse_configs` is empty"):
    SelfAttention(num_heads=HQ, num_kv_heads=HKV, head_dim=D).apply(params, x, **kw)
