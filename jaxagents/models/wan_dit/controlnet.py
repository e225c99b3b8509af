"""A flow ControlNet for the Wan DiT: the motion-guided video generator of DynaVid (Jin et al., arXiv 2604.01666),
reconstructed from the flow-conditioned video synthesis model (FVSM) of its predecessor FloVD (Jin et al., arXiv
2502.08244), since DynaVid's code is not public. ControlNet itself is Zhang et al., arXiv 2302.05543 (Sec. 3.1:
a trainable copy of the locked model joined to it by zero-initialised layers).

    control_params = controlnet_params_from_base(base_params, config, num_blocks=8)
    velocity = controlled_velocity(WanDiT(config), WanFlowControlNet(config, 8), base_params, control_params,
                                   latents, timesteps, text, flow_latents, sigma_window=(0.5, 1.0))

Reference: FloVD's CogVideoX branch, `finetune/modules/cogvideox_controlnet.py` (`CogVideoXControlnet`: the first 8
transformer blocks copied from the base, each block's output through a zero-initialised Linear(inner, inner)) and
`finetune/modules/cogvideox_custom_model.py` (the main model adds residual i, times `controlnet_weights`, to its
hidden state after block i). Data flow (B batch, N video tokens, E width, K = `num_blocks`):
  1. the copy embeds the noisy latents, timestep, text (and I2V image) with copies of the base's embeddings;
  2. the flow latents (the flow video, made a 3-channel video by the flow codec and encoded by the video VAE) are
     patchified and embedded by the ControlNet's own 'control_patch_embed', then a zero-initialised Linear
     'control_in_proj' (E -> E), and added to the copy's tokens;
  3. K copied blocks; after block k a zero-initialised projection (E -> E; 'control_out_proj' holds all K as
     [K, E, E]) gives residual k, so residuals: [K, B, N, E];
  4. the base adds `scale * gate_b * residual_k` to sample b's hidden state after its block k
     (`WanDiT(control_residuals=...)`), gate_b = 1 when sample b's sigma lies in `sigma_window`, else 0.

Reconstruction choices, where FloVD differs or DynaVid is silent:
  * FloVD feeds the flow latent through the I2V image-latent slot of CogVideoX's concatenated patch embedding
    (reusing its weights). The T2V Wan has no such slot, so the flow gets its own patch embedding behind a
    zero-initialised projection, the ControlNet paper's "zero convolution" on the condition; the noisy latents go
    through the copied patch embedding unchanged, so at init the copy sees exactly the base's input.
  * The out projections are E -> E (FloVD: inner -> heads * `out_proj_dim_factor`, which is inner for CogVideoX-5B
    with factor 64).
  * FloVD gates the ControlNet by a window over the fraction of sampling steps (`controlnet_guidance_start`,
    `controlnet_guidance_end` in `finetune/pipeline/flovd_FVSM_cogvideox_controlnet_pipeline.py`); here the window
    is over sigma, per sample, so that one batch can mix samples inside and outside it (a batch of training
    timesteps, or a sampler's steps under vmap) and the window does not depend on the number of steps.
  * Residuals are added to the video tokens only (Wan's text enters by cross-attention, so there are no text
    tokens in the stream to skip).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxagents import layers
from jaxagents.models.wan_dit.config import WanDiTConfig
from jaxagents.models.wan_dit.model import WanBlock, WanDiT, _residual, embed_inputs, patchify

Dtype = Any
# The base's submodules the ControlNet copies besides its blocks (`model.embed_inputs`).
EMBEDDINGS = ("patch_embed", "time_embed", "time_proj", "text_embed", "image_embed")
FROZEN, TRAINABLE = "frozen", "trainable"


class WanFlowControlNet(nn.Module):
  """K copied Wan blocks on the noisy latents plus the embedded flow latents; returns the residuals [K, B, N, E]
  (module docstring). Submodules: the base's embeddings (`EMBEDDINGS`), 'blocks' (K stacked, or 'blocks_{i}'),
  'control_patch_embed', 'control_in_proj' (zero init), 'control_out_proj' (kernel [K, E, E], bias [K, E]; zero
  init).

  Attributes:
    config: the base's `WanDiTConfig` (its `scan_layers` and `remat_policy` apply to the copied blocks).
    num_blocks: K, the base blocks copied and controlled (FloVD: 8); 1 <= K <= config.num_layers.
    control_channels: channels of the flow latents; None: `config.out_channels` (a VAE latent's channels; for
      I2V the input's extra mask and first-frame channels are not part of the flow).
    dtype: compute dtype (None: promote inputs and float32 params).
  """

  config: WanDiTConfig
  num_blocks: int
  control_channels: int | None = None
  dtype: Dtype | None = None

  def __post_init__(self):
    _check_num_blocks("WanFlowControlNet", self.num_blocks, self.config)
    if self.control_channels is not None and int(self.control_channels) < 1:
      raise ValueError(f"WanFlowControlNet: `control_channels` must be None or a positive int, got "
                       f"{self.control_channels!r}")
    super().__post_init__()

  @property
  def flow_channels(self) -> int:
    return self.config.out_channels if self.control_channels is None else self.control_channels

  @nn.compact
  def __call__(
    self,
    latents: jax.Array,
    timesteps: jax.Array,
    text: jax.Array,
    flow_latents: jax.Array,
    image: jax.Array | None = None,
  ) -> jax.Array:
    """The ControlNet residuals.

    Args:
      latents, timesteps, text, image: the base model's inputs (`WanDiT.__call__`).
      flow_latents: [B, T, H, W, flow_channels] the flow video's latents on the same (B, T, H, W) as `latents`.
    Returns:
      [K, B, N, E] residuals, residual k for the hidden state after base block k.
    """
    c, dtype, k = self.config, self.dtype, self.num_blocks
    expected = (*latents.shape[:4], self.flow_channels)
    if flow_latents.shape != expected:
      raise ValueError(f"WanFlowControlNet: `flow_latents` must have shape [B, T, H, W, flow_channels] = {expected} "
                       f"(those of `latents`), got {flow_latents.shape}")
    inputs = embed_inputs(c, dtype, latents, timesteps, text, image, caller="WanFlowControlNet")
    width = c.width
    flow = layers.Dense(width, axes=(None, "embed"), use_bias=True, dtype=dtype, name="control_patch_embed")(
      patchify(flow_latents, c.patch_size)
    )
    flow = layers.Dense(width, axes=("mlp", "embed"), use_bias=True, dtype=dtype, kernel_init=nn.initializers.zeros,
                        name="control_in_proj")(flow)
    x = _residual(inputs.tokens, flow)
    hidden = self._blocks()(x, inputs.time_mod, inputs.context, inputs.angles)  # [K, B, N, E]
    return _StackedDense(k, width, dtype, name="control_out_proj")(hidden)

  def _blocks(self):
    """The K copied blocks as `(x, time_mod, context, angles) -> [K, B, N, E]` (every block's output)."""
    c = self.config
    block_cls = layers.remat(WanBlock, c.remat_policy)
    if c.scan_layers:
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=self.num_blocks,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )(c, self.dtype, return_hidden=True, name="blocks")
      return lambda *args: stack(*args)[1]
    blocks = [block_cls(c, self.dtype, name=f"blocks_{i}") for i in range(self.num_blocks)]

    def run(x, *args):
      hidden = []
      for block in blocks:
        x, _ = block(x, *args)
        hidden.append(x)
      return jnp.stack(hidden)

    return run


class _StackedDense(nn.Module):
  """K zero-initialised Linears (E -> E) applied to a stack [K, B, N, E], one per slice ('kernel' [K, E, E],
  'bias' [K, E]); one param for all K so the scanned and unrolled ControlNets share the layout."""

  num: int
  features: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.zeros, ("layers", "mlp", "embed")),
                        (self.num, hidden.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("layers", "embed")),
                      (self.num, self.features), jnp.float32)
    dtype = self.dtype or jnp.promote_types(hidden.dtype, jnp.float32)
    out = jnp.einsum("kbne,kef->kbnf", hidden.astype(dtype), kernel.astype(dtype))
    return out + bias.astype(dtype)[:, None, None]


def _check_num_blocks(caller: str, num_blocks: int, config: WanDiTConfig) -> None:
  if isinstance(num_blocks, bool) or int(num_blocks) != num_blocks or not 1 <= num_blocks <= config.num_layers:
    raise ValueError(f"{caller}: `num_blocks` must be an int in [1, config.num_layers={config.num_layers}], got "
                     f"{num_blocks!r}")


def _dummy_inputs(config: WanDiTConfig, flow_channels: int):
  """Smallest valid inputs (one patch, one text token), for shape-only initialisation."""
  latents = jax.ShapeDtypeStruct((1, *config.patch_size, config.in_channels), jnp.float32)
  flow = jax.ShapeDtypeStruct((1, *config.patch_size, flow_channels), jnp.float32)
  text = jax.ShapeDtypeStruct((1, 1, config.text_dim), jnp.float32)
  image = None
  if config.image_dim is not None:
    image = jax.ShapeDtypeStruct((1, config.pos_embed_seq_len or 1, config.image_dim), jnp.float32)
  return latents, jax.ShapeDtypeStruct((1,), jnp.float32), text, flow, image


def controlnet_params_from_base(
  base_params: dict[str, Any],
  config: WanDiTConfig,
  num_blocks: int,
  *,
  control_channels: int | None = None,
  key: jax.Array | None = None,
) -> dict[str, Any]:
  """`WanFlowControlNet(config, num_blocks, control_channels)` params initialised from the base: copies of its
  embeddings and of its first `num_blocks` blocks, a fresh 'control_patch_embed' (LeCun normal from `key`, default
  key 0, zero bias), and zeros in 'control_in_proj' and 'control_out_proj' (FloVD `CogVideoXControlnet.
  from_pretrained` loads the base state dict into the copy; `zeros_init_linear` zeroes the projections).

  `base_params` may be scanned ('blocks' stacked on axis 0) or unrolled ('blocks_{i}'), boxed or not; the result
  has `config.scan_layers`'s layout. The arrays are copies (a train step may donate them without touching the
  base).
  """
  _check_num_blocks("controlnet_params_from_base", num_blocks, config)
  base = nn.meta.unbox(base_params)
  if "blocks" in base:
    stacked = base["blocks"]
    depth = {np.shape(leaf)[0] for leaf in jax.tree.leaves(stacked)}
    if depth != {config.num_layers}:
      raise ValueError(f"controlnet_params_from_base: `base_params['blocks']` must be stacked over "
                       f"config.num_layers={config.num_layers} layers, got leading sizes {sorted(depth)}")
    blocks = [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(num_blocks)]
  else:
    missing = [f"blocks_{i}" for i in range(num_blocks) if f"blocks_{i}" not in base]
    if missing:
      raise ValueError(f"controlnet_params_from_base: `base_params` has neither 'blocks' nor {missing}; got keys "
                       f"{sorted(base)}")
    blocks = [base[f"blocks_{i}"] for i in range(num_blocks)]

  params = {name: base[name] for name in EMBEDDINGS if name in base}
  if config.scan_layers:
    params["blocks"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
  else:
    params.update({f"blocks_{i}": block for i, block in enumerate(blocks)})
  params = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), params)

  model = WanFlowControlNet(config, num_blocks, control_channels)
  width, flow_features = config.width, int(np.prod(config.patch_size)) * model.flow_channels
  key = jax.random.key(0) if key is None else key
  params["control_patch_embed"] = {
    "kernel": nn.initializers.lecun_normal()(key, (flow_features, width), jnp.float32),
    "bias": jnp.zeros((width,), jnp.float32),
  }
  params["control_in_proj"] = {"kernel": jnp.zeros((width, width)), "bias": jnp.zeros((width,))}
  params["control_out_proj"] = {"kernel": jnp.zeros((num_blocks, width, width)),
                                "bias": jnp.zeros((num_blocks, width))}

  expected = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *_dummy_inputs(config, model.flow_channels))
                           )["params"]
  expected_shapes = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda s: s.shape, expected))[0]
  got_shapes = jax.tree_util.tree_flatten_with_path(jax.tree.map(np.shape, params))[0]
  if dict(got_shapes) != dict(expected_shapes):
    diff = sorted(set(map(str, expected_shapes)) ^ set(map(str, got_shapes)))
    raise ValueError(f"controlnet_params_from_base: `base_params` do not fit config (expected vs got differ in "
                     f"{diff[:6]})")
  return params


def sigma_window_gate(timesteps: jax.Array, sigma_window: tuple[float, float],
                      num_train_timesteps: int = 1000) -> jax.Array:
  """[B] float32: 1 where sigma = timesteps / num_train_timesteps lies in [sigma_min, sigma_max], else 0.

  Compared on the timestep scale (bounds sigma * num_train_timesteps in float64, then float32), so that the
  timestep 900 counts as sigma 0.9 although 900 / 1000 rounds above 0.9 in float32.
  """
  sigma_min, sigma_max = sigma_window
  if not 0 <= sigma_min <= sigma_max:
    raise ValueError(f"sigma_window_gate: `sigma_window` must be (sigma_min, sigma_max) with 0 <= sigma_min <= "
                     f"sigma_max, got {sigma_window!r}")
  timesteps = jnp.asarray(timesteps, jnp.float32)
  low, high = (np.float32(bound * num_train_timesteps) for bound in (sigma_min, sigma_max))
  return ((timesteps >= low) & (timesteps <= high)).astype(jnp.float32)


def controlled_velocity(
  base: WanDiT,
  controlnet: WanFlowControlNet,
  base_params: dict[str, Any],
  control_params: dict[str, Any],
  latents: jax.Array,
  timesteps: jax.Array,
  text: jax.Array,
  flow_latents: jax.Array,
  image: jax.Array | None = None,
  *,
  sigma_window: tuple[float, float] = (0.0, 1.0),
  scale: float | jax.Array = 1.0,
  num_train_timesteps: int = 1000,
  skip_outside_window: bool = True,
) -> jax.Array:
  """The base velocity under flow control: `base(..., control_residuals=controlnet(...), control_scale=scale *
  gate)` with the per-sample `sigma_window_gate` (module docstring, step 4).

  Args:
    base, controlnet: the two modules (same `config`; `controlnet.num_blocks` <= base blocks).
    base_params, control_params: their params (`controlnet_params_from_base` makes the latter).
    latents, timesteps, text, image: `WanDiT.__call__`'s inputs; flow_latents: `WanFlowControlNet.__call__`'s.
    sigma_window: (sigma_min, sigma_max), inclusive. FloVD trains its ControlNet mostly at high noise (timesteps
      from a truncated normal of mean 0.95 and std 0.1 on the sigma scale: `time_sampling_mean`,
      `time_sampling_std` in `finetune/schemas/args.py`), so a window at the high-noise end matches that training.
    scale: scalar or [B] weight of the residuals (FloVD's `controlnet_weights`).
    num_train_timesteps: the timesteps' scale (sigma = timesteps / num_train_timesteps).
    skip_outside_window: run the ControlNet under `lax.cond`, skipping it when no sample of the batch is in the
      window (sampling steps outside the window cost one base call).
  Returns:
    [B, T, H, W, out_channels].
  """
  # Layout and execution fields may differ (e.g. a rematerialised ControlNet beside a plain base); the rest may not.
  def architecture(config):
    return config.replace(scan_layers=True, remat_policy="none", attention_backend="auto")

  if architecture(base.config) != architecture(controlnet.config):
    raise ValueError("controlled_velocity: `controlnet.config` must equal `base.config` up to scan_layers, "
                     f"remat_policy and attention_backend, got {controlnet.config} vs {base.config}")
  gate = sigma_window_gate(timesteps, sigma_window, num_train_timesteps)

  def residuals():
    return controlnet.apply({"params": control_params}, latents, timesteps, text, flow_latents, image)

  if skip_outside_window:
    shape = jax.eval_shape(residuals)
    control = jax.lax.cond(jnp.any(gate > 0), residuals, lambda: jnp.zeros(shape.shape, shape.dtype))
  else:
    control = residuals()
  control_scale = gate * jnp.asarray(scale, jnp.float32)
  return base.apply({"params": base_params}, latents, timesteps, text, image, control_residuals=control,
                    control_scale=control_scale)


def param_labels(params: dict[str, Any]) -> dict[str, Any]:
  """optax.multi_transform labels for `{'base': base_params, 'controlnet': control_params}`: every base leaf
  `FROZEN`, every ControlNet leaf `TRAINABLE` (the base is locked, ControlNet arXiv 2302.05543, Sec. 3.1)."""
  if set(params) != {"base", "controlnet"}:
    raise ValueError(f"param_labels: `params` must have exactly the keys ['base', 'controlnet'], got {sorted(params)}")
  return {"base": jax.tree.map(lambda _: FROZEN, params["base"]),
          "controlnet": jax.tree.map(lambda _: TRAINABLE, params["controlnet"])}


def freeze_base(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` on the ControlNet params, zero updates (and no optimiser state) for the base (`param_labels`)."""
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, param_labels)

