"""JointAttention (MM-DiT): reduces to `SelfAttention` for one stream and for streams sharing weights, does not
depend on the concatenation order, and hides masked keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.layers.attention_block import SelfAttention
from jaxagents.layers.joint_attention import JointAttention
from jaxagents.layers.multi_axis_rope import msrope_position_ids, multi_axis_rope_angles

HEADS, HEAD_DIM, WIDTH = 2, 8, 12
AXES = (2, 2, 4)


def _x(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _random_like(tree, seed):
  leaves, structure = jax.tree.flatten(jax.tree.map(np.asarray, tree))
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(structure, [(x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32) for x in leaves])


def _streams(seed=0):
  img_ids, txt_ids = msrope_position_ids(2, 3, 4)
  xs = [_x((2, 4, WIDTH), seed), _x((2, 6, WIDTH), seed + 1)]
  angles = [multi_axis_rope_angles(txt_ids, AXES, 100.0), multi_axis_rope_angles(img_ids, AXES, 100.0)]
  return xs, angles


def _module(streams, **kw):
  return JointAttention(streams=streams, num_heads=HEADS, head_dim=HEAD_DIM, qkv_bias=True, out_bias=True, **kw)


def _params(module, xs, angles, seed=0):
  return _random_like(module.init(jax.random.key(0), xs, angles)["params"], seed)


def test_one_stream_is_self_attention():
  xs, angles = _streams()
  joint = _module(("x",))
  params = _params(joint, xs[1:], angles[1:])
  renamed = {name[2:]: value for name, value in params.items()}  # 'x_q' -> 'q', 'x_q_norm' -> 'q_norm', ...
  single = SelfAttention(num_heads=HEADS, num_kv_heads=HEADS, head_dim=HEAD_DIM, qkv_bias=True, out_bias=True,
                         qk_norm=True, rope_style="interleaved", rope_compute_dtype=jnp.float32)
  expected = single.apply({"params": renamed}, xs[1], angles[1][None])
  (out,) = joint.apply({"params": params}, xs[1:], angles[1:])
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_streams_sharing_weights_are_self_attention_over_the_concatenation():
  xs, angles = _streams()
  joint = _module(("a", "b"))
  single = _module(("a",))
  params = _params(single, xs[:1], angles[:1])
  shared = {**params, **{"b" + name[1:]: value for name, value in params.items()}}
  outs = joint.apply({"params": shared}, xs, angles)
  (expected,) = single.apply(
    {"params": params}, [jnp.concatenate(xs, axis=1)], [jnp.concatenate(angles, axis=0)]
  )
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected, atol=1e-5)


def test_concatenation_order_does_not_change_any_stream_output():
  xs, angles = _streams()
  text_first, image_first = _module(("txt", "img")), _module(("img", "txt"))
  params = _params(text_first, xs, angles)
  mask = [np.array([[True] * 4, [True, False, True, False]]), None]
  txt_a, img_a = text_first.apply({"params": params}, xs, angles, mask)
  img_b, txt_b = image_first.apply({"params": params}, xs[::-1], angles[::-1], mask[::-1])
  np.testing.assert_allclose(txt_a, txt_b, atol=1e-5)
  np.testing.assert_allclose(img_a, img_b, atol=1e-5)


def test_masked_keys_are_invisible_to_every_query():
  xs, angles = _streams()
  module = _module(("txt", "img"))
  params = _params(module, xs, angles)
  mask = np.array([[True, True, False, False], [True, False, False, False]])
  base = module.apply({"params": params}, xs, angles, [mask, None])
  changed_txt = np.where(mask[..., None], xs[0], 50.0)
  out = module.apply({"params": params}, [changed_txt, xs[1]], angles, [mask, None])
  np.testing.assert_allclose(out[1], base[1], atol=1e-5)  # image queries
  np.testing.assert_allclose(np.where(mask[..., None], out[0], 0), np.where(mask[..., None], base[0], 0), atol=1e-5)


def test_bad_arguments_raise_value_errors_naming_them():
  xs, angles = _streams()
  module = _module(("txt", "img"))
  params = _params(module, xs, angles)
  with pytest.raises(ValueError, match="`xs`"):
    module.apply({"params": params}, xs[:1], angles)
  with pytest.raises(ValueError, match="`kv_masks` entry 'txt'"):
    module.apply({"params": params}, xs, angles, [np.ones((2, 4), np.int32), None])
