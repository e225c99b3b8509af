"""attention(): the 'xla' reference against a naive float64 numpy softmax and against
jax.nn.dot_product_attention, plus its input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention import ATTENTION_BACKENDS, attention, make_attention_mask

# Jitted once per shape: much faster on CPU than op-by-op dispatch.
_jit_attention = jax.jit(attention, static_argnames=("causal", "scale", "backend"))


def _qkv(batch=2, q_len=5, kv_len=5, num_heads=4, num_kv_heads=2, head_dim=8, v_dim=None, dtype=np.float32):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((batch, q_len, num_heads, head_dim)).astype(dtype)
  k = rng.standard_normal((batch, kv_len, num_kv_heads, head_dim)).astype(dtype)
  v = rng.standard_normal((batch, kv_len, num_kv_heads, v_dim or head_dim)).astype(dtype)
  return q, k, v


def _visible(
  batch,
  num_heads,
  q_len,
  kv_len,
  causal=False,
  q_pos=None,
  kv_pos=None,
  q_seg=None,
  kv_seg=None,
  kv_valid=None,
  mask=None,
):
  """The masking rules, written out element by element."""
  if q_pos is None:
    q_pos = np.arange(q_len) + kv_len - q_len
  if kv_pos is None:
    kv_pos = np.arange(kv_len)
  q_pos = np.broadcast_to(q_pos, (batch, q_len))
  kv_pos = np.broadcast_to(kv_pos, (batch, kv_len))
  out = np.ones((batch, num_heads, q_len, kv_len), bool)
  for b in range(batch):
    for h in range(num_heads):
      for s in range(q_len):
        for t in range(kv_len):
          ok = True
          if causal:
            ok &= kv_pos[b, t] <= q_pos[b, s]
          if q_seg is not None:
            ok &= q_seg[b, s] == kv_seg[b, t]
          if kv_valid is not None:
            ok &= bool(kv_valid[b, t])
          if mask is not None:
            ok &= bool(np.broadcast_to(mask, out.shape)[b, h, s, t])
          out[b, h, s, t] = ok
  return out


def _naive_attention(q, k, v, visible, scale=None):
  """Per (batch, head, query) softmax in float64; rows with no visible key give zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  batch, q_len, num_heads, head_dim = q.shape
  groups = num_heads // k.shape[2]
  scale = 1 / np.sqrt(head_dim) if scale is None else scale
  out = np.zeros((batch, q_len, num_heads, v.shape[-1]))
  for b in range(batch):
    for h in range(num_heads):
      kh = h // groups
      for s in range(q_len):
        vis = visible[b, h, s]
        if not vis.any():
          continue
        scores = k[b, :, kh] @ q[b, s, h] * scale
        p = np.exp(scores[vis] - scores[vis].max())
        out[b, s, h] = (p / p.sum()) @ v[b, vis, kh]
  return out


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_xla_matches_naive_reference_for_mha_and_gqa(num_heads, num_kv_heads, causal):
  q, k, v = _qkv(num_heads=num_heads, num_kv_heads=num_kv_heads, v_dim=6)
  out = _jit_attention(q, k, v, causal=causal)
  expected = _naive_attention(q, k, v, _visible(2, num_heads, 5, 5, causal=causal))
  assert out.shape == (2, 5, num_heads, 6)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_segment_ids_restrict_attention_to_equal_ids():
  q, k, v = _qkv(q_len=6, kv_len=6)
  seg = np.array([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 7, 7]], np.int32)
  out = _jit_attention(q, k, v, causal=True, q_segment_ids=seg, kv_segment_ids=seg)
  expected = _naive_attention(q, k, v, _visible(2, 4, 6, 6, causal=True, q_seg=seg, kv_seg=seg))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # One id array is used for both sides when S == T.
  np.testing.assert_array_equal(_jit_attention(q, k, v, causal=True, q_segment_ids=seg), out)


def test_segment_ids_equal_blockwise_attention_on_each_segment():
  q, k, v = _qkv(batch=1, q_len=6, kv_len=6)
  seg = np.array([[0, 0, 0, 1, 1, 1]], np.int32)
  packed = _jit_attention(q, k, v, q_segment_ids=seg)
  first = _jit_attention(q[:, :3], k[:, :3], v[:, :3])
  second = _jit_attention(q[:, 3:], k[:, 3:], v[:, 3:])
  np.testing.assert_allclose(packed, np.concatenate([first, second], axis=1), rtol=1e-5, atol=1e-6)


def test_kv_mask_and_kv_lengths_drop_padded_keys():
  q, k, v = _qkv(q_len=3, kv_len=6)
  lengths = np.array([4, 6], np.int32)
  valid = np.arange(6)[None] < lengths[:, None]
  expected = _naive_attention(q, k, v, _visible(2, 4, 3, 6, kv_valid=valid))
  np.testing.assert_allclose(_jit_attention(q, k, v, kv_mask=valid), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_jit_attention(q, k, v, kv_lengths=lengths), expected, rtol=1e-5, atol=1e-6)
  # Padding is invisible: changing padded keys/values changes nothing.
  k2, v2 = k.copy(), v.copy()
  k2[0, 4:], v2[0, 4:] = 100.0, -100.0
  np.testing.assert_allclose(_jit_attention(q, k2, v2, kv_mask=valid), expected, rtol=1e-5, atol=1e-6)


def test_decode_queries_align_to_the_end_of_the_keys():
  q, k, v = _qkv(q_len=7, kv_len=7)
  full = _jit_attention(q, k, v, causal=True)
  for q_len in (1, 3):
    tail = _jit_attention(q[:, -q_len:], k, v, causal=True)
    np.testing.assert_allclose(tail, full[:, -q_len:], rtol=1e-5, atol=1e-6)
  expected = _naive_attention(q[:, -3:], k, v, _visible(2, 4, 3, 7, causal=True))
  np.testing.assert_allclose(_jit_attention(q[:, -3:], k, v, causal=True), expected, rtol=1e-5, atol=1e-6)


def test_per_row_positions_make_causal_attention_permutation_equivariant():
  q, k, v = _qkv(q_len=6, kv_len=6)
  reference = _jit_attention(q, k, v, causal=True)
  rng = np.random.default_rng(1)
  perms = np.stack([rng.permutation(6), rng.permutation(6)])  # a different order per row
  take = lambda x: np.take_along_axis(x, perms[:, :, None, None], axis=1)
  out = _jit_attention(take(q), take(k), take(v), causal=True, q_positions=perms, kv_positions=perms)
  np.testing.assert_allclose(out, take(np.asarray(reference)), rtol=1e-5, atol=1e-6)
  expected = _naive_attention(
    take(q), take(k), take(v), _visible(2, 4, 6, 6, True, q_pos=perms, kv_pos=perms)
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_explicit_mask_per_head_and_broadcast():
  q, k, v = _qkv(q_len=4, kv_len=5)
  rng = np.random.default_rng(2)
  per_head = rng.random((2, 4, 4, 5)) > 0.3
  shared = rng.random((2, 1, 4, 5)) > 0.3
  for mask in (per_head, shared):
    expected = _naive_attention(q, k, v, _visible(2, 4, 4, 5, mask=mask))
    np.testing.assert_allclose(_jit_attention(q, k, v, mask=mask), expected, rtol=1e-5, atol=1e-6)


def test_fully_masked_query_rows_give_zeros_and_finite_gradients():
  q, k, v = _qkv(q_len=4, kv_len=4)
  seg_q = np.array([[0, 0, 9, 1], [0, 1, 1, 1]], np.int32)  # id 9 matches no key
  seg_kv = np.array([[0, 0, 1, 1], [0, 1, 1, 1]], np.int32)
  valid = np.array([[True] * 4, [False, True, True, True]])
  kwargs = dict(q_segment_ids=seg_q, kv_segment_ids=seg_kv, kv_mask=valid)
  out = np.asarray(_jit_attention(q, k, v, **kwargs))
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[0, 2], 0.0)
  np.testing.assert_array_equal(out[1, 0], 0.0)  # its only same-segment key is padding
  expected = _naive_attention(q, k, v, _visible(2, 4, 4, 4, q_seg=seg_q, kv_seg=seg_kv, kv_valid=valid))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda *a: attention(*a, **kwargs).sum(), argnums=(0, 1, 2)))(q, k, v)
  assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_plain_causal_matches_jax_dot_product_attention_xla(num_kv_heads):
  q, k, v = _qkv(num_kv_heads=num_kv_heads)
  reference = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "scale", "implementation"))
  expected = reference(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(_jit_attention(q, k, v, causal=True), expected, rtol=1e-5, atol=1e-6)
  expected = reference(q, k, v, scale=0.3, implementation="xla")
  np.testing.assert_allclose(_jit_attention(q, k, v, scale=0.3), expected, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_keep_dtype_and_stay_close_to_fp32():
  q, k, v = _qkv()
  out = _jit_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), causal=True)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), _jit_attention(q, k, v, causal=True), atol=3e-2)


def test_attention_works_under_jit():
  q, k, v = _qkv()
  seg = np.array([[0, 0, 1, 1, 1]] * 2, np.int32)
  jitted = jax.jit(lambda q, k, v, s: _jit_attention(q, k, v, causal=True, q_segment_ids=s))
  np.testing.assert_allclose(
    jitted(q, k, v, seg), _jit_attention(q, k, v, causal=True, q_segment_ids=seg), rtol=1e-6
  )


def test_cudnn_backend_on_cpu_raises_needs_gpu():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  with pytest.raises(RuntimeError, match="cudnn.*needs a GPU"):
    attention(q, k, v, backend="cudnn")


@pytest.fixture
def emulated_cudnn(monkeypatch):
  """Pretends to be on a GPU and runs the cuDNN backend's `dot_product_attention` call with
  implementation='xla', so its argument mapping (native causal, seq lengths, explicit mask, zeroed rows) is
  checked on CPU."""
  calls = []
  original = jax.nn.dot_product_attention

  def fake_dot_product_attention(*args, implementation=None, **kwargs):
    assert implementation == "cudnn"
    calls.append(kwargs)
    return original(*args, implementation="xla", **kwargs)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax.nn, "dot_product_attention", fake_dot_product_attention)
  return calls


_CUDNN_CASES = {
  "causal": (5, dict(causal=True)),
  "decode": (2, dict(causal=True)),
  "segments": (5, dict(causal=True, q_segment_ids=np.array([[0, 0, 1, 1, 1], [2, 2, 2, 2, 3]]))),
  "kv_lengths": (5, dict(causal=True, kv_lengths=np.array([3, 0], np.int32))),
  "kv_mask": (5, dict(kv_mask=np.array([[True, False, True, True, False], [False] * 5]))),
  "positions": (
    5,
    dict(causal=True, q_positions=np.array([3, 0, 4, 1, 2]), kv_positions=np.array([3, 0, 4, 1, 2])),
  ),
}


@pytest.mark.parametrize("case", list(_CUDNN_CASES))
def test_cudnn_backend_argument_mapping_matches_xla_reference(emulated_cudnn, case):
  q_len, kwargs = _CUDNN_CASES[case]
  q, k, v = _qkv(q_len=q_len, kv_len=5)
  out = attention(q, k, v, backend="cudnn", **kwargs)
  np.testing.assert_allclose(out, attention(q, k, v, **kwargs), rtol=1e-5, atol=1e-6)
  # cuDNN's own causal mask only where it is ours too: S == T with default positions.
  assert emulated_cudnn[0]["is_causal"] == (case in ("causal", "kv_lengths", "segments"))
  assert (emulated_cudnn[0]["key_value_seq_lengths"] is not None) == (case == "kv_lengths")
  assert (emulated_cudnn[0]["mask"] is None) == (case in ("causal", "kv_lengths"))


def test_auto_backend_picks_cudnn_only_for_half_precision_plain_masks(emulated_cudnn):
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
  attention(q, k, v, causal=True, backend="auto")
  assert len(emulated_cudnn) == 1
  attention(q, k, v, causal=True, backend="auto", q_segment_ids=np.zeros((2, 5), np.int32))
  attention(q[:, :2], k, v, causal=True, backend="auto")  # decode needs a bottom-right causal mask
  attention(*_qkv(), causal=True, backend="auto")  # float32
  assert len(emulated_cudnn) == 1


def test_auto_backend_on_cpu_is_the_xla_reference():
  q, k, v = _qkv()
  np.testing.assert_array_equal(
    _jit_attention(q, k, v, causal=True, backend="auto"), _jit_attention(q, k, v, causal=True)
  )


def test_registered_backend_receives_validated_inputs_and_mask_kwargs(monkeypatch):
  seen = {}

  def fake_backend(q, k, v, **kwargs):
    seen.update(kwargs)
    return jnp.zeros(q.shape[:3] + v.shape[-1:], v.dtype)

  monkeypatch.setitem(ATTENTION_BACKENDS, "fake", fake_backend)
  q, k, v = _qkv()
  attention(q, k, v, causal=True, backend="fake")
  assert seen["causal"] is True and seen["scale"] == pytest.approx(1 / np.sqrt(8))
  mask_args = {
    "q_segment_ids",
    "kv_segment_ids",
    "kv_mask",
    "kv_lengths",
    "mask",
    "q_positions",
    "kv_positions",
  }
  assert mask_args <= set(seen)


def test_make_attention_mask_returns_none_without_masking():
  assert make_attention_mask(3, 4) is None
  assert make_attention_mask(3, 4, causal=True).shape == (1, 1, 3, 4)


@pytest.mark.parametrize(
  "shapes,kwargs,match",
  [
    (((2, 5, 3, 8), (2, 5, 2, 8), (2, 5, 2, 8)), {}, "mismatched heads"),
    (((2, 5, 8), (2, 5, 2, 8), (2, 5, 2, 8)), {}, "`q` must be rank 4"),
    (((2, 5, 4, 8), (2, 5, 2, 8, 1), (2, 5, 2, 8)), {}, "`k` must be rank 4"),
    (((2, 5, 4, 8), (2, 5, 2, 8), (2, 6, 2, 8)), {}, "`v` must be shape"),
    (((2, 5, 4, 8), (2, 5, 2, 4), (2, 5, 2, 4)), {}, "`k` must be head_dim 8"),
    (
      ((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)),
      {"q_segment_ids": np.zeros((2, 4), np.int32)},
      "q_segment_ids",
    ),
    (
      ((2, 3, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)),
      {"q_segment_ids": np.zeros((2, 3), np.int32)},
      "kv_segment_ids",
    ),
    (((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)), {"q_positions": np.zeros((3, 5), np.int32)}, "q_positions"),
    (((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)), {"kv_mask": np.ones((2, 5), np.int32)}, "kv_mask.*bool"),
    (
      ((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)),
      {"mask": np.ones((2, 2, 5, 5), bool)},
      "`mask` must be bool",
    ),
    (((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)), {"mask": np.ones((5, 5), bool)}, "`mask` must be bool"),
    (
      ((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)),
      {"backend": "flash"},
      "`backend` must be one of.*'auto'.*'xla'",
    ),
  ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(shapes, kwargs, match):
  q, k, v = (np.zeros(s, np.float32) for s in shapes)
  with pytest.raises(ValueError, match=match):
    attention(q, k, v, **kwargs)


def test_dtype_mismatch_raises_value_error_naming_q_k_v():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="`q`, `k`, `v` must share one dtype.*bfloat16"):
    attention(q, k.astype(jnp.bfloat16), v)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_], ids=["int32", "bool"])
def test_non_floating_inputs_raise_value_error_naming_q_and_the_dtype(dtype):
  q, k, v = (x.astype(dtype) for x in _qkv())
  with pytest.raises(ValueError, match=f"`q` must be a floating dtype.*got {np.dtype(dtype).name}"):
    attention(q, k, v)


def test_non_floating_values_raise_value_error_naming_v():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="`v` must be a floating dtype.*got int32"):
    attention(q, k, v.astype(np.int32))
