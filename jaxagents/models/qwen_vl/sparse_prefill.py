"""What MMInference's offline search needs from a Qwen-VL prefill (arXiv 2504.16083: its
modality-boundary heads and its offline per-head search): the modality of every
token and every decoder layer's attention inputs.

    inputs = prepare_inputs(config, input_ids, attention_mask, pixel_values_videos=..., video_grid_thw=...)
    q, k, v = attention_inputs(QwenVL(config), {"params": params}, inputs)  # [L, B, S, H, D] each
    ids = modality_ids(inputs.input_ids, config)                            # [B, S]

`attention_inputs` applies the model with the 'attention_inputs' collection mutable, which `SelfAttention`
sows into (rotated, QK-normed q and the new k, v, exactly as `attention()` sees them on a cache-free call); the
decoder scan stacks them on the layer axis. The capture always runs the *dense* model (its `sparse_config`
dropped), since a search scores candidate patterns against dense attention.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from jaxagents.models.qwen_vl.config import QwenVLConfig
  from jaxagents.models.qwen_vl.inputs import ModelInputs
  from jaxagents.models.qwen_vl.model import QwenVL

TEXT = 0
VISION = 1


def modality_ids(input_ids: jax.Array, config: QwenVLConfig) -> jax.Array:
  """int32 [B, S]: 1 (VISION) at image and video placeholder tokens, 0 (TEXT) elsewhere.

  input_ids: [B, S] int. Vision start/end markers and Qwen3-VL's per-frame timestamp tokens are text.
  """
  input_ids = jnp.asarray(input_ids)
  if input_ids.ndim != 2:
    raise ValueError(f"modality_ids: `input_ids` must be [B, S], got shape {tuple(input_ids.shape)}")
  vision = (input_ids == config.image_token_id) | (input_ids == config.video_token_id)
  return jnp.where(vision, VISION, TEXT).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def _capture(model, variables, input_ids, positions, attention_mask, vision):
  _, state = model.apply(variables, input_ids, positions, attention_mask, vision, mutable=["attention_inputs"])
  (q, k, v), = state["attention_inputs"]["text"]["layers"]["block"]["attn"]["qkv"]
  return q, k, v


def attention_inputs(model: QwenVL, params: Any, inputs: ModelInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every decoder layer's attention inputs on a dense, cache-free forward of `inputs`.

  Args:
    model: the `QwenVL` module (a `sparse_config` on it is ignored, see the module docstring).
    params: `{'params': tree}` as `model.apply` takes it (a bare params tree is wrapped).
    inputs: `ModelInputs` from `inputs.prepare_inputs`.
  Returns:
    (q [L, B, S, Hq, D], k [L, B, S, Hkv, D], v [L, B, S, Hkv, D]) in the compute dtype: q and k after QK-norm
    and M-RoPE, padding tokens included (mask them with `inputs.attention_mask`).
  """
  variables = params if isinstance(params, dict) and "params" in params else {"params": params}
  dense = model.clone(sparse_config=None, remat="none")
  return _capture(
    dense,
    variables,
    jnp.asarray(inputs.input_ids, jnp.int32),
    jnp.asarray(inputs.positions, jnp.int32),
    jnp.asarray(inputs.attention_mask, bool),
    inputs.vision,
  )
