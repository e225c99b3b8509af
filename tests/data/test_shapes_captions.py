"""Captioned shapes and the pixel-reading prompt-following scorer: records are a pure function of (seed, index),
captions say what the scene holds, renders show it (exact colours, one blob per shape, inside its region), the scorer
reads renders perfectly, survives blur and noise and falls to chance on mismatched or empty images, held-out
combinations never reach training, and the word tokenizer round-trips."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from jaxagents.data import make_pipeline
from jaxagents.data import prompt_following as pf
from jaxagents.data import shapes_captions as sc
from jaxagents.data.shapes_captions import Group, Scene

SIZES = ((32, 32), (32, 48), (48, 32))


@pytest.fixture(scope="module")
def records():
  source = sc.ShapesCaptionsSource(400, seed=5, image_sizes=SIZES)
  return [source[i] for i in range(len(source))]


def _degrade(image, rng, sigma=1.0, noise=0.05, saturation=0.85):
  """What a small generator does to a render: muted colours, blur, pixel noise; float in [0, 1]."""
  blurred = ndimage.gaussian_filter(image.astype(np.float32) / 255 * saturation, (sigma, sigma, 0))
  return np.clip(blurred + rng.normal(0, noise, image.shape), 0, 1)


def test_records_are_a_pure_function_of_seed_and_index():
  a, b = sc.ShapesCaptionsSource(50, seed=3), sc.ShapesCaptionsSource(50, seed=3)
  other = sc.ShapesCaptionsSource(50, seed=4)
  for i in (0, 7, 49):
    first, second = a[i], b[i]
    assert first.keys() == second.keys() and first["caption"] == second["caption"]
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])
    assert sc.scene_from_record(first) == a.scene(i)
  assert any(a[i]["caption"] != other[i]["caption"] for i in range(10))
  restored = pickle.loads(pickle.dumps(a))
  np.testing.assert_array_equal(restored[7]["image"], a[7]["image"])


def test_record_i_is_rendered_at_size_i_mod_the_number_of_sizes(records):
  for i, record in enumerate(records[:9]):
    assert record["image"].shape == (*SIZES[i % 3], 3) and record["image"].dtype == np.uint8


def test_hand_written_scenes_get_the_expected_captions():
  scene = Scene((Group(2, "red", "circle", "large", "left"), Group(1, "blue", "square", "small", "bottom right")))
  assert sc.caption(scene) == "two large red circles on the left and a small blue square at the bottom right"
  assert sc.caption(Scene((Group(4, "white", "triangle", "small", "anywhere"),))) == "four small white triangles"
  assert sc.caption(Scene((Group(1, "cyan", "square", "large", "centre"),))) == "a large cyan square in the centre"


def test_captions_parse_back_to_their_scenes(records):
  for record in records:
    scene = sc.scene_from_record(record)
    assert sc.parse_caption(record["caption"]).groups == scene.groups
    for phrase, group in zip(record["caption"].split(" and "), scene.groups):
      words = phrase.split()
      assert group.colour in words and group.size in words
      assert (group.kind + "s" in words) == (group.count > 1)
  with pytest.raises(ValueError, match="text"):
    sc.parse_caption("two large red circle on the left")  # number disagreement


def test_renders_hold_only_palette_colours_one_blob_per_shape_inside_each_region(records):
  palette = {sc.RGB[name] for name in sc.COLOURS} | {sc.BACKGROUND_RGB}
  for record in records:
    image, scene = record["image"], sc.scene_from_record(record)
    assert {tuple(pixel) for pixel in image.reshape(-1, 3).tolist()} <= palette
    for group in scene.groups:
      of_colour = (image == sc.RGB[group.colour]).all(-1)
      assert ndimage.label(of_colour)[1] == group.count, record["caption"]
      top, left, bottom, right = sc.region_box(group.region, *image.shape[:2])
      assert of_colour[top:bottom, left:right].sum() == of_colour.sum(), record["caption"]


def test_scorer_reads_every_check_right_on_renders(records):
  scores = pf.prompt_following_score([record["image"] for record in records], records)
  assert scores["total_all_checks"] == 1.0 and scores["num_images"] == len(records)
  for record in records[:50]:
    for group in sc.scene_from_record(record).groups:
      assert pf.dominant_colour(record["image"], group.region) == sc.COLOURS.index(group.colour)
      assert pf.count_blobs(record["image"], group.colour) == group.count


def test_scorer_still_scores_high_on_blurred_noisy_muted_renders(records):
  rng = np.random.default_rng(0)
  scores = pf.prompt_following_score([_degrade(record["image"], rng) for record in records], records)
  for check in (*pf.CHECKS, "total", "total_all_checks"):
    assert scores[check] >= 0.97, (check, scores)


def test_scorer_is_near_chance_on_mismatched_blank_and_noise_images(records):
  rng = np.random.default_rng(1)
  images = [record["image"] for record in records]
  shuffled = pf.prompt_following_score([images[i] for i in rng.permutation(len(images))], records)
  blank = pf.prompt_following_score([np.zeros_like(image) for image in images], records)
  grey = pf.prompt_following_score([np.full(image.shape, 0.5) for image in images], records)
  noise = pf.prompt_following_score([rng.random(image.shape) for image in images], records)
  for scores in (shuffled, blank, grey, noise):
    assert scores["total"] <= 0.1 and scores["colour_in_region"] <= 0.25 and scores["count"] <= 0.3, scores
  assert blank["total_all_checks"] == grey["total_all_checks"] == 0.0


def test_dominant_colour_and_blobs_on_a_hand_drawn_image():
  image = np.zeros((32, 32, 3), np.uint8)
  image[2:10, 2:10] = (200, 30, 30)  # muted red, top left
  image[20:28, 3:9] = (230, 10, 40)  # red, bottom left
  image[5:7, 20:22] = (255, 0, 0)  # a 4-pixel red speckle, below the minimum area of 6
  image[18:30, 18:30] = (20, 220, 230)  # cyan, bottom right
  red, cyan = sc.COLOURS.index("red"), sc.COLOURS.index("cyan")
  assert pf.default_min_area(32, 32) == 6
  assert pf.dominant_colour(image, "left") == red and pf.dominant_colour(image, "bottom right") == cyan
  assert pf.dominant_colour(image, "top right") == pf.NO_COLOUR
  assert pf.count_blobs(image, "red") == 2 and pf.count_blobs(image, cyan) == 1 and pf.count_blobs(image, "blue") == 0
  assert pf.count_blobs(image, "red", min_area=4) == 3


def test_blob_moments_match_the_analytic_values_of_each_kind():
  side = 40
  for kind, skew, cross in (("circle", 0.0, -1 / 3), ("square", 0.0, 0.0), ("triangle", -2 * np.sqrt(2) / 5, None)):
    mask = np.zeros((48, 48), bool)
    mask[4:4 + side, 4:4 + side] = sc.shape_mask(kind, side)
    image = np.where(mask[..., None], np.uint8(255), np.uint8(0)).repeat(3, -1)
    moments = pf.blob_moments(image, mask, "white")
    assert moments["area"] == mask.sum()
    assert moments["vertical_skew"] == pytest.approx(skew, abs=0.02), kind
    if cross is not None:
      assert moments["cross_cumulant"] == pytest.approx(cross, abs=0.02), kind
    assert pf.blob_kind(moments) == kind


def test_heldout_combinations_never_reach_the_training_source():
  source = sc.ShapesCaptionsSource(4000, seed=0)
  heldout = set(sc.HELDOUT_COMBINATIONS)
  heldout_captions = {sc.caption(scene) for scene in sc.HELDOUT_SCENES}
  seen_colours, seen_kinds, seen_regions = set(), set(), set()
  for i in range(len(source)):
    scene = source.scene(i)
    assert not any(group.combination in heldout for group in scene.groups), sc.caption(scene)
    assert sc.caption(scene) not in heldout_captions
    for group in scene.groups:
      seen_colours.add(group.colour), seen_kinds.add(group.kind), seen_regions.add(group.region)
  # Every held-out part is still taught in other combinations.
  assert {c for c, _, _ in heldout} <= seen_colours and {k for _, k, _ in heldout} <= seen_kinds
  assert {r for _, _, r in heldout} <= seen_regions
  assert all(any(g.combination in heldout for g in scene.groups) for scene in sc.HELDOUT_SCENES)
  assert len(heldout_captions) == len(sc.HELDOUT_SCENES)


def test_heldout_scenes_render_and_score_perfectly():
  images = [sc.render(scene, 32, 48) for scene in sc.HELDOUT_SCENES]
  assert pf.prompt_following_score(images, sc.HELDOUT_SCENES)["total_all_checks"] == 1.0


def test_tokenizer_round_trips_and_pads_with_zero():
  text = "two large red circles on the left and a small blue square at the bottom right"
  ids, mask = sc.tokenize(text, max_len=20)
  assert ids.shape == mask.shape == (20,) and ids.dtype == np.int32 and mask.dtype == bool
  assert mask.sum() == 16 and (ids[~mask] == sc.PAD_ID).all() and (ids[mask] > 0).all()
  assert sc.detokenize(ids) == sc.detokenize(ids, mask) == text
  assert len(sc.VOCABULARY) == 30 and sc.VOCABULARY[0] == "<pad>"
  quadrants = ("top left", "top right", "bottom left", "bottom right")
  longest = Scene(tuple(Group(1, colour, "triangle", "small", region) for colour, region in zip(sc.COLOURS, quadrants)))
  assert len(sc.caption(longest).split()) == sc.MAX_CAPTION_LENGTH


def test_tokenizer_rejects_unknown_words_and_long_captions():
  with pytest.raises(ValueError, match="purple"):
    sc.tokenize("a small purple circle")
  with pytest.raises(ValueError, match="<pad>"):
    sc.tokenize("a <pad> circle")
  with pytest.raises(ValueError, match="max_len"):
    sc.tokenize("a small red circle at the top left", max_len=4)


def test_invalid_scenes_and_arguments_raise_naming_them():
  with pytest.raises(ValueError, match="colours"):
    Scene((Group(1, "red", "circle", "large", "top left"), Group(1, "red", "square", "large", "top right")))
  with pytest.raises(ValueError, match="disjoint"):
    Scene((Group(1, "red", "circle", "large", "left"), Group(1, "blue", "square", "large", "top left")))
  with pytest.raises(ValueError, match="only group"):
    Scene((Group(1, "red", "circle", "large", "centre"), Group(1, "blue", "square", "large", "top left")))
  with pytest.raises(ValueError, match="count"):
    Group(2, "red", "circle", "large", "top left")
  with pytest.raises(ValueError, match="colour"):
    Group(1, "purple", "circle", "large", "top left")
  with pytest.raises(ValueError, match="max_groups"):
    sc.ShapesCaptionsSource(10, seed=0, colours=("red", "blue"), max_groups=3)
  with pytest.raises(IndexError):
    sc.ShapesCaptionsSource(10, seed=0)[10]
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    pf.prompt_following_score([np.full((32, 32, 3), -1.0)], [sc.HELDOUT_SCENES[0]])
  with pytest.raises(ValueError, match="one scene per image"):
    pf.prompt_following_score([np.zeros((32, 32, 3), np.uint8)] * 2, [sc.HELDOUT_SCENES[0]])


def test_grain_batches_of_one_size_score_through_their_scene_arrays():
  source = sc.ShapesCaptionsSource(16, seed=2, image_sizes=((32, 48),), colours=("red", "green", "blue"), max_groups=2)
  batch = next(iter(make_pipeline(source, batch_size=8, seed=0, shard_index=0, shard_count=1)))
  assert batch["image"].shape == (8, 32, 48, 3) and batch["caption_ids"].shape == (8, sc.MAX_CAPTION_LENGTH)
  scenes = sc.scenes_from_batch(batch)
  assert [sc.caption(scene) for scene in scenes] == list(batch["caption"])
  for scene in scenes:
    assert {group.colour for group in scene.groups} <= {"red", "green", "blue"} and len(scene.groups) <= 2
  assert pf.prompt_following_score(batch["image"], scenes)["total_all_checks"] == 1.0
