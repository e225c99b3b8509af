"""The shipped sorting task: records are a pure function of (seed, index) and well-formed."""

import numpy as np
import pytest

from jaxagents.data.sorting import SortingSource


def test_records_are_deterministic_and_differ_across_seeds():
  a = SortingSource(10, length=6, num_symbols=7, seed=3)
  b = SortingSource(10, length=6, num_symbols=7, seed=3)
  c = SortingSource(10, length=6, num_symbols=7, seed=4)
  for i in range(10):
    for key in ("inputs", "targets", "loss_mask"):
      np.testing.assert_array_equal(a[i][key], b[i][key])
  assert any(not np.array_equal(a[i]["inputs"], c[i]["inputs"]) for i in range(10))


def test_answer_is_the_sorted_problem_and_only_it_is_in_the_loss():
  source = SortingSource(5, length=6, num_symbols=7, seed=0)
  record = source[2]
  tokens = np.concatenate([record["inputs"], record["targets"][-1:]])
  assert tokens[0] == source.bos_id and tokens[7] == source.sep_id
  np.testing.assert_array_equal(tokens[8:], np.sort(tokens[1:7]))
  np.testing.assert_array_equal(record["targets"][record["loss_mask"] == 1], tokens[8:])
  assert record["inputs"].shape == record["targets"].shape == (source.sequence_length,)
  assert record["loss_mask"].sum() == 6


def test_out_of_range_index_and_bad_arguments_raise():
  source = SortingSource(5, length=4, num_symbols=3, seed=0)
  with pytest.raises(IndexError):
    source[5]
  with pytest.raises(ValueError, match="num_symbols"):
    SortingSource(5, length=4, num_symbols=1, seed=0)
