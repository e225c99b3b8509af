"""Attention with learned sinks and sliding windows, as GPT-OSS uses them (OpenAI, gpt-oss model card,
arXiv 2508.10925, Sec. 2; reference implementation openai/gpt-oss `gpt_oss/torch/model.py`, `sdpa`; transformers
`models/gpt_oss/modeling_gpt_oss.py`, `eager_attention_forward`).

A sink is one learned logit s_h per query head that joins the softmax denominator and is then dropped:
`p[s, t] = exp(l[s, t]) / (exp(s_h) + sum_t' exp(l[s, t']))`, so a query may put weight on "no key at all" (the
idea of StreamingLLM's sink tokens, Xiao et al. 2023, arXiv 2309.17453, learned here as a bias instead of a token).
The rows of `p` sum to less than one; a row with no visible key outputs exactly zeros (all mass on the sink).

A sliding window of width W keeps key t visible to query s iff `q_pos[s] - kv_pos[t] < W` (the query itself and
the W - 1 keys before it), the rule of the reference `sdpa` (`tril(..., diagonal=-W)` masked) and of transformers'
`sliding_window_overlay`. `sliding_window` may be a traced scalar (one scanned body serves sliding and full layers);
values <= 0 then mean no window.

`jaxagents.layers.attention` cannot express the sink term (its backends share one softmax), so this is its own
einsum function, written like that module's 'xla' reference and reusing its mask builder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.attention import make_attention_mask

Dtype = Any


def sliding_window_mask(q_positions: jax.Array, kv_positions: jax.Array, window: jax.Array | int) -> jax.Array:
  """True where `q_pos - kv_pos < window` (or everywhere when `window <= 0`).

  Args:
    q_positions: [S] or [B, S] int.
    kv_positions: [T] or [B, T] int.
    window: int or traced int scalar W.
  Returns:
    bool [B|1, 1, S, T].
  """
  q_pos = jnp.asarray(q_positions).reshape(-1, jnp.shape(q_positions)[-1])
  kv_pos = jnp.asarray(kv_positions).reshape(-1, jnp.shape(kv_positions)[-1])
  window = jnp.asarray(window)
  inside = (q_pos[:, :, None] - kv_pos[:, None, :]) < window
  return jnp.logical_or(inside, window <= 0)[:, None]


def _error(name: str, expected: str, actual: Any) -> ValueError:
  return ValueError(f"attention_with_sinks: `{name}` must be {expected}, got {actual}")


def attention_with_sinks(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  sinks: jax.Array,
  *,
  causal: bool = True,
  sliding_window: jax.Array | int | None = None,
  kv_mask: jax.Array | None = None,
  q_positions: jax.Array | None = None,
  kv_positions: jax.Array | None = None,
  scale: float | None = None,
  softmax_dtype: Dtype = jnp.float32,
) -> jax.Array:
  """softmax([q k^T * scale + mask, sink]) without the sink column, times v.

  Args:
    q: [B, S, Hq, D] queries.
    k: [B, T, Hk, D] keys; Hq % Hk == 0 (GQA; Hk == 1 is MQA).
    v: [B, T, Hk, Dv] values.
    sinks: [Hq] one learned logit per query head.
    causal: mask keys at later positions than the query (positions as in `jaxagents.layers.attention`: default
      `arange`, queries aligned to the end of the keys).
    sliding_window: None (full attention), an int, or a traced int scalar W; W <= 0 means no window.
    kv_mask: [B, T] bool, False at padding keys.
    q_positions, kv_positions: [S] / [B, S] and [T] / [B, T] int positions for `causal` and the window.
    scale: score scale; default 1 / sqrt(D).
    softmax_dtype: dtype of the scores, the sinks and the softmax.
  Returns:
    [B, S, Hq, Dv] in v.dtype.
  """
  q, k, v, sinks = (jnp.asarray(x) for x in (q, k, v, sinks))
  for name, x, layout in (("q", q, "[B, S, Hq, D]"), ("k", k, "[B, T, Hk, D]"), ("v", v, "[B, T, Hk, Dv]")):
    if x.ndim != 4:
      raise _error(name, f"rank 4 {layout}", f"shape {x.shape}")
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  if k.shape[0] != batch or k.shape[-1] != head_dim or v.shape[:3] != k.shape[:3]:
    raise _error("k/v", f"[B={batch}, T, Hk, D={head_dim}] and v [B, T, Hk, Dv] (q {q.shape})",
                 f"k {k.shape}, v {v.shape}")
  if num_heads % num_kv_heads:
    raise _error("k", f"Hk dividing Hq={num_heads}", f"Hk={num_kv_heads}")
  if sinks.shape != (num_heads,):
    raise _error("sinks", f"shape [Hq] = ({num_heads},)", sinks.shape)
  if kv_mask is not None and (jnp.shape(kv_mask) != (batch, kv_len) or jnp.asarray(kv_mask).dtype != jnp.bool_):
    raise _error("kv_mask", f"bool [B, T] = {(batch, kv_len)}", f"{jnp.asarray(kv_mask).dtype}{jnp.shape(kv_mask)}")
  scale = float(1.0 / np.sqrt(head_dim)) if scale is None else scale
  if q_positions is None:
    q_positions = jnp.arange(q_len) + (kv_len - q_len)
  if kv_positions is None:
    kv_positions = jnp.arange(kv_len)

  groups = num_heads // num_kv_heads
  grouped = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum("bskgd,btkd->bkgst", grouped, k, preferred_element_type=softmax_dtype) * scale
  visible = make_attention_mask(q_len, kv_len, causal=causal, kv_mask=kv_mask, q_positions=q_positions,
                                kv_positions=kv_positions)
  if sliding_window is not None:
    window = sliding_window_mask(q_positions, kv_positions, sliding_window)
    visible = window if visible is None else jnp.logical_and(visible, window)
  sink = sinks.astype(softmax_dtype).reshape(1, num_kv_heads, groups, 1, 1)
  if visible is not None:
    visible = visible[:, :, None]  # [B|1, 1, 1, S, T]: shared by every head
    scores = jnp.where(visible, scores, jnp.finfo(softmax_dtype).min)
  # The sink joins the max and the denominator; masked keys contribute exactly 0.
  peak = jnp.maximum(jnp.max(scores, axis=-1, keepdims=True), sink)
  weights = jnp.exp(scores - peak)
  if visible is not None:
    weights = jnp.where(visible, weights, 0)
  probs = weights / (jnp.sum(weights, axis=-1, keepdims=True) + jnp.exp(sink - peak))
  out = jnp.einsum("bkgst,btkv->bskgv", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, num_heads, v.shape[-1]).astype(v.dtype)
