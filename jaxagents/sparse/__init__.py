"""MMInference sparse-attention pattern builders and per-head dispatcher (MMInference, arXiv 2504.16083; the
patterns it shares with MInference follow microsoft/MInference `minference/modules/minference_forward.py`). Pure
JAX, jit-able, static output shapes; the layouts drive the block-sparse kernels of `kernels_pallas.block_sparse`.

    from jaxagents.sparse import mminference_attention
    head = {"pattern": "vertical_slash", "params": {"v_size": 1000, "s_size": 6096}}  # MInference's default
    out = mminference_attention(q, k, v, [head] * num_q_heads)

Files: `layouts.py` (coordinates, causal/diagonal blocks, scores -> BlockLayout, `compose`), `permutation.py`,
`estimate.py` (last-queries estimate), one file per pattern (`a_shape.py`, `vertical_slash.py`, `block_topk.py`,
`grid.py`), `modality.py` (Q-/2D-boundary permutations and sub-layouts), `patterns.py` (the pattern
table), `permuted.py` (attention over permuted tokens), `dispatch.py` (per-head dispatcher), `config.py` (a
model's versioned per-layer/per-head JSON config), `minference_format.py` (MInference's published list format),
`search.py` (the offline per-head search over captured q/k/v; Qwen-VL's calibration CLI that captures them is
`models/qwen_vl/sparse_search.py`). A model runs a config through
`attention(..., backend="sparse", sparse_config=...)`, e.g. `QwenVL(config, sparse_config=...)` for its prefill.
MMInference's code is not public: `grid.py` and `modality.py` are reconstructions from the paper's description,
and their docstrings say which steps are ours.
"""

from jaxagents.sparse.a_shape import a_shape
from jaxagents.sparse.block_topk import block_topk
from jaxagents.sparse.config import SparseAttentionConfig
from jaxagents.sparse.dispatch import HeadGroup, HeadSpec, build_head_layout, mminference_attention, parse_head_config
from jaxagents.sparse.grid import grid, grid_permutation, grid_search
from jaxagents.sparse.layouts import compose
from jaxagents.sparse.minference_format import load_minference, save_minference
from jaxagents.sparse.modality import boundary_layout, modality_permutation
from jaxagents.sparse.patterns import PATTERNS
from jaxagents.sparse.permutation import Permutation, make_permutation
from jaxagents.sparse.permuted import permuted_sparse_attention
from jaxagents.sparse.vertical_slash import vertical_slash

__all__ = [
  "PATTERNS",
  "HeadGroup",
  "HeadSpec",
  "Permutation",
  "SparseAttentionConfig",
  "a_shape",
  "block_topk",
  "boundary_layout",
  "build_head_layout",
  "compose",
  "grid",
  "grid_permutation",
  "grid_search",
  "load_minference",
  "make_permutation",
  "mminference_attention",
  "modality_permutation",
  "parse_head_config",
  "permuted_sparse_attention",
  "save_minference",
  "vertical_slash",
]
