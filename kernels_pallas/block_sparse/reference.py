"""Pure-JAX reference for block-sparse attention: dense masked softmax attention (the oracle of every backend).

    visible[b, hq, s, t] = layout_block(b, h(hq), s // block_q, t // block_kv)
                           AND (not causal OR block marked full OR kv_positions[b, p, t] <= q_positions[b, p, s])
    lse[b, hq, s]        = log sum_{t visible} exp(sm_scale * q[b, s, hq] . k[b, t, hkv])
    p[b, hq, s, t]       = exp(sm_scale * q . k - m[b, hq, s]),  m = the row max of the visible scores
    out[b, s, hq]        = sum_{t visible} p v[b, t, hkv] / sum_{t visible} p

with hkv = hq // (Hq / Hkv) (GQA), h(hq) = hkv for a per-kv-head layout, hq for a per-query-head one, and
p = hkv for per-kv-head positions ([B, Hkv, N]), 0 for shared ones ([B, 1, N]). A block is "marked full" when the
layout's `partial` flag for it is False (`layout.py`); a layout without kinds has every block partial.
Rows with no visible key give out = 0 and lse = -inf (never NaN); every backend follows this convention.
Computed in float32 at `Precision.HIGHEST` from the given inputs; O(S * T) memory, so it is an oracle and the
CPU fallback, not a long-context path.
"""

import jax
import jax.numpy as jnp

from kernels_pallas.block_sparse.layout import BlockLayout, to_token_mask


def visible_mask(
  layout: BlockLayout, *, num_q_heads: int, kv_len: int, causal: bool, q_positions, kv_positions
) -> jax.Array:
  """bool [B, Hq, S, T]: the layout's token mask per query head, AND the causal mask by positions on the blocks
  not marked full.

  q_positions: int [B, S] or [B, P, S]; kv_positions: int [B, T] or [B, P, T], P in {1, Hkv} (read when causal).
  """
  per_head = lambda x: jnp.repeat(x, num_q_heads // x.shape[1], axis=1)  # noqa: E731  [B, H, ...] -> [B, Hq, ...]
  mask = per_head(to_token_mask(layout, kv_len))  # [B, Hq, S, T]
  if causal:
    q_positions, kv_positions = (x if x.ndim == 3 else x[:, None] for x in (q_positions, kv_positions))
    in_order = per_head(kv_positions[:, :, None, :] <= q_positions[:, :, :, None])
    mask &= in_order | per_head(to_token_mask(layout, kv_len, full_only=True))
  return mask


def block_sparse_attention_reference(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  layout: BlockLayout,
  *,
  causal: bool,
  q_positions: jax.Array,
  kv_positions: jax.Array,
  sm_scale: float,
) -> tuple[jax.Array, jax.Array]:
  """Dense masked attention under `layout` (inputs already validated by the API).

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D].
    layout: BlockLayout with H in {Hkv, Hq}.
    causal: also require kv_positions[t] <= q_positions[s].
    q_positions: int32 [B, P, S]; kv_positions: int32 [B, P, T]; P in {1, Hkv} (or [B, S] / [B, T]).
    sm_scale: score scale.
  Returns:
    out [B, S, Hq, D] in q.dtype and lse float32 [B, Hq, S] (natural log; -inf on rows with no visible key).
  """
  batch, q_len, num_q_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  groups = num_q_heads // num_kv_heads
  highest = jax.lax.Precision.HIGHEST
  qg = q.astype(jnp.float32).reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum("bskgd,btkd->bkgst", qg, k.astype(jnp.float32), precision=highest) * sm_scale
  mask = visible_mask(
    layout, num_q_heads=num_q_heads, kv_len=kv_len, causal=causal, q_positions=q_positions, kv_positions=kv_positions
  ).reshape(batch, num_kv_heads, groups, q_len, kv_len)
  scores = jnp.where(mask, scores, -jnp.inf)
  # Normalise by the row max and the row sum, not by exp(s - lse): at large logits lse is rounded to
  # ulp(lse) (2.4e-4 at 2.7e3), which would scale a whole row of probabilities by e^(that error).
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # empty rows: every weight is 0 anyway
  weights = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
  row_sum = jnp.sum(weights, axis=-1)  # [B, Hkv, G, S]
  unnormalised = jnp.einsum("bkgst,btkd->bskgd", weights, v.astype(jnp.float32), precision=highest)
  safe_sum = jnp.where(row_sum > 0, row_sum, 1.0)
  out = unnormalised / jnp.moveaxis(safe_sum, 3, 1)[..., None]  # [B, S, Hkv, G, D]
  out = out.reshape(batch, q_len, num_q_heads, head_dim).astype(q.dtype)
  lse = jnp.where(row_sum > 0, row_max[..., 0] + jnp.log(safe_sum), -jnp.inf)  # -inf on empty rows
  return out, lse.reshape(batch, num_q_heads, q_len)
