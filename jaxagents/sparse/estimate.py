"""The "Last Q" estimate shared by the vertical-slash and grid builders (MMInference,
arXiv 2504.16083, "Last Q" estimation; MInference `minference/modules/minference_forward.py`, `last_q = 64`):

    A_hat = softmax(Q[rows] K^T * sm_scale + causal(original positions))      [B, H, R, T]

computed in float32 at HIGHEST precision, per query head (K repeated over each GQA group, as MInference does).
"""

import jax
import jax.numpy as jnp

from jaxagents.sparse.layouts import Frame

LAST_Q = 64  # MInference's default number of estimation rows


def check_qk_shapes(fn: str, q_shape, k_shape) -> None:
  """q [B, S, Hq, D], k [B, T, Hkv, D] with equal B, D and Hkv dividing Hq; else ValueError."""
  q_shape, k_shape = tuple(q_shape), tuple(k_shape)
  if len(q_shape) != 4 or len(k_shape) != 4:
    raise ValueError(f"{fn}: `q` must be [B, S, Hq, D] and `k` [B, T, Hkv, D], got shapes {q_shape} and {k_shape}")
  if k_shape[0] != q_shape[0] or k_shape[3] != q_shape[3] or q_shape[2] % k_shape[2]:
    raise ValueError(
      f"{fn}: `k` must be [B, T, Hkv, D] with B={q_shape[0]}, D={q_shape[3]} and Hkv dividing Hq={q_shape[2]}, "
      f"got {k_shape}"
    )


def heads_first(fn: str, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """q [B, S, Hq, D], k [B, T, Hkv, D] -> (q [B, Hq, S, D], k [B, Hq, T, D]) with k repeated per query head."""
  q, k = jnp.asarray(q), jnp.asarray(k)
  check_qk_shapes(fn, q.shape, k.shape)
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
  return jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2)


def estimation_rows(segment_end: jax.Array, last_q: int, q_len: int) -> jax.Array:
  """int32 [B, H, R]: the `last_q` query slots ending at segment_end [B, H] (clamped into [0, S))."""
  start = jnp.clip(segment_end - last_q, 0, q_len - last_q)
  return (start[..., None] + jnp.arange(last_q)).astype(jnp.int32)


def attention_estimate(q: jax.Array, k: jax.Array, rows: jax.Array, frame: Frame, sm_scale: float) -> jax.Array:
  """A_hat float32 [B, H, R, T] for the query slots `rows` [B, H, R]; q [B, H, S, D], k [B, H, T, D]."""
  q_rows = jnp.take_along_axis(q, rows[..., None], axis=2).astype(jnp.float32)
  logits = jnp.einsum(
    "bhrd,bhtd->bhrt", q_rows, k.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
  ) * jnp.float32(sm_scale)
  if frame.causal:
    row_positions = jnp.take_along_axis(frame.q_positions, rows, axis=-1)
    logits = jnp.where(frame.kv_positions[..., None, :] <= row_positions[..., None], logits, -jnp.inf)
  # Every row sees at least its own token, so no row is all -inf.
  return jax.nn.softmax(logits, axis=-1)


def check_last_q(fn: str, last_q, q_len: int) -> None:
  if not isinstance(last_q, int) or not 1 <= last_q <= q_len:
    raise ValueError(f"{fn}: `last_q` must be an int in [1, S={q_len}], got {last_q!r}")
