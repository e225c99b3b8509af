"""A shipped, generated sequence task: sort a list of symbols (the quick start's training data).

Record i is a pure function of (seed, i), so any record can be regenerated anywhere and a data-iterator
checkpoint needs only indices. Token layout, with `n` symbols `0..num_symbols-1` and two special tokens:

    [BOS] x_1 ... x_L [SEP] sort(x)_1 ... sort(x)_L

`inputs` is the sequence without its last token, `targets` without its first (next-token prediction), and
`loss_mask` is 1 exactly where the target is part of the sorted answer.
"""

from __future__ import annotations

import numpy as np


class SortingSource:
  """Random-access source of sorting problems: `len(source)` records of dicts of numpy arrays."""

  def __init__(self, num_records: int, *, length: int, num_symbols: int, seed: int):
    if num_records <= 0 or length <= 0 or num_symbols <= 1:
      raise ValueError(
        f"SortingSource needs num_records > 0, length > 0, num_symbols > 1; got num_records={num_records}, "
        f"length={length}, num_symbols={num_symbols}."
      )
    self.num_records = num_records
    self.length = length
    self.num_symbols = num_symbols
    self.seed = seed
    self.bos_id = num_symbols
    self.sep_id = num_symbols + 1

  @property
  def vocab_size(self) -> int:
    return self.num_symbols + 2

  @property
  def sequence_length(self) -> int:
    """Length of `inputs`/`targets`: BOS + L symbols + SEP + L answers, minus one for the shift."""
    return 2 * self.length + 1

  def __len__(self) -> int:
    return self.num_records

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} records")
    rng = np.random.default_rng([self.seed, int(index)])
    symbols = rng.integers(0, self.num_symbols, size=self.length)
    tokens = np.concatenate([[self.bos_id], symbols, [self.sep_id], np.sort(symbols)]).astype(np.int32)
    loss_mask = np.zeros(self.sequence_length, np.float32)
    loss_mask[self.length + 1:] = 1.0  # targets after SEP are the sorted answer
    return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": loss_mask}
