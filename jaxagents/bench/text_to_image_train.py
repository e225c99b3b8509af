"""Text-to-image training cost on one device: the MMDiT's flow-matching step (forward, backward, AdamW) at one
square size and over a stream of Lens aspect-ratio buckets, as model FLOP utilisation (MFU).

    python -m jaxagents.bench.text_to_image_train                 # Lens at 1024^2, batch 4, bf16 compute, remat
    python -m jaxagents.bench.text_to_image_train --model lens --size 512 --batch 16 --remat dots

The step is the text-to-image job's flow phase on precomputed inputs (`tasks.text_to_image`: the text features and
VAE latents are what its `prepare` or a data loader supplies): `diffusion.noised` at logit-normal sigmas, the DiT's
velocity in `--dtype` over float32 master weights (flax's module dtype), `diffusion.flow_matching_loss`, its
gradient, `optax.adamw` with global-norm clipping; parameters and optimizer state donated. Random weights, text
features and latents; `--text-len` valid text tokens.

Rows:
  * matmul ceiling: an 8192^3 product in `--dtype`, measured in the same run;
  * train step <size>^2, B=<batch>: the median step time; model FLOPs = 3x the forward's matmul FLOPs
    (`bench.text_to_image.dit_forward_flops`; the backward is twice the forward, rematerialised recomputation is
    not counted, as MFU is usually defined, PaLM arXiv 2204.02311 App. B);
  * bucket stream: `--stream-steps` steps over the Lens buckets at `--base` (nine aspect ratios), each bucket's batch
    sized to the token budget of the square row (`data.buckets.bucket_batch_sizes`) and drawn in equal proportion
    (every shape compiled before timing); FLOPs summed over the stream.
"MFU" divides by `--peak-tflops` (the device's dense bf16 peak: H100/H200 SXM 989, A100 312; when not given,
looked up from the device kind, else left out); "% of ceiling" divides by the measured matmul. A configuration
the device cannot hold is a row "skipped: <reason>".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxagents.bench import text_to_image as inference_bench
from jaxagents.bench.report import SKIPPABLE, cell, median_time, publish, skip_reason
from jaxagents.data.buckets import Bucket, bucket_batch_sizes, lens_buckets
from jaxagents.diffusion import flow_matching_loss, noised, sample_training_sigmas
from jaxagents.models.mmdit import MMDiT, get_config

# Dense bf16 peaks (TFLOP/s) by device kind, from the vendors' data sheets.
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100-SXM4-80GB": 312.0,
               "NVIDIA A100-SXM4-40GB": 312.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v4": 275.0}
_PIXELS_PER_TOKEN = 16  # the FLUX.2 VAE's 8x downsampling, then the DiT's 2x2 patchify


def _inputs(config, batch: int, height: int, width: int, text_len: int, dtype, seed: int) -> dict:
  """The inference benchmark's DiT inputs at height x width, the latents as float32 clean tokens `x0`."""
  inputs = inference_bench.dit_inputs(config, batch, height, text_len, dtype, seed, width=width)
  inputs.pop("timesteps")
  return {**inputs, "x0": inputs.pop("img").astype(jnp.float32)}


def make_train_step(dit: MMDiT, tx: optax.GradientTransformation):
  """(params, opt_state, inputs, key) -> (params, opt_state, loss): one flow-matching step, jitted with donation."""

  def step(params, opt_state, inputs, key):
    x0 = inputs["x0"]
    sigma_key, noise_key = jax.random.split(key)
    sigma = sample_training_sigmas(sigma_key, x0.shape[0])
    noise = jax.random.normal(noise_key, x0.shape)

    def loss_fn(p):
      v = dit.apply({"params": p}, noised(x0, noise, sigma), inputs["txt"], sigma, inputs["img_ids"],
                    inputs["txt_ids"])
      return flow_matching_loss(v.astype(jnp.float32), x0, noise)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _row(name, seconds=None, flops=None, ceiling=None, peak=None, skipped=None, note="") -> dict:
  ms = None if seconds is None else seconds * 1e3
  tflops = None if seconds is None or flops is None else flops / seconds / 1e12
  return dict(config=name, ms=ms, tflops=tflops, of_ceiling=None if tflops is None or not ceiling else tflops / ceiling,
              mfu=None if tflops is None or not peak else tflops / peak, skipped=skipped, note=note)


def step_flops(config, batch: int, height: int, width: int, text_len: int) -> float:
  """Model FLOPs of one training step: 3x the forward's matmul FLOPs (forward + a backward of twice the cost)."""
  num_img = (height // _PIXELS_PER_TOKEN) * (width // _PIXELS_PER_TOKEN)
  return 3.0 * inference_bench.dit_forward_flops(config, batch, num_img, text_len)


def run(model: str, size: int, batch: int, text_len: int, base: int, stream_steps: int, repeats: int, dtype,
        remat: str, learning_rate: float, peak: float | None, ceiling_size: int = 8192,
        bucket_names: Sequence[str] | None = None) -> list[dict]:
  rows = []
  ceiling_row, ceiling = inference_bench.matmul_ceiling(dtype, repeats, ceiling_size)
  rows.append(_row(ceiling_row["config"], ceiling_row["ms"] / 1e3, 2.0 * ceiling_size**3, ceiling, peak))
  print(format_row(rows[-1]), flush=True)
  config = get_config(model, remat_policy=remat)
  dit = MMDiT(config, dtype=dtype)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, b1=0.9, b2=0.99))
  train_step = make_train_step(dit, tx)
  name = f"{model} train step {size}^2, B={batch}, {text_len} text tokens, remat {remat}"
  try:
    inputs = _inputs(config, batch, size, size, text_len, dtype, 0)
    forward_args = [inputs["x0"], inputs["txt"], jnp.zeros((batch,)), inputs["img_ids"], inputs["txt_ids"]]
    params = inference_bench.random_variables(dit, forward_args, jnp.float32)["params"]  # float32 master weights
    state = [params, tx.init(params)]
    keys = iter(jax.random.split(jax.random.key(1), 10_000))

    def one_step():
      state[0], state[1], loss = train_step(state[0], state[1], inputs, next(keys))
      return loss

    seconds = median_time(one_step, repeats)
    rows.append(_row(name, seconds, step_flops(config, batch, size, size, text_len), ceiling, peak,
                     note=f"{batch * (size // _PIXELS_PER_TOKEN) ** 2 / seconds:,.0f} image tokens/s"))
  except SKIPPABLE as error:
    rows.append(_row(name, skipped=skip_reason(error)))
    state = None
  print(format_row(rows[-1]), flush=True)
  if state is not None and stream_steps > 0:
    rows.append(_stream_row(model, config, train_step, state, batch * (size // _PIXELS_PER_TOKEN) ** 2, text_len,
                            base, stream_steps, dtype, ceiling, peak, bucket_names))
    print(format_row(rows[-1]), flush=True)
  return rows


def _stream_row(model, config, train_step, state, tokens_per_batch, text_len, base, stream_steps, dtype, ceiling,
                peak, bucket_names) -> dict:
  buckets: Sequence[Bucket] = lens_buckets(base)
  if bucket_names:
    buckets = [b for b in buckets if b.name.split("@")[0] in bucket_names]
  sizes = bucket_batch_sizes(buckets, tokens_per_batch=tokens_per_batch, patch_size=_PIXELS_PER_TOKEN)
  name = (f"{model} bucket stream @{base}: {len(buckets)} buckets, {stream_steps} steps, "
          f"~{tokens_per_batch} tokens/batch")
  try:
    inputs = [_inputs(config, size, b.height, b.width, text_len, dtype, k)
              for k, (b, size) in enumerate(zip(buckets, sizes, strict=True))]
    key = jax.random.key(2)
    for k, batch in enumerate(inputs):  # compile every shape before timing
      state[0], state[1], loss = train_step(state[0], state[1], batch, jax.random.fold_in(key, k))
    jax.block_until_ready(loss)
    order = np.random.default_rng(0).integers(0, len(buckets), stream_steps)
    flops = sum(step_flops(config, sizes[k], buckets[k].height, buckets[k].width, text_len) for k in order)
    tokens = sum(sizes[k] * buckets[k].tokens(_PIXELS_PER_TOKEN) for k in order)
    start = time.perf_counter()
    for i, k in enumerate(order):
      state[0], state[1], loss = train_step(state[0], state[1], inputs[k], jax.random.fold_in(key, 100 + i))
    jax.block_until_ready(loss)
    seconds = (time.perf_counter() - start) / stream_steps
    return _row(name, seconds, flops / stream_steps, ceiling, peak, note=f"{tokens / stream_steps / seconds:,.0f} "
                f"image tokens/s; batch sizes {dict(zip([b.name for b in buckets], sizes, strict=True))}")
  except SKIPPABLE as error:
    return _row(name, skipped=skip_reason(error))


def format_row(r: dict) -> str:
  percent = lambda x: None if x is None else 100 * x  # noqa: E731
  return (f"| {r['config']} | {cell(r['ms'], '.1f')} | {cell(r['tflops'], '.1f')} | {cell(percent(r['mfu']), '.1f')} "
          f"| {cell(percent(r['of_ceiling']), '.0f')} | {r['skipped'] or r['note']} |")


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}", "| config | ms | TFLOP/s | MFU % | % of matmul ceiling | note |",
           "|---|---:|---:|---:|---:|---|"]
  return "\n".join(lines + [format_row(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="lens", help="an MMDiT preset (jaxagents.models.mmdit.PRESETS)")
  parser.add_argument("--size", type=int, default=1024, help="square image side in pixels (a multiple of 16)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--text-len", type=int, default=256)
  parser.add_argument("--base", type=int, default=1024, help="Lens bucket base of the stream row (256, 512, 1024)")
  parser.add_argument("--buckets", default="", help="comma-separated bucket ratios to keep (e.g. 1:1,16:9); all")
  parser.add_argument("--stream-steps", type=int, default=20, help="steps of the bucket-stream row (0: no row)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
  parser.add_argument("--remat", default="full", help="remat policy of the blocks (layers.remat.REMAT_POLICIES)")
  parser.add_argument("--learning-rate", type=float, default=1e-4)
  parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak for MFU")
  parser.add_argument("--ceiling-size", type=int, default=8192, help="side of the anchor matmul")
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  if args.size % _PIXELS_PER_TOKEN:
    raise ValueError(f"text_to_image_train bench: `--size` must be a multiple of 16, got {args.size}")
  peak = args.peak_tflops or PEAK_TFLOPS.get(jax.devices()[0].device_kind)
  rows = run(args.model, args.size, args.batch, args.text_len, args.base, args.stream_steps, args.repeats,
             jnp.dtype(args.dtype), args.remat, args.learning_rate, peak, args.ceiling_size,
             [name for name in args.buckets.split(",") if name])
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
