"""MInference's per-head pattern files <-> `SparseAttentionConfig`: a reader and a writer for the list format of
microsoft/MInference `minference/configs/`.

MInference's format (e.g. `minference/configs/Llama_3.1_8B_Instruct_128k_kv_out_v32_fit_o_best_pattern.json`) is
a JSON list with one dict per layer, mapping the query head index to `[pattern, v_size, s_size, score]`:

    [{"0": ["vertical_and_slash", 1000, 6096, 0.96], "1": ["stream_llm", 100, 800, 0.91], ...}, ...]

How the two numbers map to our head entries (read in microsoft/MInference `modules/minference_forward.py`,
whose runtime dispatch calls `fc(q, k, v, vertical_size, slash_size)`, and `ops/streaming_kernel.py`):

  * `vertical_and_slash` [v, s] -> "vertical_slash" {v_size: v, s_size: s}. MInference's kernel clamps them at
    run time to min(q_len, max(v, 30)) and min(q_len, max(s, 50)); the reader keeps the literal numbers, or
    applies that clamp for a given `seq_len` (our builders refuse sizes above the sequence length).
  * `stream_llm` [v, s] -> "a_shape" {n_init: v, n_local: s}: MInference runs `streaming_forward(q, k, v,
    n_init=v, n_local=s)`, whose Triton kernel keeps the keys t < n_init and 0 <= q - t < n_local (window
    including the query), which is exactly our a_shape (`a_shape.py`).
  * `block_sparse` [v, s] -> "block_topk" {topk: 100}: MInference's `block_sparse_kernel` ignores both numbers
    and keeps the top 100 mean-pooled 64 x 64 blocks per query block (`ops/block_sparse_flash_attention.py`);
    our `block_topk` additionally keeps the diagonal block. The writer emits `["block_sparse", 100, 0, score]`
    and only accepts topk == 100 with 64 x 64 blocks, the only setting MInference can run. The token-level
    params of the other two patterns carry over whatever our block size; the file does not store blocks.

The fourth number becomes the entry's `score` (MInference's search recall, or an int count in some files; the
runtime ignores it); an entry without a score is written with a null one.

MInference patterns use 64 x 64 blocks and no modality boundaries; the config gets block 64 and `min_recall`
None (nothing was promised by our search).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence

from jaxagents.sparse.config import SparseAttentionConfig

MINFERENCE_BLOCK = 64  # every MInference kernel uses 64 x 64 blocks
BLOCK_SPARSE_TOPK = 100  # `block_sparse_kernel`: topk = 100, whatever the file says

_TO_OURS = {"vertical_and_slash": "vertical_slash", "stream_llm": "a_shape", "block_sparse": "block_topk"}


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _head_entry(layer: int, head: str, value, seq_len: int | None) -> dict:
  where = f"minference_format: layer {layer} head {head}"
  if not isinstance(value, list | tuple) or len(value) != 4:
    raise ValueError(f"{where}: expected [pattern, v_size, s_size, score], got {value!r}")
  pattern, v_size, s_size, score = value
  if pattern not in _TO_OURS:
    raise ValueError(f"{where}: unknown pattern {pattern!r}, expected one of {sorted(_TO_OURS)}")
  numeric_score = score is None or (isinstance(score, int | float) and not isinstance(score, bool))
  if not (_is_int(v_size) and _is_int(s_size) and numeric_score):
    raise ValueError(f"{where}: expected int v_size, s_size and a numeric (or null) score, got {value!r}")
  if pattern == "vertical_and_slash":
    if seq_len is not None:  # `vertical_and_slash_kernel`: min(q_len, max(v, 30)), min(q_len, max(s, 50))
      v_size, s_size = min(seq_len, max(v_size, 30)), min(seq_len, max(s_size, 50))
    params = {"v_size": v_size, "s_size": s_size}
  elif pattern == "stream_llm":
    params = {"n_init": v_size, "n_local": s_size}
  else:
    params = {"topk": BLOCK_SPARSE_TOPK}
  entry = {"pattern": _TO_OURS[pattern], "params": params}
  return entry if score is None else {**entry, "score": score}


def from_minference(data: Sequence[dict], *, model: str = "", seq_len: int | None = None) -> SparseAttentionConfig:
  """MInference's parsed JSON list (module docstring) -> `SparseAttentionConfig` (64 x 64 blocks).

  `seq_len`: clamp vertical-slash sizes as MInference does for inputs of that many tokens (None: literal).
  Raises ValueError naming the layer and head of an unknown pattern or a malformed entry, and for layers
  whose head keys are not '0'..'H-1'.
  """
  if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
    raise ValueError(f"minference_format: `seq_len` must be None or a positive int, got {seq_len!r}")
  if not isinstance(data, list) or not data:
    raise ValueError(f"minference_format: expected a non-empty JSON list of per-layer dicts, got "
                     f"{type(data).__name__}")
  layers = []
  for li, layer in enumerate(data):
    if not isinstance(layer, dict) or set(layer) != {str(h) for h in range(len(layer))}:
      found = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
      raise ValueError(f"minference_format: layer {li} must map head indices '0'..'H-1' to entries, got {found}")
    layers.append([_head_entry(li, str(h), layer[str(h)], seq_len) for h in range(len(layer))])
  return SparseAttentionConfig.from_layers(layers, block_q=MINFERENCE_BLOCK, block_kv=MINFERENCE_BLOCK, model=model)


def load_minference(path: str | os.PathLike, *, model: str = "", seq_len: int | None = None) -> SparseAttentionConfig:
  """Reads a MInference pattern file (`from_minference`); `model` defaults to the file name without extension."""
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"minference_format: {os.fspath(path)} is not valid JSON: {error}") from error
  return from_minference(data, model=model or os.path.splitext(os.path.basename(path))[0], seq_len=seq_len)


def _minference_value(config: SparseAttentionConfig, layer: int, head: int, entry: dict) -> list:
  where = f"minference_format: layer {layer} head {head}"
  pattern, params = entry["pattern"], dict(entry.get("params") or {})
  unsupported = sorted(set(entry) - {"pattern", "params", "score", "boundary"})
  if entry.get("boundary", "none") != "none":
    unsupported.append("boundary")
  if pattern == "vertical_slash":
    fields, value = ("v_size", "s_size"), ["vertical_and_slash", params.get("v_size"), params.get("s_size")]
  elif pattern == "a_shape":
    fields, value = ("n_init", "n_local"), ["stream_llm", params.get("n_init"), params.get("n_local")]
  elif pattern == "block_topk":
    fields, value = ("topk",), ["block_sparse", params.get("topk"), 0]
    if params.get("topk") != BLOCK_SPARSE_TOPK or (config.block_q, config.block_kv) != (64, 64):
      raise ValueError(
        f"{where}: MInference's block_sparse runs topk={BLOCK_SPARSE_TOPK} with 64 x 64 blocks, got "
        f"topk={params.get('topk')!r} with {config.block_q} x {config.block_kv} blocks"
      )
  else:
    raise ValueError(f"{where}: pattern {pattern!r} has no MInference equivalent (vertical_slash, a_shape and "
                     "block_topk only)")
  unsupported += sorted(set(params) - set(fields))
  if unsupported or any(not _is_int(x) for x in value[1:]):
    raise ValueError(f"{where}: MInference's format holds only the {pattern} params {list(fields)} and a score, "
                     f"got unsupported {unsupported} in {entry!r}")
  return [*value, entry.get("score")]


def to_minference(config: SparseAttentionConfig) -> list[dict]:
  """`SparseAttentionConfig` -> MInference's JSON list; ValueError for what the format cannot express."""
  return [
    {str(h): _minference_value(config, li, h, entry) for h, entry in enumerate(config.layer_heads(li))}
    for li in range(config.num_layers)
  ]


def save_minference(config: SparseAttentionConfig, path: str | os.PathLike) -> None:
  """Writes `to_minference(config)` atomically (a temporary file in the same directory, then a rename)."""
  data = to_minference(config)
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
    json.dump(data, f)
    tmp = f.name
  os.replace(tmp, path)
