"""A model's MMInference sparse-attention config: one head entry per (layer, query head), versioned JSON. It is a
superset of MInference's per-head pattern files (microsoft/MInference `minference/configs/`, read by
`minference_format.py`); MMInference (arXiv 2504.16083) publishes no config format, so this one is ours.

    {"format": "jaxagents.sparse/1", "model": ..., "calib_hash": ..., "jax_version": ..., "block": [bq, bkv],
     "num_modalities": 2, "min_recall": 0.95,
     "layers": [{"0": {"pattern": "grid", "params": {...}, "boundary": "none", "score": 0.97}, "1": {...}}, ...]}

Head entries are the dispatcher's format (`dispatch.py` docstring). `min_recall` is what the config promises: the
lowest attention-mass recall any head reached on the calibration inputs of the search that wrote it (None when
the config was written by hand or read from MInference's format). The object is frozen and hashable (entries are
kept as canonical JSON), so a model can hold it as a static attribute and jit specializes on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence

FORMAT = "jaxagents.sparse/1"
_KEYS = ("model", "calib_hash", "jax_version", "block", "num_modalities", "min_recall", "layers")


def canonical_entry(entry: dict) -> str:
  """A head entry as canonical JSON (sorted keys, no spaces): equal entries give equal strings."""
  return json.dumps(entry, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class SparseAttentionConfig:
  """Per-layer, per-head sparse patterns.

  Attributes:
    layers: layers[l][h] is the canonical JSON of query head h's entry in layer l (use `layer_heads(l)`).
    block_q, block_kv: layout block sizes the patterns were searched with.
    num_modalities: M of the modality ids the boundary heads expect.
    model, calib_hash, jax_version: provenance, written by the search.
    min_recall: the recall the config promises (module docstring), or None.
  """

  layers: tuple[tuple[str, ...], ...]
  block_q: int = 64
  block_kv: int = 64
  num_modalities: int = 2
  model: str = ""
  calib_hash: str = ""
  jax_version: str = ""
  min_recall: float | None = None

  def __post_init__(self):
    if not self.layers or any(len(heads) == 0 for heads in self.layers):
      raise ValueError(f"SparseAttentionConfig: `layers` must be a non-empty list of non-empty head lists, got "
                       f"{[len(h) for h in self.layers]} heads per layer")
    if len({len(heads) for heads in self.layers}) != 1:
      raise ValueError(f"SparseAttentionConfig: every layer must have the same number of heads, got "
                       f"{[len(h) for h in self.layers]}")
    for name in ("block_q", "block_kv", "num_modalities"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"SparseAttentionConfig: `{name}` must be a positive int, got {value!r}")

  @classmethod
  def from_layers(cls, layers: Sequence[Sequence[dict]], **fields) -> SparseAttentionConfig:
    """From per-layer lists of head entry dicts (dispatcher format)."""
    for li, heads in enumerate(layers):
      for h, entry in enumerate(heads):
        if not isinstance(entry, dict) or "pattern" not in entry:
          raise ValueError(f"SparseAttentionConfig: layer {li} head {h} must be a dict with a 'pattern', got {entry!r}")
    return cls(tuple(tuple(canonical_entry(entry) for entry in heads) for heads in layers), **fields)

  @classmethod
  def uniform(cls, entry: dict, num_layers: int, num_heads: int, **fields) -> SparseAttentionConfig:
    """The same head entry everywhere."""
    return cls.from_layers([[entry] * num_heads for _ in range(num_layers)], **fields)

  @property
  def num_layers(self) -> int:
    return len(self.layers)

  @property
  def num_heads(self) -> int:
    return len(self.layers[0])

  def layer_heads(self, layer: int) -> list[dict]:
    """Head entries of `layer` (fresh dicts), as `mminference_attention`'s `head_config` takes them."""
    return [json.loads(entry) for entry in self.layers[layer]]

  def to_dict(self) -> dict:
    return {
      "format": FORMAT, "model": self.model, "calib_hash": self.calib_hash, "jax_version": self.jax_version,
      "block": [self.block_q, self.block_kv], "num_modalities": self.num_modalities, "min_recall": self.min_recall,
      "layers": [{str(h): json.loads(entry) for h, entry in enumerate(heads)} for heads in self.layers],
    }

  @classmethod
  def from_dict(cls, data: dict) -> SparseAttentionConfig:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
      found = data.get("format") if isinstance(data, dict) else type(data).__name__
      raise ValueError(f"SparseAttentionConfig: `format` must be {FORMAT!r}, got {found!r} (MInference's list format "
                       "is read by `jaxagents.sparse.minference_format`)")
    missing = [key for key in _KEYS if key not in data]
    if missing:
      raise ValueError(f"SparseAttentionConfig: keys {missing} are missing (a {FORMAT} file has {list(_KEYS)})")
    block = data["block"]
    if not isinstance(block, list | tuple) or len(block) != 2:
      raise ValueError(f"SparseAttentionConfig: `block` must be [block_q, block_kv], got {block!r}")
    if not isinstance(data["layers"], list):
      raise ValueError(f"SparseAttentionConfig: `layers` must be a list of per-layer dicts, got "
                       f"{type(data['layers']).__name__}")
    layers = []
    for li, layer in enumerate(data["layers"]):
      if not isinstance(layer, dict) or set(layer) != {str(h) for h in range(len(layer))}:
        raise ValueError(f"SparseAttentionConfig: layer {li} must map head indices '0'..'H-1' to entries, got keys "
                         f"{sorted(layer) if isinstance(layer, dict) else type(layer).__name__}")
      layers.append([layer[str(h)] for h in range(len(layer))])
    block_q, block_kv = block
    return cls.from_layers(layers, block_q=block_q, block_kv=block_kv, num_modalities=data["num_modalities"],
                           model=data["model"], calib_hash=data["calib_hash"], jax_version=data["jax_version"],
                           min_recall=data["min_recall"])

  def save(self, path: str | os.PathLike) -> None:
    """Writes the JSON atomically (a temporary file in the same directory, then a rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
      json.dump(self.to_dict(), f, indent=1)
      tmp = f.name
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> SparseAttentionConfig:
    with open(path) as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as error:
        raise ValueError(f"SparseAttentionConfig.load: {os.fspath(path)} is not valid JSON: {error}") from error
    return cls.from_dict(data)
