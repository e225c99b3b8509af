"""`permuted_sparse_attention`: block-sparse attention over permuted tokens (MMInference,
arXiv 2504.16083, whose kernel loads through the permutation; here an explicit gather -> kernel with positions =
permutation -> inverse gather).

    out[b, i, h] = kernel(Q[pi_q], K[pi_kv], V[pi_kv]; q_positions = pi_q, kv_positions = pi_kv)[b, pi_q^-1(i), h]

A permutation is per kv head ([B, Hkv, N]: the grid heads' stride/phase is searched per GQA group, so the query
heads of a group share it) or shared by every head ([B, 1, N]: the modality permutations). Either way K and V are
gathered once per kv head, never repeated per query head, and queries are gathered with their kv head's
permutation as one [B, S, Hkv, G * D] array; the kernel then takes the permuted positions per kv head
([B, Hkv, N]) or shared ([B, 1, N]), with the layout per kv head or per query head. No [B * H, S, 1, D] fold.

Optional `q_positions` / `kv_positions` give the tokens' causal positions in the original order (default
arange, i.e. the permutation itself); they are gathered through the permutation too. `mminference_attention`
uses them to push padding keys past every query.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxagents.sparse.permutation import Permutation
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention


def permute_heads(x: jax.Array, perm: jax.Array) -> jax.Array:
  """x [B, N, H, D], perm int [B, P, N] with P dividing H: out[b, s, h] = x[b, perm[b, p(h), s], h], the heads
  split into P consecutive groups (p(h) = h // (H / P)); one gather over [B, N, P, (H / P) D]."""
  batch, length, heads, head_dim = x.shape
  groups = perm.shape[1]
  grouped = x.reshape(batch, length, groups, (heads // groups) * head_dim)
  index = jnp.swapaxes(perm, 1, 2)[..., None]  # [B, N, P, 1]
  return jnp.take_along_axis(grouped, index, axis=1).reshape(x.shape)


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
    perm: Permutation with q_perm [B, P, S], kv_perm [B, P, T], P = Hkv (one per kv head) or 1 (shared).
    layout: BlockLayout [B, Hkv or Hq, S / block_q, MAXN] over the permuted tokens.
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
  batch, q_len, heads, _ = q.shape
  kv_len, kv_heads = k.shape[1:3]
  perm_heads = perm.q_perm.shape[1] if perm.q_perm.ndim == 3 else -1
  expected = {"q_perm": (batch, perm_heads, q_len), "kv_perm": (batch, perm_heads, kv_len)}
  for name, shape in expected.items():
    if perm_heads not in (1, kv_heads) or tuple(getattr(perm, name).shape) != shape:
      raise ValueError(
        f"permuted_sparse_attention: `perm.{name}` must be [B, P, N] = {(batch, 'P', shape[-1])} with P = Hkv="
        f"{kv_heads} (per kv head) or 1 (shared), got {tuple(getattr(perm, name).shape)}"
      )
  if tuple(layout.kv_blocks.shape[:2]) not in ((batch, heads), (batch, kv_heads)):
    raise ValueError(
      f"permuted_sparse_attention: `layout` must have a row per query head [B, Hq] = {(batch, heads)} or per kv "
      f"head [B, Hkv] = {(batch, kv_heads)}, got {tuple(layout.kv_blocks.shape[:2])}"
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

  def permuted_positions(positions, perm_slots):  # [B, P, N] original positions of the permuted slots
    if positions is None:
      return perm_slots
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (batch, perm_slots.shape[-1]))
    return jnp.take_along_axis(positions[:, None, :], perm_slots, axis=-1)

  out = block_sparse_attention(
    permute_heads(q, perm.q_perm),
    permute_heads(k, perm.kv_perm),
    permute_heads(v, perm.kv_perm),
    layout,
    causal=causal,
    q_positions=permuted_positions(q_positions, perm.q_perm),
    kv_positions=permuted_positions(kv_positions, perm.kv_perm),
    sm_scale=sm_scale,
    backend=backend,
    interpret=interpret,
  )
  return permute_heads(out, perm.q_inverse)  # permuted slots -> original order
