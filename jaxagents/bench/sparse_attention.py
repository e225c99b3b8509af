"""MMInference block-sparse attention against dense causal attention, at long context (MMInference, arXiv
2504.16083, reports up to 8.3x over FlashAttention-2 at 1M tokens on an A100; here the anchor is cuDNN).

    python -m jaxagents.bench.sparse_attention --seq 32768,131072,1048576 --density 1.0,0.25,0.1,0.05
    python -m jaxagents.bench.sparse_attention --backend pallas_mosaic_gpu,pallas_triton   # Hopper kernel first

bf16, B = 1, Qwen2.5-VL-7B head shape by default (28 query heads, 4 kv heads, d = 128). For each length S:
  * anchor: dense causal attention, `jaxagents.layers.attention(..., backend="cudnn")` on a GPU, "xla" elsewhere;
  * dense-layout kernel: `block_sparse_attention` with every causal block listed;
  * random layout: the kernel on a random causal block layout of each density < 1 (fraction of the causal
    blocks kept, the diagonal always among them), one layout per kv head (GQA group); these rows and the
    dense-layout one are timed for every backend of `--backend` (comma-separated), the pipelines below for the
    first;
  * the whole sparse prefill, stage by stage, each stage timed on its own and "total" their sum:
      - vertical-slash (random input, MInference's 1000 columns and 6096 diagonals): estimate (the Last-Q
        estimate's column and diagonal sums), layout (blocks from those sums), kernel;
      - grid (video): a synthetic video of frames x h x w tokens whose queries attend the same spatial location
        in every frame (planted stride h * w) and one phase column: estimate (estimate + stride/phase search per
        kv head), layout (phase-major permutation and blocks), permute (q/k/v gathered once per kv head, the
        output scattered back), kernel on the permuted tokens;
      - 2d boundary (video + text): the same video with every 4th frame's tokens marked text, vertical-slash per
        modality pair after the modality sort: estimate + layout (one stage), permute, kernel.
Times are the median of `--repeats` wall-clock runs after a warm-up run, each ended by `jax.block_until_ready`.
TFLOP/s counts the kept work only: 4 * kept (query, key) pairs * d * Hq (QK^T and PV), the pairs being those the
layout lists that are also causal by original position. "speedup" is anchor time / row time at the same S. A
configuration that the memory or the backend cannot take (e.g. 1M tokens beyond the device's memory) is a row
"skipped: <reason>". No timing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.bench.report import SKIPPABLE, cell, median_time, publish, skip_reason
from jaxagents.layers import attention
from jaxagents.sparse.block_topk import block_topk
from jaxagents.sparse.grid import grid_budget, grid_layout, grid_search
from jaxagents.sparse.modality import boundary_layout
from jaxagents.sparse.permuted import permute_heads
from jaxagents.sparse.vertical_slash import vertical_slash_layout, vertical_slash_sums
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention
from kernels_pallas.block_sparse.layout import from_block_mask


def random_causal_block_mask(num_blocks: int, heads: int, density: float, seed: int = 0) -> np.ndarray:
  """bool [1, heads, NB, NB]: the diagonal plus random strictly-lower blocks, round(density * NB(NB+1)/2) in all
  per head (never fewer than the NB diagonal blocks)."""
  if not 0.0 < density <= 1.0:
    raise ValueError(f"random_causal_block_mask: `density` must be in (0, 1], got {density}")
  rng = np.random.default_rng(seed)
  rows, cols = np.tril_indices(num_blocks, -1)
  extra = min(max(round(density * num_blocks * (num_blocks + 1) / 2) - num_blocks, 0), rows.size)
  mask = np.zeros((1, heads, num_blocks, num_blocks), bool)
  mask[:, :, np.arange(num_blocks), np.arange(num_blocks)] = True
  for h in range(heads):
    keep = rng.choice(rows.size, extra, replace=False)
    mask[0, h, rows[keep], cols[keep]] = True
  return mask


def causal_block_pairs(block_mask: np.ndarray, block: int) -> np.ndarray:
  """Kept causal (query, key) pairs per head of a square-block mask on unpermuted tokens: a listed diagonal block
  holds block (block + 1) / 2 causal pairs, a listed block below it block^2, one above it none.

  block_mask: bool [B, H, NB, NB] -> int64 [B, H]."""
  num_blocks = block_mask.shape[-1]
  weight = np.tril(np.full((num_blocks, num_blocks), block * block, np.int64), -1)
  weight += np.eye(num_blocks, dtype=np.int64) * (block * (block + 1) // 2)
  return (block_mask.astype(np.int64) * weight).sum((-1, -2))


@jax.jit
def _permuted_row_pairs(layout: BlockLayout, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
  batch, heads, num_q_blocks, max_blocks = layout.kv_blocks.shape
  keys = jnp.sort(kv_positions.reshape(batch * heads, -1, layout.block_kv), axis=-1)  # [B*H, NK, bkv]
  rows = (
    q_positions.reshape(-1, layout.block_q),
    layout.kv_blocks.reshape(-1, max_blocks),
    layout.kv_count.reshape(-1),
    jnp.arange(batch * heads * num_q_blocks) // num_q_blocks,
  )

  def row(args):  # one (b, h, i) row: its queries' positions [bq], listed ids [MAXN], count, head index
    q_pos, ids, count, head = args
    below = jax.vmap(lambda k: jnp.searchsorted(k, q_pos, side="right"))(keys[head][ids])  # [MAXN, bq]
    # A row holds at most MAXN * bq * bkv pairs (2^24 at 128k with 128 x 128 blocks): int32 is exact.
    return jnp.sum(jnp.where(jnp.arange(max_blocks)[:, None] < count, below, 0), dtype=jnp.int32)

  return jax.lax.map(row, rows, batch_size=64).reshape(batch, heads, num_q_blocks)


def permuted_causal_pairs(layout: BlockLayout, q_positions: jax.Array, kv_positions: jax.Array) -> np.ndarray:
  """Kept pairs per layout head when the tokens are permuted: the sum over listed (query block, key block) of
  #{(i, j) in the blocks : kv_positions[j] <= q_positions[i]}.

  layout: [B, H, NQ, MAXN]; q_positions int [B, H, S], kv_positions int [B, H, T] (original positions of the
  slots) -> int64 [B, H] (summed on the host: a head's total passes 2^31 at 128k)."""
  return np.asarray(_permuted_row_pairs(layout, q_positions, kv_positions)).astype(np.int64).sum(-1)


def video_qk(seq_len: int, heads: int, kv_heads: int, head_dim: int, frame: tuple[int, int], phase: int,
             dtype, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Synthetic video q [1, S, Hq, D], k, v [1, S, Hkv, D]: token i lies at spatial slot i mod (h * w) of frame
  i // (h * w); q and k share a direction per slot (logit ~5: the slash lines of stride h * w) and keys at slot
  `phase` carry a direction every query has (the vertical lines)."""
  stride = frame[0] * frame[1]
  keys = jax.random.split(jax.random.key(seed), 4)
  # Random unit directions: one per slot plus the vertical one (last row); h * w may exceed d, and random
  # directions overlap by only ~1/sqrt(d), so wrong-slot logits stay ~5/sqrt(d).
  directions = jax.random.normal(keys[0], (stride + 1, head_dim))
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  scale = float(np.sqrt(5.0 * np.sqrt(head_dim)))
  slot = jnp.arange(seq_len) % stride
  q_signal = scale * (directions[slot] + directions[-1])  # [S, D]
  k_signal = scale * (directions[slot] + (slot == phase)[:, None] * directions[-1])
  q = 0.1 * jax.random.normal(keys[1], (1, seq_len, heads, head_dim)) + q_signal[None, :, None]
  k = 0.1 * jax.random.normal(keys[2], (1, seq_len, kv_heads, head_dim)) + k_signal[None, :, None]
  v = jax.random.normal(keys[3], (1, seq_len, kv_heads, head_dim))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _row(seq_len, config, density, backend, seconds=None, pairs=None, heads=1, head_dim=1, anchor=None,
         skipped=None, **extra) -> dict:
  ms = None if seconds is None else seconds * 1e3
  tflops = None if seconds is None or pairs is None else 4 * pairs * head_dim * heads / seconds / 1e12
  speedup = None if seconds is None or anchor is None else anchor / ms
  return dict(seq=seq_len, config=config, density=density, backend=backend, ms=ms, kept_pairs=pairs,
              tflops=tflops, speedup=speedup, skipped=skipped, **extra)


def run(seqs: Sequence[int], densities: Sequence[float], *, heads: int = 28, kv_heads: int = 4, head_dim: int = 128,
        block: int = 128, frame: tuple[int, int] = (16, 16), repeats: int = 5, dtype=jnp.bfloat16,
        backend: str = "auto", interpret: bool = False, topk_density: float = 0.1) -> list[dict]:
  """Times the anchor, the dense-layout kernel, each density < 1 and the grid stages per length.

  Returns one dict per table row: seq, config, density (kept causal pairs / S(S+1)/2), backend, ms, kept_pairs
  (per query head, mean over heads), tflops, speedup (anchor ms / ms), skipped (None or "skipped: <reason>"),
  and for grid rows the found stride/phase."""
  on_gpu = jax.default_backend() == "gpu"
  anchor_backend = "cudnn" if on_gpu else "xla"
  auto = {"gpu": "pallas_triton", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
  kernel_backends = [auto if name == "auto" else name for name in backend.split(",")]
  kernels = {name: jax.jit(functools.partial(block_sparse_attention, causal=True, backend=name, interpret=interpret))
             for name in kernel_backends}
  kernel_backend, kernel = kernel_backends[0], kernels[kernel_backends[0]]
  dense = jax.jit(functools.partial(attention, causal=True, backend=anchor_backend))
  rows = _ProgressRows()
  for seq_len in seqs:
    if seq_len % block:
      raise ValueError(f"sparse_attention bench: every `--seq` must be a multiple of --block={block}, got {seq_len}")
    causal_pairs = seq_len * (seq_len + 1) // 2
    common = dict(heads=heads, head_dim=head_dim)
    q, k, v = (jax.random.normal(key, (1, seq_len, h, head_dim), dtype)
               for key, h in zip(jax.random.split(jax.random.key(seq_len), 3), (heads, kv_heads, kv_heads),
                                 strict=True))
    anchor = None
    try:
      seconds = median_time(lambda: dense(q, k, v), repeats)  # noqa: B023
      anchor = seconds * 1e3
      rows.append(_row(seq_len, "anchor: dense causal", 1.0, anchor_backend, seconds, causal_pairs, **common))
    except SKIPPABLE as error:
      rows.append(_row(seq_len, "anchor: dense causal", 1.0, anchor_backend, skipped=skip_reason(error)))

    num_blocks = seq_len // block
    for density in sorted({1.0, *densities}, reverse=True):
      config = "dense-layout kernel" if density == 1.0 else "random layout"
      mask = random_causal_block_mask(num_blocks, kv_heads, density, seed=seq_len)
      pairs = float(causal_block_pairs(mask, block).mean())
      max_blocks = min(num_blocks, -(-int(mask.sum(-1).max()) // 8) * 8)
      layout = from_block_mask(mask, block, block, max_blocks)
      for name, kernel_fn in kernels.items():
        try:
          seconds = median_time(lambda: kernel_fn(q, k, v, layout), repeats)  # noqa: B023
          rows.append(_row(seq_len, config, pairs / causal_pairs, name, seconds, pairs, anchor=anchor, **common))
        except SKIPPABLE as error:
          rows.append(_row(seq_len, config, pairs / causal_pairs, name, skipped=skip_reason(error)))

    rows.extend(_block_topk_rows(seq_len, q, k, v, block, topk_density, repeats, kernel, kernel_backend, anchor,
                                 heads, head_dim))
    rows.extend(_vertical_slash_rows(seq_len, heads, kv_heads, head_dim, block, repeats, dtype, kernel,
                                     kernel_backend, anchor))
    pipeline_args = (seq_len, heads, kv_heads, head_dim, block, frame, repeats, dtype, kernel, kernel_backend, anchor)
    rows.extend(_grid_rows(*pipeline_args))
    rows.extend(_boundary_rows(*pipeline_args))
  return list(rows)


class _ProgressRows(list):
  """The rows, each also written to stderr as it is measured (a long run that is cut short still shows them)."""

  def append(self, row):
    print(format_row(row), file=sys.stderr, flush=True)
    super().append(row)

  def extend(self, rows):
    for row in rows:
      self.append(row)


def _stage_rows(seq_len, name, stages, pairs, kernel_backend, anchor, heads, head_dim, **found) -> list[dict]:
  """Rows "<name>: <stage>" for timed stages {stage: seconds} and their total; kept pairs on kernel and total."""
  density = pairs / (seq_len * (seq_len + 1) // 2)
  rows = []
  for stage, seconds in [*stages.items(), ("total", sum(stages.values()))]:
    counted = pairs if stage in ("kernel", "total") else None
    rows.append(_row(seq_len, f"{name}: {stage}", density, kernel_backend, seconds, counted, heads=heads,
                     head_dim=head_dim, anchor=anchor, **found))
  return rows


def _skipped_rows(seq_len, name, stages, kernel_backend, reason) -> list[dict]:
  return [_row(seq_len, f"{name}: {stage}", None, kernel_backend, skipped=reason) for stage in (*stages, "total")]


def _block_topk_rows(seq_len, q, k, v, block, density, repeats, kernel, kernel_backend, anchor, heads, head_dim):
  """Block top-k (MInference's third pattern) on the random input, keeping `density` of the causal blocks: topk =
  round(density * (NK + 1) / 2) - 1 key blocks per query block besides its diagonal one. Estimate and layout are
  one jitted call (pooled block scores, top-k per row), then the kernel."""
  name, stages = "block top-k", ("estimate + layout", "kernel")
  num_blocks = seq_len // block
  topk = max(1, round(density * (num_blocks + 1) / 2) - 1)
  try:
    build = jax.jit(lambda q, k: block_topk(q, k, topk, block_q=block, block_kv=block))
    layout = build(q, k)
    times = {"estimate + layout": median_time(lambda: build(q, k), repeats),
             "kernel": median_time(lambda: kernel(q, k, v, layout), repeats)}
    identity = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (1, heads, seq_len))
    pairs = float(permuted_causal_pairs(layout, identity, identity).mean())
  except SKIPPABLE as error:
    return _skipped_rows(seq_len, name, stages, kernel_backend, skip_reason(error))
  return _stage_rows(seq_len, name, times, pairs, kernel_backend, anchor, heads, head_dim, topk=topk)


def local_qk(seq_len: int, heads: int, kv_heads: int, head_dim: int, window: int, sinks: int, dtype,
             seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Language-model-like q [1, S, Hq, D], k, v [1, S, Hkv, D]: a query attends (logit ~5) the keys of its own and
  the previous `window` of tokens and the first `sinks` tokens (attention sinks), the rest at logit ~0. The
  Last-Q estimate then finds slash lines on the nearest diagonals and vertical lines on the sinks and the last
  windows: the structure MInference's vertical-slash heads show, which random q/k lack (there the 1000 columns
  fall in almost every key block and the block layout is dense)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  directions = jax.random.normal(keys[0], (seq_len // window + 2, head_dim))
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  scale = float(np.sqrt(5.0 * np.sqrt(head_dim)))
  window_id = jnp.arange(seq_len) // window + 1  # 0: the sink direction
  q_signal = scale * (directions[window_id] + directions[window_id - 1] + directions[0])
  k_signal = scale * jnp.where((jnp.arange(seq_len) < sinks)[:, None], directions[0], directions[window_id])
  q = 0.1 * jax.random.normal(keys[1], (1, seq_len, heads, head_dim)) + q_signal[None, :, None]
  k = 0.1 * jax.random.normal(keys[2], (1, seq_len, kv_heads, head_dim)) + k_signal[None, :, None]
  v = jax.random.normal(keys[3], (1, seq_len, kv_heads, head_dim))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _vertical_slash_rows(seq_len, heads, kv_heads, head_dim, block, repeats, dtype, kernel, kernel_backend, anchor):
  """MInference's vertical-slash (1000 columns, 6096 diagonals, clipped to S) on `local_qk` (3072-token windows,
  64 sinks): the Last-Q estimate, the layout from its sums, the kernel."""
  name, stages = "vertical-slash (local + sinks)", ("estimate", "layout", "kernel")
  v_size, s_size = min(1000, seq_len), min(6096, seq_len)
  try:
    q, k, v = local_qk(seq_len, heads, kv_heads, head_dim, window=3072, sinks=64, dtype=dtype)
    estimate = jax.jit(lambda q, k: vertical_slash_sums(q, k))
    build = jax.jit(lambda vertical, slash: vertical_slash_layout(vertical, slash, v_size, s_size, block_q=block,
                                                                  block_kv=block))
    vertical, slash = estimate(q, k)
    layout = build(vertical, slash)
    times = {"estimate": median_time(lambda: estimate(q, k), repeats),
             "layout": median_time(lambda: build(vertical, slash), repeats),
             "kernel": median_time(lambda: kernel(q, k, v, layout), repeats)}
    identity = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (1, heads, seq_len))
    pairs = float(permuted_causal_pairs(layout, identity, identity).mean())
  except SKIPPABLE as error:
    return _skipped_rows(seq_len, name, stages, kernel_backend, skip_reason(error))
  return _stage_rows(seq_len, name, times, pairs, kernel_backend, anchor, heads, head_dim)


def _grid_rows(seq_len, heads, kv_heads, head_dim, block, frame, repeats, dtype, kernel, kernel_backend, anchor):
  """The grid pattern on a synthetic video: estimate + stride/phase search, layout (permutation and blocks),
  permute (q/k/v in, output back: once per kv head), kernel on the permuted tokens."""
  name, stages = "grid (video)", ("estimate", "layout", "permute", "kernel")
  stride = frame[0] * frame[1]
  if seq_len % stride or seq_len // stride < 2:
    reason = f"skipped: S={seq_len} is not a multiple of >= 2 frames of {frame[0]}x{frame[1]} tokens"
    return _skipped_rows(seq_len, name, stages, kernel_backend, reason)
  strides = tuple(sorted({s for s in (frame[1], stride, 2 * stride) if 2 <= s <= seq_len}))
  try:
    q, k, v = video_qk(seq_len, heads, kv_heads, head_dim, frame, phase=frame[1] + 1, dtype=dtype)
    search = jax.jit(lambda q, k: grid_search(q, k, strides)[:2])
    max_blocks = min(grid_budget(seq_len, strides, block, block), seq_len // block)
    build = jax.jit(lambda stride, phase: grid_layout(stride, phase, seq_len, block_q=block, block_kv=block,
                                                      max_blocks=max_blocks))
    permute = jax.jit(lambda q, k, v, perm: (permute_heads(q, perm.q_perm), permute_heads(k, perm.kv_perm),
                                             permute_heads(v, perm.kv_perm)))
    unpermute = jax.jit(lambda out, perm: permute_heads(out, perm.q_inverse))
    found_stride, found_phase = search(q, k)
    perm, layout = build(found_stride, found_phase)
    qp, kp, vp = permute(q, k, v, perm)
    positions = {"q_positions": perm.q_perm, "kv_positions": perm.kv_perm}
    out = kernel(qp, kp, vp, layout, **positions)
    times = {"estimate": median_time(lambda: search(q, k), repeats),
             "layout": median_time(lambda: build(found_stride, found_phase), repeats),
             "permute": median_time(lambda: permute(q, k, v, perm), repeats) + median_time(lambda: unpermute(out, perm),
                                                                                       repeats),
             "kernel": median_time(lambda: kernel(qp, kp, vp, layout, **positions), repeats)}
    pairs = float(permuted_causal_pairs(layout, perm.q_perm, perm.kv_perm).mean())
  except SKIPPABLE as error:
    return _skipped_rows(seq_len, name, stages, kernel_backend, skip_reason(error))
  found = dict(stride=int(found_stride[0, 0]), phase=int(found_phase[0, 0]))
  return _stage_rows(seq_len, name, times, pairs, kernel_backend, anchor, heads, head_dim, **found)


def _boundary_rows(seq_len, heads, kv_heads, head_dim, block, frame, repeats, dtype, kernel, kernel_backend, anchor):
  """A 2D-boundary head (vision and text tokens sorted apart, vertical-slash per modality pair) on the synthetic
  video with a text span every 4 frames: estimate + layout (one stage: the per-modality estimates are built inside
  the layout), permute, kernel."""
  name, stages = "2d boundary (video + text)", ("estimate + layout", "permute", "kernel")
  stride = frame[0] * frame[1]
  if seq_len % stride:
    return _skipped_rows(seq_len, name, stages, kernel_backend, f"skipped: S={seq_len} is not a multiple of {stride}")
  try:
    q, k, v = video_qk(seq_len, heads, kv_heads, head_dim, frame, phase=frame[1] + 1, dtype=dtype)
    ids = jnp.asarray((np.arange(seq_len) // stride % 4 == 3).astype(np.int32))[None]  # every 4th frame: text
    params = {"v_size": min(1000, seq_len), "s_size": min(6096, seq_len)}
    build = jax.jit(lambda q, k, ids: boundary_layout(q, k, ids, "vertical_slash", params, mode="2d", block_q=block,
                                                      block_kv=block))
    permute = jax.jit(lambda q, k, v, perm: (permute_heads(q, perm.q_perm), permute_heads(k, perm.kv_perm),
                                             permute_heads(v, perm.kv_perm)))
    unpermute = jax.jit(lambda out, perm: permute_heads(out, perm.q_inverse))
    perm, layout = build(q, k, ids)
    qp, kp, vp = permute(q, k, v, perm)
    positions = {"q_positions": perm.q_perm, "kv_positions": perm.kv_perm}
    out = kernel(qp, kp, vp, layout, **positions)
    times = {"estimate + layout": median_time(lambda: build(q, k, ids), repeats),
             "permute": median_time(lambda: permute(q, k, v, perm), repeats) + median_time(lambda: unpermute(out, perm),
                                                                                       repeats),
             "kernel": median_time(lambda: kernel(qp, kp, vp, layout, **positions), repeats)}
    layout_perm = jnp.broadcast_to(perm.q_perm, (1, heads, seq_len))
    pairs = float(permuted_causal_pairs(layout, layout_perm, jnp.broadcast_to(perm.kv_perm, layout_perm.shape)).mean())
  except SKIPPABLE as error:
    return _skipped_rows(seq_len, name, stages, kernel_backend, skip_reason(error))
  return _stage_rows(seq_len, name, times, pairs, kernel_backend, anchor, heads, head_dim)


def format_row(r: dict) -> str:
  note = r["skipped"] or (f"stride {r['stride']}, phase {r['phase']}" if "stride" in r else
                          f"topk {r['topk']}" if "topk" in r else "")
  return (f"| {r['seq']} | {r['config']} | {cell(r['density'], '.3f')} | {r['backend']} | {cell(r['ms'], '.3f')} | "
          f"{cell(r['tflops'], '.1f')} | {cell(r['speedup'], '.2f')} | {note} |")


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}",
           "| S | config | density | backend | ms | TFLOP/s (kept) | speedup vs anchor | note |",
           "|---:|---|---:|---|---:|---:|---:|---|"]
  return "\n".join(lines + [format_row(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seq", default="32768,131072,1048576", help="comma-separated sequence lengths")
  parser.add_argument("--density", default="1.0,0.25,0.1,0.05", help="comma-separated block densities in (0, 1]")
  parser.add_argument("--heads", type=int, default=28)
  parser.add_argument("--kv-heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--block", type=int, default=128, help="block_q = block_kv of the layouts")
  parser.add_argument("--frame", default="16x16", help="h x w tokens per frame of the synthetic video (grid rows)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--backend", default="auto",
                      help="kernel backend(s), comma-separated: auto, pallas_mosaic_gpu (Hopper), pallas_triton, "
                           "pallas_tpu, xla; the random-layout rows run each, the pattern pipelines the first")
  parser.add_argument("--topk-density", type=float, default=0.1, help="causal blocks the block top-k row keeps")
  parser.add_argument("--interpret", action="store_true", help="run the Pallas kernel in interpret mode")
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  frame = tuple(int(x) for x in args.frame.lower().split("x"))
  if len(frame) != 2 or min(frame) < 1:
    raise ValueError(f"sparse_attention bench: `--frame` must be HxW with positive ints, got {args.frame!r}")
  rows = run([int(s) for s in args.seq.split(",")], [float(d) for d in args.density.split(",")], heads=args.heads,
             kv_heads=args.kv_heads, head_dim=args.head_dim, block=args.block, frame=frame, repeats=args.repeats,
             dtype=jnp.dtype(args.dtype), backend=args.backend, interpret=args.interpret,
             topk_density=args.topk_density)
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
