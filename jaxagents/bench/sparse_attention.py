"""MMInference block-sparse attention against dense causal attention, at long context (MMInference, arXiv
2504.16083, reports up to 8.3x over FlashAttention-2 at 1M tokens on an A100; here the anchor is cuDNN).

    python -m jaxagents.bench.sparse_attention --seq 8192,32768,131072 --density 1.0,0.25,0.1,0.05

bf16, B = 1, Qwen2.5-VL-7B head shape by default (28 query heads, 4 kv heads, d = 128). For each length S:
  * anchor: dense causal attention, `jaxagents.layers.attention(..., backend="cudnn")` on a GPU, "xla" elsewhere;
  * dense-layout kernel: `block_sparse_attention` with every causal block listed (our target: within 1.2x of
    cuDNN);
  * random layout: the kernel on a random causal block layout of each density < 1 (fraction of the causal
    blocks kept, the diagonal always among them), one layout per kv head (GQA group);
  * grid (video): a synthetic video of frames x h x w tokens whose queries attend the same spatial location in
    every frame (planted stride h * w) and one phase column; `jaxagents.sparse.grid` estimates and searches the
    stride/phase and builds the layout ("search"), Q/K/V are gathered into phase-major order and the output
    scattered back ("permute"), and the kernel runs on the permuted tokens ("kernel"); "total" is their sum
    (our target at density 0.1 and 128k tokens: 30 ms or less).
Times are the median of `--repeats` wall-clock runs after a warm-up run, each ended by `jax.block_until_ready`.
TFLOP/s counts the kept work only: 4 * kept (query, key) pairs * d * Hq (QK^T and PV), the pairs being those the
layout lists that are also causal by original position. "speedup" is anchor time / row time at the same S. A
configuration that the memory or the backend cannot take is a row "skipped: <reason>". No timing is asserted.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.bench.report import cell, median_time, publish
from jaxagents.layers import attention
from jaxagents.sparse import grid
from jaxagents.sparse.permutation import gather_tokens
from kernels_pallas.block_sparse import BlockLayout, block_sparse_attention
from kernels_pallas.block_sparse.layout import from_block_mask

# What a configuration that cannot run here raises: a backend refusing (NotImplementedError), XLA running out of
# memory or failing to compile (JaxRuntimeError), the host running out of memory.
_SKIPPABLE = (NotImplementedError, jax.errors.JaxRuntimeError, MemoryError)




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


def _skip_reason(error: Exception) -> str:
  message = " ".join(line.strip() for line in str(error).splitlines())  # the table row needs one line
  return f"skipped: {type(error).__name__}: {message[:240]}"


def run(seqs: Sequence[int], densities: Sequence[float], *, heads: int = 28, kv_heads: int = 4, head_dim: int = 128,
        block: int = 128, frame: tuple[int, int] = (16, 16), repeats: int = 5, dtype=jnp.bfloat16,
        backend: str = "auto", interpret: bool = False) -> list[dict]:
  """Times the anchor, the dense-layout kernel, each density < 1 and the grid stages per length.

  Returns one dict per table row: seq, config, density (kept causal pairs / S(S+1)/2), backend, ms, kept_pairs
  (per query head, mean over heads), tflops, speedup (anchor ms / ms), skipped (None or "skipped: <reason>"),
  and for grid rows the found stride/phase."""
  on_gpu = jax.default_backend() == "gpu"
  anchor_backend = "cudnn" if on_gpu else "xla"
  kernel_backend = backend
  if backend == "auto":
    kernel_backend = {"gpu": "pallas_triton", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
  kernel = jax.jit(functools.partial(block_sparse_attention, causal=True, backend=kernel_backend,
                                     interpret=interpret))
  dense = jax.jit(functools.partial(attention, causal=True, backend=anchor_backend))
  rows = []
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
    except _SKIPPABLE as error:
      rows.append(_row(seq_len, "anchor: dense causal", 1.0, anchor_backend, skipped=_skip_reason(error)))

    num_blocks = seq_len // block
    for density in sorted({1.0, *densities}, reverse=True):
      config = "dense-layout kernel" if density == 1.0 else "random layout"
      mask = random_causal_block_mask(num_blocks, kv_heads, density, seed=seq_len)
      pairs = float(causal_block_pairs(mask, block).mean())
      max_blocks = min(num_blocks, -(-int(mask.sum(-1).max()) // 8) * 8)
      try:
        layout = from_block_mask(mask, block, block, max_blocks)
        seconds = median_time(lambda: kernel(q, k, v, layout), repeats)  # noqa: B023
        rows.append(_row(seq_len, config, pairs / causal_pairs, kernel_backend, seconds, pairs, anchor=anchor,
                         **common))
      except _SKIPPABLE as error:
        rows.append(_row(seq_len, config, pairs / causal_pairs, kernel_backend, skipped=_skip_reason(error)))

    rows.extend(_grid_rows(seq_len, heads, kv_heads, head_dim, block, frame, repeats, dtype, kernel, kernel_backend,
                           anchor))
  return rows


def _grid_rows(seq_len, heads, kv_heads, head_dim, block, frame, repeats, dtype, kernel, kernel_backend, anchor):
  stages = ("grid (video): search", "grid (video): permute", "grid (video): kernel", "grid (video): total")
  stride = frame[0] * frame[1]
  if seq_len % stride or seq_len // stride < 2:
    reason = f"skipped: S={seq_len} is not a multiple of >= 2 frames of {frame[0]}x{frame[1]} tokens"
    return [_row(seq_len, name, None, kernel_backend, skipped=reason) for name in stages]
  strides = tuple(sorted({s for s in (frame[1], stride, 2 * stride) if 2 <= s <= seq_len}))
  groups = heads // kv_heads
  try:
    q, k, v = video_qk(seq_len, heads, kv_heads, head_dim, frame, phase=frame[1] + 1, dtype=dtype)
    search = jax.jit(lambda q, k: grid(q, k, strides, block_q=block, block_kv=block))
    perm, layout = search(q, k)

    @jax.jit
    def permute(q, k, v):
      fold = lambda x: jnp.swapaxes(x, 1, 2).reshape(heads, seq_len, 1, head_dim)  # noqa: E731
      k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
      return tuple(fold(gather_tokens(x, p)) for x, p in ((q, perm.q_perm), (k, perm.kv_perm), (v, perm.kv_perm)))

    @jax.jit
    def unpermute(out):
      return gather_tokens(jnp.swapaxes(out.reshape(1, heads, seq_len, head_dim), 1, 2), perm.q_inverse)

    folded = BlockLayout(layout.kv_blocks.reshape(heads, 1, *layout.kv_blocks.shape[2:]),
                         layout.kv_count.reshape(heads, 1, -1), block, block)
    q_pos, kv_pos = perm.q_perm.reshape(heads, seq_len), perm.kv_perm.reshape(heads, seq_len)
    qf, kf, vf = permute(q, k, v)
    out = kernel(qf, kf, vf, folded, q_positions=q_pos, kv_positions=kv_pos)
    times = [
      median_time(lambda: search(q, k), repeats),
      median_time(lambda: permute(q, k, v), repeats) + median_time(lambda: unpermute(out), repeats),
      median_time(lambda: kernel(qf, kf, vf, folded, q_positions=q_pos, kv_positions=kv_pos), repeats),
    ]
    pairs = float(permuted_causal_pairs(layout, perm.q_perm, perm.kv_perm).mean())
  except _SKIPPABLE as error:
    return [_row(seq_len, name, None, kernel_backend, skipped=_skip_reason(error)) for name in stages]
  found = dict(stride=int(np.asarray(perm.q_perm[0, 0, 1] - perm.q_perm[0, 0, 0])), phase=int(perm.q_perm[0, 0, 0]))
  density = pairs / (seq_len * (seq_len + 1) // 2)
  rows = []
  for name, seconds in zip(stages, [*times, sum(times)], strict=True):
    counted = pairs if name.endswith(("kernel", "total")) else None
    rows.append(_row(seq_len, name, density, kernel_backend, seconds, counted, heads=heads, head_dim=head_dim,
                     anchor=anchor, **found))
  return rows


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}",
           "| S | config | density | backend | ms | TFLOP/s (kept) | speedup vs anchor | note |",
           "|---:|---|---:|---|---:|---:|---:|---|"]
  for r in rows:
    note = r["skipped"] or (f"stride {r['stride']}, phase {r['phase']}" if "stride" in r else "")
    lines.append(f"| {r['seq']} | {r['config']} | {cell(r['density'], '.3f')} | {r['backend']} | "
                 f"{cell(r['ms'], '.3f')} | {cell(r['tflops'], '.1f')} | {cell(r['speedup'], '.2f')} | {note} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seq", default="8192,32768,131072", help="comma-separated sequence lengths")
  parser.add_argument("--density", default="1.0,0.25,0.1,0.05", help="comma-separated block densities in (0, 1]")
  parser.add_argument("--heads", type=int, default=28)
  parser.add_argument("--kv-heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--block", type=int, default=128, help="block_q = block_kv of the layouts")
  parser.add_argument("--frame", default="16x16", help="h x w tokens per frame of the synthetic video (grid rows)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--backend", default="auto", help="kernel backend: auto, pallas_triton, pallas_tpu, xla")
  parser.add_argument("--interpret", action="store_true", help="run the Pallas kernel in interpret mode")
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  frame = tuple(int(x) for x in args.frame.lower().split("x"))
  if len(frame) != 2 or min(frame) < 1:
    raise ValueError(f"sparse_attention bench: `--frame` must be HxW with positive ints, got {args.frame!r}")
  rows = run([int(s) for s in args.seq.split(",")], [float(d) for d in args.density.split(",")], heads=args.heads,
             kv_heads=args.kv_heads, head_dim=args.head_dim, block=args.block, frame=frame, repeats=args.repeats,
             dtype=jnp.dtype(args.dtype), backend=args.backend, interpret=args.interpret)
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
