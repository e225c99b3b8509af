"""Generation: greedy tokens equal transformers' `generate(do_sample=False)` for 32 steps, per-token log-probs
equal HF's log_softmax, the decode loop compiles once, rollout log-probs equal a training-style recompute,
stop tokens and sampling filters behave as specified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.models.qwen_vl import convert
from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.generate import SamplingConfig, _generate, choose, generate, sampling_logits
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.positions import rope_index
from jaxagents.models.qwen_vl.vision_layout import vision_inputs
from tests.models.qwen_vl import tiny


def _prompt(config, inputs):
  positions, base = rope_index(inputs["input_ids"], inputs["attention_mask"], config,
                               image_grid_thw=inputs.get("image_grid_thw"),
                               video_grid_thw=inputs.get("video_grid_thw"),
                               second_per_grid_ts=inputs.get("second_per_grid_ts"))
  vision = None
  if "pixel_values" in inputs:
    vision = vision_inputs(inputs["pixel_values"], inputs["image_grid_thw"], config)
  elif "pixel_values_videos" in inputs:
    vision = vision_inputs(inputs["pixel_values_videos"], inputs["video_grid_thw"], config)
  return positions, base, vision


@pytest.mark.parametrize("family,kind", [("qwen2_vl", "images"), ("qwen2_5_vl", "video"), ("qwen3_vl", "images"),
                                         ("qwen3_vl", "video")])
def test_greedy_32_tokens_equal_transformers_generate(family, kind, tmp_path):
  torch = pytest.importorskip("torch")
  hf = tiny.hf_model(family)
  hf.save_pretrained(str(tmp_path))
  config, params = convert.load_params(str(tmp_path), convert.load_config(str(tmp_path), mrope_mode="hf"))
  inputs = tiny.batch(family, kind)
  hf.model.rope_deltas = None
  with torch.no_grad():
    out = hf.generate(**{k: torch.from_numpy(v) for k, v in inputs.items()}, do_sample=False, max_new_tokens=32,
                      min_new_tokens=32, output_logits=True, return_dict_in_generate=True)
  expected = out.sequences[:, inputs["input_ids"].shape[1]:].numpy()
  hf_logprobs = torch.stack(out.logits, 1).float().log_softmax(-1).numpy()

  positions, base, vision = _prompt(config, inputs)
  result = generate(QwenVL(config), {"params": params}, inputs["input_ids"], inputs["attention_mask"], positions,
                    base, vision, sampling=SamplingConfig(32), cache_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(result.tokens), expected)
  chosen = np.take_along_axis(hf_logprobs, expected[..., None], -1)[..., 0]
  # 32 cached steps of fp32 accumulate ~1e-5 of drift on O(10) logits.
  np.testing.assert_allclose(np.asarray(result.logprobs), chosen, rtol=0, atol=5e-5)
  np.testing.assert_array_equal(np.asarray(result.lengths), [32, 32])


@pytest.fixture(scope="module")
def qwen3():
  config = QwenVLConfig.from_hf(tiny.QWEN3_VL)
  inputs = tiny.batch("qwen3_vl", "images")
  positions, base, vision = _prompt(config, inputs)
  model = QwenVL(config)
  params = jax.jit(model.init)(jax.random.key(1), inputs["input_ids"], positions, inputs["attention_mask"], vision)
  return config, model, params, inputs, positions, base, vision


def test_decode_loop_compiles_once(qwen3):
  config, model, params, inputs, positions, base, vision = qwen3
  sampling = SamplingConfig(8, temperature=1.0, top_k=20)
  before = _generate._cache_size()
  first = generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base, vision,
                   sampling=sampling, key=jax.random.key(0))
  other_ids = np.where(inputs["attention_mask"] & (inputs["input_ids"] < 200), 7, inputs["input_ids"])
  second = generate(model, params, other_ids, inputs["attention_mask"], positions, base, vision,
                    sampling=sampling, key=jax.random.key(1))
  assert _generate._cache_size() == before + 1  # one program for prefill + every decode step, reused
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(second.tokens))


def test_rollout_logprobs_equal_a_teacher_forced_recompute(qwen3):
  """The verl #2996 / #6780 failure mode: the log-probs of sampled tokens, recomputed the way training does
  (one forward pass over prompt + completion, no cache), equal the ones returned by the sampler."""
  config, model, params, inputs, positions, base, vision = qwen3
  sampling = SamplingConfig(10, temperature=0.7)
  result = generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base, vision,
                    sampling=sampling, key=jax.random.key(3), cache_dtype=jnp.float32)
  tokens = np.asarray(result.tokens)
  full_ids = np.concatenate([inputs["input_ids"], tokens], axis=1)
  full_mask = np.concatenate([inputs["attention_mask"], np.ones_like(tokens)], axis=1)
  steps = np.arange(tokens.shape[1])
  full_positions = np.concatenate([positions, base[:, :, None] + 1 + steps], axis=2)
  logits, _ = model.apply(params, full_ids, full_positions, full_mask, vision)
  prompt_length = inputs["input_ids"].shape[1]
  scores = jax.nn.log_softmax(np.asarray(logits)[:, prompt_length - 1:-1] / sampling.temperature, axis=-1)
  recomputed = np.take_along_axis(np.asarray(scores), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(result.logprobs), recomputed, rtol=0, atol=2e-5)


def test_rows_stop_at_eos_and_pad_afterwards(qwen3):
  config, model, params, inputs, positions, base, vision = qwen3
  greedy = generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base, vision,
                    sampling=SamplingConfig(12))
  tokens = np.asarray(greedy.tokens)
  stop = int(tokens[0, 3])
  first_stop = [int(np.flatnonzero(row == stop)[0]) if (row == stop).any() else None for row in tokens]
  stopped = generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base, vision,
                     sampling=SamplingConfig(12, eos_ids=(stop,), pad_id=-5))
  for row, end in enumerate(first_stop):
    out = np.asarray(stopped.tokens[row])
    if end is None:
      np.testing.assert_array_equal(out, tokens[row])
      assert int(stopped.lengths[row]) == 12
      continue
    np.testing.assert_array_equal(out[:end + 1], tokens[row, :end + 1])
    assert (out[end + 1:] == -5).all() and (np.asarray(stopped.logprobs[row, end + 1:]) == 0).all()
    assert int(stopped.lengths[row]) == end + 1


def test_top_k_and_top_p_keep_exactly_the_specified_tokens():
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))
  kept = lambda **kw: np.isfinite(np.asarray(sampling_logits(logits, SamplingConfig(1, temperature=1.0, **kw))))
  np.testing.assert_array_equal(kept(top_k=2), [[True, True, False, False, False]])
  np.testing.assert_array_equal(kept(top_p=0.7), [[True, True, False, False, False]])  # 0.4 + 0.3 reaches 0.7
  np.testing.assert_array_equal(kept(top_p=0.71), [[True, True, True, False, False]])
  np.testing.assert_array_equal(kept(top_p=0.1), [[True, False, False, False, False]])


def test_sampling_frequencies_follow_the_truncated_tempered_softmax():
  logits = jnp.log(jnp.array([0.4, 0.3, 0.15, 0.1, 0.05]))
  sampling = SamplingConfig(1, temperature=2.0, top_k=3)
  expected = np.array([0.4, 0.3, 0.15]) ** 0.5
  expected = np.concatenate([expected / expected.sum(), [0, 0]])
  n = 20000
  tokens, logprobs = choose(jnp.broadcast_to(logits, (n, 5)), sampling, jax.random.key(0))
  frequencies = np.bincount(np.asarray(tokens), minlength=5) / n
  np.testing.assert_allclose(frequencies, expected, atol=0.015)  # ~4 standard errors at n = 20000
  np.testing.assert_allclose(np.exp(np.asarray(logprobs)), expected[np.asarray(tokens)], rtol=1e-5)


def test_right_padded_prompts_generate_like_left_padded_ones(qwen3):
  config, model, params, inputs, positions, base, vision = qwen3
  mask = inputs["attention_mask"]
  shift = mask.shape[1] - mask.sum(axis=1)  # row 1 has 16 pads on the left; move them to the right
  columns = (np.arange(mask.shape[1])[None] + shift[:, None]) % mask.shape[1]
  rows = np.arange(2)[:, None]
  right = dict(ids=inputs["input_ids"][rows, columns], mask=mask[rows, columns], positions=positions[:, rows, columns])
  assert right["mask"][1, -1] == 0 and right["mask"][1, 0] == 1
  sampling = SamplingConfig(6)
  left_out = generate(model, params, inputs["input_ids"], mask, positions, base, vision, sampling=sampling)
  right_out = generate(model, params, right["ids"], right["mask"], right["positions"], base, vision, sampling=sampling)
  np.testing.assert_array_equal(np.asarray(right_out.tokens), np.asarray(left_out.tokens))


def test_bad_generation_arguments_are_rejected(qwen3):
  config, model, params, inputs, positions, base, vision = qwen3
  with pytest.raises(ValueError, match="decode_base"):
    generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base[0], vision,
             sampling=SamplingConfig(2))
  with pytest.raises(ValueError, match="key"):
    generate(model, params, inputs["input_ids"], inputs["attention_mask"], positions, base, vision,
             sampling=SamplingConfig(2, temperature=1.0))
  for bad in (dict(max_new_tokens=0), dict(max_new_tokens=1, top_p=0.0), dict(max_new_tokens=1, top_k=-1)):
    with pytest.raises(ValueError):
      SamplingConfig(**bad)
