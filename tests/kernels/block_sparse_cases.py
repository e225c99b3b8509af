"""Shared inputs and independent oracles for the block-sparse attention tests.

The oracles never go through the code under test's mask expansion: token masks are expanded here with numpy
from the *block mask* the layout was built from, and outputs come from `jaxagents.layers.attention` (the
library's dense attention) or a float64 numpy softmax.
"""

import dataclasses

import jax
import numpy as np

from jaxagents.layers import attention

_jit_attention = jax.jit(attention, static_argnames=("causal", "scale", "backend"))


def library_attention(*args, **kwargs):
  """`jaxagents.layers.attention`, jitted, with float32 matmuls at full precision on every platform."""
  with jax.default_matmul_precision("float32"):
    return _jit_attention(*args, **kwargs)


def interpret_for(backend: str) -> bool:
  """Interpret a Pallas backend unless JAX runs on its platform (so the suite also runs on a GPU/TPU)."""
  return jax.default_backend() != {"pallas_triton": "gpu", "pallas_tpu": "tpu"}[backend]


@dataclasses.dataclass(frozen=True)
class Case:
  batch: int
  seq_len: int
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  block_q: int
  block_kv: int
  per_q_head_layout: bool = False  # layout H = Hq instead of Hkv

  @property
  def layout_heads(self) -> int:
    return self.num_q_heads if self.per_q_head_layout else self.num_kv_heads

  def __str__(self) -> str:
    kind = "mha" if self.num_q_heads == self.num_kv_heads else f"gqa{self.num_q_heads}x{self.num_kv_heads}"
    tail = "-perqhead" if self.per_q_head_layout else ""
    return f"B{self.batch}-S{self.seq_len}-{kind}-D{self.head_dim}-b{self.block_q}x{self.block_kv}{tail}"


def qkv(case: Case, dtype=np.float32, seed: int = 0, kv_len: int | None = None):
  """Standard-normal q [B, S, Hq, D], k, v [B, T, Hkv, D]."""
  rng = np.random.default_rng(seed)
  kv_len = kv_len or case.seq_len
  q = rng.standard_normal((case.batch, case.seq_len, case.num_q_heads, case.head_dim))
  k = rng.standard_normal((case.batch, kv_len, case.num_kv_heads, case.head_dim))
  v = rng.standard_normal((case.batch, kv_len, case.num_kv_heads, case.head_dim))
  return tuple(np.asarray(x, dtype) for x in (q, k, v))


def random_block_mask(case: Case, seed: int = 1, density: float = 0.4, kv_len: int | None = None) -> np.ndarray:
  """bool [B, H, NQ, NK] with i.i.d. blocks; one row per (b, h) is left empty to exercise empty rows."""
  rng = np.random.default_rng(seed)
  kv_len = kv_len or case.seq_len
  shape = (case.batch, case.layout_heads, case.seq_len // case.block_q, kv_len // case.block_kv)
  mask = rng.random(shape) < density
  mask[:, :, rng.integers(shape[2])] = False
  return mask


def token_mask(block_mask: np.ndarray, case: Case) -> np.ndarray:
  """bool [B, Hq, S, T] from a block mask [B, H, NQ, NK], H in {Hkv, Hq} (query heads of a group share)."""
  mask = np.repeat(np.repeat(block_mask, case.block_q, axis=2), case.block_kv, axis=3)
  return np.repeat(mask, case.num_q_heads // block_mask.shape[1], axis=1)


def lse_oracle(q, k, visible, sm_scale) -> np.ndarray:
  """float64 log-sum-exp [B, Hq, S] over visible keys (-inf on empty rows); visible: bool [B, Hq, S, T]."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  scores = np.einsum("bshd,bthd->bhst", q, k) * sm_scale
  scores = np.where(visible, scores, -np.inf)
  peak = np.max(scores, axis=-1, keepdims=True)
  peak = np.where(np.isfinite(peak), peak, 0.0)
  with np.errstate(divide="ignore"):
    return np.log(np.sum(np.exp(scores - peak), axis=-1)) + peak[..., 0]


def causal_visible(case: Case, block_mask, q_positions=None, kv_positions=None) -> np.ndarray:
  """bool [B, Hq, S, T]: the block mask's tokens AND kv_pos <= q_pos (default positions arange)."""
  positions = np.arange(case.seq_len)
  q_pos = np.broadcast_to(positions if q_positions is None else q_positions, (case.batch, case.seq_len))
  kv_pos = np.broadcast_to(positions if kv_positions is None else kv_positions, (case.batch, case.seq_len))
  return token_mask(block_mask, case) & (kv_pos[:, None, None, :] <= q_pos[:, None, :, None])


def attention_oracle(q, k, v, visible, sm_scale) -> np.ndarray:
  """float64 softmax attention [B, S, Hq, D] over visible keys (zeros on empty rows); visible: bool [B, Hq, S, T]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.where(visible, np.einsum("bshd,bthd->bhst", q, k) * sm_scale, -np.inf)
  peak = np.max(scores, axis=-1, keepdims=True)
  weights = np.exp(scores - np.where(np.isfinite(peak), peak, 0.0))
  total = np.sum(weights, axis=-1, keepdims=True)
  probs = weights / np.where(total > 0, total, 1.0)
  return np.einsum("bhst,bthd->bshd", probs, v)
