"""Aspect-ratio buckets for text-to-image training: assign, resize-to-cover and crop, and a mixed grain stream.

Lens trains on nine aspect-ratio buckets at base resolution 1024 (Lens's published resolution buckets), as
(height, width), both sides multiples of 16:

    1:2 1472x736   9:16 1376x768   2:3 1248x832   3:4 1152x864   1:1 1024x1024   (and 2:1, 16:9, 3:2, 4:3)

Ratios are named width:height, so "9:16" is portrait. Which bases Lens trains at is not published; the bases
256 and 512 offered here are a reconstruction: each base-1024 side is scaled by base/1024 and rounded to the
nearest multiple of 16, and where a side falls exactly between two multiples the rounding that keeps h*w nearest
base^2 wins. Base 512 is then an exact half of the table; at base 256 the ratios drift by up to 4.4% from their
names (3:4 becomes 288x224) while every area stays within 2% of 256^2.

A training stream (`bucketed_pipeline`) builds one pipeline per bucket, as `make_pipeline` does for one source
(host shard -> shuffle -> repeat forever -> cover-and-crop -> transforms -> batch), with a per-bucket batch size
B_k = max(1, tokens_per_batch // tokens_k) so every step carries about the same number of latent tokens, then
mixes the batched pipelines with `grain.MapDataset.mix`: every batch has one shape, and bucket k supplies a
fraction weights[k] / sum(weights) of the batches. grain's mix is a fixed deterministic interleaving rather than
random draws, so the proportions hold over any long window, and every host -- given the same weights and batch
sizes -- picks the same bucket at the same step, which a multi-host step over one global array needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import grain
import numpy as np
from PIL import Image

from jaxagents.data.pipeline import (
  _DEFAULT_PREFETCH_BATCHES,
  _MAX_READ_THREADS,
  _apply_transform,
  _check_non_negative_int,
  _check_positive_int,
  _check_source,
  _resolve_shard,
)

_SIDE_MULTIPLE = 16
_LENS_BASES = (256, 512, 1024)
# Lens's published base-1024 buckets, (width:height name, height, width), portrait ones; transposes are derived.
_LENS_PORTRAIT_1024 = (("1:2", 1472, 736), ("9:16", 1376, 768), ("2:3", 1248, 832), ("3:4", 1152, 864))
_RESAMPLING = Image.Resampling.LANCZOS


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One training resolution: images are resized to cover it and centre-cropped to exactly [height, width]."""

  height: int
  width: int
  name: str = ""

  def __post_init__(self):
    _check_positive_int("height", self.height)
    _check_positive_int("width", self.width)

  def tokens(self, patch: int) -> int:
    """Number of latent tokens, (height / patch) * (width / patch); `patch` in pixels (VAE stride x patchify)."""
    _check_positive_int("patch", patch)
    if self.height % patch or self.width % patch:
      raise ValueError(f"patch: expected a divisor of both sides of bucket {self.height}x{self.width}, got {patch}.")
    return (self.height // patch) * (self.width // patch)


def lens_buckets(base: int) -> tuple[Bucket, ...]:
  """The nine Lens buckets at `base` (256, 512 or 1024), tallest to widest; names like "9:16@1024".

  Base 1024 is Lens's published table; 256 and 512 are the reconstruction described in the module docstring.
  """
  if isinstance(base, bool) or not isinstance(base, int | np.integer) or base not in _LENS_BASES:
    raise ValueError(f"base: expected one of {_LENS_BASES}, got {base!r}.")
  portrait = [(name, *_scale_sides(height, width, base)) for name, height, width in _LENS_PORTRAIT_1024]
  landscape = [(":".join(reversed(name.split(":"))), width, height) for name, height, width in reversed(portrait)]
  table = [*portrait, ("1:1", base, base), *landscape]
  return tuple(Bucket(height, width, f"{name}@{base}") for name, height, width in table)


def _scale_sides(height: int, width: int, base: int) -> tuple[int, int]:
  """Each side scaled by base/1024 to a nearest multiple of 16; a side exactly between two picks by area."""
  scale = Fraction(base, 1024)

  def nearest_multiples(side: int) -> list[int]:
    scaled = side * scale
    lower = math.floor(scaled / _SIDE_MULTIPLE) * _SIDE_MULTIPLE
    upper = lower + _SIDE_MULTIPLE
    distances = {lower: scaled - lower, upper: upper - scaled}
    return [multiple for multiple, distance in distances.items() if distance == min(distances.values())]

  candidates = [(h, w) for h in nearest_multiples(height) for w in nearest_multiples(width)]
  return min(candidates, key=lambda sides: abs(sides[0] * sides[1] - base * base))


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
  """The bucket whose aspect is nearest to height/width in log space, |log(h/w) - log(bh/bw)|.

  Compared exactly in rational arithmetic (|log x| is monotone in max(x, 1/x)), so a tie is a true tie and goes
  to the bucket listed first.
  """
  _check_positive_int("height", height)
  _check_positive_int("width", width)
  if not buckets:
    raise ValueError("buckets: expected at least one bucket, got none.")

  def log_aspect_distance(bucket: Bucket) -> Fraction:
    ratio = Fraction(height * bucket.width, width * bucket.height)
    return max(ratio, 1 / ratio)

  return min(buckets, key=log_aspect_distance)  # min keeps the first of equal keys


def assign_buckets(sizes: Any, buckets: Sequence[Bucket]) -> tuple[np.ndarray, ...]:
  """Record indices per bucket from per-record metadata, without decoding any image.

  Args:
    sizes: `[N, 2]` integer (height, width) of every record of the source, in source order.
    buckets: the buckets to assign to.

  Returns:
    One ascending int64 index array per bucket (possibly empty), together a partition of range(N). Each record
    goes to `nearest_bucket(height, width, buckets)`, evaluated once per distinct size.
  """
  sizes = np.asarray(sizes)
  if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.issubdtype(sizes.dtype, np.integer):
    raise ValueError(
      f"sizes: expected an integer array [N, 2] of (height, width), got {sizes.dtype}{list(sizes.shape)}."
    )
  if sizes.size and sizes.min() <= 0:
    raise ValueError(f"sizes: expected positive heights and widths, got a minimum of {sizes.min()}.")
  if not buckets:
    raise ValueError("buckets: expected at least one bucket, got none.")
  distinct_sizes, size_of_record = np.unique(sizes, axis=0, return_inverse=True)
  bucket_of_size = np.array(
    [buckets.index(nearest_bucket(int(h), int(w), buckets)) for h, w in distinct_sizes], dtype=np.int64
  )
  bucket_of_record = bucket_of_size[size_of_record.reshape(-1)]
  return tuple(np.flatnonzero(bucket_of_record == k).astype(np.int64) for k in range(len(buckets)))


class CoverCrop(NamedTuple):
  """Resize an image to [scaled_height, scaled_width], then keep rows top: top+bh and columns left: left+bw."""

  scaled_height: int
  scaled_width: int
  top: int
  left: int


def cover_crop_box(height: int, width: int, bucket: Bucket) -> CoverCrop:
  """Scale by max(bh/H, bw/W) so the image covers the bucket, then centre the crop.

  Exact integer arithmetic: the side that sets the scale lands exactly on the bucket side, the other is rounded
  half up and so is never below its bucket side. An odd surplus leaves the extra row (column) at the bottom
  (right).
  """
  _check_positive_int("height", height)
  _check_positive_int("width", width)
  if bucket.height * width >= bucket.width * height:  # scale bh/H covers the width too
    scaled_height, scaled_width = bucket.height, (2 * width * bucket.height + height) // (2 * height)
  else:
    scaled_height, scaled_width = (2 * height * bucket.width + width) // (2 * width), bucket.width
  return CoverCrop(
    scaled_height, scaled_width, (scaled_height - bucket.height) // 2, (scaled_width - bucket.width) // 2
  )


def resize_to_cover_and_crop(image: np.ndarray, bucket: Bucket) -> np.ndarray:
  """image: [H, W, C] uint8 or float -> [bucket.height, bucket.width, C] of the same dtype.

  Resized with PIL's Lanczos filter, channel by channel (mode "L" for uint8, "F" for floats, so any C works;
  floats are resampled in float32 and may overshoot their input range slightly, as Lanczos does), then
  centre-cropped by `cover_crop_box`. Deterministic: no randomness anywhere.
  """
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"image: expected rank 3 [H, W, C], got shape {image.shape}.")
  if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
    raise ValueError(f"image: expected dtype uint8 or a float dtype, got {image.dtype}.")
  height, width, _ = image.shape
  box = cover_crop_box(height, width, bucket)
  working_dtype = np.uint8 if image.dtype == np.uint8 else np.float32
  channels = [
    np.asarray(
      Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=working_dtype)).resize(
        (box.scaled_width, box.scaled_height), _RESAMPLING
      )
    )
    for c in range(image.shape[2])
  ]
  resized = np.stack(channels, axis=-1)
  cropped = resized[box.top : box.top + bucket.height, box.left : box.left + bucket.width]
  return cropped.astype(image.dtype, copy=False)


class _IndexedSubset:
  """Records `indices` of `source`, as a random-access source of its own (picklable for grain's workers)."""

  def __init__(self, source: Any, indices: np.ndarray):
    self._source = source
    self._indices = indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> Any:
    return self._source[int(self._indices[index])]


class _CoverCropRecord:
  """Record transform: replaces `record[image_key]` with its cover-and-crop to `bucket`."""

  def __init__(self, bucket: Bucket, image_key: str):
    self._bucket = bucket
    self._image_key = image_key

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, self._image_key: resize_to_cover_and_crop(record[self._image_key], self._bucket)}


def bucket_batch_sizes(
  buckets: Sequence[Bucket], *, tokens_per_batch: int, patch_size: int, batch_multiple: int = 1
) -> tuple[int, ...]:
  """B_k = tokens_per_batch // tokens_k rounded down to a multiple of `batch_multiple` (at least one multiple):
  records per batch of each bucket at a fixed token budget, splittable over `batch_multiple` batch shards."""
  _check_positive_int("tokens_per_batch", tokens_per_batch)
  _check_positive_int("batch_multiple", batch_multiple)
  return tuple(
    max(1, tokens_per_batch // bucket.tokens(patch_size) // batch_multiple) * batch_multiple for bucket in buckets
  )


def bucketed_pipeline(
  source: Any,
  indices_by_bucket: Sequence[Sequence[int]],
  buckets: Sequence[Bucket],
  *,
  tokens_per_batch: int,
  patch_size: int,
  seed: int,
  weights: Sequence[float] | None = None,
  image_key: str | None = "image",
  transforms: Sequence[Callable[..., Any] | grain.transforms.Map | grain.transforms.RandomMap] = (),
  shard_index: int | None = None,
  shard_count: int | None = None,
  prefetch_buffer_size: int = _DEFAULT_PREFETCH_BATCHES,
  batch_multiple: int = 1,
) -> grain.IterDataset:
  """This host's endless stream of single-bucket batches; `iter(result)` supports `get_state()` / `set_state()`.

  Args:
    source: random-access source (`__len__`, `__getitem__`); each record a dict of numpy arrays.
    indices_by_bucket: source indices of each bucket's records (e.g. from `assign_buckets`), GLOBAL: every host
      passes the same lists and reads its own `shard_index::shard_count` slice of each.
    buckets: the buckets, one per entry of `indices_by_bucket`.
    tokens_per_batch: latent-token budget of one batch on THIS host; bucket k batches B_k records
      (`bucket_batch_sizes`).
    patch_size: pixels per latent token along each side (VAE stride x patch size), for `Bucket.tokens`.
    seed: non-negative integer; fixes every bucket's shuffle order (a new permutation every epoch of that
      bucket) and the rng of `RandomMap` transforms.
    weights: relative number of BATCHES drawn from each bucket, non-negative, not all zero; zero-weight buckets
      are never drawn. Default: proportional to the number of records in each bucket (global counts, so all
      hosts agree). grain resolves the weights to integers relative to the smallest positive one (scaled to
      100), so proportions are exact to about 1% of the smallest weight.
    image_key: record key of the [H, W, C] image to resize-to-cover and crop to the bucket; None leaves
      records as they are (e.g. latents already stored at their bucket's size).
    transforms: applied to each record after the crop, before batching, as in `make_pipeline`.
    shard_index, shard_count: this host reads records `shard_index::shard_count` of every bucket; defaults
      `jax.process_index()` and `jax.process_count()`.
    prefetch_buffer_size: batches read ahead by background threads; 0 reads synchronously on `next()`.
    batch_multiple: every B_k is a multiple of this (this host's share of the data-parallel devices).

  Returns:
    A `grain.IterDataset` of batches: dicts of numpy arrays `[B_k, ...]`, the image `[B_k, bh, bw, C]`. Its
    iterator state is a JSON-able dict; a fresh pipeline with the same arguments set to it continues exactly.
  """
  num_records = _check_source(source)
  _check_positive_int("patch_size", patch_size)
  _check_non_negative_int("seed", seed)
  _check_non_negative_int("prefetch_buffer_size", prefetch_buffer_size)
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  if len(indices_by_bucket) != len(buckets) or not buckets:
    raise ValueError(
      f"indices_by_bucket: expected one index list per bucket ({len(buckets)} buckets, at least one), got "
      f"{len(indices_by_bucket)} lists."
    )
  batch_sizes = bucket_batch_sizes(buckets, tokens_per_batch=tokens_per_batch, patch_size=patch_size,
                                   batch_multiple=batch_multiple)
  indices_by_bucket = [_check_indices(k, indices, num_records) for k, indices in enumerate(indices_by_bucket)]
  weights = _resolve_weights(weights, indices_by_bucket, shard_count)

  batched, drawn_weights = [], []
  for k, (bucket, indices, batch_size) in enumerate(zip(buckets, indices_by_bucket, batch_sizes)):
    if weights[k] == 0:
      continue
    bucket_seed = int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint32)[0])
    dataset = grain.MapDataset.source(_IndexedSubset(source, indices[shard_index::shard_count]))
    dataset = dataset.shuffle(seed=bucket_seed).repeat(None)  # shuffle before repeat: see pipeline.py
    if image_key is not None:
      dataset = dataset.map(_CoverCropRecord(bucket, image_key))
    for position, transform in enumerate(transforms):
      dataset = _apply_transform(dataset, transform, position, bucket_seed)
    batched.append(dataset.batch(batch_size, drop_remainder=True))
    drawn_weights.append(weights[k])

  # Mixing the batched MapDatasets (rather than one IterDataset per bucket) keeps a single read-ahead buffer that
  # prefetches exactly the batches that will be consumed, and a single stream position as the iterator state.
  mixed = batched[0] if len(batched) == 1 else grain.MapDataset.mix(batched, drawn_weights)
  read_options = grain.ReadOptions(
    num_threads=min(prefetch_buffer_size, _MAX_READ_THREADS), prefetch_buffer_size=prefetch_buffer_size
  )
  return mixed.to_iter_dataset(read_options)


def _check_indices(bucket_index: int, indices: Sequence[int], num_records: int) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(
      f"indices_by_bucket[{bucket_index}]: expected a 1-D list of integer indices, got "
      f"{indices.dtype}{list(indices.shape)}."
    )
  if indices.size and (indices.min() < 0 or indices.max() >= num_records):
    raise ValueError(
      f"indices_by_bucket[{bucket_index}]: expected indices in [0, {num_records}), got "
      f"[{indices.min()}, {indices.max()}]."
    )
  return indices.astype(np.int64)


def _resolve_weights(weights: Sequence[float] | None, indices_by_bucket: list[np.ndarray], shard_count: int):
  counts = [len(indices) for indices in indices_by_bucket]
  if weights is None:
    weights = counts
  weights = np.asarray(weights, dtype=np.float64)
  if weights.shape != (len(counts),):
    raise ValueError(f"weights: expected {len(counts)} weights (one per bucket), got shape {weights.shape}.")
  if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not np.any(weights > 0):
    raise ValueError(f"weights: expected finite, non-negative weights, not all zero, got {weights.tolist()}.")
  for k, (weight, count) in enumerate(zip(weights, counts)):
    if weight > 0 and count < shard_count:  # checked on every host, so no host waits for one that has no data
      raise ValueError(
        f"indices_by_bucket[{k}]: bucket {k} has weight {weight} but {count} records, fewer than the "
        f"{shard_count} host shard(s) that each need one; give it weight 0 or more records."
      )
  return weights.tolist()
