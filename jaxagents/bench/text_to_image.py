"""Text-to-image cost on one device: the MMDiT forward (one CFG step), whole 20-step and 4-step DiT sampling, and
the FLUX.2 VAE decode, beside the device's bf16 matmul rate measured in the same run.

    python -m jaxagents.bench.text_to_image                             # Lens at 1024^2, CFG batch 2, 256 text tokens
    python -m jaxagents.bench.text_to_image --model flux2-klein-4b --size 1440 --steps 28,4

Random weights in `--dtype` (bf16 by default), random text features (the text encoder is not timed), random latents.
Rows:
  * matmul ceiling: an 8192^3 product, the anchor for "% of ceiling";
  * DiT forward: one call on the CFG batch (conditional + unconditional rows; `--batch`), matmul FLOPs counted
    from the config (`dit_forward_flops`);
  * sampling N steps: `diffusion.euler_sample` over N steps with batched CFG (`diffusion.batched_cfg`, one DiT call
    per step) on the FLUX.2 empirical-mu sigmas, DiT only; for N <= 4 at guidance 1 (a distilled student runs
    without CFG: batch 1);
  * VAE decode: `Flux2VAE.decode_from_tokens` of one image (FLOPs: XLA's cost analysis of the compiled call, on
    a GPU a lower bound: the convolutions' library calls are not counted).
Times are the median of `--repeats` wall-clock runs after a warm-up, each ended by `block_until_ready`. Published
anchors (Lens on one H100: 3.15 s per 1024^2 image end to end at 20 steps with CFG, 0.84 s for the 4-step Turbo)
are quoted in the table's note, not timed here. A configuration the device cannot hold is a row
"skipped: <reason>".
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp

from jaxagents.bench.report import SKIPPABLE, cell, median_time, publish, skip_reason
from jaxagents.diffusion import batched_cfg, euler_sample, inference_sigmas
from jaxagents.layers.multi_axis_rope import flux_position_ids, msrope_position_ids
from jaxagents.models.mmdit import MMDiT, MMDiTConfig, get_config
from jaxagents.models.vae import PRESETS as VAE_PRESETS
from jaxagents.models.vae import Flux2VAE


def random_variables(module: flax.linen.Module, args: Sequence, dtype, seed: int = 0,
                     weight_scale: float = 0.02) -> dict:
  """Variables with the module's shapes, drawn on the device in `dtype`: weights ~ N(0, weight_scale^2), norm scales 1,
  variances 1 (the VAE's batch-norm statistics), so activations stay O(1) through deep stacks."""
  abstract = flax.linen.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))

  @jax.jit
  def make(key):
    out = {}
    for k, (path, leaf) in zip(jax.random.split(key, len(flat)), flat.items(), strict=True):
      if path[-1] in ("scale", "running_var"):
        out[path] = jnp.ones(leaf.shape, dtype)
      elif path[-1] == "running_mean":
        out[path] = jnp.zeros(leaf.shape, dtype)
      else:
        out[path] = (weight_scale * jax.random.normal(k, leaf.shape, jnp.float32)).astype(dtype)
    return out

  return flax.traverse_util.unflatten_dict(make(jax.random.key(seed)))


def dit_inputs(config: MMDiTConfig, batch: int, size: int, text_len: int, dtype, seed: int = 0,
               width: int | None = None) -> dict:
  """Random inputs of one DiT call at an image of `size` pixels (`size` x `width` when given; 16-pixel tokens after
  the 2x2 patchify), all `text_len` text tokens valid (no key mask, so the attention may take cuDNN's kernel)."""
  rows, cols = size // 16, (size if width is None else width) // 16
  ids = msrope_position_ids if config.family == "lens" else flux_position_ids
  img_ids, txt_ids = ids(rows, cols, text_len)
  keys = jax.random.split(jax.random.key(seed), config.text_layers + 1)
  txt = [jax.random.normal(k, (batch, text_len, config.text_dim), dtype) for k in keys[1:]]
  return dict(img=jax.random.normal(keys[0], (batch, rows * cols, config.in_channels), dtype),
              txt=txt[0] if config.text_layers == 1 else txt, timesteps=jnp.full((batch,), 0.5, jnp.float32),
              img_ids=jnp.asarray(img_ids), txt_ids=jnp.asarray(txt_ids))  # every text token valid: no key mask


def dit_forward_flops(config: MMDiTConfig, batch: int, num_img: int, num_txt: int) -> float:
  """Matmul FLOPs of one MMDiT call (2 per multiply-add): per token and block the q/k/v and out projections (4 E^2)
  and the gated MLP (3 E F) of its stream, attention 4 N^2 E per block over the N = img + txt joint tokens, plus
  the in/out projections. Modulation and norms are left out (under 1% at 1024^2). For Lens at 1024^2 with 256
  text tokens this is 1.74e13 per image, the figure published H100 measurements of the Lens shape are quoted
  against; XLA's cost analysis on a GPU does not count the cuBLAS calls the matmuls become."""
  width, mlp, tokens = config.width, config.mlp_dim, num_img + num_txt
  per_block = 2 * tokens * (4 * width**2 + 3 * width * mlp) + 4 * tokens**2 * width
  blocks = config.num_double_layers + config.num_single_layers
  io = 2 * num_img * width * (config.in_channels + config.out_features)
  io += 2 * num_txt * config.text_layers * config.text_dim * width
  return float(batch * (blocks * per_block + io))


def _row(name, seconds=None, flops=None, ceiling=None, skipped=None, note="") -> dict:
  ms = None if seconds is None else seconds * 1e3
  tflops = None if seconds is None or flops is None else flops / seconds / 1e12
  share = None if tflops is None or ceiling is None else tflops / ceiling
  return dict(config=name, ms=ms, tflops=tflops, of_ceiling=share, skipped=skipped, note=note)


def _skip(name, error) -> dict:
  return _row(name, skipped=skip_reason(error))


def matmul_ceiling(dtype, repeats: int, size: int = 8192) -> tuple[dict, float]:
  a, b = (jax.random.normal(k, (size, size), dtype) for k in jax.random.split(jax.random.key(1), 2))
  seconds = median_time(lambda: jnp.dot(a, b), repeats)
  row = _row(f"matmul {size}^3 (ceiling)", seconds, 2 * size**3)
  return row, row["tflops"]


def run(model: str, size: int, batch: int, text_len: int, steps: Sequence[int], repeats: int, dtype,
        vae_preset: str = "flux2", guidance: float = 5.0, ceiling_size: int = 8192) -> list[dict]:
  rows = []
  ceiling_row, ceiling = matmul_ceiling(dtype, repeats, ceiling_size)
  rows.append(ceiling_row)
  print(format_row(ceiling_row), flush=True)
  config = get_config(model)
  dit = MMDiT(config, dtype=dtype)
  inputs = dit_inputs(config, batch, size, text_len, dtype)
  name = f"{model} DiT forward {size}^2, B={batch}, {text_len} text tokens"
  try:
    params = random_variables(dit, list(inputs.values()), dtype)["params"]
    forward = jax.jit(lambda p, inputs: dit.apply({"params": p}, **inputs))
    flops = dit_forward_flops(config, batch, inputs["img"].shape[1], text_len)
    rows.append(_row(name, median_time(lambda: forward(params, inputs), repeats), flops, ceiling))
  except SKIPPABLE as error:
    rows.append(_skip(name, error))
    params = None
  print(format_row(rows[-1]), flush=True)

  if params is not None:
    for num_steps in steps:
      cfg = num_steps > 4
      rows.append(_sampling_row(dit, params, config, inputs, num_steps, cfg, guidance, size, text_len, repeats,
                                flops, ceiling))
      print(format_row(rows[-1]), flush=True)
    del params

  name = f"FLUX.2 VAE decode {size}^2 (one image)"
  try:
    vae = Flux2VAE(VAE_PRESETS[vae_preset], dtype=dtype)
    tokens = jax.random.normal(jax.random.key(3), (1, size // 16, size // 16, 4 * vae.config.latent_channels), dtype)
    variables = random_variables(vae, [jnp.zeros((1, 16, 16, 3), dtype)], dtype)
    decode = jax.jit(lambda v, t: vae.apply(v, t, method="decode_from_tokens"))
    cost = decode.lower(variables, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    rows.append(_row(name, median_time(lambda: decode(variables, tokens), repeats),
                     float(cost.get("flops", 0.0)) or None, ceiling))
  except SKIPPABLE as error:
    rows.append(_skip(name, error))
  print(format_row(rows[-1]), flush=True)
  return rows


def _sampling_row(dit, params, config, inputs, num_steps, cfg, guidance, size, text_len, repeats, flops, ceiling):
  batch = 2 if cfg else 1
  name = f"sample {num_steps} steps ({'CFG ' + str(guidance) if cfg else 'no CFG'}), DiT only"
  try:
    sigmas = inference_sigmas(num_steps, (size // 16) ** 2)[0]
    rows = lambda x: [t[:batch] for t in x] if isinstance(x, list) else x[:batch]  # noqa: E731
    pair = {k: (v if k in ("img_ids", "txt_ids") else rows(v)) for k, v in inputs.items() if k != "img"}

    def velocity_pair(x, sigma):
      call = dict(pair, timesteps=jnp.broadcast_to(sigma, (x.shape[0],)))
      return dit.apply({"params": params}, x, **call)

    velocity = batched_cfg(velocity_pair, guidance) if cfg else velocity_pair
    x = inputs["img"][:1]
    sample = jax.jit(functools.partial(euler_sample, velocity))
    seconds = median_time(lambda: sample(x, sigmas), repeats)
    per_call = None if flops is None else flops * batch / inputs["img"].shape[0]
    return _row(name, seconds, None if per_call is None else per_call * num_steps, ceiling,
                note=f"{seconds / num_steps * 1e3:.1f} ms/step")
  except SKIPPABLE as error:
    return _skip(name, error)


def format_row(r: dict) -> str:
  return (f"| {r['config']} | {cell(r['ms'], '.1f')} | {cell(r['tflops'], '.1f')} | "
          f"{cell(None if r['of_ceiling'] is None else 100 * r['of_ceiling'], '.0f')} | {r['skipped'] or r['note']} |")


def format_table(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}", "| config | ms | TFLOP/s | % of matmul ceiling | note |", "|---|---:|---:|---:|---|"]
  return "\n".join(lines + [format_row(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="lens", help="an MMDiT preset (jaxagents.models.mmdit.PRESETS)")
  parser.add_argument("--vae", default="flux2", help="a VAE preset (jaxagents.models.vae.PRESETS)")
  parser.add_argument("--size", type=int, default=1024, help="square image side in pixels (a multiple of 16)")
  parser.add_argument("--batch", type=int, default=2, help="DiT forward batch (2: one CFG step of one image)")
  parser.add_argument("--text-len", type=int, default=256)
  parser.add_argument("--steps", default="20,4", help="comma-separated sampling lengths (<= 4: no CFG)")
  parser.add_argument("--guidance", type=float, default=5.0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--ceiling-size", type=int, default=8192, help="side of the anchor matmul")
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args(argv)
  if args.size % 16:
    raise ValueError(f"text_to_image bench: `--size` must be a multiple of 16, got {args.size}")
  rows = run(args.model, args.size, args.batch, args.text_len, [int(s) for s in args.steps.split(",") if s],
             args.repeats, jnp.dtype(args.dtype), args.vae, args.guidance, args.ceiling_size)
  publish(rows, format_table, args, args.out)
  return rows


if __name__ == "__main__":
  main()
