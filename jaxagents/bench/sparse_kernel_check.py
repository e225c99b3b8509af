"""Block-sparse attention kernels on the device they run on, against the float32 dense masked reference.

    python -m jaxagents.bench.sparse_kernel_check                      # every GPU backend on a GPU, TPU on a TPU
    python -m jaxagents.bench.sparse_kernel_check --backends pallas_mosaic_gpu --out check.json

The CPU suite checks the Pallas kernels in interpret mode and lowers them for cuda and tpu; this is the check on the
hardware itself (MMInference, arXiv 2504.16083, runs its kernels on GPUs). Each case draws fresh random inputs and a
random causal block layout (the diagonal always listed, so every query row has a key), runs the kernel twice
and reports
  * rel_err: ||out - ref|| / ||ref|| against `backend='xla'` on float32 copies of the same inputs (highest matmul
    precision), and the same for the log-sum-exp;
  * deterministic: the two runs are bitwise equal (a moving result on the same inputs means a race);
  * finite: no NaN/inf in the output.
A case passes when both errors are under `--tolerance` (bf16/f16 operands land between 1e-3 and 1e-2) and the runs
agree. A backend the shape is refused by (NotImplementedError naming why) is reported as skipped. Exits 1 when any
case fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.bench.sparse_attention import random_causal_block_mask
from kernels_pallas.block_sparse import block_sparse_attention
from kernels_pallas.block_sparse.layout import from_block_mask


@dataclasses.dataclass(frozen=True)
class Case:
  """One shape: q [batch, q_len, heads, head_dim], k/v [batch, kv_len, kv_heads, head_dim]; a layout per kv head
  (or per query head with per_q_head_layout); permuted: each kv head's tokens in their own random order."""

  name: str
  q_len: int = 4096
  kv_len: int = 4096
  heads: int = 28
  kv_heads: int = 4
  head_dim: int = 128
  batch: int = 1
  block: int = 128
  density: float = 0.3
  dtype: str = "bfloat16"
  permuted: bool = False
  per_q_head_layout: bool = False


CASES = (
  Case("gqa 28/4, d128, block 128"),
  Case("gqa 28/4, d128, block 64", block=64),
  Case("permuted positions per kv head", permuted=True),
  Case("layout per query head, batch 2", batch=2, q_len=2048, kv_len=2048, per_q_head_layout=True),
  Case("mha 8/8, d64, float16", heads=8, kv_heads=8, head_dim=64, dtype="float16"),
  Case("queries at the end of longer keys", q_len=1024, kv_len=4096),
  Case("dense layout", q_len=2048, kv_len=2048, density=1.0),
)


def _layout(case: Case, rng: np.random.Generator):
  heads = case.heads if case.per_q_head_layout else case.kv_heads
  nq, nk = case.q_len // case.block, case.kv_len // case.block
  offset = nk - nq  # queries sit at the end of the keys: query block i meets key block i + offset on the diagonal
  square = random_causal_block_mask(nk, heads, case.density, seed=int(rng.integers(1 << 30)))
  mask = np.concatenate([square[:, :, offset:]] * case.batch)  # [B, H, NQ, NK]
  return from_block_mask(mask, case.block, case.block)


def _positions(case: Case, rng: np.random.Generator):
  if not case.permuted:
    return None, None
  orders = np.stack([np.stack([rng.permutation(case.kv_len) for _ in range(case.kv_heads)])
                     for _ in range(case.batch)]).astype(np.int32)  # [B, Hkv, T]
  # Permuting keys and queries by the same order keeps a token's position; blocks then mix positions, so almost
  # every listed block is partial and the causal mask does the work.
  return jnp.asarray(orders[..., case.kv_len - case.q_len:]), jnp.asarray(orders)


def check_case(case: Case, backend: str, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(case.dtype)
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (case.batch, case.q_len, case.heads, case.head_dim), dtype)
  k, v = (jax.random.normal(key, (case.batch, case.kv_len, case.kv_heads, case.head_dim), dtype) for key in keys[1:])
  layout = _layout(case, rng)
  q_positions, kv_positions = _positions(case, rng)
  call = functools.partial(block_sparse_attention, causal=True, return_lse=True, q_positions=q_positions,
                           kv_positions=kv_positions)
  result = dict(case=case.name, backend=backend, **{f: getattr(case, f) for f in ("q_len", "kv_len", "heads",
                                                                                  "kv_heads", "head_dim", "block",
                                                                                  "dtype")})
  try:
    run = jax.jit(functools.partial(call, backend=backend))
    out, lse = jax.block_until_ready(run(q, k, v, layout))
    again, _ = jax.block_until_ready(run(q, k, v, layout))
  except NotImplementedError as error:
    return {**result, "skipped": " ".join(str(error).split())[:300]}
  with jax.default_matmul_precision("highest"):
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    ref_out, ref_lse = jax.jit(functools.partial(call, backend="xla"))(f32(q), f32(k), f32(v), layout)
  out32 = np.asarray(out, np.float32)
  ref_out, ref_lse, lse = (np.asarray(x, np.float64) for x in (ref_out, ref_lse, lse))
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
  return {**result, "skipped": None, "rel_err": rel(out32, ref_out), "lse_rel_err": rel(lse, ref_lse),
          "deterministic": bool(np.array_equal(np.asarray(out), np.asarray(again))),
          "finite": bool(np.isfinite(out32).all())}


def default_backends() -> tuple[str, ...]:
  return {"gpu": ("pallas_triton", "pallas_mosaic_gpu"), "tpu": ("pallas_tpu",)}.get(jax.default_backend(), ("xla",))


def run(backends: Sequence[str], tolerance: float, seed: int = 0, cases: Sequence[Case] = CASES) -> list[dict]:
  rows = []
  for backend in backends:
    for index, case in enumerate(cases):
      try:
        row = check_case(case, backend, seed + index)
      except Exception as error:  # noqa: BLE001 -- a crashing backend is a failed row, not the end of the check
        row = dict(case=case.name, backend=backend, skipped=None, error=f"{type(error).__name__}: "
                   + " ".join(str(error).split())[:600])
      if not row.get("skipped"):
        row["passed"] = ("error" not in row and row["finite"] and row["deterministic"]
                         and row["rel_err"] < tolerance and row["lse_rel_err"] < tolerance)
      rows.append(row)
      print(format_row(row), flush=True)
  return rows


def format_row(row: dict) -> str:
  head = f"{row['backend']:18s} {row['case']:38s}"
  if row.get("skipped"):
    return f"{head} skipped: {row['skipped']}"
  if "error" in row:
    return f"{head} FAILED {row['error']}"
  verdict = "ok" if row["passed"] else "FAILED"
  return (f"{head} {verdict:6s} rel_err {row['rel_err']:.2e}  lse {row['lse_rel_err']:.2e}  "
          f"deterministic {row['deterministic']}  finite {row['finite']}")


def main(argv: Sequence[str] | None = None, cases: Sequence[Case] = CASES) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--backends", default=None, help="comma-separated; default: the device's Pallas backends")
  parser.add_argument("--tolerance", type=float, default=1e-2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  backends = args.backends.split(",") if args.backends else default_backends()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} (jax {jax.__version__})", flush=True)
  rows = run(backends, args.tolerance, args.seed, cases)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": device.device_kind, "jax": jax.__version__, "rows": rows}, f, indent=2)
  return rows


if __name__ == "__main__":
  sys.exit(0 if all(row.get("passed", True) for row in main()) else 1)
