"""GPT-OSS decoder in Flax linen (OpenAI, gpt-oss model card, arXiv 2508.10925, Sec. 2), matching transformers
`models/gpt_oss/modeling_gpt_oss.py` (`GptOssModel`, `GptOssForCausalLM`) and the reference implementation
openai/gpt-oss `gpt_oss/torch/model.py`.

Per layer: `x += attn(rms(x)); x += moe(rms(x))` with
  * attention: GQA with q/k/v/o biases, rotate-half RoPE with YaRN scaling (`layers.yarn`), one learned sink logit
    per head in the softmax denominator, and a sliding window of 128 tokens on alternate layers (`layer_types`,
    sliding first), `layers.attention_sinks`;
  * MoE: a linear router with bias, top-k of its logits, softmax over those k logits only (softmax after top-k);
    every expert is `down(swiglu(gate_up(x) + b)) + b` with GPT-OSS's clamped SwiGLU
    `(clip(up, -l, l) + 1) * g * sigmoid(alpha g)`, `g = min(gate, l)`; gate and up are the even and odd columns
    of one fused `gate_up` projection (`clamped_swiglu`).
  * RMSNorm as `GptOssRMSNorm`: the weight multiplies the float32 normalised value before the cast back.

Blocks are scanned (`nn.scan`, params stacked on 'layers'); the per-layer window (0 for full layers) is a scanned
input, so one body serves both kinds. The scan also returns every layer's output, which is what text encoders
read (`GptOssTextEncoder`: Lens takes layers 5, 11, 17, 23 of GPT-OSS-20B, diffusers
`pipelines/lens/pipeline_lens.py`, `LensGptOssEncoder`).

MoE implementations (`moe_implementation`): 'ragged' sorts the (token, expert) pairs by expert and runs two
`jax.lax.ragged_dot` grouped matmuls (k of E experts' FLOPs); 'dense' runs every expert on every token and weights
the results (E / k times the FLOPs), the plain reference the tests compare 'ragged' against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxagents import layers
from jaxagents.layers.attention_sinks import attention_with_sinks
from jaxagents.layers.yarn import yarn_inv_freq
from jaxagents.models.text_encoders.interface import TextFeatures
from jaxagents.models.text_encoders.prompts import LENS_MAX_LENGTH, LENS_TXT_OFFSET, lens_token_ids

Dtype = Any
SLIDING, FULL = "sliding_attention", "full_attention"
MOE_IMPLEMENTATIONS = ("ragged", "dense")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class YarnScaling:
  """`rope_parameters` of `rope_type: yarn` (arXiv 2309.00071; see `jaxagents.layers.yarn`)."""

  factor: float
  original_max_position_embeddings: int
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  truncate: bool = True
  attention_factor: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None


@dataclasses.dataclass(frozen=True)
class GptOssConfig:
  """The fields of transformers' `GptOssConfig` that change the network (names shortened as in `qwen_vl`)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int  # per-expert hidden width I (gate_up has 2 I columns)
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  num_experts: int
  experts_per_token: int
  sliding_window: int | None = 128
  layer_types: tuple[str, ...] = ()  # () -> alternating, sliding first (transformers' default)
  rope_theta: float = 150_000.0
  rope_scaling: YarnScaling | None = None
  rms_norm_eps: float = 1e-5
  swiglu_alpha: float = 1.702
  swiglu_limit: float = 7.0
  attention_bias: bool = True
  tie_word_embeddings: bool = False
  # Not used by the network; kept so that `to_hf` writes back what `from_hf` read.
  max_position_embeddings: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if not self.layer_types:
      object.__setattr__(self, "layer_types", tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_layers)))
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if len(self.layer_types) != self.num_layers or any(t not in (SLIDING, FULL) for t in self.layer_types):
      raise ValueError(
        f"layer_types: expected {self.num_layers} entries of {SLIDING!r} / {FULL!r}, got {list(self.layer_types)}"
      )
    if SLIDING in self.layer_types and not (self.sliding_window and self.sliding_window > 0):
      raise ValueError(f"sliding_window: sliding layers need a positive window, got {self.sliding_window}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_key_value_heads: must divide num_attention_heads={self.num_heads}, got {self.num_kv_heads}"
      )
    if not 0 < self.experts_per_token <= self.num_experts:
      raise ValueError(
        f"num_experts_per_tok: must be in [1, num_local_experts={self.num_experts}], got {self.experts_per_token}"
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim: must be even (rotary pairs), got {self.head_dim}")

  @property
  def windows(self) -> np.ndarray:
    """Per-layer attention window: `sliding_window` on sliding layers, 0 (none) on full ones; int32 [L]."""
    return np.array([self.sliding_window if t == SLIDING else 0 for t in self.layer_types], np.int32)

  def rope_table(self) -> tuple[np.ndarray, float]:
    """(inv_freq float32 [head_dim // 2], attention factor multiplying cos and sin)."""
    if self.rope_scaling is None:
      return layers.rope_inv_freq(self.head_dim, self.rope_theta), 1.0
    s = self.rope_scaling
    return yarn_inv_freq(self.head_dim, self.rope_theta, s.factor, s.original_max_position_embeddings,
                         beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate,
                         attention_factor=s.attention_factor, mscale=s.mscale, mscale_all_dim=s.mscale_all_dim)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> GptOssConfig:
    """Reads a transformers `config.json` dict (5.x `rope_parameters`, or legacy `rope_scaling` + `rope_theta`)."""
    if hf.get("model_type", "gpt_oss") != "gpt_oss":
      raise ValueError(f"config model_type: expected 'gpt_oss', got {hf.get('model_type')!r}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 150_000.0)))
    if rope_type == "yarn":
      original = int(_required(rope, "original_max_position_embeddings", "rope_parameters"))
      # transformers: a missing factor is the ratio of the context lengths.
      factor = rope.get("factor") or _required(hf, "max_position_embeddings", "config") / original
      scaling = YarnScaling(
        factor=float(factor), original_max_position_embeddings=original,
        beta_fast=float(rope.get("beta_fast") or 32.0), beta_slow=float(rope.get("beta_slow") or 1.0),
        truncate=bool(rope.get("truncate", True)), attention_factor=rope.get("attention_factor"),
        mscale=rope.get("mscale"), mscale_all_dim=rope.get("mscale_all_dim"),
      )
    elif rope_type == "default":
      scaling = None
    else:
      raise ValueError(f"rope_parameters.rope_type: expected 'yarn' or 'default', got {rope_type!r}")
    num_heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    return cls(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"], num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
      num_experts=_required(hf, "num_local_experts", "config", "num_experts"),
      experts_per_token=_required(hf, "num_experts_per_tok", "config", "experts_per_token"),
      sliding_window=hf.get("sliding_window", 128), layer_types=tuple(hf.get("layer_types") or ()),
      rope_theta=theta, rope_scaling=scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
      swiglu_alpha=hf.get("swiglu_alpha", 1.702), swiglu_limit=hf.get("swiglu_limit", 7.0),
      attention_bias=hf.get("attention_bias", True), tie_word_embeddings=hf.get("tie_word_embeddings", False),
      max_position_embeddings=hf.get("max_position_embeddings"), bos_token_id=hf.get("bos_token_id"),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos, pad_token_id=hf.get("pad_token_id"),
    )

  def to_hf(self) -> dict[str, Any]:
    """The transformers config dict (`transformers.GptOssConfig(**d)`)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      s = self.rope_scaling
      rope.update(rope_type="yarn", factor=s.factor, beta_fast=s.beta_fast, beta_slow=s.beta_slow,
                  truncate=s.truncate, original_max_position_embeddings=s.original_max_position_embeddings)
      for name in ("attention_factor", "mscale", "mscale_all_dim"):
        if getattr(s, name) is not None:
          rope[name] = getattr(s, name)
    out = dict(
      model_type="gpt_oss", architectures=["GptOssForCausalLM"], vocab_size=self.vocab_size,
      hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
      num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
      num_local_experts=self.num_experts, num_experts_per_tok=self.experts_per_token,
      sliding_window=self.sliding_window, layer_types=list(self.layer_types), rope_parameters=rope,
      rms_norm_eps=self.rms_norm_eps, swiglu_alpha=self.swiglu_alpha, swiglu_limit=self.swiglu_limit,
      attention_bias=self.attention_bias, tie_word_embeddings=self.tie_word_embeddings,
    )
    for name in ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
      value = getattr(self, name)
      if value is not None:
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _required(hf: Mapping[str, Any], key: str, where: str, alias: str | None = None) -> Any:
  value = hf.get(key, hf.get(alias) if alias else None)
  if value is None:
    raise ValueError(f"{where} {key}: required, but the config has none")
  return value


# The released openai/gpt-oss-20b `config.json` (its hub file; 20.9B parameters, 3.6B active per token, model card
# arXiv 2508.10925, Table 1).
GPT_OSS_20B = dict(
  model_type="gpt_oss", vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
  num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
  sliding_window=128, rms_norm_eps=1e-5, swiglu_limit=7.0, attention_bias=True, tie_word_embeddings=False,
  max_position_embeddings=131072, eos_token_id=200002, pad_token_id=199999,
  rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                   "truncate": False, "original_max_position_embeddings": 4096},
)
PRESETS = {"gpt_oss_20b": GPT_OSS_20B}


def clamped_swiglu(gate_up: jax.Array, alpha: float, limit: float) -> jax.Array:
  """GPT-OSS's SwiGLU on the fused projection [..., 2 I] (gate = even columns, up = odd) -> [..., I].

  `(clip(up, -limit, limit) + 1) * g * sigmoid(alpha * g)` with `g = min(gate, limit)` (openai/gpt-oss
  `gpt_oss/torch/model.py`, `swiglu`; transformers `GptOssExperts._apply_gate`).
  """
  gate, up = gate_up[..., ::2], gate_up[..., 1::2]
  gate = jnp.minimum(gate, limit)
  up = jnp.clip(up, -limit, limit)
  return (up + 1) * (gate * jax.nn.sigmoid(alpha * gate))


def _rms_norm(config: GptOssConfig, name: str) -> nn.Module:
  # Weights stay float32 in every model dtype (transformers `_keep_in_fp32_modules`).
  return layers.RMSNorm(eps=config.rms_norm_eps, dtype=jnp.float32, name=name)


def _apply_norm(norm: nn.Module, x: jax.Array) -> jax.Array:
  """`GptOssRMSNorm`: weight * float32 normalised x, then cast to x's dtype."""
  return norm(x.astype(jnp.float32)).astype(x.dtype)


class GptOssAttention(nn.Module):
  """q/k/v/o with biases, YaRN RoPE, per-head sinks ('sinks' [Hq]), optional sliding window."""

  config: GptOssConfig
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, angles, window, kv_mask, positions):
    """x [B, T, E]; angles [B|1, T, D/2]; window: traced int (0: full); kv_mask [B, T] bool; positions [B|1, T]."""
    c = self.config
    _, attention_factor = c.rope_table()
    batch, length, embed = x.shape
    kw = dict(use_bias=c.attention_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    q = layers.Dense(c.num_heads * c.head_dim, axes=("embed", "heads"), name="q", **kw)(x)
    k = layers.Dense(c.num_kv_heads * c.head_dim, axes=("embed", "kv_heads"), name="k", **kw)(x)
    v = layers.Dense(c.num_kv_heads * c.head_dim, axes=("embed", "kv_heads"), name="v", **kw)(x)
    q = q.reshape(batch, length, c.num_heads, c.head_dim)
    k = k.reshape(batch, length, c.num_kv_heads, c.head_dim)
    v = v.reshape(batch, length, c.num_kv_heads, c.head_dim)
    # transformers multiplies cos and sin by the YaRN factor; scaling the rotated q and k is the same product.
    q = layers.apply_rope(q, angles, style="half")
    k = layers.apply_rope(k, angles, style="half")
    if attention_factor != 1.0:
      q, k = q * jnp.asarray(attention_factor, q.dtype), k * jnp.asarray(attention_factor, k.dtype)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    sinks = self.param("sinks", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("heads",)),
                       (c.num_heads,), self.param_dtype)
    out = attention_with_sinks(q, k, v.astype(q.dtype), sinks, causal=True, sliding_window=window, kv_mask=kv_mask,
                               q_positions=positions, kv_positions=positions)
    out = out.reshape(batch, length, c.num_heads * c.head_dim)
    return layers.Dense(embed, axes=("heads", "embed"), name="o", **kw)(out)


class GptOssMoE(nn.Module):
  """Top-k routed experts with the clamped SwiGLU.

  Params: 'router' (Dense [E, num_experts] with bias), 'gate_up' [num_experts, E, 2 I] (gate/up interleaved as
  in the checkpoint), 'gate_up_bias' [num_experts, 2 I], 'down' [num_experts, I, E], 'down_bias'
  [num_experts, E]; logical axes ('experts', 'embed', 'mlp').
  """

  config: GptOssConfig
  implementation: str = "ragged"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, E] -> [B, T, E]."""
    c = self.config
    if self.implementation not in MOE_IMPLEMENTATIONS:
      raise ValueError(f"GptOssMoE: `implementation` must be one of {MOE_IMPLEMENTATIONS}, got {self.implementation!r}")
    batch, length, embed = x.shape
    init = nn.initializers.normal(0.02)

    def param(name, shape, axes):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    gate_up = param("gate_up", (c.num_experts, embed, 2 * c.intermediate_size), ("experts", "embed", "mlp"))
    gate_up_bias = param("gate_up_bias", (c.num_experts, 2 * c.intermediate_size), ("experts", "mlp"))
    down = param("down", (c.num_experts, c.intermediate_size, embed), ("experts", "mlp", "embed"))
    down_bias = param("down_bias", (c.num_experts, embed), ("experts", "embed"))
    logits = layers.Dense(c.num_experts, axes=("embed", None), use_bias=True, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="router")(x)
    top_logits, top_experts = jax.lax.top_k(logits, c.experts_per_token)  # [B, T, k], sorted as torch.topk
    weights = jax.nn.softmax(top_logits, axis=-1)  # softmax over the k chosen logits only
    tokens = x.reshape(batch * length, embed)
    gate_up, gate_up_bias, down, down_bias, tokens = nn.dtypes.promote_dtype(
      gate_up, gate_up_bias, down, down_bias, tokens, dtype=self.dtype)
    experts = top_experts.reshape(-1, c.experts_per_token)
    weights = weights.reshape(-1, c.experts_per_token).astype(tokens.dtype)
    run = _experts_ragged if self.implementation == "ragged" else _experts_dense
    out = run(tokens, experts, weights, gate_up, gate_up_bias, down, down_bias, c)
    return out.reshape(batch, length, embed).astype(x.dtype)


def _experts_dense(tokens, experts, weights, gate_up, gate_up_bias, down, down_bias, c: GptOssConfig):
  """Every expert on every token, combined with the routing weights (zero for unchosen experts)."""
  combine = jnp.zeros((tokens.shape[0], c.num_experts), weights.dtype)
  combine = combine.at[jnp.arange(tokens.shape[0])[:, None], experts].set(weights)
  hidden = jnp.einsum("nd,edf->nef", tokens, gate_up, preferred_element_type=jnp.float32).astype(tokens.dtype)
  hidden = clamped_swiglu(hidden + gate_up_bias, c.swiglu_alpha, c.swiglu_limit)
  out = jnp.einsum("nei,eid->ned", hidden, down, preferred_element_type=jnp.float32).astype(tokens.dtype)
  return jnp.einsum("ned,ne->nd", out + down_bias, combine)


def _experts_ragged(tokens, experts, weights, gate_up, gate_up_bias, down, down_bias, c: GptOssConfig):
  """(token, expert) pairs sorted by expert, two grouped matmuls (`jax.lax.ragged_dot`), scattered back."""
  num_tokens, k = experts.shape
  flat_experts = experts.reshape(-1)
  order = jnp.argsort(flat_experts, stable=True)
  sorted_experts = flat_experts[order]
  source = order // k  # the token of each sorted pair
  group_sizes = jnp.bincount(flat_experts, length=c.num_experts).astype(jnp.int32)
  hidden = jax.lax.ragged_dot(tokens[source], gate_up, group_sizes, preferred_element_type=jnp.float32)
  hidden = clamped_swiglu(hidden.astype(tokens.dtype) + gate_up_bias[sorted_experts], c.swiglu_alpha, c.swiglu_limit)
  out = jax.lax.ragged_dot(hidden, down, group_sizes, preferred_element_type=jnp.float32).astype(tokens.dtype)
  out = (out + down_bias[sorted_experts]) * weights.reshape(-1)[order][:, None]
  return jnp.zeros_like(tokens).at[source].add(out)


class GptOssLayer(nn.Module):
  """One decoder layer in `nn.scan` form: returns (x, x) so the scan also stacks every layer's output."""

  config: GptOssConfig
  moe_implementation: str = "ragged"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, window, angles, kv_mask, positions):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, _TOKENS)
    h = _apply_norm(_rms_norm(c, "attn_norm"), x)
    x = x + GptOssAttention(c, name="attn", **kw)(h, angles, window, kv_mask, positions).astype(x.dtype)
    h = _apply_norm(_rms_norm(c, "mlp_norm"), x)
    x = x + GptOssMoE(c, self.moe_implementation, name="moe", **kw)(h).astype(x.dtype)
    x = nn.with_logical_constraint(x, _TOKENS)
    return x, x


class GptOss(nn.Module):
  """GPT-OSS: 'embed', scanned 'layers', 'final_norm' and, unless tied, 'lm_head'.

  `__call__(ids, kv_mask=None, positions=None, logits=False)` returns a dict:
    'embeddings' [B, T, E], 'layer_outputs' [L, B, T, E] (each decoder layer's output, before the final norm),
    'last_hidden_state' [B, T, E] (final-normed), and 'logits' [B, T, V] when `logits=True`.
  transformers' `output_hidden_states` tuple is `(embeddings, *layer_outputs[:-1], last_hidden_state)`.
  """

  config: GptOssConfig
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  moe_implementation: str = "ragged"
  remat: str = "none"

  def setup(self):
    c = self.config
    self.embed = layers.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype)
    self.layers = nn.scan(
      layers.remat(GptOssLayer, self.remat),
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=c.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.moe_implementation, self.dtype, self.param_dtype)
    self.final_norm = _rms_norm(c, "final_norm")
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense(c.vocab_size, axes=("embed", "vocab"), dtype=self.dtype,
                                  param_dtype=self.param_dtype)

  def __call__(
    self,
    ids: jax.Array,
    kv_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    logits: bool = False,
  ) -> dict[str, jax.Array]:
    """ids [B, T] int; kv_mask [B, T] bool (False at padding; default all True); positions [T] or [B, T] int
    (default `arange(T)`, as transformers without a cache, whatever the padding)."""
    c = self.config
    if ids.ndim != 2:
      raise ValueError(f"GptOss: `ids` must have shape [B, T], got {ids.shape}")
    batch, length = ids.shape
    if kv_mask is None:
      kv_mask = jnp.ones((batch, length), bool)
    if kv_mask.shape != (batch, length):
      raise ValueError(f"GptOss: `kv_mask` must have shape [B, T] = {(batch, length)}, got {kv_mask.shape}")
    positions = jnp.arange(length) if positions is None else jnp.asarray(positions)
    positions = positions.reshape(-1, length)
    inv_freq, _ = c.rope_table()
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B|1, T, D/2]
    embeddings = nn.with_logical_constraint(self.embed(ids), _TOKENS)
    x, outputs = self.layers(embeddings, jnp.asarray(c.windows), angles, kv_mask.astype(bool), positions)
    out = {"embeddings": embeddings, "layer_outputs": outputs, "last_hidden_state": _apply_norm(self.final_norm, x)}
    if logits or self.is_initializing():  # init always creates the LM head's params
      last = out["last_hidden_state"]
      out["logits"] = self.embed.attend(last) if c.tie_word_embeddings else self.lm_head(last)
    return out


def param_count(config: GptOssConfig) -> int:
  """Number of parameters of `GptOss(config)`, from `jax.eval_shape` (nothing allocated)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: GptOss(config).init(jax.random.key(0), ids, logits=True))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


class GptOssTextEncoder:
  """Lens's text encoder: Harmony-wrapped prompts through GPT-OSS, hidden states of `layer_indices` (decoder
  layer outputs, 0-based, before the final norm), the first `offset` tokens dropped (diffusers
  `pipelines/lens/pipeline_lens.py`, `LensGptOssEncoder.forward` and `LensPipeline._get_text_embeddings`).

  `encode(prompts)` returns `TextFeatures` with one [B, T - offset, E] array per selected layer and the mask.
  `pad_to_multiple` right-pads the token batch further (extra masked tokens change no valid feature, and fewer
  distinct lengths mean fewer compilations); None pads to the longest prompt, as the pipeline does. Every layer
  runs (the pipeline stops after the last selected one, which for Lens's layer 23 of 24 is the same work).
  """

  def __init__(
    self,
    tokenizer,
    config: GptOssConfig,
    params,
    *,
    layer_indices: Sequence[int] = (5, 11, 17, 23),
    offset: int | None = None,
    max_length: int = LENS_MAX_LENGTH,
    pad_to_multiple: int | None = None,
    dtype: Dtype | None = None,
    moe_implementation: str = "ragged",
  ):
    layer_indices = tuple(int(i) for i in layer_indices)
    if not layer_indices or len(set(layer_indices)) != len(layer_indices) or not all(
      0 <= i < config.num_layers for i in layer_indices
    ):
      raise ValueError(
        f"GptOssTextEncoder: `layer_indices` must be distinct layers in [0, {config.num_layers}), got "
        f"{list(layer_indices)}"
      )
    self.tokenizer = tokenizer
    self.config = config
    self.params = params
    self.layer_indices = layer_indices
    self.offset = LENS_TXT_OFFSET if offset is None else int(offset)
    self.max_length = max_length
    self.pad_to_multiple = pad_to_multiple
    model = GptOss(config, dtype=dtype, moe_implementation=moe_implementation)
    selected = jnp.asarray(layer_indices)

    def hidden(params, ids, mask):
      out = model.apply({"params": params}, ids, mask)
      return out["layer_outputs"][selected]

    self._hidden = jax.jit(hidden)

  def encode(self, prompts: Sequence[str]) -> TextFeatures:
    """prompts -> `TextFeatures` (hidden: one [B, T', E] per selected layer; mask [B, T'] bool)."""
    ids, mask = lens_token_ids(self.tokenizer, prompts, max_length=self.max_length,
                               pad_to_multiple=self.pad_to_multiple)
    stacked = self._hidden(self.params, jnp.asarray(ids), jnp.asarray(mask, bool))  # [L, B, T, E]
    features = TextFeatures.create(tuple(stacked), jnp.asarray(mask, bool))
    return features.drop_prefix(self.offset)
