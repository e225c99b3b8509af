"""Qwen-VL prefill with MMInference sparse attention (arXiv 2504.16083).

Tiny Qwen2.5-VL, float32, CPU (the block-sparse kernels run their XLA reference). The oracles are independent of
the scanned model: the prefill KV cache, an unrolled decoder written out op by op in this file, float64 softmax
probabilities, and the layouts' token masks expanded by `tests.sparse.oracles`.
  * `modality_ids` marks the image/video placeholders; `attention_inputs` captures, per layer, exactly the q/k/v
    the layer attends with (they reproduce the cache and, fed to an unrolled decoder, the model's logits).
  * (a) A dense-pattern config (dense, Q- and 2D-boundary heads, two distinct layers) gives the dense model's
    logits to 1e-5 on a left-padded batch of two with videos.
  * (b) Acceptance: on a 512-token synthetic video, a sparse mixed config's error is within the bound that follows
    from its recall (derivation in the test's docstring).
  * (c) `generate` with a sparse model: sparse prefill, dense decode, the dense model's greedy tokens.
  * (d) The scanned model runs each layer under its own config: it equals an unrolled decoder with per-layer
    sparse attention, and differs from one with the layer configs swapped.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents import layers
from jaxagents.generation import SamplingConfig, generate
from jaxagents.layers.attention import attention
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.inputs import prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL, scatter_features
from jaxagents.models.qwen_vl.sparse_prefill import attention_inputs, modality_ids
from jaxagents.sparse import mminference_attention
from jaxagents.sparse.config import SparseAttentionConfig
from tests.models.qwen_vl import tiny
from tests.sparse.oracles import identity_positions, original_token_mask, perm_positions

F32 = {"atol": 1e-5, "rtol": 1e-6}


# ---------------------------------------------------------------------------------------------------- oracles


def _input_embeddings(model, params, inputs) -> jax.Array:
  """[B, L, E]: token embeddings with the vision features scattered in (the decoder's input)."""
  c = model.config

  def embed(module, ids, vision):
    features, _ = module.visual(vision)
    return scatter_features(module.text.embed_tokens(ids), ids, features, c.image_token_id, c.video_token_id)

  return model.apply(params, jnp.asarray(inputs.input_ids), inputs.vision, method=embed)


def _unrolled_decoder(model, params, embeds, positions, layer_attention, deltas=None):
  """A Qwen2/2.5-VL decoder (q/k/v biases, no QK-norm, chunked M-RoPE, untied head) as a loop over layers.

  layer_attention(l, q [B, L, Hq, D], k, v [B, L, Hkv, D]) -> [B, L, Hq, D] is layer l's attention core; `deltas`
  ([num_layers] of [B, L, Hq, D]) are added to the attention outputs. Returns (logits [B, L, V], [(q, k, v)]).
  """
  t = model.config.text
  p = params["params"]
  batch, length, _ = embeds.shape
  angles = layers.mrope_angles(positions, t.head_dim, t.rope_theta, t.mrope_section, t.mrope_interleaved)

  def rms(x, scale):
    return scale * (x * jax.lax.rsqrt(jnp.mean(x**2, axis=-1, keepdims=True) + t.rms_norm_eps))

  x, captured = embeds, []
  for layer in range(t.num_layers):
    block = jax.tree.map(lambda a, layer=layer: a[layer], p["text"]["layers"]["block"])
    h = rms(x, block["attn_norm"]["scale"])

    def project(name, heads, h=h, block=block):
      w = block["attn"][name]
      return (h @ w["kernel"] + w["bias"]).reshape(batch, length, heads, t.head_dim)

    q = layers.apply_rope(project("q", t.num_heads), angles)
    k = layers.apply_rope(project("k", t.num_kv_heads), angles)
    v = project("v", t.num_kv_heads)
    captured.append((q, k, v))
    out = layer_attention(layer, q, k, v)
    if deltas is not None:
      out = out + deltas[layer]
    x = x + out.reshape(batch, length, -1) @ block["attn"]["o"]["kernel"]
    h = rms(x, block["mlp_norm"]["scale"])
    mlp = block["mlp"]
    x = x + (jax.nn.silu(h @ mlp["gate"]["kernel"]) * (h @ mlp["up"]["kernel"])) @ mlp["down"]["kernel"]
  return rms(x, p["text"]["final_norm"]["scale"]) @ p["lm_head"]["kernel"], captured


def _dense_probs(q, k, kv_mask) -> np.ndarray:
  """float64 [B, Hq, S, S] causal softmax(q k^T / sqrt(D)) over the keys with kv_mask (GQA: K repeated)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  logits = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(q.shape[-1])
  visible = np.tri(q.shape[1], dtype=bool)[None, None] & np.asarray(kv_mask)[:, None, None, :]
  logits = np.where(visible, logits, -np.inf)
  peak = np.max(logits, axis=-1, keepdims=True)
  probs = np.where(visible, np.exp(logits - np.where(np.isfinite(peak), peak, 0)), 0.0)
  return probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)


def _layout_token_mask(q, k, v, heads, modality, kv_mask, block) -> np.ndarray:
  """bool [B, Hq, S, S]: each head's layout token mask (as the sparse backend builds it on these inputs, S a
  multiple of `block`) in the original token order."""
  batch, seq_len, num_heads, head_dim = q.shape
  _, plan = mminference_attention(q, k, v, heads, modality, block_q=block, block_kv=block,
                                  sm_scale=float(1 / np.sqrt(head_dim)), kv_mask=kv_mask, return_plan=True)
  mask = np.zeros((batch, num_heads, seq_len, seq_len), bool)
  for group in plan:
    if group.permutation is None:
      positions = identity_positions(batch, len(group.heads), seq_len)
    else:
      positions = perm_positions(group.permutation)
    mask[:, list(group.heads)] = original_token_mask(group.layout, *positions)
  return mask


def _layer(config: SparseAttentionConfig, layer: int) -> SparseAttentionConfig:
  return dataclasses.replace(config, layers=(config.layers[layer],))


def _model_args(inputs):
  return (jnp.asarray(inputs.input_ids), jnp.asarray(inputs.positions), jnp.asarray(inputs.attention_mask),
          inputs.vision)


# ------------------------------------------------------------------------ small batch: capture, (a), (c)

DENSE_PATTERN_HEADS = [
  [{"pattern": "dense"}, {"pattern": "dense", "boundary": "q"}, {"pattern": "dense", "boundary": "2d"},
   {"pattern": "dense"}],
  [{"pattern": "dense", "boundary": "2d"}, {"pattern": "dense"}, {"pattern": "dense"},
   {"pattern": "dense", "boundary": "q"}],
]


@pytest.fixture(scope="module")
def small():
  """Qwen2.5-VL tiny, a left-padded batch of two prompts with videos (L = 14), params, dense logits."""
  config = QwenVLConfig.from_hf(tiny.QWEN2_5_VL)
  batch = tiny.batch("qwen2_5_vl", "video")
  inputs = prepare_inputs(config, batch["input_ids"], batch["attention_mask"],
                          pixel_values_videos=batch["pixel_values_videos"], video_grid_thw=batch["video_grid_thw"],
                          second_per_grid_ts=batch["second_per_grid_ts"])
  model = QwenVL(config)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *_model_args(inputs)))
  logits, _ = jax.jit(model.apply)(params, *_model_args(inputs))
  return config, batch, inputs, model, params, np.asarray(logits)


def test_modality_ids_mark_image_and_video_placeholders(small):
  config, batch, inputs, *_ = small
  np.testing.assert_array_equal(modality_ids(inputs.input_ids, config), batch["mm_token_type_ids"] > 0)
  images = tiny.batch("qwen2_5_vl", "images")
  np.testing.assert_array_equal(modality_ids(images["input_ids"], config), images["mm_token_type_ids"] > 0)


def test_attention_inputs_are_what_every_layer_attends_with(small):
  """The captured q/k/v equal an op-by-op recomputation of every layer (the unrolled decoder, which attends with
  exactly these tensors), and that decoder reproduces the model's logits."""
  config, _, inputs, model, params, logits = small
  q, k, v = attention_inputs(model, params, inputs)
  t, (batch, length) = config.text, inputs.input_ids.shape
  assert q.shape == (t.num_layers, batch, length, t.num_heads, t.head_dim)
  assert k.shape == v.shape == (t.num_layers, batch, length, t.num_kv_heads, t.head_dim)
  _, _, (reference_logits, per_layer) = _dense_pullback(model, params, inputs)
  np.testing.assert_allclose(reference_logits, logits, **F32)
  for layer, (q_own, k_own, v_own) in enumerate(per_layer):
    for captured, computed in ((q, q_own), (k, k_own), (v, v_own)):
      np.testing.assert_allclose(captured[layer], computed, **F32)


def test_dense_pattern_config_gives_the_dense_models_logits(small):
  config, _, inputs, _, params, logits = small
  sparse_config = SparseAttentionConfig.from_layers(DENSE_PATTERN_HEADS, block_q=16, block_kv=16)
  sparse_logits, _ = jax.jit(QwenVL(config, sparse_config=sparse_config).apply)(params, *_model_args(inputs))
  np.testing.assert_allclose(sparse_logits, logits, **F32)  # padding rows included


def test_generate_with_a_sparse_model_prefills_sparse_and_decodes_dense(small):
  config, _, inputs, _, params, logits = small
  sparse_config = SparseAttentionConfig.from_layers(DENSE_PATTERN_HEADS, block_q=16, block_kv=16)
  sparse_model = QwenVL(config, sparse_config=sparse_config)
  sparse = generate(sparse_model, params, inputs, sampling=SamplingConfig(2), cache_dtype=jnp.float32)
  greedy = np.argmax(logits[:, -1], axis=-1)
  np.testing.assert_array_equal(sparse.tokens[:, 0], greedy)
  first_logprob = np.take_along_axis(jax.nn.log_softmax(logits[:, -1]), greedy[:, None], axis=-1)[:, 0]
  np.testing.assert_allclose(sparse.logprobs[:, 0], first_logprob, **F32)  # the prefill that wrote the cache
  assert np.isfinite(sparse.logprobs).all() and (np.asarray(sparse.lengths) == 2).all()


def test_sparse_config_must_cover_every_layer_and_head(small):
  config, _, inputs, _, params, _ = small
  wrong = SparseAttentionConfig.uniform({"pattern": "dense"}, 3, config.text.num_heads, block_q=16, block_kv=16)
  with pytest.raises(ValueError, match="`sparse_config` must have num_layers x num_heads = 2 x 4"):
    QwenVL(config, sparse_config=wrong).apply(params, *_model_args(inputs))


# ----------------------------------------------------------------------------- long video: (b) and (d)

FRAMES, GRID = 14, 12  # temporal patches x (GRID x GRID) patches -> 14 x 36 merged video tokens
TOKENS_PER_FRAME = GRID * GRID // 4
LONG_BLOCK = 32
PLANTED_SCALE = 4.0
_GRID = {"pattern": "grid", "params": {"strides": [TOKENS_PER_FRAME, 2 * TOKENS_PER_FRAME], "last_q": 64}}
LONG_HEADS = [  # three distinct head configs per layer (each distinct config costs a compile)
  [_GRID, _GRID,
   {"pattern": "a_shape", "params": {"n_init": 32, "n_local": 128}, "boundary": "q",
    "per_modality": {"1": {"pattern": "vertical_slash", "params": {"v_size": 32, "s_size": 64, "last_q": 64}}}},
   {"pattern": "vertical_slash", "params": {"v_size": 64, "s_size": 96, "last_q": 64}, "boundary": "2d"}],
  [{"pattern": "a_shape", "params": {"n_init": 32, "n_local": 96}},
   {"pattern": "vertical_slash", "params": {"v_size": 64, "s_size": 64, "last_q": 64}},
   {"pattern": "block_topk", "params": {"topk": 6}},
   {"pattern": "block_topk", "params": {"topk": 6}}],
]


@pytest.fixture(scope="module")
def long_video(small):
  """A 512-token prompt around a static 14-step video, the tiny model with a planted attention structure, the
  sparse model's logits, and the unrolled dense decoder's last-token logits with their VJP, all logits, and every
  layer's q/k/v.

  Near-static video: every temporal step repeats the same random patches (plus a little noise), so merged
  tokens one frame apart (TOKENS_PER_FRAME) carry nearly the same features. Planted weights: each query head's
  projection is PLANTED_SCALE times its kv head's key projection, so q_i . k_j is large for j = i and for tokens
  with i's content (the grid / slash lines a video head shows); a random init alone attends almost uniformly.
  """
  config, _, _, model, small_params, _ = small
  t = config.text
  rng = np.random.default_rng(0)
  patches = rng.standard_normal((GRID * GRID, 3 * 2 * 14 * 14))
  # Small per-frame noise: near-repeats, and no exact ties for the layout builders' top-k selections.
  frames = (patches + 0.1 * rng.standard_normal((FRAMES, *patches.shape))).reshape(-1, patches.shape[-1])
  ids = np.array([[5, 6, 7, tiny.VS, *[tiny.VID] * (FRAMES * TOKENS_PER_FRAME), tiny.VE, 20, 21, 22]])
  inputs = prepare_inputs(config, ids, pixel_values_videos=frames.astype(np.float32),
                          video_grid_thw=np.array([[FRAMES, GRID, GRID]]), second_per_grid_ts=np.array([1.0]))
  params = jax.tree.map(jnp.array, small_params)  # parameters do not depend on the input length
  attn = params["params"]["text"]["layers"]["block"]["attn"]
  groups = t.num_heads // t.num_kv_heads
  k_kernel = attn["k"]["kernel"].reshape(t.num_layers, -1, t.num_kv_heads, t.head_dim)
  attn["q"]["kernel"] = PLANTED_SCALE * jnp.repeat(k_kernel, groups, axis=2).reshape(attn["q"]["kernel"].shape)
  k_bias = attn["k"]["bias"].reshape(t.num_layers, t.num_kv_heads, t.head_dim)
  attn["q"]["bias"] = PLANTED_SCALE * jnp.repeat(k_bias, groups, axis=1).reshape(attn["q"]["bias"].shape)
  sparse_config = SparseAttentionConfig.from_layers(LONG_HEADS, block_q=LONG_BLOCK, block_kv=LONG_BLOCK)
  sparse_logits, _ = jax.jit(QwenVL(config, sparse_config=sparse_config).apply)(params, *_model_args(inputs))
  embeds, vjp, (dense_logits, captured) = _dense_pullback(model, params, inputs)
  return dict(inputs=inputs, model=model, params=params, sparse_config=sparse_config, embeds=embeds,
              sparse_logits=np.asarray(sparse_logits), dense_logits=np.asarray(dense_logits), vjp=vjp,
              qkv=[jnp.stack(x) for x in zip(*captured, strict=True)])


@functools.partial(jax.jit, static_argnums=0)
def _dense_pullback(model, params, inputs):
  """The unrolled dense decoder on `inputs`: (embeddings, VJP of the last token's logits w.r.t. additive
  perturbations of every layer's attention output, (all logits, per-layer (q, k, v)))."""
  t = model.config.text
  embeds = _input_embeddings(model, params, inputs)
  kv_mask = jnp.asarray(inputs.attention_mask, bool)
  dense_core = lambda layer, q, k, v: attention(q, k, v, causal=True, kv_mask=kv_mask)  # noqa: E731

  def last_logits(deltas):
    logits, captured = _unrolled_decoder(model, params, embeds, jnp.asarray(inputs.positions), dense_core, deltas)
    return logits[0, -1], (logits, captured)

  zeros = [jnp.zeros((*embeds.shape[:2], t.num_heads, t.head_dim), jnp.float32)] * t.num_layers
  _, vjp, aux = jax.vjp(last_logits, zeros, has_aux=True)
  return embeds, vjp, aux


@functools.partial(jax.jit, static_argnames="vocab")
def _first_order_bound(vjp, eps, vocab):
  """[V]: sum_l sum_{s, h, d} |J_l[v, s, h, d]| eps_l[s, h] for every vocabulary entry v (one VJP each)."""

  def one_logit(cotangent):
    (grads,) = vjp(cotangent)
    return sum(jnp.sum(jnp.abs(g) * e) for g, e in zip(grads, eps, strict=True))

  return jax.lax.map(one_logit, jnp.eye(vocab, dtype=jnp.float32), batch_size=64)


@pytest.mark.slow  # in CI after the suite (.ci/run): ~30 s with its fixture
def test_long_video_sparse_prefill_error_is_within_its_recall_bound(long_video):
  """On a long video, the sparse prefill's logits stay within the bound the config's recall promises.

  Bound. Take one attention row with dense probabilities p over the visible keys and a kept set K with recall
  r = sum_{t in K} p_t. Sparse attention renormalises over K: o' = sum_K p_t v_t / r, while o = sum_t p_t v_t, so

      o' - o = (1/r - 1) sum_K p_t v_t - sum_{t not in K} p_t v_t,   |o' - o| <= 2 (1 - r) max|v|   (per element).

  (1) Per layer this is exact: on each layer's dense attention inputs, every head h and real row s satisfy
      |o' - o| <= 2 (1 - r[l, h, s]) max|v[l, h]|, with r from float64 dense probabilities and the layouts built on
      the same inputs. Averaged over rows, the head's recall r[l, h] = mean_s r[l, h, s] (the search's score) gives
      mean_s max_d |o' - o| <= 2 (1 - r[l, h]) max|v[l, h]| <= 2 (1 - min_recall) max|v|, with min_recall the
      minimum of r[l, h] over layers and heads: the recall the config promises.
  (2) Logits. The sparse model is the dense one with perturbations delta_l (|delta_l[s, h]| <= eps[l, h, s] =
      2 (1 - r[l, h, s]) max|v[l, h]|) added to the attention outputs, so to first order the last token's logits
      move by sum_l J_l delta_l with J_l = d logits / d (attention output of layer l), and

          |logits' - logits|_v <= sum_l sum_{s, h, d} |J_l[v, s, h, d]| eps[l, h, s]            (first order),

      computed with one VJP per vocabulary entry through the unrolled dense decoder. Second-order terms and the
      sparse model's later layers seeing perturbed inputs (layouts rebuilt on them) are not covered; the
      measured error is far inside the bound (under 0.05 of it; the test prints the numbers).
  """
  inputs, model, sparse_config = long_video["inputs"], long_video["model"], long_video["sparse_config"]
  q, k, v = long_video["qkv"]
  kv_mask = jnp.asarray(inputs.attention_mask, bool)
  modality = modality_ids(inputs.input_ids, model.config)
  groups = q.shape[3] // k.shape[3]
  eps, head_recalls, densities = [], [], []
  for layer in range(q.shape[0]):
    layer_q, layer_k, layer_v = q[layer], k[layer], v[layer]
    mask = _layout_token_mask(layer_q, layer_k, layer_v, LONG_HEADS[layer], modality, kv_mask, LONG_BLOCK)
    densities.append((mask & np.tri(mask.shape[-1], dtype=bool)).mean() * 2)  # of the causal triangle (~ S^2 / 2)
    row_recall = np.minimum((_dense_probs(layer_q, layer_k, kv_mask) * mask).sum(-1), 1.0)  # [B, H, S]
    v_max = np.repeat(np.abs(np.asarray(layer_v)).max(axis=(1, 3)), groups, axis=1)  # [B, Hq]
    bound = (2 * (1 - row_recall) * v_max[..., None]).transpose(0, 2, 1)  # [B, S, Hq]
    sparse = attention(layer_q, layer_k, layer_v, causal=True, kv_mask=kv_mask, backend="sparse",
                       sparse_config=_layer(sparse_config, layer), modality_ids=modality)
    dense = attention(layer_q, layer_k, layer_v, causal=True, kv_mask=kv_mask)
    error = np.abs(np.asarray(sparse - dense)).max(-1)  # [B, S, Hq]
    assert (error <= bound + 1e-5).all(), f"layer {layer}: per-row bound broken by {np.max(error - bound)}"
    head_recall = row_recall.mean(-1)  # [B, Hq]
    assert (error.mean(1) <= 2 * (1 - head_recall) * v_max + 1e-5).all()
    head_recalls.append(head_recall)
    eps.append(jnp.asarray(bound[..., None], jnp.float32))
  min_recall, density = float(np.min(head_recalls)), float(np.mean(densities))
  assert 0.5 < min_recall < 0.99 and density < 0.7, (min_recall, density)  # a sparse config, not a dense one

  dense_logits, sparse_logits = long_video["dense_logits"], long_video["sparse_logits"]
  bound = np.asarray(_first_order_bound(long_video["vjp"], eps, vocab=dense_logits.shape[-1]))
  error = np.abs(sparse_logits[0, -1] - dense_logits[0, -1])
  ratio = float(np.max(error / bound))
  assert (error <= bound).all(), f"last-token logits error {error.max()} exceeds its first-order bound (ratio {ratio})"
  print(f"\nmin_recall {min_recall:.4f}, density {density:.3f}, last-token logits: max error {error.max():.4f}, "
        f"max bound {bound.max():.4f}, max error/bound {ratio:.4f}; all-token max error "
        f"{np.abs(sparse_logits - dense_logits).max():.4f}, logits scale {np.abs(dense_logits).max():.2f}")


def test_each_layer_runs_under_its_own_config(long_video):
  inputs, model, params = long_video["inputs"], long_video["model"], long_video["params"]
  sparse_config, sparse_logits = long_video["sparse_config"], long_video["sparse_logits"]
  kv_mask = jnp.asarray(inputs.attention_mask, bool)
  modality = modality_ids(inputs.input_ids, model.config)
  embeds, positions = long_video["embeds"], jnp.asarray(inputs.positions)

  def unrolled(layer_of):
    core = lambda layer, q, k, v: attention(q, k, v, causal=True, kv_mask=kv_mask, backend="sparse",  # noqa: E731
                                            sparse_config=_layer(sparse_config, layer_of[layer]),
                                            modality_ids=modality)
    return np.asarray(_unrolled_decoder(model, params, embeds, positions, core)[0])

  np.testing.assert_allclose(sparse_logits, unrolled([0, 1]), atol=1e-4, rtol=1e-5)
  assert np.abs(sparse_logits - unrolled([1, 0])).max() > 1e-2
