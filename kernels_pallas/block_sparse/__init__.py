"""Block-sparse flash attention driven by a per-query-block list of key/value blocks (MMInference, arXiv
2504.16083; block lists in the style of jax's splash attention, `jax/experimental/pallas/ops/tpu/splash_attention/`).

    from kernels_pallas.block_sparse import block_sparse_attention, from_block_mask
    out = block_sparse_attention(q, k, v, from_block_mask(block_mask, 128, 128), causal=True)

Files: `layout.py` (BlockLayout, block kinds and their contract), `reference.py` (dense masked oracle),
`gpu_triton.py` (Pallas GPU, Triton lowering, any GPU), `gpu_mosaic.py` (Pallas Mosaic GPU, FlashAttention-3 style
for Hopper) with `gpu_mosaic_config.py` (its tuning and shape checks), `tpu.py` (Pallas TPU, a grid over the kept
blocks with chunked scalar prefetch), `api.py` (dispatch), `_compat.py` (Pallas names that moved between JAX
releases).
"""

from kernels_pallas.block_sparse.api import BACKENDS, block_sparse_attention
from kernels_pallas.block_sparse.layout import (
  BlockLayout,
  block_kinds,
  check_block_kinds,
  check_layout,
  check_layout_values,
  from_block_mask,
  to_block_mask,
  to_token_mask,
  validate_layout,
  with_block_kinds,
)
from kernels_pallas.block_sparse.reference import block_sparse_attention_reference, visible_mask

__all__ = [
  "BACKENDS",
  "BlockLayout",
  "block_kinds",
  "block_sparse_attention",
  "block_sparse_attention_reference",
  "check_block_kinds",
  "check_layout",
  "check_layout_values",
  "from_block_mask",
  "to_block_mask",
  "to_token_mask",
  "validate_layout",
  "visible_mask",
  "with_block_kinds",
]
