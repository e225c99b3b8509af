"""GUI-Actor: a Qwen2-VL / Qwen2.5-VL backbone whose `<ACTOR>` tokens point at visual patches through the action head
(Wu et al. 2025, arXiv 2506.03143, §3 and Fig. 2), following microsoft/GUI-Actor `src/gui_actor/modeling.py`
(`Qwen2VLForConditionalGenerationWithPointer.forward`; `modeling_qwen25vl.py` is the same for Qwen2.5-VL) and
`src/gui_actor/inference.py` (`inference`).

Wiring, as in their forward. With E [B, L, d] the decoder's *input* embeddings (token embeddings with the vision
merger's outputs scattered into the `<|image_pad|>` placeholders) and H [B, L, d] its last-layer hidden states (after
the final RMSNorm, `outputs[0]`):
  * visual tokens V = E at the positions where input_ids == image_token_id (`visual_embeds =
    inputs_embeds[i][visual_indices]`; the line reading `hs[visual_indices]` is commented out), every image of the
    row concatenated in placeholder order; video placeholders are not taken;
  * queries Q = H at the positions where input_ids == pointer_pad_token_id (`<|pointer_pad|>`, the paper's
    `<ACTOR>`): `target_hidden = hs[target_indices]`;
  * pointer logits Z = `ActionHead`(V, Q) [B, K, N]; LM logits from H as usual.
`inference` reads the same two tensors from `generate(..., output_hidden_states=True)`: `hidden_states[0][0]` (the
embedding output, E) at `<|image_pad|>` and `hidden_states[...][-1]` (H) at `<|pointer_pad|>`.

Ours, not theirs: their loop over samples becomes static-shape gathers: V padded to `num_patches` and Q to
`num_pointers` per row, with `visual_mask` / `pointer_mask` (`ActionHead` and `multi_patch_loss` take them); tokens
beyond those sizes are dropped, so pass at least the largest per-row counts (`token_counts` computes them on the host;
the default, the sequence length, always suffices). A row without a pointer gets an all-False `pointer_mask` (their
training gives it a dummy target with loss × 0: `multi_patch_loss` gives 0 and counts the row too).

Inference (`ground`) is their placeholder mode (`inference(..., use_placeholder=True)`, the evaluation default): the
prompt ends with `pyautogui.click(<|pointer_start|><|pointer_pad|><|pointer_end|>)` and one forward gives the pointer
state. In their generative mode the pointer states are those of the generated `<|pointer_pad|>` tokens; by causality a
forward over prompt + completion gives the same states, so `ground` serves both. Regions and the point come from
`regions.prediction_regions` on the first pointer's attention (their `attn_scores[0]`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.models.gui_actor.action_head import ActionHead, patch_attention
from jaxagents.models.gui_actor.regions import ACTIVATION_THRESHOLD, Point, Region, prediction_regions
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import ModelInputs
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.vision_layout import VisionInputs

Dtype = Any

# `inference`'s default number of regions returned (`topk=5`); their ScreenSpot evaluation keeps 3.
TOP_K = 5


@dataclasses.dataclass(frozen=True)
class GUIActorConfig:
  """The backbone's config, the pointer token ids and the action head's hyperparameters.

  Attributes:
    backbone: `QwenVLConfig` (Qwen2-VL or Qwen2.5-VL for the released models).
    pointer_pad_token_id: id of `<|pointer_pad|>` (`<ACTOR>`), whose last-layer states are the queries.
    pointer_start_token_id / pointer_end_token_id: ids of `<|pointer_start|>` / `<|pointer_end|>` (prompt building
      and forced decoding; not used by the forward), or None.
    projection_dim: hidden width of the head's projections; None = the backbone's hidden size (the released
      heads: `VisionHead_MultiPatch(hidden_size, hidden_size)`).
    num_heads / dropout_rate: of the head's patch self-attention (8 and 0.1 in their code).
  """

  backbone: QwenVLConfig
  pointer_pad_token_id: int
  pointer_start_token_id: int | None = None
  pointer_end_token_id: int | None = None
  projection_dim: int | None = None
  num_heads: int = 8
  dropout_rate: float = 0.1

  @property
  def hidden_size(self) -> int:
    return self.backbone.text.hidden_size

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], *, mrope_mode: str = "qwen") -> GUIActorConfig:
    """Reads a released `config.json` dict: the Qwen-VL fields plus the `pointer_*_token_id` that their `train.py`
    (`update_pointer_token_ids`) writes into it."""
    if "pointer_pad_token_id" not in hf:
      raise ValueError("config pointer_pad_token_id: expected the id of <|pointer_pad|> in config.json (GUI-Actor's "
                       "train.py writes it), got no such key; pass GUIActorConfig(backbone, pointer_pad_token_id=...) "
                       "with the tokenizer's id instead.")
    return cls(backbone=QwenVLConfig.from_hf(hf, mrope_mode=mrope_mode),
               pointer_pad_token_id=int(hf["pointer_pad_token_id"]),
               pointer_start_token_id=hf.get("pointer_start_token_id"),
               pointer_end_token_id=hf.get("pointer_end_token_id"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GUIActorOutput:
  """logits [B, L, V] float32 (the LM head); pointer_logits [B, K, N] float32 (`ActionHead`, padding patches at
  finfo.min); visual_mask [B, N] and pointer_mask [B, K] bool (False at padding), in `multi_patch_loss`'s order:
  patches row-major over the row's images in placeholder order, pointers in token order."""

  logits: jax.Array
  pointer_logits: jax.Array
  visual_mask: jax.Array
  pointer_mask: jax.Array


def gather_tokens(values: jax.Array, selected: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """The selected positions of each row, in order, padded to a static size.

  Args:
    values: [B, L, D]; selected: [B, L] bool; size: static number of slots per row.
  Returns:
    (gathered [B, size, D], mask [B, size] bool): slot j of row b holds the j-th selected position of the row
    (position 0 and mask False past the row's count; selected positions past `size` are dropped).
  """
  if values.ndim != 3 or selected.shape != values.shape[:2]:
    raise ValueError(f"gather_tokens: expected values [B, L, D] and selected [B, L], got {values.shape} and "
                     f"{selected.shape}")
  index = jax.vmap(lambda row: jnp.nonzero(row, size=size, fill_value=0)[0])(selected)
  gathered = jnp.take_along_axis(values, index[..., None], axis=1)
  mask = jnp.arange(size)[None, :] < jnp.sum(selected, axis=1, keepdims=True)
  return gathered, mask


def token_counts(input_ids: np.ndarray, config: GUIActorConfig) -> tuple[int, int]:
  """(largest per-row count of image placeholders, of pointer pads): the `num_patches` / `num_pointers` that keep
  every token (host side, numpy)."""
  ids = np.asarray(input_ids)
  if ids.ndim != 2:
    raise ValueError(f"input_ids: expected [B, L], got shape {ids.shape}")
  patches = int((ids == config.backbone.image_token_id).sum(axis=1).max(initial=0))
  pointers = int((ids == config.pointer_pad_token_id).sum(axis=1).max(initial=0))
  return patches, pointers


class GUIActor(nn.Module):
  """Qwen-VL backbone ('backbone', a `QwenVL`, so its params load and generate as the plain model's) plus the action
  head ('action_head', `ActionHead`).

  Attributes:
    config: `GUIActorConfig`.
    dtype: compute dtype of both parts (None keeps the param dtypes); the pointer logits are float32.
    backend / remat: the backbone's attention backend and rematerialisation policy.
  """

  config: GUIActorConfig
  dtype: Dtype | None = None
  backend: str = "xla"
  remat: str = "none"

  def setup(self):
    c = self.config
    self.backbone = QwenVL(c.backbone, dtype=self.dtype, backend=self.backend, remat=self.remat)
    self.action_head = ActionHead(projection_dim=c.projection_dim, num_heads=c.num_heads,
                                  dropout_rate=c.dropout_rate, dtype=self.dtype)

  def __call__(
    self,
    input_ids: jax.Array | ModelInputs,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    vision: VisionInputs | None = None,
    row_prompt: jax.Array | None = None,
    *,
    num_patches: int | None = None,
    num_pointers: int | None = None,
    deterministic: bool = True,
  ) -> GUIActorOutput:
    """LM logits and pointer logits of a batch (module docstring).

    Args:
      input_ids ... row_prompt: as `QwenVL.__call__` (a `ModelInputs` supplies them all).
      num_patches: N, static slots for each row's image tokens; None = L (`token_counts` gives the tight value).
      num_pointers: K, static slots for each row's `<|pointer_pad|>` tokens; None = L.
      deterministic: no dropout in the head (the backbone has none).
    Returns:
      `GUIActorOutput`.
    """
    if isinstance(input_ids, ModelInputs):
      input_ids, positions, attention_mask, vision, row_prompt = input_ids.model_args()
    logits, _, hidden, embeds = self.backbone(input_ids, positions, attention_mask, vision, row_prompt,
                                              return_hidden=True, return_input_embeds=True)
    length = input_ids.shape[1]
    visual, visual_mask = gather_tokens(embeds, input_ids == self.config.backbone.image_token_id,
                                        length if num_patches is None else num_patches)
    queries, pointer_mask = gather_tokens(hidden, input_ids == self.config.pointer_pad_token_id,
                                          length if num_pointers is None else num_pointers)
    pointer_logits = self.action_head(visual, queries, visual_mask, deterministic=deterministic)
    return GUIActorOutput(logits, pointer_logits, visual_mask, pointer_mask)


# ---------------------------------------------------------------------------------------------------- inference


@dataclasses.dataclass(frozen=True)
class Grounding:
  """One row's grounding.

  Attributes:
    point: (x, y) in [0, 1] of the image, the centre of the best region.
    regions: the best `top_k` regions by mean attention (their `topk_points` / `topk_values` are the centres and
      scores).
    attention: [n_height * n_width] float32, the pointer's attention over the image's tokens (their `attn_scores`).
    grid_hw: (n_height, n_width) token grid.
  """

  point: Point
  regions: tuple[Region, ...]
  attention: np.ndarray
  grid_hw: tuple[int, int]


@functools.partial(jax.jit, static_argnames=("model", "num_patches", "num_pointers"))
def _forward(model: GUIActor, params: Any, inputs: ModelInputs, num_patches: int, num_pointers: int):
  out = model.apply({"params": params}, inputs, num_patches=num_patches, num_pointers=num_pointers)
  return patch_attention(out.pointer_logits), out.pointer_mask


def ground(
  model: GUIActor,
  params: Any,
  inputs: ModelInputs,
  image_grid_thw: np.ndarray | Sequence[Sequence[int]],
  *,
  pointer: int = 0,
  top_k: int | None = TOP_K,
  activation_threshold: float = ACTIVATION_THRESHOLD,
) -> list[Grounding | None]:
  """Ranked regions and a click point per row, from one forward (their `inference` + `get_prediction_region_point`).

  Args:
    model, params: a `GUIActor` and its params (the `params` collection).
    inputs: `ModelInputs` of B rows, one image each, every row holding its `<|pointer_pad|>` token(s): the
      placeholder prompt, or prompt + generated completion.
    image_grid_thw: [B, 3] (t, h, w) patch grid of each row's image, as the processor returns it; the token grid is
      (h, w) / merge_size (their `image_grid_thw[0] // spatial_merge_size`).
    pointer: which pointer of the row to read (their `attn_scores[0]`: the first).
    top_k: regions kept (their `inference` default 5); None keeps all.
    activation_threshold: a patch is active above this fraction of the maximum attention.
  Returns:
    per row a `Grounding`, or None where the row has no more than `pointer` pointer tokens.
  """
  ids = np.asarray(inputs.input_ids)
  config = model.config
  merge = config.backbone.vision.merge_size
  grids = np.asarray(image_grid_thw, dtype=np.int64)
  if grids.shape != (ids.shape[0], 3):
    raise ValueError(f"image_grid_thw: expected one (t, h, w) per row, [B, 3] = [{ids.shape[0]}, 3], got shape "
                     f"{grids.shape}")
  image_tokens = (ids == config.backbone.image_token_id).sum(axis=1)
  for row, (t, h, w) in enumerate(grids):
    if t != 1 or h * w != image_tokens[row] * merge**2:
      raise ValueError(f"image_grid_thw[{row}] = ({t}, {h}, {w}): expected the grid of the row's one image, t = 1 "
                       f"and h*w/merge_size**2 = the row's {image_tokens[row]} image tokens")
  num_patches, num_pointers = token_counts(ids, config)
  attention, pointer_mask = jax.device_get(_forward(model, params, inputs, num_patches,
                                                    max(num_pointers, pointer + 1)))
  results: list[Grounding | None] = []
  for row, (_, h, w) in enumerate(grids):
    if not pointer_mask[row, pointer]:
      results.append(None)
      continue
    n_height, n_width = int(h) // merge, int(w) // merge
    scores = np.asarray(attention[row, pointer, :n_height * n_width], np.float32)
    regions = prediction_regions(scores, n_width, n_height, activation_threshold)
    results.append(Grounding(regions[0].center, tuple(regions[:top_k]), scores, (n_height, n_width)))
  return results
