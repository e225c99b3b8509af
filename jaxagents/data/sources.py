"""Random-access data sources: `len(source)` records, record `i` is `source[i]`, a dict of numpy arrays.

Any object with `__len__` and `__getitem__` works with `make_pipeline` (grain's sources, tfds data sources,
`SortingSource`); the two here cover in-memory arrays and generated data. Both are picklable (the arrays or
function travel to grain's worker processes), and both reject out-of-range indices with `IndexError` rather
than wrapping around, so an indexing bug upstream cannot silently read the wrong record.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _check_index(index: Any, num_records: int) -> int:
  index = operator.index(index)  # accepts int and numpy integers, rejects floats and slices
  if not 0 <= index < num_records:
    raise IndexError(f"index {index} out of range for {num_records} records")
  return index


class ArraySource:
  """Records are rows of in-memory arrays: record `i` is `{key: arrays[key][i]}`.

  Args:
    arrays: mapping from feature name to an array `[N, ...]`; every array has the same leading size `N`.

  Each record's leaves are copies, so a transform that writes into its input cannot corrupt the source.
  """

  def __init__(self, arrays: Mapping[str, Any]):
    if not isinstance(arrays, Mapping) or not arrays:
      raise ValueError(f"arrays: expected a non-empty mapping of name -> array, got {arrays!r}.")
    self._arrays = {name: np.asarray(value) for name, value in arrays.items()}
    leading = {name: (value.shape[0] if value.ndim else None) for name, value in self._arrays.items()}
    if None in leading.values():
      scalars = sorted(name for name, size in leading.items() if size is None)
      raise ValueError(
        f"arrays: expected every array to have a leading record dimension, got scalars {scalars}."
      )
    if len(set(leading.values())) != 1:
      raise ValueError(f"arrays: expected all leading dimensions to be equal, got {leading}.")
    self._num_records = next(iter(leading.values()))

  def __len__(self) -> int:
    return self._num_records

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = _check_index(index, self._num_records)
    return {name: np.array(value[index]) for name, value in self._arrays.items()}

  def __repr__(self) -> str:
    fields = ", ".join(
      f"{name}: {array.dtype}{list(array.shape[1:])}" for name, array in self._arrays.items()
    )
    return f"ArraySource({self._num_records} records; {fields})"


class FunctionSource:
  """Generated records: record `i` is `fn(i)`.

  Args:
    num_records: number of records, >= 0.
    fn: `int -> dict[str, np.ndarray]`; must be a pure function of the index (derive any randomness from it,
      e.g. `np.random.default_rng([seed, i])`) so that resumed and multi-process pipelines see the same data.
  """

  def __init__(self, num_records: int, fn: Callable[[int], Any]):
    if isinstance(num_records, bool) or not isinstance(num_records, int | np.integer) or num_records < 0:
      raise ValueError(f"num_records: expected a non-negative integer, got {num_records!r}.")
    if not callable(fn):
      raise TypeError(f"fn: expected a callable int -> record, got {type(fn).__name__}.")
    self._num_records = int(num_records)
    self._fn = fn

  def __len__(self) -> int:
    return self._num_records

  def __getitem__(self, index: int) -> Any:
    return self._fn(_check_index(index, self._num_records))

  def __repr__(self) -> str:
    name = getattr(self._fn, "__qualname__", type(self._fn).__name__)
    return f"FunctionSource({self._num_records} records; fn={name})"
