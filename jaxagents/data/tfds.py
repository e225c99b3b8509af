"""TensorFlow Datasets as a random-access source (array_record files, no tf.data), for `make_pipeline`.

`tensorflow_datasets` is an optional dependency (`pip install 'jaxagents[data]'`), imported only when
`tfds_source` is called. The dataset must have been prepared in the array_record format, e.g.
`tfds build NAME --file_format=array_record`; only `download=True` lets TFDS fetch and prepare it here.
"""

from __future__ import annotations

import importlib
from typing import Any

_INSTALL_HINT = "tfds_source needs tensorflow_datasets: pip install 'jaxagents[data]'"


def tfds_source(
  name: str,
  split: str,
  data_dir: str | None = None,
  *,
  download: bool = False,
  decoders: Any | None = None,
  builder_kwargs: dict[str, Any] | None = None,
) -> Any:
  """Returns `tfds.data_source(name, split=split, ...)`: `len()` records, each a dict of numpy arrays.

  Args:
    name: TFDS name, optionally with config and version, e.g. `"mnist"` or `"coco/2017:1.1.0"`.
    split: one split, with TFDS slicing allowed, e.g. `"train"` or `"train[:90%]"`.
    data_dir: where prepared datasets live; None uses TFDS's default (`$TFDS_DATA_DIR`, else
      `~/tensorflow_datasets`).
    download: let TFDS download and prepare a missing dataset. Off by default: on a multi-host job every
      host would download at once, so prepare datasets ahead of time.
    decoders: passed to TFDS, e.g. `{"image": tfds.decode.SkipDecoding()}` to keep encoded bytes.
    builder_kwargs: passed to `tfds.builder`, e.g. `{"file_format": "array_record"}`.
  """
  if not isinstance(split, str):
    raise ValueError(f"split: expected one split name such as 'train', got {split!r}.")
  try:
    tfds = importlib.import_module("tensorflow_datasets")
  except ImportError as error:
    raise ImportError(f"{_INSTALL_HINT} ({error}).") from error
  return tfds.data_source(
    name, split=split, data_dir=data_dir, download=download, decoders=decoders, builder_kwargs=builder_kwargs
  )
