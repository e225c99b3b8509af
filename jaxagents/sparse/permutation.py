"""`Permutation`: the token reorderings of MMInference's permuted heads (arXiv 2504.16083: the grid
heads' phase-major permutation and the Q-/2D-boundary heads' modality-wise permutations).

A permuted head computes attention on tokens in *slot* order: slot s of the queries holds original token
`q_perm[b, h, s]`, slot t of the keys/values holds original token `kv_perm[b, h, t]`. The permutation arrays are
also the tokens' *original positions*, which the kernel's causal mask reads, so a permuted head stays causal in
the original order; outputs go back through `q_inverse`.

Shapes are per (batch, query head): `q_perm`, `q_inverse` int32 [B, H, S], `kv_perm`, `kv_inverse` int32
[B, H, T]. GQA would allow one `kv_perm` row per kv head; here it has one row per *query* head because the grid
stride/phase is searched per query head (as MInference searches patterns per query head), so K/V are gathered
per query head.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["q_perm", "kv_perm", "q_inverse", "kv_inverse"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Permutation:
  """Slot -> original-token maps and their inverses (a pytree of int32 arrays).

  Attributes:
    q_perm: int32 [B, H, S], original token (= position) of query slot s.
    kv_perm: int32 [B, H, T], original token (= position) of key/value slot t.
    q_inverse: int32 [B, H, S], slot of original query token i (q_perm[q_inverse[i]] == i).
    kv_inverse: int32 [B, H, T], slot of original key token j.
  """

  q_perm: jax.Array
  kv_perm: jax.Array
  q_inverse: jax.Array
  kv_inverse: jax.Array


def invert(perm: jax.Array) -> jax.Array:
  """int32 [..., N]: the inverse of a permutation along the last axis."""
  return jnp.argsort(perm, axis=-1).astype(jnp.int32)


def make_permutation(q_perm: jax.Array, kv_perm: jax.Array) -> Permutation:
  """Permutation from q_perm [B, H, S] and kv_perm [B, H, T] (each a permutation of arange along the last axis)."""
  q_perm, kv_perm = jnp.asarray(q_perm, jnp.int32), jnp.asarray(kv_perm, jnp.int32)
  for name, perm in (("q_perm", q_perm), ("kv_perm", kv_perm)):
    if perm.ndim != 3:
      raise ValueError(f"make_permutation: `{name}` must be int [B, H, N], got shape {tuple(perm.shape)}")
  if q_perm.shape[:2] != kv_perm.shape[:2]:
    raise ValueError(
      f"make_permutation: `kv_perm` must share [B, H] = {tuple(q_perm.shape[:2])} with q_perm, "
      f"got {tuple(kv_perm.shape)}"
    )
  return Permutation(q_perm, kv_perm, invert(q_perm), invert(kv_perm))


def gather_tokens(x: jax.Array, perm: jax.Array) -> jax.Array:
  """x [B, N, H, D], perm int [B, H, N] -> [B, N, H, D] with out[b, s, h] = x[b, perm[b, h, s], h]."""
  heads_first = jnp.swapaxes(x, 1, 2)  # [B, H, N, D]
  gathered = jnp.take_along_axis(heads_first, perm[..., None], axis=2)
  return jnp.swapaxes(gathered, 1, 2)
