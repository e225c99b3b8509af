"""ArraySource and FunctionSource: random access by index, strict bounds, clear errors."""

import pickle

import numpy as np
import pytest

from jaxagents.data import ArraySource, FunctionSource


def test_array_source_record_i_is_row_i_of_every_array():
  source = ArraySource({"image": np.arange(24, dtype=np.float32).reshape(4, 2, 3), "label": np.arange(4)})
  assert len(source) == 4
  record = source[np.int64(2)]
  np.testing.assert_array_equal(record["image"], np.arange(12, 18).reshape(2, 3))
  assert record["label"].shape == () and record["label"] == 2


def test_array_source_records_are_copies():
  arrays = {"x": np.zeros((3, 2))}
  source = ArraySource(arrays)
  source[0]["x"][:] = 7.0
  np.testing.assert_array_equal(source[0]["x"], [0.0, 0.0])


def test_array_source_rejects_mismatched_leading_dims_and_scalars():
  with pytest.raises(
    ValueError, match=r"arrays: expected all leading dimensions .*equal, got \{'a': 3, 'b': 4"
  ):
    ArraySource({"a": np.zeros((3, 2)), "b": np.zeros(4)})
  with pytest.raises(ValueError, match=r"arrays: .*scalars \['b'\]"):
    ArraySource({"a": np.zeros(3), "b": np.float32(1.0)})
  with pytest.raises(ValueError, match="arrays: expected a non-empty mapping"):
    ArraySource({})


@pytest.mark.parametrize("index", [-1, 3])
def test_out_of_range_indices_raise_instead_of_wrapping(index):
  with pytest.raises(IndexError, match=f"index {index} out of range for 3 records"):
    ArraySource({"a": np.zeros(3)})[index]
  with pytest.raises(IndexError, match=f"index {index} out of range for 3 records"):
    FunctionSource(3, lambda i: {"i": np.asarray(i)})[index]


def test_function_source_record_i_is_fn_of_i():
  source = FunctionSource(5, lambda i: {"square": np.asarray(i * i)})
  assert len(source) == 5
  assert [int(source[i]["square"]) for i in range(5)] == [0, 1, 4, 9, 16]


def test_function_source_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_records: expected a non-negative integer, got -1"):
    FunctionSource(-1, lambda i: i)
  with pytest.raises(ValueError, match="num_records: expected a non-negative integer, got 2.5"):
    FunctionSource(2.5, lambda i: i)
  with pytest.raises(TypeError, match="fn: expected a callable int -> record, got list"):
    FunctionSource(2, [1, 2])


def test_array_source_pickles_for_worker_processes():
  source = ArraySource({"a": np.arange(5)})
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[3]["a"], 3)
