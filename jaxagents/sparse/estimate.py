"""The "Last Q" estimate shared by the vertical-slash and grid builders (MMInference, arXiv 2504.16083, "Last Q"
estimation; MInference `minference/modules/minference_forward.py`, `last_q = 64`, whose
`qk = einsum(q[:, :, -last_q:], k)` runs in the model dtype and whose softmax runs in float32):

    A_hat = softmax(Q[rows] K^T * sm_scale + causal(original positions))      [B, Hq, R, T]

Memory traffic is what long prefills pay for, so the estimate is built to be read as few times as possible:
  * the logits come from one GQA matmul over the **kv heads** (query heads grouped [B, Hkv, G, R, D], K never
    repeated), in the input dtype with float32 accumulation, as MInference does;
  * the softmax statistics (row max and row sum of exponentials) come from one pass over the logits, a
    variadic reduction carrying (max, sum) pairs (the online softmax of Milakov & Gimelshein, arXiv 1805.02867);
  * A_hat is never stored: the column (vertical) and diagonal (slash) sums come from one more pass over the
    logits (`line_sums`, the diagonals as a skew of the rows instead of a scatter), as do the grid's residue
    sums (`residue_sums`).
"""

import jax
import jax.numpy as jnp

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


def check_last_q(fn: str, last_q, q_len: int) -> None:
  if not isinstance(last_q, int) or not 1 <= last_q <= q_len:
    raise ValueError(f"{fn}: `last_q` must be an int in [1, S={q_len}], got {last_q!r}")


def estimation_rows(segment_end: jax.Array, last_q: int, q_len: int) -> jax.Array:
  """int32 [..., R]: the `last_q` consecutive query slots ending at segment_end [...] (clamped into [0, S))."""
  start = jnp.clip(segment_end - last_q, 0, q_len - last_q)
  return (start[..., None] + jnp.arange(last_q)).astype(jnp.int32)


def estimate_logits(q: jax.Array, k: jax.Array, rows: jax.Array | int, last_q: int | None = None) -> jax.Array:
  """Unscaled logits q[rows] k^T per query head, float32 [B, Hq, R, T] from inputs in their own dtype.

  q: [B, S, Hq, D] (slot order); k: [B, T, Hkv, D]; rows: the first of `last_q` consecutive query slots, a static
  int or int [B] (a slice: only those rows are read), or int [B, R] slots shared by every head (a gather).
  """
  batch, _, num_q_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  if isinstance(rows, int):
    q_rows = q[:, rows : rows + last_q]
  elif rows.ndim == 1:
    q_rows = jax.vmap(lambda x, start: jax.lax.dynamic_slice_in_dim(x, start, last_q, axis=0))(q, rows)
  else:
    q_rows = jnp.take_along_axis(q, rows[:, :, None, None], axis=1)  # [B, R, Hq, D]
  num_rows = q_rows.shape[1]
  groups = num_q_heads // num_kv_heads
  # [B, Hkv, G, R, D] x [B, T, Hkv, D] -> [B, Hkv, G, R, T] straight out of the matmul (batch dims, then the free
  # dims in order), so no transpose of the [Hq, R, T] logits follows.
  q_rows = q_rows.reshape(batch, num_rows, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
  logits = jax.lax.dot_general(
    q_rows, k, (((4,), (3,)), ((0, 1), (0, 2))), precision=precision, preferred_element_type=jnp.float32
  )
  return logits.reshape(batch, num_q_heads, num_rows, k.shape[1])


def _online_softmax_pair(a, b):
  """Combines (max, sum of exp(x - max)) pairs; a pair with max -inf contributes nothing."""
  (m_a, s_a), (m_b, s_b) = a, b
  m = jnp.maximum(m_a, m_b)
  scale = lambda m_x, s_x: jnp.where(m_x == -jnp.inf, 0.0, s_x * jnp.exp(m_x - m))  # noqa: E731
  return m, scale(m_a, s_a) + scale(m_b, s_b)


class Estimate:
  """A_hat = softmax over visible keys of `scale * logits`, evaluated lazily (see the module docstring).

  Attributes:
    logits: [B, H, R, T] unscaled logits (float32).
    visible: bool, broadcastable to [B, H, R, T] (causality by original positions).
    scale: sm_scale.
    row_max, row_sum: float32 [B, H, R], the softmax statistics of the scaled, masked logits.
  """

  def __init__(self, logits: jax.Array, visible: jax.Array, scale: float):
    self.logits, self.visible, self.scale = logits, visible, float(scale)
    scaled = self._scaled()
    ones = jnp.ones(scaled.shape, jnp.float32)
    self.row_max, self.row_sum = jax.lax.reduce(
      (scaled, ones), (jnp.float32(-jnp.inf), jnp.float32(0.0)), _online_softmax_pair, (scaled.ndim - 1,)
    )

  @property
  def num_rows(self) -> int:
    return self.logits.shape[-2]

  def _scaled(self) -> jax.Array:
    scaled = self.logits.astype(jnp.float32) * jnp.float32(self.scale)
    return jnp.where(self.visible, scaled, -jnp.inf)

  def probabilities(self) -> jax.Array:
    """float32 [B, H, R, T]; every row sees at least its own token, so no row is empty."""
    return jnp.exp(self._scaled() - self.row_max[..., None]) / self.row_sum[..., None]

  def log_probabilities(self, row_weight: jax.Array | None = None) -> jax.Array:
    """float32 [B, H, R, T]: log(row_weight[r] A_hat[r, t]) (-inf where invisible or weighted 0), an expression
    of the logits that the sums below read inside their own reduction."""
    log_norm = self.row_max + jnp.log(self.row_sum)
    if row_weight is not None:
      log_norm = log_norm - jnp.log(row_weight)
    return self._scaled() - log_norm[..., None]


def line_sums(
  estimate: Estimate, row_weight: jax.Array | None = None, key_groups: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Column (vertical) and diagonal (slash) sums of row_weight[r] A_hat[r, t], all from ONE reduction over the rows
  (the logits are read once, A_hat is never stored).

  Args:
    estimate: the Last-Q estimate, R rows over T keys.
    row_weight: optional float [B, H or 1, R].
    key_groups: optional bool [G, B, H or 1, T]: one diagonal sum per group of keys (the key modalities of a 2D
      boundary head), each over that group's keys only.
  Returns:
    column float32 [B, H, T]: sum_r row_weight[r] A_hat[r, t] (MInference's vertical sums);
    diagonal float32 [B, H, T + R - 1] ([G, B, H, T + R - 1] with key_groups): out[u + R - 1] =
      sum_r row_weight[r] A_hat[r, u + r], u in (-R, T). For rows at consecutive key-slot coordinates
      c_r = c_0 + r, the slash sum of offset o = c_r - t is out[c_0 - o + R - 1].

  Row r shifted left by r is a skew of the rows in reverse order: padded by R on the right and read back with a
  row width one shorter (a reshape), so each diagonal sum is a reduction over rows, not a scatter.
  """
  log_terms = estimate.log_probabilities(row_weight)
  *lead, num_rows, kv_len = log_terms.shape
  width = kv_len + num_rows - 1
  pad = [(0, 0)] * len(lead) + [(0, 0)]
  column_terms = jnp.pad(log_terms, pad + [(0, num_rows - 1)], constant_values=-jnp.inf)

  def skewed(terms):
    padded = jnp.pad(terms[..., ::-1, :], pad + [(0, num_rows)], constant_values=-jnp.inf)
    return padded.reshape(*lead, num_rows * (kv_len + num_rows))[..., : num_rows * width].reshape(
      *lead, num_rows, width
    )

  groups = [None] if key_groups is None else list(key_groups)
  diagonal_terms = [
    skewed(log_terms if group is None else jnp.where(group[..., None, :], log_terms, -jnp.inf)) for group in groups
  ]
  column, *diagonals = _sum_exp([column_terms, *diagonal_terms], axis=-2)
  return column[..., :kv_len], (diagonals[0] if key_groups is None else jnp.stack(diagonals))


def residue_sums(estimate: Estimate, modulus: int) -> jax.Array:
  """float32 [B, H, R, modulus]: out[..., r, c] = sum_{t = c (mod modulus)} A_hat[r, t] (keys past T count 0)."""
  log_terms = estimate.log_probabilities()
  kv_len = log_terms.shape[-1]
  padded = -(-kv_len // modulus) * modulus
  log_terms = jnp.pad(log_terms, [(0, 0)] * (log_terms.ndim - 1) + [(0, padded - kv_len)], constant_values=-jnp.inf)
  return _sum_exp([log_terms.reshape(*log_terms.shape[:-1], padded // modulus, modulus)], axis=-2)[0]


def _sum_exp(log_terms: list[jax.Array], axis: int) -> list[jax.Array]:
  """sum(exp(x), axis) for each x of log_terms (equal shapes), as ONE reduction of (max, sum of exp(x - max))
  pairs: the exponentials run inside the reduction, so XLA fuses it with the logits' scaling and masking and
  reads them once (a plain sum of exp(...) makes XLA:CPU store the exponentials first, then hand them to a
  library reduction)."""
  axis = axis % log_terms[0].ndim
  ones = jnp.ones(log_terms[0].shape, jnp.float32)
  init = (jnp.float32(-jnp.inf), jnp.float32(0.0))

  def combine(a, b):
    return tuple(
      x for i in range(0, len(a), 2) for x in _online_softmax_pair((a[i], a[i + 1]), (b[i], b[i + 1]))
    )

  out = jax.lax.reduce(
    tuple(x for terms in log_terms for x in (terms, ones)), init * len(log_terms), combine, (axis,)
  )
  return [jnp.where(peak == -jnp.inf, 0.0, total * jnp.exp(peak)) for peak, total in zip(out[::2], out[1::2])]
