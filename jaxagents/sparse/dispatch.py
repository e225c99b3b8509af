"""`mminference_attention`: the per-head dispatcher of MMInference sparse attention (arXiv 2504.16083: every head
runs the pattern its offline search chose; pipeline as in microsoft/MInference `images/MMInference_onepage.png`).

One config entry per query head, in the layer format of `config.py`:

    {"pattern": "dense|a_shape|vertical_slash|block_topk|grid", "params": {...}, "boundary": "none|q|2d",
     "per_modality": {"<a>" or "<a>,<b>": {"pattern": ..., "params": {...}}}, "score": f}

`params` holds the pattern's parameters (`patterns.PATTERNS`) and optionally `max_blocks` (MAXN, default NK).
`boundary` "q"/"2d" runs the pattern per query modality / per (query, key) modality pair over the modality
permutation (`modality.py`), with optional `per_modality` overrides; `score` (the offline search's score) is
ignored. Prefill only: S == T.

GQA all the way down. Heads with equal configs form a group. A group's builder sees its query heads together with
the kv heads they use (K never repeated per query head; when a kv head's query heads are split between groups,
the group takes all of them and the others get empty rows). All unpermuted groups then share ONE
`block_sparse_attention` call on the original q, k, v (kv heads as they are; one per-query-head layout, or the
group's per-kv-head layout when a single group covers every head, so the G query heads of a kv head share their
K/V loads); each permuted group (grid, boundary) makes one `permuted_sparse_attention` call, which permutes K/V
once per kv head (`permuted.py`). The outputs are reassembled in head order.

Padding keys (`kv_mask` False, e.g. left padding in a batch) are masked through the kernels' causal positions:
such a key gets position T, later than every query, so no query sees it and a query that sees nothing else (a
left-padding row) outputs zeros. The layout builders see padding tokens' q and k as zeros, so neither the layouts
nor the outputs at real tokens depend on what the padding holds.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.sparse.a_shape import a_shape
from jaxagents.sparse.block_topk import block_topk
from jaxagents.sparse.grid import grid
from jaxagents.sparse.layouts import check_blocks, dense_layout, identity_frame
from jaxagents.sparse.modality import MODES, boundary_layout
from jaxagents.sparse.patterns import check_pattern
from jaxagents.sparse.permutation import Permutation
from jaxagents.sparse.permuted import permuted_sparse_attention
from jaxagents.sparse.vertical_slash import vertical_slash
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention

_ENTRY_KEYS = {"pattern", "params", "boundary", "per_modality", "score"}


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """A validated head config (hashable, so equal configs group together).

  Attributes:
    pattern: a name in `patterns.PATTERNS`.
    params: the pattern's params with defaults, as sorted (name, value) pairs (lists become tuples).
    max_blocks: MAXN or None (= NK).
    boundary: "none", "q" or "2d".
    per_modality: sorted (key, pattern, params) overrides; key is a or (a, b).
  """

  pattern: str
  params: tuple
  max_blocks: int | None
  boundary: str
  per_modality: tuple

  @property
  def param_dict(self) -> dict:
    return dict(self.params)


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["permutation", "layout"], meta_fields=["heads", "spec"]
)
@dataclasses.dataclass(frozen=True)
class HeadGroup:
  """One dispatched group: its query heads, config, permutation (None = original order) and layout."""

  heads: tuple[int, ...]
  spec: HeadSpec
  permutation: Permutation | None
  layout: BlockLayout


def _frozen(params: dict) -> tuple:
  return tuple(sorted((name, tuple(v) if isinstance(v, list | tuple) else v) for name, v in params.items()))


def parse_head_config(entry: dict, seq_len: int, head: int = 0) -> HeadSpec:
  """Validates one head's config entry (see the module docstring) for sequence length `seq_len`."""
  fn = f"mminference_attention: head {head}"
  if not isinstance(entry, dict) or "pattern" not in entry or set(entry) - _ENTRY_KEYS:
    raise ValueError(
      f"{fn}: a config entry must be a dict with 'pattern' and keys among {sorted(_ENTRY_KEYS)}, got {entry!r}"
    )
  raw_params = dict(entry.get("params") or {})
  max_blocks = raw_params.get("max_blocks")
  params = check_pattern(fn, entry["pattern"], raw_params, seq_len)
  boundary = entry.get("boundary", "none")
  if boundary not in ("none", *MODES):
    raise ValueError(f"{fn}: `boundary` must be 'none', 'q' or '2d', got {boundary!r}")
  if boundary != "none" and entry["pattern"] == "grid":
    raise ValueError(f"{fn}: the 'grid' pattern needs boundary 'none' (it has its own permutation), got {boundary!r}")
  overrides = []
  for key, sub in (entry.get("per_modality") or {}).items():
    if boundary == "none" or not isinstance(sub, dict) or "pattern" not in sub or set(sub) - {"pattern", "params"}:
      raise ValueError(
        f"{fn}: `per_modality` needs boundary 'q' or '2d' and entries {{'pattern', 'params'}}, got {key!r}: {sub!r}"
      )
    try:
      parsed = tuple(int(x) for x in str(key).split(","))
    except ValueError:
      parsed = ()
    if len(parsed) != (1 if boundary == "q" else 2):
      raise ValueError(f"{fn}: `per_modality` key {key!r} must be 'a' for boundary 'q', 'a,b' for '2d'")
    sub_params = check_pattern(fn, sub["pattern"], sub.get("params"), seq_len)
    overrides.append((parsed[0] if boundary == "q" else parsed, sub["pattern"], _frozen(sub_params)))
  return HeadSpec(entry["pattern"], _frozen(params), max_blocks, boundary, tuple(sorted(overrides)))


def build_head_layout(
  q: jax.Array,
  k: jax.Array,
  spec: HeadSpec,
  modality_ids: jax.Array | None = None,
  *,
  num_modalities: int = 2,
  block_q: int = 64,
  block_kv: int = 64,
  causal: bool = True,
  sm_scale: float | None = None,
  head_weight: np.ndarray | None = None,
) -> tuple[Permutation | None, BlockLayout]:
  """Layout (and permutation, None for unpermuted heads) of heads sharing `spec`.

  q: [B, S, G, D], k: [B, T, Gkv, D] (G a multiple of Gkv); returns a layout [B, G or Gkv, S / block_q, MAXN] and
  a permutation [B, Gkv or 1, N]. `head_weight` [G] (0 or 1) marks the query heads that run this config (grid search).
  """
  batch, seq_len, heads, _ = q.shape
  kv_heads = k.shape[2]
  params = spec.param_dict
  common = {"block_q": block_q, "block_kv": block_kv, "max_blocks": spec.max_blocks, "causal": causal}
  if spec.boundary != "none":
    if modality_ids is None:
      raise ValueError(f"mminference_attention: boundary {spec.boundary!r} heads need `modality_ids` [B, S], got None")
    per_modality = {key: (pattern, dict(sub)) for key, pattern, sub in spec.per_modality}
    return boundary_layout(
      q,
      k,
      modality_ids,
      spec.pattern,
      params,
      mode=spec.boundary,
      num_modalities=num_modalities,
      per_modality=per_modality,
      sm_scale=sm_scale,
      **common,
    )
  if spec.pattern == "grid":
    weight = None if head_weight is None else jnp.asarray(head_weight, jnp.float32)
    return grid(q, k, params["strides"], last_q=params["last_q"], sm_scale=sm_scale, head_weight=weight, **common)
  if spec.pattern == "dense":
    max_blocks = check_blocks("mminference_attention", seq_len, k.shape[1], block_q, block_kv, spec.max_blocks)
    return None, dense_layout(identity_frame(batch, kv_heads, seq_len, block_q, block_kv, causal), max_blocks)
  if spec.pattern == "a_shape":
    return None, a_shape(seq_len, params["n_init"], params["n_local"], batch=batch, num_heads=kv_heads, **common)
  if spec.pattern == "block_topk":
    return None, block_topk(q, k, params["topk"], sm_scale=sm_scale, **common)
  return None, vertical_slash(q, k, sm_scale=sm_scale, **params, **common)


def _take_heads(x: jax.Array, heads: np.ndarray | None) -> jax.Array:
  """x [B, N, H, D] restricted to `heads` (None: all, no copy)."""
  return x if heads is None else x[:, :, heads]


def _per_query_head(layout: BlockLayout, num_q_heads: int) -> BlockLayout:
  """A per-kv-head layout repeated over each kv head's query heads (no-op for a per-query-head layout)."""
  if layout.num_heads == num_q_heads:
    return layout
  repeat = num_q_heads // layout.num_heads
  return jax.tree.map(lambda x: jnp.repeat(x, repeat, axis=1), layout)


def _rows(layout: BlockLayout, heads, max_blocks: int) -> BlockLayout:
  """The layout rows of `heads` (axis 1), padded to `max_blocks` by repeating the last entry."""
  heads = np.atleast_1d(np.asarray(heads))
  pad = max_blocks - layout.max_blocks
  blocks = jnp.pad(layout.kv_blocks[:, heads], [(0, 0)] * 3 + [(0, pad)], mode="edge")
  return BlockLayout(blocks, layout.kv_count[:, heads], layout.block_q, layout.block_kv)


def _empty_rows(layout: BlockLayout, keep: np.ndarray) -> BlockLayout:
  """Rows of the heads where keep [H] is False emptied (count 0, ids 0)."""
  keep = jnp.asarray(keep)
  return BlockLayout(
    jnp.where(keep[None, :, None, None], layout.kv_blocks, 0),
    jnp.where(keep[None, :, None], layout.kv_count, 0),
    layout.block_q,
    layout.block_kv,
  )


def _permutation_rows(perm: Permutation, heads, group_size: int) -> Permutation:
  """A per-kv-head ([B, Gkv, N]) or shared ([B, 1, N]) permutation as one row per query head of `heads`."""
  heads = np.asarray(heads)
  index = np.zeros_like(heads) if perm.q_perm.shape[1] == 1 else heads // group_size
  return jax.tree.map(lambda x: x[:, index], perm)


def mminference_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  head_config: Sequence[dict],
  modality_ids: jax.Array | None = None,
  *,
  num_modalities: int = 2,
  block_q: int = 64,
  block_kv: int = 64,
  causal: bool = True,
  sm_scale: float | None = None,
  backend: str | Sequence[str] = "auto",
  interpret=False,
  return_plan: bool = False,
  kv_mask: jax.Array | None = None,
):
  """MMInference sparse attention with a pattern per query head; jitted once per shapes and `head_config`.

  Args:
    q: [B, S, Hq, D]; k, v: [B, T, Hkv, D], S == T, Hq % Hkv == 0.
    head_config: Hq config entries (module docstring).
    modality_ids: int [B, S] (needed by boundary heads), values in [0, num_modalities).
    num_modalities: M (static).
    block_q, block_kv: layout block sizes (powers of two >= 16 for the Pallas GPU backend).
    causal: causal attention by original positions.
    sm_scale: default 1 / sqrt(D), for the estimates and the attention.
    backend, interpret: passed to `block_sparse_attention` ('auto' runs the XLA reference on CPU).
    return_plan: also return the list of `HeadGroup`s (heads, config, permutation, layout).
    kv_mask: bool [B, T], False at padding keys (module docstring); needs `causal`.
  Returns:
    out [B, S, Hq, D] in q.dtype; with return_plan, (out, [HeadGroup, ...]).
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[2] % k.shape[2] or q.shape[1] != k.shape[1]:
    raise ValueError(
      "mminference_attention: `q` must be [B, S, Hq, D] and `k`, `v` [B, S, Hkv, D] (prefill, Hkv dividing Hq), "
      f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    )
  seq_len, num_q_heads = q.shape[1], q.shape[2]
  if len(head_config) != num_q_heads:
    raise ValueError(f"mminference_attention: `head_config` must have Hq={num_q_heads} entries, got {len(head_config)}")
  groups: dict[HeadSpec, list[int]] = {}
  for head, entry in enumerate(head_config):
    groups.setdefault(parse_head_config(entry, seq_len, head), []).append(head)
  if modality_ids is None and any(spec.boundary != "none" for spec in groups):
    raise ValueError("mminference_attention: boundary 'q'/'2d' heads need `modality_ids` [B, S], got None")
  if kv_mask is not None:
    kv_mask = jnp.asarray(kv_mask)
    if kv_mask.shape != (q.shape[0], k.shape[1]) or kv_mask.dtype != jnp.bool_:
      raise ValueError(
        f"mminference_attention: `kv_mask` must be bool [B, T] = {(q.shape[0], k.shape[1])}, "
        f"got {kv_mask.dtype}{tuple(kv_mask.shape)}"
      )
    if not causal:
      raise ValueError("mminference_attention: `kv_mask` is applied through causal positions and needs causal=True")
  backend = backend if isinstance(backend, str) else tuple(backend)
  out, plan = _dispatch(
    q,
    k,
    v,
    modality_ids,
    kv_mask,
    tuple((spec, tuple(heads)) for spec, heads in groups.items()),
    num_modalities,
    block_q,
    block_kv,
    causal,
    sm_scale,
    backend,
    interpret,
  )
  return (out, plan) if return_plan else out


# One compile per (shapes, head configs): the builders, gathers and kernels of all groups fuse into one program.
@functools.partial(jax.jit, static_argnums=tuple(range(5, 13)))
def _dispatch(
  q, k, v, modality_ids, kv_mask, groups, num_modalities, block_q, block_kv, causal, sm_scale, backend, interpret
):
  num_q_heads, num_kv_heads = q.shape[2], k.shape[2]
  group_size = num_q_heads // num_kv_heads
  (batch, q_len), kv_len = q.shape[:2], k.shape[1]
  positions, q_est, k_est = {}, q, k
  if kv_mask is not None:
    # Padding keys sit after every query (position T), so causality hides them (module docstring).
    q_positions = jnp.broadcast_to(jnp.arange(q_len, dtype=jnp.int32), (batch, q_len))
    kv_positions = jnp.where(kv_mask, jnp.arange(kv_len, dtype=jnp.int32), kv_len)
    positions = {"q_positions": q_positions, "kv_positions": kv_positions}
    q_est, k_est = (jnp.where(kv_mask[:, :, None, None], x, 0) for x in (q, k))  # S == T: one mask for both
  kernel_args = {"causal": causal, "sm_scale": sm_scale, "backend": backend, "interpret": interpret, **positions}
  outs, plan, unpermuted = [], [], []
  for spec, heads in groups:
    kv_heads = sorted({head // group_size for head in heads})
    full = np.array([kv * group_size + g for kv in kv_heads for g in range(group_size)])  # whole GQA groups
    member = np.isin(full, heads)
    take_q = functools.partial(_take_heads, heads=None if len(full) == num_q_heads else full)
    take_kv = functools.partial(_take_heads, heads=None if len(kv_heads) == num_kv_heads else np.array(kv_heads))
    perm, layout = build_head_layout(
      take_q(q_est),
      take_kv(k_est),
      spec,
      modality_ids,
      num_modalities=num_modalities,
      block_q=block_q,
      block_kv=block_kv,
      causal=causal,
      sm_scale=sm_scale,
      head_weight=member.astype(np.float32),
    )
    members = np.flatnonzero(member)
    if perm is None:
      unpermuted.append((full, member, layout))
    else:
      run_layout = layout if member.all() else _empty_rows(_per_query_head(layout, len(full)), member)
      out = permuted_sparse_attention(take_q(q), take_kv(k), take_kv(v), perm, run_layout, **kernel_args)
      outs.append((full[members], out[:, :, members]))
    group_layout = _rows(_per_query_head(layout, len(full)), members, layout.max_blocks)
    group_perm = None if perm is None else _permutation_rows(perm, members, group_size)
    plan.append(HeadGroup(heads, spec, group_perm, group_layout))
  if unpermuted:
    if len(unpermuted) == 1 and unpermuted[0][1].all() and len(unpermuted[0][0]) == num_q_heads:
      layout = unpermuted[0][2]  # one group over every head: its own (possibly per-kv-head) layout
    else:  # one per-query-head layout over all heads; the rows of heads served elsewhere are empty
      max_blocks = max(layout.max_blocks for _, _, layout in unpermuted)
      source = {}
      for full, member, layout in unpermuted:
        for index in np.flatnonzero(member):
          source[int(full[index])] = (_per_query_head(layout, len(full)), index)
      empty = BlockLayout(jnp.zeros((batch, 1, q_len // block_q, max_blocks), jnp.int32),
                          jnp.zeros((batch, 1, q_len // block_q), jnp.int32), block_q, block_kv)
      rows = [_rows(*source[head], max_blocks) if head in source else empty for head in range(num_q_heads)]
      layout = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *rows)
    out = block_sparse_attention(q, k, v, layout, **kernel_args)
    served = np.concatenate([full[member] for full, member, _ in unpermuted])
    outs.append((served, out[:, :, served]))
  order = np.argsort(np.concatenate([heads for heads, _ in outs]))
  return jnp.concatenate([out for _, out in outs], axis=2)[:, :, order], plan
