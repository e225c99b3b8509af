"""The input pipeline: a random-access source -> resumable, host-sharded, shuffled batches (grain).

    source -> [shard_index::shard_count] -> shuffle -> repeat(num_epochs) -> transforms -> batch
           -> to_iter_dataset (thread prefetch) -> mp_prefetch (if worker_count > 0)

Every step is an index computation on a grain `MapDataset`, so the batch at position `k` of the stream is a
pure function of (source, arguments, k): the iterator's state is just a few integers (`get_state()` is a
JSON-able dict) and a fresh pipeline built with the same arguments resumes exactly where one left off.

Order matters: the shuffle sits *before* the repeat. grain's `ShuffleMapDataset` reshuffles every block of
`len(parent)` indices with seed `seed + epoch`, so shuffle-then-repeat gives a new permutation per epoch with
epochs kept intact, while repeat-then-shuffle would shuffle one infinitely long "epoch". The user seed is
hashed before it reaches grain, so seed `s` at epoch `e + 1` is not seed `s + 1`'s permutation at epoch `e`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

_DEFAULT_PREFETCH_BATCHES = 8
_MAX_READ_THREADS = 16


def make_pipeline(
  source: Any,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  transforms: Sequence[Callable[..., Any] | grain.transforms.Map | grain.transforms.RandomMap] = (),
  shard_index: int | None = None,
  shard_count: int | None = None,
  worker_count: int = 0,
  prefetch_buffer_size: int = _DEFAULT_PREFETCH_BATCHES,
) -> grain.IterDataset:
  """Builds this host's stream of batches; `iter(result)` supports `get_state()` / `set_state(state)`.

  Args:
    source: random-access source (`__len__`, `__getitem__`); each record a dict of numpy arrays.
    batch_size: records per batch on THIS host (global batch / number of hosts).
    seed: non-negative integer; fixes the shuffle order of every epoch and the rng of `RandomMap` transforms.
    shuffle: shuffle records (with a new permutation every epoch). Off: source order, epoch after epoch.
    num_epochs: passes over this host's shard; None repeats forever. Batches run across epoch boundaries,
      so only the last batch of a finite stream can be partial (and it is dropped if `drop_remainder`).
    drop_remainder: drop a final batch smaller than `batch_size`.
    transforms: applied to each record in order, before batching: plain callables `record -> record`,
      `grain.transforms.Map`, or `grain.transforms.RandomMap` (its rng is a function of seed and stream
      position, so augmentations differ per epoch but are reproducible and resumable).
    shard_index, shard_count: this host reads records `shard_index::shard_count` of the source; defaults
      `jax.process_index()` and `jax.process_count()`. Shards are disjoint, cover the source and differ in
      size by at most one record, so with a finite `num_epochs` hosts can disagree on the number of batches
      when `len(source)` is not a multiple of `shard_count`.
    worker_count: grain worker processes (`mp_prefetch`); 0 reads in this process with threads. A saved state
      can only be restored into a pipeline with the same `worker_count`.
    prefetch_buffer_size: batches read ahead by background threads (in each worker when `worker_count > 0`);
      0 reads synchronously on `next()`.

  Returns:
    A `grain.IterDataset` of batches: dicts of numpy arrays `[batch_size, ...]` (records stacked).
  """
  length = _check_source(source)
  _check_positive_int("batch_size", batch_size)
  _check_non_negative_int("seed", seed)
  if num_epochs is not None:
    _check_positive_int("num_epochs", num_epochs)
  _check_non_negative_int("worker_count", worker_count)
  _check_non_negative_int("prefetch_buffer_size", prefetch_buffer_size)
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)

  if length < shard_count:  # checked on every host, so no host waits for one that has no data
    raise ValueError(
      f"shard_count: {shard_count} hosts need at least {shard_count} records, but the source has {length}."
    )
  shard_length = len(range(shard_index, length, shard_count))
  if drop_remainder and shard_length < batch_size:
    raise ValueError(
      f"batch_size: expected at most {shard_length} (the records in shard {shard_index} of {shard_count} "
      f"of a {length}-record source) with drop_remainder=True, got {batch_size}."
    )

  grain_seed = _grain_seed(seed)
  dataset = grain.MapDataset.source(source)
  if shard_count > 1:
    dataset = dataset[shard_index::shard_count]
  if shuffle:
    dataset = dataset.shuffle(seed=grain_seed)
  dataset = dataset.repeat(num_epochs)
  for position, transform in enumerate(transforms):
    dataset = _apply_transform(dataset, transform, position, grain_seed)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

  read_options = grain.ReadOptions(
    num_threads=min(prefetch_buffer_size, _MAX_READ_THREADS), prefetch_buffer_size=prefetch_buffer_size
  )
  iter_dataset = dataset.to_iter_dataset(read_options)
  if worker_count > 0:
    _allow_unparsed_absl_flags()
    per_worker_buffer_size = max(1, math.ceil(prefetch_buffer_size / worker_count))
    iter_dataset = iter_dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=per_worker_buffer_size)
    )
  return iter_dataset


def _check_source(source: Any) -> int:
  if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
    raise TypeError(
      f"source: expected a random-access source with __len__ and __getitem__, got {type(source).__name__}."
    )
  length = len(source)
  if length == 0:
    raise ValueError(f"source: expected at least one record, got an empty source {source!r} (len 0).")
  return length


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}.")


def _check_non_negative_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
    raise ValueError(f"{name}: expected a non-negative integer, got {value!r}.")


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # only here, so sources and tests that pass both need not initialise a backend

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  _check_positive_int("shard_count", shard_count)
  if isinstance(shard_index, bool) or not isinstance(shard_index, int | np.integer):
    raise ValueError(f"shard_index: expected an integer, got {shard_index!r}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(
      f"shard_index: expected 0 <= shard_index < shard_count={shard_count}, got {shard_index}."
    )
  return int(shard_index), int(shard_count)


def _grain_seed(seed: int) -> int:
  """A well-mixed 32-bit seed: grain shuffles epoch `e` with `seed + e`, so near seeds must lie far apart."""
  return int(np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint32)[0])


def _apply_transform(dataset: grain.MapDataset, transform: Any, position: int, seed: int) -> grain.MapDataset:
  if isinstance(transform, grain.transforms.RandomMap):
    # Offset by position so two random transforms in one pipeline do not draw the same numbers.
    return dataset.random_map(transform, seed=(seed + position + 1) % 2**32)
  if isinstance(transform, grain.transforms.Map) or callable(transform):
    return dataset.map(transform)
  raise TypeError(
    f"transforms[{position}]: expected a callable, grain.transforms.Map or grain.transforms.RandomMap, got "
    f"{type(transform).__name__}."
  )


def _allow_unparsed_absl_flags() -> None:
  """grain <= 0.2.18's `mp_prefetch` reads an absl flag and fails unless flags are parsed (google/grain#1355).

  Marking that one flag present lets it read its default, as grain itself does for its debug flags in workers;
  a later `absl.flags.FLAGS(argv)` still parses it normally.
  """
  from absl import flags

  name = "grain_enable_multiprocess_worker_profiling"
  if name in flags.FLAGS and not flags.FLAGS.is_parsed():
    flags.FLAGS[name].present = True
