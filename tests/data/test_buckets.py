"""Aspect-ratio buckets: Lens's table, exact nearest-bucket and cover-crop arithmetic, and the mixed grain stream."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from jaxagents.data import FunctionSource
from jaxagents.data.buckets import (
  Bucket,
  assign_buckets,
  bucket_batch_sizes,
  bucketed_pipeline,
  cover_crop_box,
  lens_buckets,
  nearest_bucket,
  resize_to_cover_and_crop,
)

# Lens's published base-1024 buckets, (width:height, height, width), as published.
_LENS_1024 = {
  "1:2": (1472, 736),
  "9:16": (1376, 768),
  "2:3": (1248, 832),
  "3:4": (1152, 864),
  "1:1": (1024, 1024),
  "4:3": (864, 1152),
  "3:2": (832, 1248),
  "16:9": (768, 1376),
  "2:1": (736, 1472),
}

# Tiny buckets so pipeline tests resize 8..16-pixel images: tokens at patch 16 are 2, 4, 2.
_TALL, _SQUARE, _WIDE = Bucket(32, 16, "tall"), Bucket(32, 32, "square"), Bucket(16, 32, "wide")
_TINY_BUCKETS = (_TALL, _SQUARE, _WIDE)
_RECORD_SIZES = [(16, 8), (12, 12), (8, 16), (20, 10), (9, 9), (5, 10)] * 4  # 24 records, 8 per bucket


def _image_record(index: int) -> dict[str, np.ndarray]:
  height, width = _RECORD_SIZES[index]
  image = np.random.default_rng(index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  return {"id": np.asarray(index, np.int64), "image": image}


def _image_pipeline(**kwargs):
  kwargs = {
    "tokens_per_batch": 8,
    "patch_size": 16,
    "seed": 0,
    "shard_index": 0,
    "shard_count": 1,
    **kwargs,
  }
  source = FunctionSource(len(_RECORD_SIZES), _image_record)
  return bucketed_pipeline(source, assign_buckets(_RECORD_SIZES, _TINY_BUCKETS), _TINY_BUCKETS, **kwargs)


def _labelled_pipeline(records_per_bucket, **kwargs):
  """Image-free records that carry their bucket: `image_key=None` makes 10,000 batches cheap."""
  bucket_of_record = np.repeat(np.arange(len(records_per_bucket)), records_per_bucket)
  source = FunctionSource(
    len(bucket_of_record),
    lambda i: {"id": np.asarray(i, np.int64), "bucket": np.asarray(bucket_of_record[i], np.int64)},
  )
  indices_by_bucket = [np.flatnonzero(bucket_of_record == k) for k in range(len(records_per_bucket))]
  buckets = lens_buckets(256)[: len(records_per_bucket)]
  kwargs = {"tokens_per_batch": 1, "patch_size": 16, "seed": 0, "shard_index": 0, "shard_count": 1, **kwargs}
  return bucketed_pipeline(source, indices_by_bucket, buckets, image_key=None, **kwargs)


def _ids(dataset, num_batches: int) -> list[list[int]]:
  iterator = iter(dataset)
  return [next(iterator)["id"].tolist() for _ in range(num_batches)]


# --- the Lens table -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [256, 512, 1024])
def test_every_bucket_side_is_a_multiple_of_16(base):
  for bucket in lens_buckets(base):
    assert bucket.height % 16 == 0 and bucket.width % 16 == 0, bucket


@pytest.mark.parametrize("base", [256, 512, 1024])
def test_nine_distinct_ratios_from_tallest_to_widest_and_every_transpose_present(base):
  buckets = lens_buckets(base)
  aspects = [Fraction(bucket.width, bucket.height) for bucket in buckets]
  assert len(buckets) == 9 and len(set(aspects)) == 9
  assert aspects == sorted(aspects)
  sides = {(bucket.height, bucket.width) for bucket in buckets}
  assert {(width, height) for height, width in sides} == sides
  assert len({bucket.name for bucket in buckets}) == 9


@pytest.mark.parametrize("base", [256, 512, 1024])
def test_bucket_areas_are_within_six_percent_of_base_squared(base):
  # The published 3:4 bucket, 1152x864, is itself 5.1% below 1024^2.
  for bucket in lens_buckets(base):
    assert abs(bucket.height * bucket.width / base**2 - 1) < 0.06, bucket


def test_base_1024_is_lens_published_table():
  assert {bucket.name: (bucket.height, bucket.width) for bucket in lens_buckets(1024)} == {
    f"{ratio}@1024": sides for ratio, sides in _LENS_1024.items()
  }


def test_base_512_halves_every_published_side_exactly():
  halves = [(height // 2, width // 2) for height, width in _LENS_1024.values()]
  assert [(bucket.height, bucket.width) for bucket in lens_buckets(512)] == halves


def test_base_256_rounds_half_sides_towards_the_area_nearest_base_squared():
  # Quarter sides 184, 344, 312, 216 sit halfway between multiples of 16; by hand, the choice nearest 256^2 = 65536:
  # 368x176 = 64768 (vs 368x192 = 70656), 336x192 = 64512 (vs 67584), 320x208 = 66560 (vs 63232),
  # 288x224 = 64512 (vs 59904).
  portrait = [(368, 176), (336, 192), (320, 208), (288, 224)]
  expected = [*portrait, (256, 256), *[(width, height) for height, width in reversed(portrait)]]
  assert [(bucket.height, bucket.width) for bucket in lens_buckets(256)] == expected


def test_tokens_count_patches_of_the_bucket():
  assert Bucket(1024, 1024).tokens(16) == 64 * 64
  assert Bucket(1472, 736).tokens(32) == 46 * 23
  with pytest.raises(ValueError, match="patch"):
    Bucket(1472, 736).tokens(64)  # 736 / 64 is not an integer


# --- nearest bucket ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [Fraction(1), Fraction(1, 16), Fraction(5, 2)])
def test_an_image_with_a_bucket_exact_ratio_goes_to_that_bucket(scale):
  buckets = lens_buckets(1024)
  for bucket in buckets:
    height, width = bucket.height * scale, bucket.width * scale
    assert height.denominator == 1 and width.denominator == 1
    assert nearest_bucket(int(height), int(width), buckets) == bucket


def test_near_ties_between_neighbours_split_at_the_geometric_mean_of_their_aspects():
  buckets = lens_buckets(1024)
  width = 10**6
  for lower, upper in zip(buckets, buckets[1:]):  # lower is taller: aspect h/w falls from lower to upper
    # The log-midpoint of h/w between them is sqrt(product); `height` is the largest integer at or below it.
    numerator, denominator = lower.height * upper.height, lower.width * upper.width
    height = math.isqrt(width * width * numerator // denominator)  # floor(sqrt(floor(x))) == floor(sqrt(x))
    at_or_below_midpoint = height**2 * denominator == width * width * numerator
    assert nearest_bucket(height, width, buckets) == (lower if at_or_below_midpoint else upper)
    assert nearest_bucket(height + 1, width, buckets) == lower


def test_an_exact_tie_goes_to_the_bucket_listed_first():
  tall, wide = Bucket(32, 16), Bucket(16, 32)  # a square image is exactly log 2 from both
  assert nearest_bucket(100, 100, [tall, wide]) == tall
  assert nearest_bucket(100, 100, [wide, tall]) == wide


def test_assign_buckets_partitions_the_source_by_nearest_bucket():
  rng = np.random.default_rng(0)
  sizes = rng.integers(64, 4096, size=(300, 2))
  buckets = lens_buckets(512)
  indices_by_bucket = assign_buckets(sizes, buckets)
  assert len(indices_by_bucket) == 9
  np.testing.assert_array_equal(np.sort(np.concatenate(indices_by_bucket)), np.arange(300))
  for bucket, indices in zip(buckets, indices_by_bucket):
    assert np.all(np.diff(indices) > 0)
    for index in indices:
      assert nearest_bucket(int(sizes[index, 0]), int(sizes[index, 1]), buckets) == bucket


# --- cover and crop ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("height", "width", "bucket", "expected"),
  [
    (100, 300, Bucket(32, 64), (32, 96, 0, 16)),  # scale 32/100 sets the height; 300 * 0.32 = 96
    (300, 100, Bucket(64, 32), (96, 32, 16, 0)),  # the transpose
    (10, 10, Bucket(32, 16), (32, 32, 0, 8)),  # upscaling by 3.2
    (3, 7, Bucket(16, 16), (16, 37, 0, 10)),  # 7 * 16/3 = 37.33 -> 37; surplus 21 leaves 11 on the right
    (2, 3, Bucket(16, 16), (16, 24, 0, 4)),
    (64, 48, Bucket(48, 64), (85, 64, 18, 0)),  # 64 * 64/48 = 85.33 -> 85
    (48, 64, Bucket(48, 64), (48, 64, 0, 0)),  # already the bucket's size
  ],
)
def test_cover_crop_box_on_hand_computed_cases(height, width, bucket, expected):
  assert tuple(cover_crop_box(height, width, bucket)) == expected


def test_cover_crop_box_covers_with_one_side_exact_and_centres_the_crop():
  rng = np.random.default_rng(1)
  for bucket in lens_buckets(256):
    for height, width in rng.integers(1, 3000, size=(50, 2)):
      box = cover_crop_box(int(height), int(width), bucket)
      scale = max(Fraction(bucket.height, int(height)), Fraction(bucket.width, int(width)))
      assert box.scaled_height >= bucket.height and box.scaled_width >= bucket.width
      assert box.scaled_height == bucket.height or box.scaled_width == bucket.width
      assert abs(box.scaled_height - height * scale) <= Fraction(1, 2)
      assert abs(box.scaled_width - width * scale) <= Fraction(1, 2)
      margins = (box.scaled_height - bucket.height - 2 * box.top, box.scaled_width - bucket.width - 2 * box.left)
      assert margins[0] in (0, 1) and margins[1] in (0, 1)  # top and bottom margins differ by at most one row


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_to_cover_and_crop_returns_the_bucket_shape_and_input_dtype(dtype, channels):
  image = np.random.default_rng(2).uniform(0, 255, size=(37, 21, channels)).astype(dtype)
  for bucket in lens_buckets(256)[::4]:
    out = resize_to_cover_and_crop(image, bucket)
    assert out.shape == (bucket.height, bucket.width, channels) and out.dtype == dtype
    np.testing.assert_array_equal(out, resize_to_cover_and_crop(image, bucket))  # deterministic


def test_a_constant_image_stays_constant():
  image = np.full((30, 50, 3), 77, np.uint8)
  np.testing.assert_array_equal(resize_to_cover_and_crop(image, Bucket(48, 32)), np.full((48, 32, 3), 77, np.uint8))


@pytest.mark.parametrize(
  ("height", "width", "bucket"),
  [(16, 48, Bucket(32, 64)), (48, 16, Bucket(64, 32)), (40, 40, Bucket(32, 16)), (24, 36, Bucket(48, 48))],
)
def test_a_centred_square_marker_lands_at_the_centre_of_the_crop(height, width, bucket):
  image = np.zeros((height, width, 1), np.float32)
  image[height // 2 - 2 : height // 2 + 2, width // 2 - 2 : width // 2 + 2] = 1.0  # 4x4, centred (even sides)
  out = resize_to_cover_and_crop(image, bucket)[..., 0]
  rows, cols = np.mgrid[: bucket.height, : bucket.width]
  centroid = (np.sum(rows * out) / np.sum(out), np.sum(cols * out) / np.sum(out))
  np.testing.assert_allclose(centroid, ((bucket.height - 1) / 2, (bucket.width - 1) / 2), atol=1e-3)
  np.testing.assert_allclose(out, out[::-1, ::-1], atol=1e-5)  # point-symmetric about the centre
  assert out[bucket.height // 2, bucket.width // 2] > 0.9 and abs(out[0, 0]) < 1e-3  # marker at the centre only


# --- the bucketed stream -----------------------------------------------------------------------------------


def test_each_batch_has_one_bucket_shape_and_that_buckets_batch_size():
  indices_by_bucket = assign_buckets(_RECORD_SIZES, _TINY_BUCKETS)
  batch_size_of = {(b.height, b.width): max(1, 8 // ((b.height // 16) * (b.width // 16))) for b in _TINY_BUCKETS}
  assert sorted(batch_size_of.values()) == [2, 4, 4]
  members_of = {(b.height, b.width): set(indices.tolist()) for b, indices in zip(_TINY_BUCKETS, indices_by_bucket)}
  seen_shapes = set()
  iterator = iter(_image_pipeline())
  for _ in range(30):
    batch = next(iterator)
    batch_size, height, width, channels = batch["image"].shape
    assert batch["image"].dtype == np.uint8 and channels == 3
    assert batch_size == batch_size_of[(height, width)] and batch["id"].shape == (batch_size,)
    assert set(batch["id"].tolist()) <= members_of[(height, width)]
    bucket = next(b for b in _TINY_BUCKETS if (b.height, b.width) == (height, width))
    for record_id, image in zip(batch["id"], batch["image"]):
      np.testing.assert_array_equal(image, resize_to_cover_and_crop(_image_record(int(record_id))["image"], bucket))
    seen_shapes.add((height, width))
  assert seen_shapes == set(batch_size_of)


def test_each_bucket_reads_a_new_permutation_of_its_records_every_epoch():
  iterator = iter(_labelled_pipeline([6, 6], weights=[1, 1]))
  ids_by_bucket = {0: [], 1: []}
  for _ in range(48):
    batch = next(iterator)
    ids_by_bucket[int(batch["bucket"][0])].extend(batch["id"].tolist())
  for bucket, ids in ids_by_bucket.items():
    epochs = np.asarray(ids[:24]).reshape(4, 6)
    for epoch in epochs:
      np.testing.assert_array_equal(np.sort(epoch), np.arange(6) + 6 * bucket)
    assert len({tuple(epoch) for epoch in epochs}) > 1


@pytest.mark.parametrize(
  ("records_per_bucket", "weights"),
  [([1000, 1400, 600, 1800], [0.4, 0.1, 0.2, 0.3]), ([1000, 1400, 600, 1800], None), ([900] * 3, [3.0, 0.0, 1.0])],
)
def test_buckets_are_drawn_in_proportion_to_the_weights_over_10000_batches(records_per_bucket, weights):
  # Buckets of ~1000 records: grain's index_shuffle takes milliseconds per index on a handful of records.
  expected = np.asarray(records_per_bucket if weights is None else weights, np.float64)
  expected = expected / expected.sum()
  iterator = iter(_labelled_pipeline(records_per_bucket, weights=weights, prefetch_buffer_size=0))
  drawn = np.array([int(next(iterator)["bucket"][0]) for _ in range(10_000)])
  fractions = np.bincount(drawn, minlength=len(records_per_bucket)) / drawn.size
  np.testing.assert_allclose(fractions, expected, rtol=0.02, atol=1e-12)  # zero weight -> never drawn


def test_a_fresh_pipeline_set_to_a_saved_state_continues_with_identical_batches():
  iterator = iter(_image_pipeline(seed=3))
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  assert json.loads(json.dumps(state)) == state
  expected = [next(iterator) for _ in range(9)]

  resumed = iter(_image_pipeline(seed=3))
  resumed.set_state(json.loads(json.dumps(state)))
  for want in expected:
    got = next(resumed)
    assert set(got) == set(want)
    for key in want:
      assert got[key].dtype == want[key].dtype
      np.testing.assert_array_equal(got[key], want[key])


def test_same_seed_gives_the_same_stream_and_different_seeds_differ():
  first = _ids(_image_pipeline(seed=0), 6)
  assert first == _ids(_image_pipeline(seed=0), 6) and first != _ids(_image_pipeline(seed=1), 6)


def test_hosts_draw_the_same_bucket_at_every_step_from_disjoint_records():
  hosts = [iter(_labelled_pipeline([9, 3, 6], shard_index=i, shard_count=3, tokens_per_batch=2)) for i in range(3)]
  for _ in range(40):
    batches = [next(host) for host in hosts]
    assert len({int(b["bucket"][0]) for b in batches}) == 1
    assert all(len(set(b["bucket"].tolist())) == 1 for b in batches)
  first_epochs = [np.concatenate(_ids(_labelled_pipeline([9], shard_index=i, shard_count=3), 3)) for i in range(3)]
  np.testing.assert_array_equal(np.sort(np.concatenate(first_epochs)), np.arange(9))  # disjoint, covering


# --- bad inputs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0, 128, 768, 2048, True, 1024.0])
def test_unknown_base_is_rejected(base):
  with pytest.raises(ValueError, match="base"):
    lens_buckets(base)


@pytest.mark.parametrize("tokens_per_batch", [0, -8])
def test_non_positive_tokens_per_batch_is_rejected(tokens_per_batch):
  with pytest.raises(ValueError, match="tokens_per_batch"):
    _image_pipeline(tokens_per_batch=tokens_per_batch)


@pytest.mark.parametrize(
  "weights", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0]]
)
def test_bad_weights_are_rejected(weights):
  with pytest.raises(ValueError, match="weights"):
    _image_pipeline(weights=weights)


def test_an_empty_bucket_with_positive_weight_is_rejected_and_with_zero_weight_is_skipped():
  source = FunctionSource(len(_RECORD_SIZES), _image_record)
  indices_by_bucket = [np.arange(12), np.array([], np.int64), np.arange(12, 24)]
  kwargs = {"tokens_per_batch": 8, "patch_size": 16, "seed": 0, "shard_index": 0, "shard_count": 1}
  with pytest.raises(ValueError, match=r"indices_by_bucket\[1\]"):
    bucketed_pipeline(source, indices_by_bucket, _TINY_BUCKETS, weights=[1, 1, 1], **kwargs)
  with pytest.raises(ValueError, match=r"indices_by_bucket\[0\]"):  # 12 records cannot feed 13 hosts
    bucketed_pipeline(source, indices_by_bucket, _TINY_BUCKETS, **{**kwargs, "shard_count": 13})
  iterator = iter(bucketed_pipeline(source, indices_by_bucket, _TINY_BUCKETS, weights=[1, 0, 1], **kwargs))
  assert {next(iterator)["image"].shape[1:3] for _ in range(10)} == {(32, 16), (16, 32)}


def test_mismatched_or_out_of_range_indices_are_rejected():
  source = FunctionSource(len(_RECORD_SIZES), _image_record)
  kwargs = {"tokens_per_batch": 8, "patch_size": 16, "seed": 0, "shard_index": 0, "shard_count": 1}
  with pytest.raises(ValueError, match="indices_by_bucket"):
    bucketed_pipeline(source, [np.arange(24)], _TINY_BUCKETS, **kwargs)
  with pytest.raises(ValueError, match=r"indices_by_bucket\[2\]"):
    bucketed_pipeline(source, [[0], [1], [2, 24]], _TINY_BUCKETS, **kwargs)


@pytest.mark.parametrize("shape", [(8, 8), (2, 8, 8, 3), (8,)])
def test_an_image_of_the_wrong_rank_is_rejected(shape):
  with pytest.raises(ValueError, match="image"):
    resize_to_cover_and_crop(np.zeros(shape, np.uint8), Bucket(16, 16))


def test_bad_sizes_and_dimensions_are_rejected():
  with pytest.raises(ValueError, match="sizes"):
    assign_buckets([[10, 10, 3]], _TINY_BUCKETS)
  with pytest.raises(ValueError, match="sizes"):
    assign_buckets([[10, 0]], _TINY_BUCKETS)
  with pytest.raises(ValueError, match="height"):
    nearest_bucket(0, 10, _TINY_BUCKETS)
  with pytest.raises(ValueError, match="width"):
    cover_crop_box(10, -1, _SQUARE)
  with pytest.raises(ValueError, match="height"):
    Bucket(0, 16)


def test_batch_sizes_round_down_to_a_multiple_of_the_batch_shards():
  buckets = (Bucket(32, 32), Bucket(32, 48), Bucket(64, 64))  # 64, 96 and 256 tokens of 4 x 4 pixels
  assert bucket_batch_sizes(buckets, tokens_per_batch=512, patch_size=4) == (8, 5, 2)
  assert bucket_batch_sizes(buckets, tokens_per_batch=512, patch_size=4, batch_multiple=4) == (8, 4, 4)
  with pytest.raises(ValueError, match="batch_multiple"):
    bucket_batch_sizes(buckets, tokens_per_batch=512, patch_size=4, batch_multiple=0)
