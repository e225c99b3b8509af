"""`permuted_sparse_attention`: block-sparse attention over permuted tokens (MMInference,
arXiv 2504.16083, whose kernel loads through the permutation; here an explicit gather -> kernel with positions =
permutation -> inverse gather).

    out[b, i, h] = kernel(Q[pi_q], K[pi_kv], V[pi_kv]; q_positions = pi_q, kv_positions = pi_kv)[b, pi_q^-1(i), h]

Each (batch, query head) has its own permutation, and the kernel takes one position vector per batch row, so
heads are folded into the batch: [B, S, H, D] -> [B * H, S, 1, D], with K/V gathered per query head (GQA K/V
are repeated; the explicit gather trades that memory for simplicity).

Optional `q_positions` / `kv_positions` give the tokens' causal positions in the original order (default
arange, i.e. the permutation itself); they are gathered through the permutation too. `mminference_attention`
uses them to push padding keys past every query.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxagents.sparse.permutation import Permutation, gather_tokens
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention


def permuted_sparse_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  perm: Permutation,
  layout: BlockLayout,
  *,
  causal: bool = True,
  sm_scale: float | None = None,
  backend: str | Sequence[str] = "auto",
  interpret=False,
  q_positions: jax.Array | None = None,
  kv_positions: jax.Array | None = None,
) -> jax.Array:
  """Attention of permuted tokens under `layout`, returned in the original token order.

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D], Hq % Hkv == 0, original token order.
    perm: Permutation with q_perm [B, Hq, S], kv_perm [B, Hq, T].
    layout: BlockLayout [B, Hq, S / block_q, MAXN] over the permuted tokens.
    causal, sm_scale, backend, interpret: as in `block_sparse_attention`; causality uses original positions.
    q_positions, kv_positions: int [S] or [B, S] / [T] or [B, T] causal positions in the original order
      (default: arange).
  Returns:
    [B, S, Hq, D] in q.dtype.
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[2] % max(k.shape[2], 1):
    raise ValueError(
      "permuted_sparse_attention: `q` must be [B, S, Hq, D] and `k`, `v` [B, T, Hkv, D] with Hkv dividing Hq, "
      f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    )
  batch, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  expected = {"q_perm": (batch, heads, q_len), "kv_perm": (batch, heads, kv_len)}
  for name, shape in expected.items():
    if tuple(getattr(perm, name).shape) != shape:
      raise ValueError(
        f"permuted_sparse_attention: `perm.{name}` must be [B, Hq, N] = {shape}, got {tuple(getattr(perm, name).shape)}"
      )
  if tuple(layout.kv_blocks.shape[:2]) != (batch, heads):
    raise ValueError(
      f"permuted_sparse_attention: `layout` must have one row per query head, [B, Hq] = {(batch, heads)}, "
      f"got {tuple(layout.kv_blocks.shape[:2])}"
    )
  q_positions = None if q_positions is None else jnp.asarray(q_positions)
  kv_positions = None if kv_positions is None else jnp.asarray(kv_positions)
  for name, positions, length in (("q_positions", q_positions, q_len), ("kv_positions", kv_positions, kv_len)):
    if positions is not None and (
      positions.shape not in ((length,), (batch, length)) or not jnp.issubdtype(positions.dtype, jnp.integer)
    ):
      raise ValueError(
        f"permuted_sparse_attention: `{name}` must be int [{length}] or [B, {length}] with B={batch}, "
        f"got {positions.dtype}{tuple(positions.shape)}"
      )

  def permuted_positions(positions, perm_slots):  # [B, H, N] original positions of the permuted slots
    if positions is None:
      return perm_slots
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (batch, perm_slots.shape[-1]))
    return jnp.take_along_axis(positions[:, None, :], perm_slots, axis=-1)

  groups = heads // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  fold = lambda x: jnp.swapaxes(x, 1, 2).reshape(batch * heads, x.shape[1], 1, head_dim)  # noqa: E731
  folded_layout = BlockLayout(
    layout.kv_blocks.reshape(batch * heads, 1, *layout.kv_blocks.shape[2:]),
    layout.kv_count.reshape(batch * heads, 1, -1),
    layout.block_q,
    layout.block_kv,
  )
  out = block_sparse_attention(
    fold(gather_tokens(q, perm.q_perm)),
    fold(gather_tokens(k, perm.kv_perm)),
    fold(gather_tokens(v, perm.kv_perm)),
    folded_layout,
    causal=causal,
    q_positions=permuted_positions(q_positions, perm.q_perm).reshape(batch * heads, q_len),
    kv_positions=permuted_positions(kv_positions, perm.kv_perm).reshape(batch * heads, kv_len),
    sm_scale=sm_scale,
    backend=backend,
    interpret=interpret,
  )
  out = jnp.swapaxes(out.reshape(batch, heads, q_len, head_dim), 1, 2)  # permuted slots, [B, S, H, D]
  return gather_tokens(out, perm.q_inverse)
