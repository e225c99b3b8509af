"""Tuning and shape checks of the Hopper block-sparse kernel (`gpu_mosaic.py`): the config dataclass, the default
rule per shape (`choose_config`), the shared-memory arithmetic and the refusals the dispatcher falls back on."""

import dataclasses

import jax.numpy as jnp

from kernels_pallas.block_sparse.layout import BlockLayout

WG_ROWS = 64  # query rows per compute warpgroup (one wgmma M tile)
SMEM_BUDGET = 200 * 1024  # bytes of ring + q/o buffers `choose_config` allows (Hopper: 227 KiB per block)
SMEM_LIMIT = 227 * 1024
_SCHED_COLS = 64  # a packed block list is stored [R, 64]: TMA boxes take at most 256 elements per dimension
_DTYPES = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  """Tuning of `block_sparse_attention_mosaic_gpu` (see the module docstring for the default rule).

  Attributes:
    compute_wgs: compute warpgroups per program (1 or 2), 64 query rows each.
    block_kv: key/value rows per kernel step (64 or 128), dividing layout.block_kv.
    max_concurrent_steps: depth of the shared-memory K/V ring (>= 2).
  """

  compute_wgs: int = 2
  block_kv: int = 128
  max_concurrent_steps: int = 2

  def __post_init__(self):
    if self.compute_wgs not in (1, 2):
      raise ValueError(f"MosaicConfig: `compute_wgs` must be 1 or 2, got {self.compute_wgs}")
    if self.block_kv not in (64, 128):
      raise ValueError(f"MosaicConfig: `block_kv` must be 64 or 128, got {self.block_kv}")
    if self.max_concurrent_steps < 2:
      raise ValueError(f"MosaicConfig: `max_concurrent_steps` must be >= 2, got {self.max_concurrent_steps}")


def _padded_dim(head_dim: int) -> int:
  return -(-head_dim // 64) * 64


def _num_streams(layout_block_q: int, compute_wgs: int) -> int:
  """1 when the warpgroups share a layout row, `compute_wgs` when each runs its own (layout.block_q = 64)."""
  return 1 if layout_block_q % (WG_ROWS * compute_wgs) == 0 else compute_wgs


def smem_bytes(config: MosaicConfig, layout_block_q: int, head_dim: int, itemsize: int = 2) -> int:
  """Shared memory of the q/o tiles and the K/V ring(s) (the small position, list and lse buffers excluded)."""
  streams = _num_streams(layout_block_q, config.compute_wgs)
  dim = _padded_dim(head_dim)
  ring = 2 * streams * config.max_concurrent_steps * config.block_kv * dim * itemsize
  return ring + config.compute_wgs * WG_ROWS * dim * itemsize


def choose_config(
  layout_block_q: int, layout_block_kv: int, head_dim: int, q_len: int, itemsize: int = 2
) -> MosaicConfig:
  """The default tuning for a shape (rule in the module docstring)."""
  dim = _padded_dim(head_dim)
  one_wg = layout_block_q == WG_ROWS and (dim > 128 or q_len % (2 * WG_ROWS))
  compute_wgs = 1 if one_wg else 2
  shared = _num_streams(layout_block_q, compute_wgs) == 1
  block_kv = 128 if dim <= 128 and layout_block_kv % 128 == 0 and shared else 64
  for steps in (4, 3, 2):
    config = MosaicConfig(compute_wgs, block_kv, steps)
    if smem_bytes(config, layout_block_q, head_dim, itemsize) <= SMEM_BUDGET:
      return config
  return config


def check_supported(layout: BlockLayout, q_len: int, head_dim: int, dtype, config: MosaicConfig) -> None:
  """NotImplementedError naming the field when this kernel cannot take the shape (the dispatcher falls back)."""
  where = "block_sparse_attention_mosaic_gpu"
  if jnp.dtype(dtype) not in map(jnp.dtype, _DTYPES):
    raise NotImplementedError(
      f"{where}: `q.dtype` must be bfloat16 or float16 (wgmma operands), got {jnp.dtype(dtype)}"
    )
  rows = WG_ROWS * config.compute_wgs
  if q_len % rows:
    raise NotImplementedError(
      f"{where}: query length S={q_len} must be a multiple of {rows} (64 rows x config.compute_wgs="
      f"{config.compute_wgs})"
    )
  if layout.block_q % rows and not (layout.block_q == WG_ROWS and config.compute_wgs == 2):
    raise NotImplementedError(
      f"{where}: `layout.block_q` must be a multiple of {rows} (64 rows x {config.compute_wgs} compute warpgroups) "
      f"or 64 (one warpgroup per layout row), got {layout.block_q}"
    )
  if layout.block_kv % config.block_kv:
    raise NotImplementedError(
      f"{where}: `layout.block_kv` must be a multiple of the kernel's block_kv={config.block_kv} (64 or 128), "
      f"got {layout.block_kv}"
    )
  if layout.max_blocks + 1 > 256 * _SCHED_COLS:
    raise NotImplementedError(
      f"{where}: `layout.kv_blocks` MAXN must be < {256 * _SCHED_COLS} (one TMA copy of the block list), "
      f"got {layout.max_blocks}"
    )
  streams = _num_streams(layout.block_q, config.compute_wgs)
  if streams * config.max_concurrent_steps > 32:
    raise NotImplementedError(
      f"{where}: `config.max_concurrent_steps` x streams must be <= 32 (barrier phase bits), got "
      f"{config.max_concurrent_steps} x {streams}"
    )
  needed = smem_bytes(config, layout.block_q, head_dim, jnp.dtype(dtype).itemsize)
  if needed > SMEM_LIMIT:
    raise NotImplementedError(
      f"{where}: `config` needs {needed} bytes of shared memory for head_dim={head_dim}, more than {SMEM_LIMIT}; "
      f"lower max_concurrent_steps or block_kv (got {config})"
    )
