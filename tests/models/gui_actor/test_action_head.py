"""GUI-Actor's action head, multi-patch labels and loss, region inference and verifier selection, on constructed
inputs, against hand-computed values and against transcriptions of microsoft/GUI-Actor's code
(`VisionHead_MultiPatch` in src/gui_actor/modeling_qwen25vl.py, run in PyTorch when it is installed;
`get_multi_patch_labels` in src/gui_actor/dataset.py; `GroundingVerifier.get_prediction_region_point` in
verifier/verifier_model.py).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxagents.models.gui_actor import (
  RELEASED_KEYS,
  RELEASED_PREFIX,
  VERIFIER_THRESHOLD,
  VERIFIER_THRESHOLD_PRO,
  ActionHead,
  multi_patch_labels,
  multi_patch_loss,
  patch_attention,
  point_token_index,
  predict_point,
  prediction_regions,
  released_key_shapes,
  select_candidate,
  select_from_scores,
  verifier_candidates,
  verifier_probability,
)


class JittedHead:
  """An `ActionHead` whose init and apply are jitted (op-by-op dispatch would dominate this file's runtime)."""

  def __init__(self, **attributes):
    self.module = ActionHead(**attributes)
    self._apply = jax.jit(self.module.apply, static_argnames=("deterministic",))

  def apply(self, variables, *args, **kwargs):
    return self._apply(variables, *args, **kwargs)


@functools.cache
def init_head(width: int, *, projection_dim=None, num_heads=8, seed=0):
  head = JittedHead(projection_dim=projection_dim, num_heads=num_heads)
  visual, query = jnp.zeros((1, 3, width)), jnp.zeros((1, 1, width))
  params = nn.meta.unbox(jax.jit(head.module.init)(jax.random.key(seed), visual, query)["params"])
  return head, params


jitted_loss = jax.jit(multi_patch_loss)


def param_at(params, path):
  for name in path:
    params = params[name]
  return params


# --- released layout -------------------------------------------------------------------------------------------


def test_released_keys_name_every_param_with_the_transposed_torch_shape():
  width, projection_dim = 16, 24
  _, params = init_head(width, projection_dim=projection_dim)
  shapes = released_key_shapes(width, projection_dim)
  assert len(RELEASED_KEYS) == len(shapes) == 14
  for key, path, transpose in RELEASED_KEYS:
    ours = param_at(params, path).shape
    assert (ours[::-1] if transpose else ours) == shapes[RELEASED_PREFIX + key], key
  ours_paths = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert ours_paths == {path for _, path, _ in RELEASED_KEYS}


def test_parameter_count_is_8d2_plus_10d_as_the_released_7b_head():
  head = ActionHead()
  shapes = jax.eval_shape(head.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 3584), jnp.float32),
                          jax.ShapeDtypeStruct((1, 1, 3584), jnp.float32))
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert count == 8 * 3584**2 + 10 * 3584 == 102_796_288
  assert sum(math.prod(s) for s in released_key_shapes(3584).values()) == count


# --- head numerics ---------------------------------------------------------------------------------------------


def torch_reference(width, projection_dim, num_heads):
  """`VisionHead_MultiPatch` of modeling_qwen25vl.py, its forward transcribed (eval mode, multi-patch loss)."""
  torch = pytest.importorskip("torch")
  tnn, functional = torch.nn, torch.nn.functional

  class VisionHeadMultiPatch(tnn.Module):
    def __init__(self):
      super().__init__()
      self.d_model = width
      self.projection_enc = tnn.Sequential(tnn.Linear(width, projection_dim), tnn.GELU(),
                                           tnn.Linear(projection_dim, width))
      self.projection_dec = tnn.Sequential(tnn.Linear(width, projection_dim), tnn.GELU(),
                                           tnn.Linear(projection_dim, width))
      self.self_attention = tnn.MultiheadAttention(embed_dim=width, num_heads=num_heads, dropout=0.1,
                                                   batch_first=True)
      self.layer_norm = tnn.LayerNorm(width)
      self.dropout = tnn.Dropout(0.1)

    def forward(self, hidden_state_enc, hidden_state_dec, labels=None):
      enc_input = hidden_state_enc.unsqueeze(0)
      attn_output, _ = self.self_attention(query=enc_input, key=enc_input, value=enc_input, need_weights=False)
      hidden_state_enc_ctx = self.layer_norm(enc_input + self.dropout(attn_output)).squeeze(0)
      proj_enc = self.projection_enc(hidden_state_enc_ctx)
      proj_dec = self.projection_dec(hidden_state_dec)
      patch_logits = torch.matmul(proj_dec, proj_enc.transpose(0, 1)) / self.d_model**0.5
      attn_weights = functional.softmax(patch_logits, dim=-1)
      loss = None
      if labels is not None:
        labels_float = labels.float()
        target_dist = labels_float / (labels_float.sum(dim=-1, keepdim=True) + 1e-8)
        loss = functional.kl_div(functional.log_softmax(patch_logits, dim=-1), target_dist, reduction="batchmean")
      return attn_weights, loss

  torch.manual_seed(0)
  module = VisionHeadMultiPatch().eval()
  with torch.no_grad():  # nonzero norm affine and biases so that every key is exercised
    for name, tensor in module.named_parameters():
      if "layer_norm" in name or "bias" in name:
        tensor.add_(0.1 * torch.randn_like(tensor))
  return torch, module


def test_head_and_loss_match_the_torch_reference_with_converted_weights():
  width, projection_dim, num_heads = 16, 24, 8
  torch, module = torch_reference(width, projection_dim, num_heads)
  state = {key: value.detach().numpy() for key, value in module.state_dict().items()}
  params = {}
  for key, path, transpose in RELEASED_KEYS:
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(state[key].T if transpose else state[key])
  rng = np.random.default_rng(1)
  visual = rng.normal(size=(7, width)).astype(np.float32)
  queries = rng.normal(size=(2, width)).astype(np.float32)
  labels = np.zeros((2, 7), np.float32)
  labels[0, [1, 2, 5]] = 1
  labels[1, [6]] = 1
  with torch.no_grad():
    want_attention, want_loss = module(torch.from_numpy(visual), torch.from_numpy(queries), torch.from_numpy(labels))
  logits = JittedHead(projection_dim=projection_dim, num_heads=num_heads).apply(
    {"params": params}, visual[None], queries[None])
  np.testing.assert_allclose(patch_attention(logits)[0], want_attention.numpy(), rtol=1e-5, atol=1e-6)
  loss, _ = jitted_loss(logits, jnp.asarray(labels)[None])
  np.testing.assert_allclose(loss, want_loss.item(), rtol=1e-5)


def test_padded_batch_of_several_images_equals_each_sample_alone():
  width = 16
  head, params = init_head(width)
  rng = np.random.default_rng(2)
  # Sample 0: two images of 2x3 and 4x4 tokens, concatenated (22 tokens), two pointers; sample 1: one 3x3 image, one
  # pointer.
  lengths, pointers = (6 + 16, 9), (2, 1)
  visual = rng.normal(size=(2, 22, width)).astype(np.float32)
  queries = rng.normal(size=(2, 2, width)).astype(np.float32)
  visual_mask = np.arange(22)[None, :] < np.asarray(lengths)[:, None]
  query_mask = np.arange(2)[None, :] < np.asarray(pointers)[:, None]
  labels = (rng.random(size=(2, 2, 22)) < 0.3).astype(np.float32)
  labels[:, :, 0] = 1
  logits = head.apply({"params": params}, visual, queries, visual_mask)
  assert logits.shape == (2, 2, 22) and logits.dtype == jnp.float32
  attention = patch_attention(logits)
  assert np.all(np.asarray(attention)[1, :, 9:] == 0.0)
  loss, metrics = jitted_loss(logits, labels, visual_mask, query_mask)
  alone_losses = []
  for b in range(2):
    n, k = lengths[b], pointers[b]
    alone = head.apply({"params": params}, visual[b:b + 1, :n], queries[b:b + 1, :k])
    np.testing.assert_allclose(attention[b, :k, :n], patch_attention(alone)[0], rtol=1e-5, atol=1e-7)
    alone_losses.append(jitted_loss(alone, labels[b:b + 1, :k, :n])[0])
  np.testing.assert_allclose(metrics["per_sample_loss"], alone_losses, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(alone_losses), rtol=1e-5)


def test_dropout_acts_only_when_not_deterministic():
  head, params = init_head(16)
  rng = np.random.default_rng(3)
  visual, queries = rng.normal(size=(1, 5, 16)), rng.normal(size=(1, 2, 16))
  plain = head.apply({"params": params}, visual, queries)
  np.testing.assert_array_equal(plain, head.apply({"params": params}, visual, queries))
  dropped = head.apply({"params": params}, visual, queries, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert dropped.shape == plain.shape and not np.allclose(dropped, plain)


def test_mismatched_shapes_are_rejected_with_the_argument_named():
  head, params = init_head(16)
  with pytest.raises(ValueError, match="visual_mask"):
    head.apply({"params": params}, jnp.zeros((1, 5, 16)), jnp.zeros((1, 2, 16)), jnp.ones((1, 4), bool))
  with pytest.raises(ValueError, match="query_states"):
    head.apply({"params": params}, jnp.zeros((1, 5, 16)), jnp.zeros((2, 2, 16)))


# --- loss ------------------------------------------------------------------------------------------------------


def test_loss_equals_the_hand_computed_kl_divergence():
  # Uniform prediction over 4 patches, two labelled: KL(t || p) = 2 * 0.5 * log(0.5 / 0.25) = log 2.
  labels = jnp.asarray([[[1.0, 1.0, 0.0, 0.0]]])
  loss, _ = jitted_loss(jnp.zeros((1, 1, 4)), labels)
  np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
  # p = (0.1, 0.2, 0.3, 0.4), t = (0, 0.5, 0.5, 0): 0.5 log(0.5/0.2) + 0.5 log(0.5/0.3); a second pointer with
  # t = (1, 0, 0, 0) adds log(1/0.1); `batchmean` averages the two pointers; an empty sample counts in the mean.
  logits = jnp.log(jnp.asarray([0.1, 0.2, 0.3, 0.4]))
  logits = jnp.broadcast_to(logits, (2, 2, 4))
  labels = jnp.asarray([[[0.0, 1, 1, 0], [1, 0, 0, 0]]] * 2)
  first = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.3)
  second = math.log(1 / 0.1)
  loss, metrics = jitted_loss(logits, labels, query_mask=jnp.asarray([[True, True], [False, False]]))
  np.testing.assert_allclose(metrics["per_sample_loss"], [(first + second) / 2, 0.0], rtol=1e-5)
  np.testing.assert_allclose(loss, (first + second) / 4, rtol=1e-5)
  np.testing.assert_allclose(metrics["label_mass"][0], (0.5 + 0.1) / 2, rtol=1e-5)


def test_loss_gradient_is_softmax_minus_target_over_pointers_and_samples():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  labels = jnp.asarray(rng.random(size=(2, 3, 6)) < 0.5, jnp.float32).at[:, :, 0].set(1.0)
  grad = jax.grad(lambda z: jitted_loss(z, labels)[0])(logits)
  target = labels / (labels.sum(-1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(grad, (jax.nn.softmax(logits) - target) / (3 * 2), atol=1e-6)


def test_loss_is_minimal_with_zero_gradient_where_prediction_equals_labels():
  labels = jnp.asarray([[[0.0, 1, 1, 0, 1, 0]], [[1.0, 1, 1, 1, 0, 0]]])
  visual_mask = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])  # sample 1: every real patch labelled
  # Equal logits on the labelled patches and a far lower value elsewhere: softmax == normalised labels.
  at_minimum = jnp.where(labels > 0, 0.0, -60.0)
  loss_fn = lambda z: jitted_loss(z, labels, visual_mask)[0]
  np.testing.assert_allclose(loss_fn(at_minimum), 0.0, atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss_fn)(at_minimum), 0.0, atol=1e-7)
  rng = np.random.default_rng(5)
  for _ in range(5):
    assert loss_fn(at_minimum + jnp.asarray(rng.normal(size=labels.shape), jnp.float32)) > loss_fn(at_minimum) + 1e-3


# --- training the head alone ----------------------------------------------------------------------------------


def constructed_problem(rng, count, width, grid, direction, query):
  """Screens of grid x grid tokens (28-pixel blocks) with one random box each; the tokens the box overlaps carry
  `direction` on top of noise; every pointer state is `query` plus noise."""
  side = grid * 28
  visual = rng.normal(size=(count, grid * grid, width)).astype(np.float32)
  labels, boxes = [], []
  for i in range(count):
    x0, y0 = rng.uniform(0, 0.75, size=2)
    w, h = rng.uniform(0.05, 0.25, size=2)
    box = (x0, y0, x0 + w, y0 + h)
    label = multi_patch_labels(box, side, side)
    visual[i] += 3.0 * label[:, None] * direction
    labels.append(label)
    boxes.append(box)
  queries = (query + 0.1 * rng.normal(size=(count, 1, width))).astype(np.float32)
  return visual, queries, np.stack(labels)[:, None, :], boxes


def test_training_the_head_alone_puts_the_attention_mass_on_the_labelled_patches():
  width, grid = 32, 6
  rng = np.random.default_rng(6)
  direction, query = rng.normal(size=width), rng.normal(size=width)
  direction /= np.linalg.norm(direction) / math.sqrt(width) * 2
  train = constructed_problem(rng, 64, width, grid, direction, query)
  held_out = constructed_problem(rng, 32, width, grid, direction, query)
  head, params = init_head(width, num_heads=4)
  optimizer = optax.adam(3e-3)

  def loss_fn(params, visual, queries, labels):
    return jitted_loss(head.apply({"params": params}, visual, queries), labels)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: loss_fn(p, *train[:3])[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  before = loss_fn(params, *held_out[:3])[1]["label_mass"].mean()
  opt_state = optimizer.init(params)
  for _ in range(25):
    params, opt_state = step(params, opt_state)
  loss, metrics = loss_fn(params, *held_out[:3])
  assert before < 0.3 and metrics["label_mass"].mean() > 0.9, (before, metrics["label_mass"])
  # The predicted point lies on a labelled token (a box smaller than a token can leave the token centres outside it).
  attention = np.asarray(patch_attention(head.apply({"params": params}, *held_out[:2])))[:, 0]
  points = [predict_point(a, grid, grid) for a in attention]
  hits = [label[0, point_token_index(point, grid * 28, grid * 28)] for label, point in zip(held_out[2], points)]
  assert np.mean(hits) > 0.9, hits


# --- labels ----------------------------------------------------------------------------------------------------


def their_multi_patch_labels(bbox, w, h, merge_patch_size=28):
  """`get_multi_patch_labels` of dataset.py, transcribed (without the processor and PIL image)."""
  x_min, y_min, x_max, y_max = bbox[0] * w, bbox[1] * h, bbox[2] * w, bbox[3] * h
  x_min, y_min, x_max, y_max = max(0, x_min), max(0, y_min), min(w, x_max), min(h, y_max)
  grid_h, grid_w = h // merge_patch_size, w // merge_patch_size
  mask = np.zeros(grid_h * grid_w, np.float32)
  for y_idx in range(grid_h):
    for x_idx in range(grid_w):
      px0, py0 = x_idx * merge_patch_size, y_idx * merge_patch_size
      px1, py1 = px0 + merge_patch_size, py0 + merge_patch_size
      if not (px1 <= x_min or px0 >= x_max or py1 <= y_min or py0 >= y_max):
        mask[y_idx * grid_w + x_idx] = 1
  return mask


def labelled(bbox_pixels, width=112, height=112):
  box = (bbox_pixels[0] / width, bbox_pixels[1] / height, bbox_pixels[2] / width, bbox_pixels[3] / height)
  return set(np.nonzero(multi_patch_labels(box, width, height))[0].tolist())


def test_labels_of_a_box_covering_parts_of_four_tokens():
  # 112 x 84 image: 4 x 3 tokens. x in [30, 60) spans columns 1 and 2, y in [10, 40) rows 0 and 1.
  assert labelled((30, 10, 60, 40), 112, 84) == {1, 2, 5, 6}


def test_labels_do_not_take_a_token_the_box_only_touches():
  assert labelled((28, 28, 56, 56)) == {5}
  assert labelled((28, 28, 56.5, 56)) == {5, 6}


def test_labels_of_a_box_over_the_grid_edge_are_clipped():
  assert labelled((84, 56, 150, 112)) == {11, 15}
  assert labelled((-20, -5, 10, 20)) == {0}
  assert labelled((120, 0, 150, 112)) == set()


def test_labels_of_a_tiny_box_inside_one_token():
  assert labelled((40, 40, 41, 41)) == {5}
  assert multi_patch_labels((0.4, 0.4, 0.41, 0.41), 112, 112).tolist() == [0.0] * 5 + [1.0] + [0.0] * 10


def test_labels_equal_their_loop_on_random_boxes():
  rng = np.random.default_rng(7)
  for _ in range(200):
    w, h = 28 * rng.integers(1, 12, size=2)
    x, y = np.sort(rng.uniform(-0.1, 1.1, size=2)), np.sort(rng.uniform(-0.1, 1.1, size=2))
    box = (x[0], y[0], x[1], y[1])
    np.testing.assert_array_equal(multi_patch_labels(box, int(w), int(h)), their_multi_patch_labels(box, w, h))


def test_label_sizes_that_are_not_token_multiples_are_rejected():
  with pytest.raises(ValueError, match="merge_patch_size"):
    multi_patch_labels((0, 0, 1, 1), 100, 112)


def test_point_token_index_is_row_major_floor():
  assert point_token_index((0.5, 0.5), 112, 84) == 1 * 4 + 2
  assert point_token_index((0.999, 0.001), 112, 84) == 3


# --- regions ---------------------------------------------------------------------------------------------------


def score_map(n_height, n_width, entries, background=0.01):
  scores = np.full(n_height * n_width, background, np.float32)
  for (row, col), value in entries.items():
    scores[row * n_width + col] = value
  return scores


def test_regions_are_ranked_by_mean_score_with_weighted_centres():
  # 4 x 5 grid: a three-patch blob (mean 0.133) and a lone patch (0.15); the background is under 0.3 * max.
  scores = score_map(4, 5, {(0, 0): 0.2, (0, 1): 0.1, (1, 0): 0.1, (3, 4): 0.15})
  regions = prediction_regions(scores, 5, 4)
  assert [r.patch_indices for r in regions] == [(19,), (0, 5, 1)]
  np.testing.assert_allclose([r.score for r in regions], [0.15, 0.4 / 3], rtol=1e-6)
  np.testing.assert_allclose(regions[0].center, (4.5 / 5, 3.5 / 4))
  np.testing.assert_allclose(regions[1].center, ((0.1 * 0.2 + 0.3 * 0.1 + 0.1 * 0.1) / 0.4,
                                                 (0.125 * 0.2 + 0.125 * 0.1 + 0.375 * 0.1) / 0.4), rtol=1e-6)
  assert predict_point(scores, 5, 4) == regions[0].center
  rect = prediction_regions(scores, 5, 4, rect_center=True)[1]
  np.testing.assert_allclose(rect.center, ((0.1 + 0.3) / 2, (0.125 + 0.375) / 2))


def test_diagonal_patches_are_separate_regions_and_the_threshold_is_strict():
  scores = score_map(3, 3, {(0, 0): 1.0, (1, 1): 0.9, (2, 2): 0.3})
  regions = prediction_regions(scores, 3, 3)
  assert [r.patch_indices for r in regions] == [(0,), (4,)]  # 0.3 == 0.3 * max is not active


def test_region_grid_must_match_the_scores():
  with pytest.raises(ValueError, match="scores"):
    prediction_regions(np.ones(12, np.float32), 4, 4)


def their_verifier_candidates(attn_scores, n_width, n_height, top_n=20):
  """`GroundingVerifier.get_prediction_region_point(..., no_groups=True, return_all_regions=True)`, transcribed."""
  attn_scores = np.array(attn_scores)
  valid_indices = np.where(attn_scores > attn_scores.max() * 0.2)
  if len(valid_indices[1]) > top_n:
    valid_scores = attn_scores[valid_indices]
    sorted_idx = np.argsort(valid_scores)[::-1][:top_n]
    topk_indices, topk_values = valid_indices[1][sorted_idx], valid_scores[sorted_idx]
  else:
    topk_values, topk_indices = attn_scores[valid_indices].tolist(), valid_indices[1]
  topk_coords = [(int(idx // n_width), int(idx % n_width), int(idx)) for idx in topk_indices]
  regions, visited = [], set()
  for i, (y, x, idx) in enumerate(topk_coords):
    if idx in visited:
      continue
    region, queue = [(y, x, idx, topk_values[i])], [(y, x, idx, topk_values[i])]
    visited.add(idx)
    while queue:
      cy, cx, _, _ = queue.pop(0)
      for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        ny, nx = cy + dy, cx + dx
        for j, (ty, tx, t_idx) in enumerate(topk_coords):
          if ty == ny and tx == nx and t_idx not in visited:
            visited.add(t_idx)
            region.append((ny, nx, t_idx, topk_values[j]))
            queue.append((ny, nx, t_idx, topk_values[j]))
    regions.append(region)
  scored = []
  for region in regions:
    weights = [item[3] for item in region]
    centers = [((x + 0.5) / n_width, (y + 0.5) / n_height) for y, x, _, _ in region]
    total = sum(weights)
    center = (sum(c[0] * w for c, w in zip(centers, weights)) / total,
              sum(c[1] * w for c, w in zip(centers, weights)) / total)
    scored.append((sum(weights) / len(region), center))
  order = sorted(range(len(scored)), key=lambda i: scored[i][0], reverse=True)
  return [scored[i][1] for i in order] + [((x + 0.5) / n_width, (y + 0.5) / n_height) for y, x, _ in topk_coords]


def test_verifier_candidates_equal_their_code_on_random_maps():
  rng = np.random.default_rng(8)
  for trial in range(40):
    n_height, n_width = rng.integers(2, 9, size=2)
    logits = rng.normal(scale=1.0 + 2.0 * (trial % 3), size=n_height * n_width)
    scores = np.exp(logits - logits.max()).astype(np.float32)
    scores /= scores.sum()
    ours = verifier_candidates(scores, int(n_width), int(n_height))
    theirs = their_verifier_candidates(scores.astype(np.float64)[None].tolist(), n_width, n_height)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    # Inference regions are the same search with threshold 0.3 and no cap.
    regions = prediction_regions(scores, int(n_width), int(n_height))
    active = np.where(scores > np.float32(float(scores.max()) * 0.3), scores, 0)
    capped = their_verifier_candidates(active[None].tolist(), n_width, n_height, top_n=10**6)
    np.testing.assert_allclose([r.center for r in regions], capped[:len(regions)], rtol=1e-12)


def test_verifier_candidates_keep_the_twenty_best_patches_after_the_region_centres():
  # 6 x 6 grid, all 36 patches active with distinct scores: the 20 highest are kept, best first.
  scores = np.linspace(1.0, 0.5, 36).astype(np.float32)[np.random.default_rng(9).permutation(36)]
  candidates = verifier_candidates(scores, 6, 6)
  kept = np.argsort(-scores)[:20]
  expected_patches = [((i % 6 + 0.5) / 6, (i // 6 + 0.5) / 6) for i in kept]
  assert candidates[-20:] == expected_patches
  assert len(candidates) > 20


# --- verifier selection ---------------------------------------------------------------------------------------


class CountingVerifier:
  def __init__(self, scores):
    self.scores, self.calls = scores, []

  def __call__(self, point):
    self.calls.append(point)
    return self.scores[len(self.calls) - 1]


def test_verifier_picks_the_highest_score_when_none_reaches_the_threshold():
  points = [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]
  verifier = CountingVerifier([0.3, 0.7, 0.5])
  assert select_candidate(points, verifier) == (1, [0.3, 0.7, 0.5])
  assert len(verifier.calls) == 3


def test_verifier_stops_at_the_first_score_over_the_threshold():
  points = [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.4, 0.4)]
  verifier = CountingVerifier([0.3, 0.85, 0.99, 1.0])
  assert select_candidate(points, verifier, VERIFIER_THRESHOLD)[0] == 1
  assert verifier.calls == points[:2]
  verifier = CountingVerifier([0.3, 0.85, 0.99, 1.0])
  assert select_candidate(points, verifier, VERIFIER_THRESHOLD_PRO)[0] == 2
  assert (VERIFIER_THRESHOLD, VERIFIER_THRESHOLD_PRO) == (0.8, 0.95)


def test_verifier_ties_go_to_the_first_and_a_single_candidate_is_not_scored():
  assert select_candidate([(0, 0), (1, 1), (2, 2)], CountingVerifier([0.5, 0.6, 0.6]))[0] == 1
  verifier = CountingVerifier([0.0])
  assert select_candidate([(0.5, 0.5)], verifier) == (0, []) and verifier.calls == []
  with pytest.raises(ValueError, match="candidates"):
    select_candidate([], verifier)


def test_selection_from_precomputed_scores_replays_the_early_stop():
  assert select_from_scores([0.3, 0.85, 0.99]) == 1
  assert select_from_scores([0.3, 0.85, 0.99], VERIFIER_THRESHOLD_PRO) == 2
  assert select_from_scores([0.3, 0.2, 0.4, 0.1]) == 2
  assert select_from_scores([0.1]) == 0


def test_verifier_probability_is_their_softmax_ratio():
  logits = jnp.asarray(np.random.default_rng(10).normal(size=(3, 11)), jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  np.testing.assert_allclose(verifier_probability(logits, 4, 7), probs[:, 4] / (probs[:, 4] + probs[:, 7]),
                             rtol=1e-6)
