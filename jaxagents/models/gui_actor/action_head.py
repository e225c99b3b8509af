"""GUI-Actor's attention-based action head and its spatial-aware multi-patch loss (Wu et al. 2025, arXiv 2506.03143,
Fig. 2), following microsoft/GUI-Actor `src/gui_actor/modeling_qwen25vl.py` (and the identical `modeling.py` for
Qwen2-VL), class `VisionHead_MultiPatch`, and the pointer branch of
`Qwen2_5_VLForConditionalGenerationWithPointer.forward`.

With V [N, d] the visual embeddings of a sample (the vision merger's outputs, i.e. the LLM *input* embeddings at the
`<|image_pad|>` positions, not last-layer states there) and Q [K, d] the last-layer states at the K `<ACTOR>` tokens
(`<|pointer_pad|>` in their code):

    Ṽ = LayerNorm(V + Dropout(MHA_8(V, V, V)))           # post-norm, eps 1e-5, no mask, no positions
    E = Lin_2(GELU(Lin_1(Ṽ)));   D = Lin_4(GELU(Lin_3(Q)))  # `projection_enc`, `projection_dec`; exact (erf) GELU
    Z = D Eᵀ / √d  [K, N];       A = softmax_N(Z)           # scaled by the model width d, not by a head width

and the loss of one sample against binary patch labels y [K, N] (`labels.multi_patch_labels`, one row per pointer) is
`F.kl_div(log_softmax(Z), t, reduction='batchmean')` with t = y / (Σ_n y + 1e-8):

    L = (1/K) Σ_k Σ_n t_kn (log t_kn − log A_kn),

averaged over the samples of the batch; a sample without pointer tokens contributes 0 and still counts in the mean
(their "dummy target" with loss × 0).

Released weights. `Qwen2_5_VLForConditionalGenerationWithPointer` builds `VisionHead_MultiPatch(hidden_size,
hidden_size)` as `multi_patch_pointer_head`, so p = d; with d the backbone's hidden size (1536 Qwen2-VL-2B,
2048 Qwen2.5-VL-3B, 3584 the 7B models) the head has 8d² + 10d parameters. Keys (torch shapes) -> ours:

    multi_patch_pointer_head.self_attention.in_proj_weight   [3d, d]  -> self_attention/in_proj/kernel  [d, 3d]  (T)
    multi_patch_pointer_head.self_attention.in_proj_bias     [3d]     -> self_attention/in_proj/bias    [3d]
    multi_patch_pointer_head.self_attention.out_proj.weight  [d, d]   -> self_attention/out_proj/kernel [d, d]   (T)
    multi_patch_pointer_head.self_attention.out_proj.bias    [d]      -> self_attention/out_proj/bias   [d]
    multi_patch_pointer_head.layer_norm.weight               [d]      -> layer_norm/scale               [d]
    multi_patch_pointer_head.layer_norm.bias                 [d]      -> layer_norm/bias                [d]
    multi_patch_pointer_head.projection_enc.0.weight         [p, d]   -> projection_enc/fc1/kernel      [d, p]   (T)
    multi_patch_pointer_head.projection_enc.0.bias           [p]      -> projection_enc/fc1/bias        [p]
    multi_patch_pointer_head.projection_enc.2.weight         [d, p]   -> projection_enc/fc2/kernel      [p, d]   (T)
    multi_patch_pointer_head.projection_enc.2.bias           [d]      -> projection_enc/fc2/bias        [d]
    multi_patch_pointer_head.projection_dec.{0,2}.*          (as projection_enc)

`RELEASED_KEYS` holds this table and `released_key_shapes` the torch shapes, for a converter.

Ours, not theirs: the batch. Their forward loops over samples because N and K vary; here samples are padded to
[B, N_max] / [B, K_max] with `visual_mask` / `query_mask`, padded keys are masked out of the self-attention and of
the patch softmax, and padded queries out of the loss, so every real row equals their unpadded per-sample result.
Several images of one sample are simply concatenated along N, as their code does (it takes every `<|image_pad|>` of
the sample); their labels and inference assume one image per sample.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jaxagents import layers
from jaxagents.layers.linear import Dense

Dtype = Any

# Their target normalisation: t = y / (Σ y + 1e-8).
LABEL_EPSILON = 1e-8

# (their key after `multi_patch_pointer_head.`, our param path, transpose) -- torch Linear weights are [out, in].
RELEASED_KEYS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
  ("self_attention.in_proj_weight", ("self_attention", "in_proj", "kernel"), True),
  ("self_attention.in_proj_bias", ("self_attention", "in_proj", "bias"), False),
  ("self_attention.out_proj.weight", ("self_attention", "out_proj", "kernel"), True),
  ("self_attention.out_proj.bias", ("self_attention", "out_proj", "bias"), False),
  ("layer_norm.weight", ("layer_norm", "scale"), False),
  ("layer_norm.bias", ("layer_norm", "bias"), False),
  *(
    (f"projection_{side}.{index}.{kind}", (f"projection_{side}", layer, "kernel" if kind == "weight" else "bias"),
     kind == "weight")
    for side in ("enc", "dec") for index, layer in ((0, "fc1"), (2, "fc2")) for kind in ("weight", "bias")
  ),
)
RELEASED_PREFIX = "multi_patch_pointer_head."


def released_key_shapes(d_model: int, projection_dim: int | None = None) -> dict[str, tuple[int, ...]]:
  """The torch shape of every released head key (with `RELEASED_PREFIX`), for width d and projection width p
  (default d, as the released models use)."""
  d, p = d_model, projection_dim or d_model
  shapes = {
    "self_attention.in_proj_weight": (3 * d, d),
    "self_attention.in_proj_bias": (3 * d,),
    "self_attention.out_proj.weight": (d, d),
    "self_attention.out_proj.bias": (d,),
    "layer_norm.weight": (d,),
    "layer_norm.bias": (d,),
  }
  for side in ("enc", "dec"):
    shapes |= {f"projection_{side}.0.weight": (p, d), f"projection_{side}.0.bias": (p,),
               f"projection_{side}.2.weight": (d, p), f"projection_{side}.2.bias": (d,)}
  return {RELEASED_PREFIX + key: shape for key, shape in shapes.items()}


class PatchSelfAttention(nn.Module):
  """torch `nn.MultiheadAttention(d, num_heads, dropout, batch_first=True)` as self-attention over the patches of
  each sample: one fused input projection `in_proj` [d, 3d] (q, k, v in that order, as torch's `in_proj_weight`
  rows), per-head scale 1/√(d/H), dropout on the attention probabilities, `out_proj` [d, d].

  Written out here rather than through `layers.attention` because that function has no dropout on the
  probabilities, which torch applies in training.
  """

  num_heads: int = 8
  dropout_rate: float = 0.1
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None, deterministic: bool) -> jax.Array:
    """x: [B, N, d]; key_mask: [B, N] bool (False = padding) or None -> [B, N, d]."""
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"PatchSelfAttention: width {width} must be divisible by num_heads={self.num_heads}")
    head_dim = width // self.num_heads
    qkv = Dense(3 * width, axes=("embed", "heads"), use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.num_heads, head_dim), 3, axis=2)
    scores = jnp.einsum("bshd,bthd->bhst", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(head_dim)
    if key_mask is not None:
      scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(self.dropout_rate, broadcast_dims=())(probs, deterministic=deterministic)
    out = jnp.einsum("bhst,bthd->bshd", probs.astype(v.dtype), v).reshape(batch, length, width)
    return Dense(width, axes=("heads", "embed"), use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="out_proj")(out)


class ActionHead(nn.Module):
  """`VisionHead_MultiPatch`: patch logits Z [B, K, N] of K pointer queries over N visual tokens (module docstring).

  Submodules: 'self_attention' (`PatchSelfAttention`), 'layer_norm', 'projection_enc' and 'projection_dec' (each a
  `layers.MLP` d -> p -> d, 'fc1'/'fc2' = torch's Sequential indices 0/2).

  Attributes:
    projection_dim: hidden width p of both projections; None = d (the released heads).
    num_heads: heads of the patch self-attention (8 in their code).
    dropout_rate: on the self-attention probabilities and on its output (0.1 in their code); active only when
      `deterministic=False` (needs a 'dropout' rng).
    layer_norm_eps: torch `nn.LayerNorm`'s default 1e-5.
    dtype / param_dtype: compute and storage dtypes; logits are float32.
  """

  projection_dim: int | None = None
  num_heads: int = 8
  dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    visual_embeds: jax.Array,
    query_states: jax.Array,
    visual_mask: jax.Array | None = None,
    *,
    deterministic: bool = True,
  ) -> jax.Array:
    """Patch logits.

    Args:
      visual_embeds: [B, N, d] vision-merger outputs of each sample's images, concatenated, padded to N.
      query_states: [B, K, d] last-layer hidden states at the `<ACTOR>` tokens, padded to K.
      visual_mask: [B, N] bool, False at padding patches; None = no padding.
      deterministic: no dropout (inference, or training without their dropout).
    Returns:
      logits Z [B, K, N] float32; padding patches hold `finfo(float32).min`, so `jax.nn.softmax(Z)` is the
      attention A with exact zeros there.
    """
    if visual_embeds.ndim != 3 or query_states.ndim != 3 or query_states.shape[::2] != visual_embeds.shape[::2]:
      raise ValueError(f"ActionHead: expected visual_embeds [B, N, d] and query_states [B, K, d], got "
                       f"{visual_embeds.shape} and {query_states.shape}")
    if visual_mask is not None and visual_mask.shape != visual_embeds.shape[:2]:
      raise ValueError(f"ActionHead: visual_mask: expected [B, N] = {visual_embeds.shape[:2]}, got "
                       f"{visual_mask.shape}")
    width = visual_embeds.shape[-1]
    projection_dim = self.projection_dim or width
    attended = PatchSelfAttention(self.num_heads, self.dropout_rate, self.dtype, self.param_dtype,
                                  name="self_attention")(visual_embeds, visual_mask, deterministic)
    attended = nn.Dropout(self.dropout_rate, broadcast_dims=())(attended, deterministic=deterministic)
    context = layers.LayerNorm(eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="layer_norm")(visual_embeds + attended)

    def projection(name: str) -> layers.MLP:
      return layers.MLP(projection_dim, activation="gelu", use_bias=True, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)

    encoded = projection("projection_enc")(context)
    decoded = projection("projection_dec")(query_states)
    logits = jnp.einsum("bkd,bnd->bkn", decoded, encoded, preferred_element_type=jnp.float32) / jnp.sqrt(width)
    if visual_mask is not None:
      logits = jnp.where(visual_mask[:, None, :], logits, jnp.finfo(jnp.float32).min)
    return logits


def patch_attention(logits: jax.Array) -> jax.Array:
  """A = softmax over patches of `ActionHead` logits [..., N] (their `attn_weights`, the pointer scores)."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def multi_patch_loss(
  logits: jax.Array,
  labels: jax.Array,
  visual_mask: jax.Array | None = None,
  query_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Their pointer loss: per sample `F.kl_div(log_softmax(Z), y / (Σ y + 1e-8), reduction='batchmean')`, then the
  mean over samples (module docstring).

  Args:
    logits: [B, K, N] from `ActionHead`.
    labels: [B, K, N] binary (or nonnegative) patch labels, one row per pointer (`labels.multi_patch_labels`).
    visual_mask: [B, N] bool, False at padding patches (their labels are zeroed there); None = none.
    query_mask: [B, K] bool, False at padding pointers; None = all real. A sample with no real pointer adds 0 but
      counts in the mean over B, as their dummy target does.
  Returns:
    (loss scalar float32, metrics: 'per_sample_loss' [B], 'label_mass' [B] = mean over real pointers of the
    attention mass on the labelled patches).
  """
  if logits.ndim != 3 or labels.shape != logits.shape:
    raise ValueError(f"multi_patch_loss: expected logits and labels [B, K, N] alike, got {logits.shape} and "
                     f"{labels.shape}")
  batch, num_queries, num_patches = logits.shape
  if visual_mask is None:
    visual_mask = jnp.ones((batch, num_patches), bool)
  if query_mask is None:
    query_mask = jnp.ones((batch, num_queries), bool)
  if visual_mask.shape != (batch, num_patches) or query_mask.shape != (batch, num_queries):
    raise ValueError(f"multi_patch_loss: expected visual_mask [B, N] = {(batch, num_patches)} and query_mask [B, K] "
                     f"= {(batch, num_queries)}, got {visual_mask.shape} and {query_mask.shape}")
  labels = jnp.where(visual_mask[:, None, :], labels.astype(jnp.float32), 0.0)
  target = labels / (labels.sum(axis=-1, keepdims=True) + LABEL_EPSILON)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # torch's kl_div: target * (log target - input), taken as 0 where target == 0.
  per_query = jnp.sum(xlogy(target, target) - target * log_probs, axis=-1)
  real = query_mask.astype(jnp.float32)
  count = real.sum(axis=-1)
  per_sample = jnp.sum(per_query * real, axis=-1) / jnp.maximum(count, 1.0)
  mass = jnp.sum(jnp.exp(log_probs) * (labels > 0), axis=-1)
  label_mass = jnp.sum(mass * real, axis=-1) / jnp.maximum(count, 1.0)
  return per_sample.mean(), {"per_sample_loss": per_sample, "label_mass": label_mass}
