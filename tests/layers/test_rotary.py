"""Rotary embeddings: algebraic properties, hand-built M-RoPE slot tables, and parity with HF transformers
(Llama `apply_rotary_pos_emb`, Qwen2-VL / Qwen3-VL M-RoPE, Qwen2-VL vision RoPE) when torch is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.rotary import (
  apply_rope,
  mrope_angles,
  mrope_slot_axes,
  rope_angles,
  rope_inv_freq,
  vision_rope_2d_angles,
)

_STYLES = ["half", "interleaved"]


def _x(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_inv_freq_is_theta_to_the_minus_2j_over_d():
  expected = 10000.0 ** (-np.arange(0, 16, 2) / 16)
  np.testing.assert_allclose(rope_inv_freq(16, 10000.0), expected, rtol=1e-7)
  assert rope_inv_freq(16, 10000.0).dtype == np.float32
  with pytest.raises(ValueError, match="head_dim"):
    rope_inv_freq(15, 10000.0)


@pytest.mark.parametrize("style", _STYLES)
def test_apply_rope_preserves_the_norm_of_every_head(style):
  x = _x((2, 6, 3, 16))
  angles = rope_angles(np.arange(6)[None] * 7 + np.arange(2)[:, None], 16, 10000.0)
  out = apply_rope(x, angles, style=style)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("style", _STYLES)
def test_rotated_dot_product_depends_only_on_relative_position(style):
  q, k = _x((1, 1, 1, 16), 1), _x((1, 1, 1, 16), 2)

  def score(m, n):
    qm = apply_rope(q, rope_angles(np.array([[m]]), 16, 100.0), style=style)
    kn = apply_rope(k, rope_angles(np.array([[n]]), 16, 100.0), style=style)
    return float(jnp.sum(qm * kn))

  np.testing.assert_allclose(score(7, 3), score(11, 7), rtol=1e-4)
  np.testing.assert_allclose(score(2, 9), score(30, 37), rtol=1e-4)
  assert abs(score(7, 3) - score(3, 7)) > 1e-3  # not symmetric: the property is not vacuous


def test_interleaved_style_is_half_style_on_a_permuted_head_dim():
  x = _x((2, 5, 3, 8))
  angles = rope_angles(np.arange(5)[None].repeat(2, 0), 8, 10000.0)
  to_half = np.concatenate([np.arange(0, 8, 2), np.arange(1, 8, 2)])  # (x0, x2, x4, x6, x1, x3, x5, x7)
  half = apply_rope(x[..., to_half], angles, style="half")
  interleaved = apply_rope(x, angles, style="interleaved")
  np.testing.assert_allclose(np.asarray(interleaved)[..., to_half], half, rtol=1e-6, atol=1e-6)


def test_apply_rope_rotates_slot_j_by_its_angle():
  x = np.zeros((1, 1, 1, 4), np.float32)
  x[..., 0] = 1.0  # unit vector in the first dim of pair j = 0
  angles = np.array([[[0.3, 0.0]]], np.float32)
  np.testing.assert_allclose(
    apply_rope(x, angles, "half")[0, 0, 0], [np.cos(0.3), 0, np.sin(0.3), 0], atol=1e-7
  )
  expected = [np.cos(0.3), np.sin(0.3), 0, 0]
  np.testing.assert_allclose(apply_rope(x, angles, "interleaved")[0, 0, 0], expected, atol=1e-7)


def test_apply_rope_dtype_semantics():
  x = jnp.asarray(_x((1, 4, 2, 8)), jnp.bfloat16)
  angles = rope_angles(np.arange(4)[None] * 1000, 8, 10000.0)
  text = apply_rope(x, angles)
  vision = apply_rope(x, angles, compute_dtype=jnp.float32)
  assert text.dtype == vision.dtype == jnp.bfloat16
  # Vision semantics rotate in fp32 then round once.
  exact = apply_rope(x.astype(jnp.float32), angles).astype(jnp.bfloat16)
  np.testing.assert_array_equal(vision, exact)
  with pytest.raises(ValueError, match="style"):
    apply_rope(x, angles, style="neox")
  with pytest.raises(ValueError, match="angles"):
    apply_rope(x, angles[..., :3])


def test_mrope_chunked_slot_axes_match_hand_table():
  np.testing.assert_array_equal(mrope_slot_axes([2, 3, 3], interleaved=False), [0, 0, 1, 1, 1, 2, 2, 2])
  # More than three axes, and an empty section.
  np.testing.assert_array_equal(mrope_slot_axes([1, 0, 2, 1], interleaved=False), [0, 2, 2, 3])


def test_mrope_interleaved_slot_axes_match_hand_table():
  # T H W T H W T H T ... for sections [4, 2, 2] (sum 8): H at j%3==1, j<6; W at j%3==2, j<6.
  np.testing.assert_array_equal(mrope_slot_axes([4, 2, 2], interleaved=True), [0, 1, 2, 0, 1, 2, 0, 0])
  np.testing.assert_array_equal(mrope_slot_axes([3, 2, 1], interleaved=True), [0, 1, 2, 0, 1, 0])
  qwen3 = mrope_slot_axes([24, 20, 20], interleaved=True)
  assert np.bincount(qwen3).tolist() == [24, 20, 20]
  assert qwen3[:6].tolist() == [0, 1, 2, 0, 1, 2] and qwen3[57:].tolist() == [0, 1, 2, 0, 0, 0, 0]


@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_angles_take_each_slot_from_its_axis(interleaved):
  sections = [4, 2, 2]
  positions = np.random.default_rng(0).integers(0, 50, size=(3, 2, 5))
  angles = np.asarray(mrope_angles(positions, 16, 10000.0, sections, interleaved))
  inv_freq = rope_inv_freq(16, 10000.0)
  axes = mrope_slot_axes(sections, interleaved)
  assert angles.shape == (2, 5, 8)
  for j in range(8):
    np.testing.assert_array_equal(angles[..., j], positions[axes[j]].astype(np.float32) * inv_freq[j])


@pytest.mark.parametrize("interleaved", [False, True])
def test_text_only_mrope_equals_1d_rope(interleaved):
  positions = np.arange(7)[None].repeat(2, 0) + np.array([[0], [3]])
  angles = mrope_angles(np.stack([positions] * 3), 32, 1e6, [4, 6, 6], interleaved)
  np.testing.assert_array_equal(angles, rope_angles(positions, 32, 1e6))


def test_mrope_generalises_to_four_axes_chunked():
  positions = np.arange(4 * 1 * 3).reshape(4, 1, 3)
  angles = np.asarray(mrope_angles(positions, 12, 100.0, [1, 2, 2, 1]))
  inv_freq = rope_inv_freq(12, 100.0)
  for j, axis in enumerate([0, 1, 1, 2, 2, 3]):
    np.testing.assert_array_equal(angles[0, :, j], positions[axis, 0].astype(np.float32) * inv_freq[j])


def test_mrope_validates_sections_and_positions():
  with pytest.raises(ValueError, match="`sections` must sum to head_dim // 2 = 8"):
    mrope_angles(np.zeros((3, 1, 4), np.int32), 16, 1e4, [4, 2, 3])
  with pytest.raises(ValueError, match="`positions`"):
    mrope_angles(np.zeros((2, 1, 4), np.int32), 16, 1e4, [4, 2, 2])


def test_vision_2d_angles_match_hand_formula():
  hw = np.array([[0, 0], [1, 2], [3, 1], [5, 7]])
  head_dim, theta = 16, 10000.0
  f = theta ** (-2 * np.arange(head_dim // 4) / (head_dim / 2))
  expected = np.concatenate([hw[:, :1] * f, hw[:, 1:] * f], axis=-1)
  angles = vision_rope_2d_angles(hw, head_dim, theta)
  assert angles.shape == (4, head_dim // 2)
  np.testing.assert_allclose(angles, expected, rtol=1e-6)


def test_rope_functions_work_under_jit():
  positions = jnp.arange(6)[None]
  jitted = jax.jit(lambda p: mrope_angles(jnp.stack([p] * 3), 16, 1e4, [4, 2, 2], True))
  np.testing.assert_array_equal(jitted(positions), rope_angles(positions, 16, 1e4))


# --- parity with HF transformers (skipped without torch) ---


def _torch():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  return torch


@pytest.mark.parametrize("theta,head_dim", [(10000.0, 64), (1e6, 128), (5e6, 80)])
def test_inv_freq_matches_hf_torch_within_one_ulp(theta, head_dim):
  torch = _torch()
  hf = (1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))).numpy()
  ours = rope_inv_freq(head_dim, theta)
  assert np.max(np.abs(ours.view(np.int32) - hf.view(np.int32))) <= 1
  assert np.mean(ours == hf) > 0.9


def test_text_rope_matches_hf_llama_apply_rotary_pos_emb():
  torch = _torch()
  from transformers import LlamaConfig
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

  config = LlamaConfig(
    hidden_size=64, num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e4}
  )
  positions = np.array([[0, 1, 2, 3, 17, 300], [5, 6, 7, 8, 9, 4000]])
  q, k = _x((2, 6, 2, 32), 1), _x((2, 6, 2, 32), 2)
  cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.tensor(positions))
  hf_q, hf_k = apply_rotary_pos_emb(torch.tensor(q), torch.tensor(k), cos, sin, unsqueeze_dim=2)
  angles = rope_angles(positions, 32, 1e4)
  np.testing.assert_allclose(apply_rope(q, angles), hf_q.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(apply_rope(k, angles), hf_k.numpy(), rtol=1e-6, atol=1e-6)


def _hf_mrope_cos_sin(torch, interleaved, sections, head_dim, theta, positions):
  rope = {"rope_type": "default", "rope_theta": theta, "mrope_section": sections}
  if interleaved:
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    config = Qwen3VLTextConfig(
      hidden_size=64,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=head_dim,
      rope_parameters={**rope, "mrope_interleaved": True},
    )
    module = Qwen3VLTextRotaryEmbedding(config)
  else:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    config = Qwen2VLTextConfig(
      hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope
    )
    module = Qwen2VLRotaryEmbedding(config)
  cos, sin = module(torch.zeros(1), torch.tensor(positions))
  return cos.numpy(), sin.numpy()


@pytest.mark.parametrize(
  "interleaved,sections", [(False, [4, 6, 6]), (True, [6, 5, 5])], ids=["qwen2", "qwen3"]
)
def test_mrope_matches_hf_qwen_vl(interleaved, sections):
  torch = _torch()
  from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

  rng = np.random.default_rng(0)
  positions = np.stack([rng.permutation(40)[:9], rng.integers(0, 30, 9), rng.integers(0, 30, 9)])[:, None]
  positions = np.concatenate([positions, positions + 1000], axis=1)  # [3, B=2, S=9]
  cos, sin = _hf_mrope_cos_sin(torch, interleaved, sections, 32, 1e6, positions)
  angles = mrope_angles(positions, 32, 1e6, sections, interleaved)
  np.testing.assert_allclose(np.cos(np.concatenate([angles, angles], -1)), cos, atol=1e-6)
  np.testing.assert_allclose(np.sin(np.concatenate([angles, angles], -1)), sin, atol=1e-6)
  q = _x((2, 9, 4, 32))
  hf_q, _ = apply_rotary_pos_emb(torch.tensor(q), torch.tensor(q), torch.tensor(cos), torch.tensor(sin), 2)
  np.testing.assert_allclose(apply_rope(q, angles), hf_q.numpy(), rtol=1e-6, atol=1e-6)


def test_vision_rope_matches_hf_qwen2_vl_vision_rotary():
  torch = _torch()
  from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
  from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VLVisionRotaryEmbedding,
    apply_rotary_pos_emb_vision,
  )

  config = Qwen2VLVisionConfig(embed_dim=64, num_heads=4)  # head_dim 16
  hw = np.array([[0, 0], [0, 1], [1, 0], [3, 5], [13, 2]])
  cos, sin = Qwen2VLVisionRotaryEmbedding(config)(torch.zeros(1), torch.tensor(hw))
  angles = vision_rope_2d_angles(hw, 16)
  np.testing.assert_allclose(np.cos(np.concatenate([angles, angles], -1)), cos.numpy(), atol=1e-6)
  q = jnp.asarray(_x((5, 4, 16)), jnp.bfloat16)  # unbatched [P, H, D], bf16 rotated in fp32
  q_torch = torch.tensor(np.asarray(q.astype(jnp.float32))).to(torch.bfloat16)
  hf_q, _ = apply_rotary_pos_emb_vision(q_torch, q_torch, cos, sin)
  ours = apply_rope(q, angles, compute_dtype=jnp.float32)
  np.testing.assert_allclose(ours.astype(np.float32), hf_q.float().numpy(), atol=1e-2)
  assert np.mean(np.asarray(ours.astype(np.float32)) == hf_q.float().numpy()) > 0.95
