"""One interface for the text encoders of text-to-image models, and a backend that reads precomputed features.

`TextEncoder.encode(prompts) -> TextFeatures`: `hidden` holds one [B, T, D] array per selected encoder layer (Lens
feeds GPT-OSS-20B layers 5, 11, 17, 23 to four RMSNorms, diffusers `models/transformers/transformer_lens.py`;
FLUX.2-klein concatenates three Qwen3 hidden states per token, `TextFeatures.concatenated`), and `mask` [B, T]
is True at real tokens. Implementations: `GptOssTextEncoder` (Lens), `Qwen3TextEncoder` (FLUX.2-klein) and
`PrecomputedTextEncoder`, which reads what `save_features` wrote, so training runs need no encoder on the device.

Feature files (`save_features`), one row per prompt:
  * `.safetensors`: tensors 'hidden' [N, T, L, D] (float32, float16 or bfloat16) and 'mask' [N, T] bool; the
    header metadata holds 'format', 'prompts' (a JSON list) and the caller's 'metadata' (JSON).
  * `.npz` (read without pickle): the same arrays, bfloat16 stored as its uint16 bits with 'hidden_dtype'
    naming it, 'prompts' as a unicode array, 'format' and 'metadata' as strings.
At ~23 KB per token for Lens in bfloat16 (4 x 2880 values), a 512-token row is ~12 MB; rows are read lazily from
safetensors files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FORMAT = "jaxagents.text_features/1"
_SUFFIXES = (".npz", ".safetensors")
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@flax.struct.dataclass
class TextFeatures:
  """Encoder features: `hidden` a tuple of L arrays [B, T, D] (one per selected layer), `mask` [B, T] bool.

  Build with `TextFeatures.create`, which checks the shapes and also takes a stacked [B, T, L, D] array. A pytree,
  so it passes through `jax.jit`.
  """

  hidden: tuple[jax.Array, ...]
  mask: jax.Array

  @classmethod
  def create(cls, hidden: Sequence[jax.Array] | jax.Array, mask: jax.Array) -> TextFeatures:
    """hidden: a sequence of [B, T, D] or one stacked [B, T, L, D]; mask: [B, T] bool (or 0/1 ints)."""
    if hasattr(hidden, "ndim"):
      if hidden.ndim != 4:
        raise ValueError(f"TextFeatures: a stacked `hidden` must be [B, T, L, D], got shape {hidden.shape}")
      hidden = tuple(hidden[:, :, i] for i in range(hidden.shape[2]))
    hidden = tuple(hidden)
    if not hidden:
      raise ValueError("TextFeatures: `hidden` must hold at least one layer, got none")
    first = hidden[0].shape
    for i, h in enumerate(hidden):
      if h.ndim != 3 or h.shape != first:
        raise ValueError(f"TextFeatures: `hidden[{i}]` must be [B, T, D] = {first} like hidden[0], got {h.shape}")
    mask = jnp.asarray(mask)
    if mask.shape != first[:2]:
      raise ValueError(f"TextFeatures: `mask` must be [B, T] = {first[:2]}, got {mask.shape}")
    if mask.dtype != jnp.bool_:
      if not jnp.issubdtype(mask.dtype, jnp.integer):
        raise ValueError(f"TextFeatures: `mask` must be bool (or 0/1 integers), got {mask.dtype}")
      mask = mask.astype(bool)
    return cls(hidden=hidden, mask=mask)

  @property
  def num_layers(self) -> int:
    return len(self.hidden)

  @property
  def shape(self) -> tuple[int, int, int]:
    """(B, T, D)."""
    return tuple(self.hidden[0].shape)

  def stacked(self) -> jax.Array:
    """[B, T, L, D]."""
    return jnp.stack(self.hidden, axis=2)

  def concatenated(self) -> jax.Array:
    """[B, T, L * D], layer-major per token (FLUX.2's `prompt_embeds`: stack on dim 1, permute, reshape)."""
    return jnp.concatenate(self.hidden, axis=-1)

  def drop_prefix(self, offset: int) -> TextFeatures:
    """Tokens `offset:` of every row; zero tokens when T <= offset (Lens's `_get_text_embeddings`)."""
    if offset < 0:
      raise ValueError(f"TextFeatures.drop_prefix: `offset` must be >= 0, got {offset}")
    start = min(offset, self.shape[1])
    return TextFeatures(hidden=tuple(h[:, start:] for h in self.hidden), mask=self.mask[:, start:])

  def pad_to(self, length: int) -> TextFeatures:
    """Right-pads T to `length` with zero features and False mask (Lens's `_align_text_features`)."""
    pad = length - self.shape[1]
    if pad < 0:
      raise ValueError(f"TextFeatures.pad_to: `length` must be >= T = {self.shape[1]}, got {length}")
    return TextFeatures(hidden=tuple(jnp.pad(h, ((0, 0), (0, pad), (0, 0))) for h in self.hidden),
                        mask=jnp.pad(self.mask, ((0, 0), (0, pad))))


@runtime_checkable
class TextEncoder(Protocol):
  """Anything with `encode(prompts) -> TextFeatures`."""

  def encode(self, prompts: Sequence[str]) -> TextFeatures: ...


# ------------------------------------------------------------------------------------------------ feature files
def _suffix(path: str, where: str) -> str:
  suffix = os.path.splitext(path)[1]
  if suffix not in _SUFFIXES:
    raise ValueError(f"{where}: `path` must end in {' or '.join(_SUFFIXES)}, got {path!r}")
  return suffix


def save_features(
  path: str,
  prompts: Sequence[str],
  features: TextFeatures,
  *,
  dtype: str | None = None,
  metadata: Mapping[str, Any] | None = None,
) -> str:
  """Writes `features` (row b belongs to `prompts[b]`) to a `.npz` or `.safetensors` file, atomically.

  Args:
    path: the file; its suffix picks the format (module docstring).
    prompts: N distinct prompts, N = the batch size of `features`.
    features: the encoder output to store.
    dtype: 'float32', 'float16' or 'bfloat16'; None keeps the features' dtype.
    metadata: JSON-serialisable notes stored with the rows (encoder name, layers, offset, ...).
  Returns:
    `path`.
  """
  suffix = _suffix(path, "save_features")
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  batch = features.shape[0]
  if len(prompts) != batch or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"save_features: `prompts` must be {batch} strings (one per feature row), got {len(prompts)}")
  if len(set(prompts)) != len(prompts):
    duplicates = sorted({p for p in prompts if prompts.count(p) > 1})
    raise ValueError(f"save_features: `prompts` must be distinct (rows are found by prompt), got repeats {duplicates}")
  hidden = np.asarray(jax.device_get(features.stacked()))
  if dtype is not None:
    if dtype not in _DTYPES:
      raise ValueError(f"save_features: `dtype` must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
    hidden = hidden.astype(_DTYPES[dtype])
  dtype_name = next((name for name, d in _DTYPES.items() if hidden.dtype == d), None)
  if dtype_name is None:
    raise ValueError(f"save_features: `features` must be float32, float16 or bfloat16, got {hidden.dtype}")
  mask = np.asarray(jax.device_get(features.mask), bool)
  notes = json.dumps(dict(metadata or {}))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{suffix}"
  if suffix == ".safetensors":
    from safetensors.numpy import save_file

    save_file({"hidden": np.ascontiguousarray(hidden), "mask": mask}, tmp,
              metadata={"format": FORMAT, "prompts": json.dumps(prompts), "metadata": notes})
  else:
    stored = hidden.view(np.uint16) if dtype_name == "bfloat16" else hidden
    with open(tmp, "wb") as f:
      np.savez(f, hidden=stored, hidden_dtype=np.array(dtype_name), mask=mask, prompts=np.array(prompts, dtype=str),
               format=np.array(FORMAT), metadata=np.array(notes))
  os.replace(tmp, path)
  return path


class _FeatureFile:
  """One feature file: its prompts at construction, its rows on demand."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"text features file {path!r} does not exist")
    self.path, self.suffix = path, _suffix(path, "PrecomputedTextEncoder")
    self._arrays: dict[str, np.ndarray] | None = None
    if self.suffix == ".safetensors":
      from safetensors import SafetensorError, safe_open

      try:
        with safe_open(path, framework="numpy") as f:
          header, keys = f.metadata() or {}, set(f.keys())
          shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
      except SafetensorError as error:
        raise ValueError(f"text features file {path!r}: not a readable safetensors file ({error})") from error
      self._require(keys | set(header), ("hidden", "mask", "format", "prompts"))
      self._check_format(header["format"])
      self.prompts = json.loads(header["prompts"])
      self.metadata = json.loads(header.get("metadata", "{}"))
    else:
      with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        self._require(keys, ("hidden", "hidden_dtype", "mask", "format", "prompts"))
        self._check_format(str(f["format"]))
        self.prompts = [str(p) for p in f["prompts"]]
        self.metadata = json.loads(str(f["metadata"])) if "metadata" in keys else {}
        self._arrays = {"hidden": self._decode(f["hidden"], str(f["hidden_dtype"])), "mask": f["mask"]}
      shapes = {k: a.shape for k, a in self._arrays.items()}
    hidden, mask = shapes["hidden"], shapes["mask"]
    if len(hidden) != 4 or mask != hidden[:2] or len(self.prompts) != hidden[0]:
      raise ValueError(
        f"text features file {path!r}: expected 'hidden' [N, T, L, D], 'mask' [N, T] and N prompts, got hidden "
        f"{hidden}, mask {mask} and {len(self.prompts)} prompts"
      )
    self.length, self.num_layers, self.width = hidden[1:]

  def _require(self, present: set[str], needed: Sequence[str]) -> None:
    missing = [k for k in needed if k not in present]
    if missing:
      raise ValueError(f"text features file {self.path!r}: missing {missing} (not written by save_features?)")

  def _check_format(self, found: str) -> None:
    if found != FORMAT:
      raise ValueError(f"text features file {self.path!r}: format must be {FORMAT!r}, got {found!r}")

  def _decode(self, hidden: np.ndarray, name: str) -> np.ndarray:
    if name not in _DTYPES:
      raise ValueError(f"text features file {self.path!r}: hidden_dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return hidden.view(ml_dtypes.bfloat16) if name == "bfloat16" else hidden

  def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(hidden [T, L, D], mask [T] bool) of row `index`."""
    if self._arrays is not None:
      return self._arrays["hidden"][index], self._arrays["mask"][index].astype(bool)
    from safetensors import safe_open

    with safe_open(self.path, framework="numpy") as f:
      return f.get_slice("hidden")[index], f.get_slice("mask")[index].astype(bool)


class PrecomputedTextEncoder:
  """A `TextEncoder` that looks prompts up in files written by `save_features`.

  `encode(prompts)` gathers their rows, right-pads rows of shorter files to the longest T (zeros, mask False) and
  returns `TextFeatures` in the stored dtype. All files must share the number of layers L and the width D.
  """

  def __init__(self, paths: str | Sequence[str]):
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
      raise ValueError("PrecomputedTextEncoder: `paths` must name at least one features file, got none")
    self.files = [_FeatureFile(p) for p in paths]
    first = self.files[0]
    self.index: dict[str, tuple[int, int]] = {}
    for number, file in enumerate(self.files):
      if (file.num_layers, file.width) != (first.num_layers, first.width):
        raise ValueError(
          f"text features file {file.path!r}: has L x D = {file.num_layers} x {file.width} features, but "
          f"{first.path!r} has {first.num_layers} x {first.width}"
        )
      for row, prompt in enumerate(file.prompts):
        if prompt in self.index:
          other = self.files[self.index[prompt][0]].path
          raise ValueError(f"text features files {other!r} and {file.path!r}: both hold the prompt {prompt!r}")
        self.index[prompt] = (number, row)

  @property
  def metadata(self) -> dict[str, Any]:
    """The first file's metadata."""
    return self.files[0].metadata

  def __contains__(self, prompt: str) -> bool:
    return prompt in self.index

  def encode(self, prompts: Sequence[str]) -> TextFeatures:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
      raise ValueError("PrecomputedTextEncoder.encode: `prompts` must be non-empty, got []")
    unknown = [p for p in prompts if p not in self.index]
    if unknown:
      raise ValueError(
        f"PrecomputedTextEncoder.encode: prompts {unknown[:4]} are not in the features files "
        f"{[f.path for f in self.files]}"
      )
    rows = [self.files[f].row(r) for f, r in (self.index[p] for p in prompts)]
    length = max(h.shape[0] for h, _ in rows)
    hidden = np.stack([np.pad(h, ((0, length - h.shape[0]), (0, 0), (0, 0))) for h, _ in rows])
    mask = np.stack([np.pad(m, (0, length - m.shape[0])) for _, m in rows])
    return TextFeatures.create(jnp.asarray(hidden), jnp.asarray(mask))
