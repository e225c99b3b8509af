"""Host-side batch preparation for `QwenVL`: token ids + processor outputs -> everything the model call needs.

One function, `prepare_inputs`, so that positions, the vision layout and the checks that protect them are never
computed three different ways (trl #5785, EasyR1 #110: truncation that splits an image span). It runs
`positions.rope_index` (which raises, naming the item, when placeholder runs and grids disagree or a vision span
was cut) and `vision_layout.vision_inputs` with one prompt per row: row b's images, then its videos, the order
`QwenVL` scatters features in (`row_vision_inputs`). `ModelInputs.repeat` then makes GRPO groups whose rows
share their prompt's vision inputs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.layers.padding import array_module, completion_layout, roll_to_left_padding
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.positions import rope_index
from jaxagents.models.qwen_vl.vision_layout import VisionInputs, check_grids, vision_inputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """input_ids / attention_mask [B, L], positions [3, B, L] int32, decode_base [3, B] int32, vision or None
  (`VisionInputs` of N prompts), row_prompt [B] int32 or None (the prompt each row reads; None: row b reads
  prompt b)."""

  input_ids: np.ndarray
  attention_mask: np.ndarray
  positions: np.ndarray
  decode_base: np.ndarray
  vision: VisionInputs | None
  row_prompt: np.ndarray | None = None

  def repeat(self, n: int) -> ModelInputs:
    """Every row n times in a row (a GRPO group of n samples per prompt). The vision inputs stay as they are and
    `row_prompt` is repeated with the rows, so the tower runs once per prompt, not once per copy."""
    if int(n) != n or n < 1:
      raise ValueError(f"ModelInputs.repeat: n must be a positive integer, got {n}")
    xp = array_module(self.input_ids)
    row_prompt = xp.arange(self.input_ids.shape[0], dtype=np.int32) if self.row_prompt is None else self.row_prompt
    return dataclasses.replace(
      self,
      input_ids=xp.repeat(self.input_ids, n, axis=0),
      attention_mask=xp.repeat(self.attention_mask, n, axis=0),
      positions=xp.repeat(self.positions, n, axis=1),
      decode_base=xp.repeat(self.decode_base, n, axis=1),
      row_prompt=xp.repeat(row_prompt, n).astype(np.int32),
    )

  # Sharding (`jaxagents.sharding.shard_batch`): each host builds its own rows and prompts; the global batch is
  # their concatenation, rows and prompts alike along their leading axis (positions and decode_base along axis 1).

  def batch_axes(self) -> ModelInputs:
    """The batch axis of every field (same structure, ints): the row axis, and the prompt axis of `vision`."""
    vision = None if self.vision is None else jax.tree.map(lambda _: 0, self.vision)
    row_prompt = None if self.row_prompt is None else 0
    return ModelInputs(0, 0, 1, 1, vision, row_prompt)

  def to_global(self, process_index: int, process_count: int) -> ModelInputs:
    """This host's rows as a part of the global batch: `row_prompt` counts the prompts of the hosts before it
    (every host holds the same number of prompts, as the batch sharding requires)."""
    del process_count
    if self.row_prompt is None or self.vision is None:
      return self
    prompts = jax.tree.leaves(self.vision)[0].shape[0]
    return dataclasses.replace(self, row_prompt=(self.row_prompt + process_index * prompts).astype(np.int32))

  # The `generation.PromptBatch` protocol: `generate`, `completion_logprobs` and `rollout` reach `QwenVL` only
  # through these methods, so the order of `QwenVL.__call__`'s arguments is known here and nowhere else.

  def _check_layout(self):
    batch_shape = self.input_ids.shape
    if len(batch_shape) != 2 or self.attention_mask.shape != batch_shape:
      raise ValueError(f"ModelInputs.input_ids / attention_mask: expected matching [B, L], got {batch_shape} and "
                       f"{self.attention_mask.shape}")
    if self.positions.shape != (3, *batch_shape) or self.decode_base.shape != (3, batch_shape[0]):
      raise ValueError(
        f"ModelInputs.positions / decode_base: expected [3, B, L] = {(3, *batch_shape)} and [3, B] = "
        f"{(3, batch_shape[0])} (from positions.rope_index), got {self.positions.shape} and {self.decode_base.shape}"
      )

  def model_args(self) -> tuple:
    """The positional arguments of `QwenVL.__call__` on these rows (prefill, scoring, training)."""
    self._check_layout()
    return self.input_ids, self.positions, self.attention_mask, self.vision, self.row_prompt

  def decode_args(self, tokens: jax.Array, step: jax.Array) -> tuple:
    """`QwenVL.__call__` arguments of decode step `step` feeding tokens [B, 1]: M-RoPE position
    decode_base + 1 + step on all three axes ([3, B, 1], as `positions.decode_positions`), no vision inputs."""
    self._check_layout()
    positions = (self.decode_base + 1 + step)[:, :, None].astype(jnp.int32)
    return tokens, positions, jnp.ones(tokens.shape, bool), None

  def left_padded(self) -> ModelInputs:
    """Rows rolled so each ends with its last real token (jit-safe); positions travel with their tokens."""
    self._check_layout()
    attention_mask, input_ids, positions = roll_to_left_padding(self.attention_mask, self.input_ids, self.positions)
    return dataclasses.replace(self, input_ids=input_ids, attention_mask=attention_mask, positions=positions)

  def with_completions(self, tokens, lengths, pad_id: int) -> tuple[ModelInputs, np.ndarray]:
    """Prompt + completion rows for a teacher-forced recompute of sampled completions (no re-preprocessing).

    Prompts are rolled to left padding, then tokens [B, T] are appended: completion token t of row b (valid for
    t < lengths[b], else `pad_id` and masked) gets position decode_base + 1 + t on all three axes, the position
    its decode step had and the one `positions.rope_index` computes for the concatenated rows. Vision inputs are
    unchanged (the placeholders are all in the prompts); decode_base moves to the last completion token.
    Host numpy in, numpy out (jax arrays in: jax arrays out).

    Returns:
      (ModelInputs [B, L + T], completion_mask [B, L + T] bool, True at the first lengths[b] completion tokens).
    """
    self._check_layout()
    if array_module(self.input_ids) is np:
      tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    tokens, valid = completion_layout(tokens, lengths, pad_id)
    if tokens.shape[0] != self.input_ids.shape[0]:
      raise ValueError(f"tokens: expected {self.input_ids.shape[0]} rows like the prompts, got {tokens.shape[0]}")
    xp = array_module(self.input_ids, tokens)
    prompts = self.left_padded()
    steps = xp.arange(tokens.shape[1])[None, None, :]
    completion_positions = xp.where(valid[None], prompts.decode_base[:, :, None] + 1 + steps, 0)
    inputs = dataclasses.replace(
      prompts,
      input_ids=xp.concatenate([prompts.input_ids, tokens.astype(prompts.input_ids.dtype)], axis=1),
      attention_mask=xp.concatenate([prompts.attention_mask, valid.astype(prompts.attention_mask.dtype)], axis=1),
      positions=xp.concatenate([prompts.positions, completion_positions], axis=2).astype(np.int32),
      decode_base=(prompts.decode_base + xp.asarray(lengths)[None]).astype(np.int32),
    )
    completion_mask = xp.concatenate([xp.zeros(prompts.input_ids.shape, bool), valid], axis=1)
    return inputs, completion_mask


def prepare_inputs(
  config: QwenVLConfig,
  input_ids: np.ndarray,
  attention_mask: np.ndarray | None = None,
  *,
  pixel_values: np.ndarray | None = None,
  image_grid_thw: np.ndarray | None = None,
  pixel_values_videos: np.ndarray | None = None,
  video_grid_thw: np.ndarray | None = None,
  second_per_grid_ts: np.ndarray | None = None,
  pad_patches_to: int | None = None,
  mode: str | None = None,
) -> ModelInputs:
  """Validates a batch and computes its positions and vision layout.

  Args:
    config: the model config.
    input_ids: [B, L] int token ids with the processor's expanded placeholders (left-padded for generation).
    attention_mask: [B, L], 1 at real tokens (default: all ones).
    pixel_values, image_grid_thw: image patches [N_img, patch_dim] and grids [n_img, 3] from the processor.
    pixel_values_videos, video_grid_thw: the same for videos.
    second_per_grid_ts: [n_videos] (Qwen2.5-VL).
    pad_patches_to: pad the patch count of every row's prompt to this bucket (static shapes across batches).
    mode: M-RoPE semantics, "qwen" or "hf" (default `config.mrope_mode`).
  Returns:
    `ModelInputs`.
  """
  input_ids = np.asarray(input_ids)
  attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
  for name, pixels, grid in (("pixel_values", pixel_values, image_grid_thw),
                             ("pixel_values_videos", pixel_values_videos, video_grid_thw)):
    if (pixels is None) != (grid is None):
      grid_name = "image_grid_thw" if name == "pixel_values" else "video_grid_thw"
      raise ValueError(f"{name} and {grid_name}: pass both or neither, got only "
                       f"{name if pixels is not None else grid_name}")
  positions, decode_base = rope_index(input_ids, attention_mask, config, image_grid_thw=image_grid_thw,
                                      video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
                                      mode=mode)
  vision = row_vision_inputs(config, input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                             pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                             pad_patches_to=pad_patches_to)
  return ModelInputs(input_ids, attention_mask, positions, decode_base, vision)


def row_vision_inputs(
  config: QwenVLConfig,
  input_ids: np.ndarray,
  *,
  pixel_values: np.ndarray | None = None,
  image_grid_thw: np.ndarray | None = None,
  pixel_values_videos: np.ndarray | None = None,
  video_grid_thw: np.ndarray | None = None,
  pad_patches_to: int | None = None,
) -> VisionInputs | None:
  """The vision inputs of one prompt per row, from the processor's outputs for the whole batch.

  The processor concatenates the items of every row (row-major, images and videos apart); this splits them by
  the placeholder count of each row: prompt b holds row b's images, then its videos, the order in which
  `model.scatter_features` fills that row. Rows without items get an all-padding prompt.

  Args:
    config: the model config.
    input_ids: [B, L] int token ids with expanded placeholders.
    pixel_values, image_grid_thw / pixel_values_videos, video_grid_thw: as for `prepare_inputs`.
    pad_patches_to: pad every prompt to this many patches (a static bucket).
  Returns:
    `VisionInputs` with N = B prompts, or None without pixels.
  """
  ids = np.asarray(input_ids)
  merge = config.vision.merge_size
  items = []  # (row, kind, patches, grid) of every item
  for kind, (token, pixels, grid, names) in enumerate((
    (config.image_token_id, pixel_values, image_grid_thw, ("pixel_values", "image_grid_thw")),
    (config.video_token_id, pixel_values_videos, video_grid_thw, ("pixel_values_videos", "video_grid_thw")),
  )):
    if pixels is None:
      continue
    grid = check_grids(np.asarray(grid).reshape(-1, 3), merge, names[1])
    pixels = np.asarray(pixels)
    sizes = np.prod(grid, axis=1)
    if pixels.ndim != 2 or pixels.shape != (int(sizes.sum()), config.vision.patch_dim):
      raise ValueError(f"{names[0]}: expected [{int(sizes.sum())}, {config.vision.patch_dim}] (sum of t*h*w over "
                       f"{names[1]} {grid.tolist()}, channels*temporal_patch*patch^2), got {pixels.shape}")
    rows = _item_rows(sizes // merge**2, (ids == token).sum(axis=1), names[1])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    items += [(row, kind, pixels[starts[i]:starts[i + 1]], grid[i]) for i, row in enumerate(rows)]
  if not items:
    return None
  items.sort(key=lambda item: item[:2])  # stable: placeholder order within (row, kind)
  return vision_inputs(np.concatenate([patches for _, _, patches, _ in items]),
                       np.stack([grid for *_, grid in items]), config, pad_to=pad_patches_to,
                       items_per_prompt=np.bincount([row for row, *_ in items], minlength=ids.shape[0]))


def _item_rows(item_tokens: np.ndarray, row_tokens: np.ndarray, grid_name: str) -> np.ndarray:
  """The row of each item, given its placeholder count [n] and the placeholder count of each row [B]."""
  row_ends = np.cumsum(row_tokens)
  item_starts = np.cumsum(item_tokens) - item_tokens
  rows = np.searchsorted(row_ends, item_starts, side="right")
  if not np.array_equal(np.bincount(rows, weights=item_tokens, minlength=len(row_tokens)), row_tokens):
    raise ValueError(
      f"{grid_name}: the items' placeholder counts (t*h*w/merge_size**2: {item_tokens.tolist()}) do not split "
      f"into the rows' placeholder counts ({row_tokens.tolist()}); each row must hold whole items, in order"
    )
  return rows
