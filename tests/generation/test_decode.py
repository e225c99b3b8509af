"""`generate` on any cached decoder (Qwen3-VL with images, `CausalLM`): greedy tokens equal transformers'
`generate(do_sample=False)` for 32 steps and the argmax of full forward passes, the decode loop compiles once,
stop tokens end rows, right- and left-padded prompts decode alike, a sharded 8-device mesh decodes like one device,
and the package imports no model, task or training code."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxagents import sharding as mesh_lib
from jaxagents.generation import SamplingConfig, TokenInputs, generate
from jaxagents.generation.decode import _generate
from jaxagents.models.causal_lm import CausalLM
from jaxagents.models.qwen_vl import convert
from jaxagents.models.qwen_vl import sharding as qwen_sharding
from jaxagents.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from jaxagents.models.qwen_vl.model import QwenVL
from tests.generation.conftest import STEPS
from tests.models.qwen_vl import tiny


def _logits(out):
  return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("family,kind", [("qwen2_vl", "images"), ("qwen2_5_vl", "video"), ("qwen3_vl", "images"),
                                         ("qwen3_vl", "video")])
def test_greedy_32_tokens_equal_transformers_generate(family, kind, tmp_path):
  torch = pytest.importorskip("torch")
  hf = tiny.hf_model(family)
  hf.save_pretrained(str(tmp_path))
  config, params = convert.load_params(str(tmp_path), convert.load_config(str(tmp_path), mrope_mode="hf"))
  raw = tiny.batch(family, kind)
  hf.model.rope_deltas = None
  with torch.no_grad():
    out = hf.generate(**{k: torch.from_numpy(v) for k, v in raw.items()}, do_sample=False, max_new_tokens=32,
                      min_new_tokens=32, output_logits=True, return_dict_in_generate=True)
  expected = out.sequences[:, raw["input_ids"].shape[1]:].numpy()
  hf_logprobs = torch.stack(out.logits, 1).float().log_softmax(-1).numpy()

  vision = {k: raw[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                "second_per_grid_ts") if k in raw}
  prompts = prepare_inputs(config, raw["input_ids"], raw["attention_mask"], **vision)
  result = generate(QwenVL(config), {"params": params}, prompts, sampling=SamplingConfig(32))
  np.testing.assert_array_equal(np.asarray(result.tokens), expected)
  chosen = np.take_along_axis(hf_logprobs, expected[..., None], -1)[..., 0]
  # 32 cached steps of fp32 accumulate ~1e-5 of drift on O(10) logits.
  np.testing.assert_allclose(np.asarray(result.logprobs), chosen, rtol=0, atol=5e-5)
  np.testing.assert_array_equal(np.asarray(result.lengths), [32, 32])


def test_greedy_tokens_are_the_argmax_of_full_forward_passes_step_by_step(decoder):
  """Each cached decode step predicts what a cache-free forward pass over prompt + tokens so far predicts.

  `CausalLM` runs one forward pass per step; for Qwen-VL one pass over all steps' tokens stands for them (its
  causal mask makes position L - 1 + t see exactly the prompt and the first t tokens) to save compilations.
  """
  model, params, prompts = decoder.model, decoder.params, decoder.prompts
  steps, rows = STEPS, prompts.input_ids.shape[0]
  prompt_length = prompts.input_ids.shape[1]
  out = generate(model, params, prompts, sampling=SamplingConfig(steps))
  tokens, logprobs = np.asarray(out.tokens), np.asarray(out.logprobs)
  forward = jax.jit(model.apply)
  for n in [steps] if isinstance(model, QwenVL) else range(1, steps + 1):
    inputs, _ = prompts.with_completions(tokens[:, :n], np.full(rows, n), pad_id=0)
    logits = np.asarray(_logits(forward(params, *inputs.model_args())))[:, prompt_length - 1:prompt_length - 1 + n]
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), tokens[:, :n])
    expected = np.take_along_axis(jax.nn.log_softmax(logits), tokens[:, :n, None], axis=-1)[..., 0]
    np.testing.assert_allclose(logprobs[:, :n], expected, rtol=0, atol=1e-5)


def _right_padded(prompts):
  """The same prompts with every row's padding moved to the right (positions travel with their tokens)."""
  mask = np.asarray(prompts.attention_mask)
  shift = mask.sum(axis=1) - mask.shape[1]
  columns = (np.arange(mask.shape[1])[None] - shift[:, None]) % mask.shape[1]
  rows = np.arange(mask.shape[0])[:, None]
  roll = lambda x: np.asarray(x)[..., rows, columns]
  if isinstance(prompts, TokenInputs):
    return TokenInputs(roll(prompts.input_ids), roll(mask), roll(prompts.positions))
  return ModelInputs(roll(prompts.input_ids), roll(mask), roll(prompts.positions), prompts.decode_base, prompts.vision)


def test_right_padded_prompts_generate_like_left_padded_ones(decoder):
  model, params, prompts = decoder.model, decoder.params, decoder.prompts
  right = _right_padded(prompts)
  assert not np.asarray(right.attention_mask)[:, -1].all()  # at least one row really is right-padded
  sampling = SamplingConfig(STEPS)
  left_out = generate(model, params, prompts, sampling=sampling)
  right_out = generate(model, params, right, sampling=sampling)
  np.testing.assert_array_equal(np.asarray(right_out.tokens), np.asarray(left_out.tokens))
  np.testing.assert_allclose(np.asarray(right_out.logprobs), np.asarray(left_out.logprobs), rtol=0, atol=1e-6)


def test_decode_loop_compiles_once(qwen3):
  model, params, prompts = qwen3.model, qwen3.params, qwen3.prompts
  sampling = SamplingConfig(8, temperature=1.0, top_k=20)
  before = _generate._cache_size()
  first = generate(model, params, prompts, sampling=sampling, key=jax.random.key(0))
  ids = np.asarray(prompts.input_ids)
  other_ids = np.where(np.asarray(prompts.attention_mask).astype(bool) & (ids < 200), 7, ids)
  other = ModelInputs(other_ids, prompts.attention_mask, prompts.positions, prompts.decode_base, prompts.vision)
  second = generate(model, params, other, sampling=sampling, key=jax.random.key(1))
  assert _generate._cache_size() == before + 1  # one program for prefill + every decode step, reused
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(second.tokens))


def test_rows_stop_at_eos_and_pad_afterwards(qwen3):
  model, params, prompts = qwen3.model, qwen3.params, qwen3.prompts
  tokens = np.asarray(generate(model, params, prompts, sampling=SamplingConfig(STEPS)).tokens)
  stop = int(tokens[0, 1])
  first_stop = [int(np.flatnonzero(row == stop)[0]) if (row == stop).any() else None for row in tokens]
  stopped = generate(model, params, prompts, sampling=SamplingConfig(STEPS, eos_ids=(stop,), pad_id=-5))
  for row, end in enumerate(first_stop):
    out = np.asarray(stopped.tokens[row])
    if end is None:
      np.testing.assert_array_equal(out, tokens[row])
      assert int(stopped.lengths[row]) == STEPS
      continue
    np.testing.assert_array_equal(out[:end + 1], tokens[row, :end + 1])
    assert (out[end + 1:] == -5).all() and (np.asarray(stopped.logprobs[row, end + 1:]) == 0).all()
    assert int(stopped.lengths[row]) == end + 1


def test_the_cache_defaults_to_the_model_compute_dtype(causal):
  seen = []

  class Recording(CausalLM):
    def init_cache(self, batch, max_length, dtype=jnp.float32):
      seen.append(jnp.dtype(dtype))
      return super().init_cache(batch, max_length, dtype)

  for dtype in (jnp.float32, jnp.bfloat16):
    generate(Recording(causal.model.config, dtype=dtype), causal.params, causal.prompts, sampling=SamplingConfig(1))
  assert seen == [jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)]


def test_bad_generation_arguments_are_rejected(qwen3):
  model, params, prompts = qwen3.model, qwen3.params, qwen3.prompts
  bad_base = ModelInputs(prompts.input_ids, prompts.attention_mask, prompts.positions, prompts.decode_base[0],
                         prompts.vision)
  with pytest.raises(ValueError, match="decode_base"):
    generate(model, params, bad_base, sampling=SamplingConfig(2))
  with pytest.raises(ValueError, match="key"):
    generate(model, params, prompts, sampling=SamplingConfig(2, temperature=1.0))
  bad_mask = TokenInputs(np.zeros((2, 3), np.int32), np.ones((2, 4), np.int32), np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match="attention_mask"):
    generate(model, params, bad_mask, sampling=SamplingConfig(2))


def _shard_rows(prompts, mesh):
  """Global arrays with the rows split over the data-parallel axes (the batch axis of each field; vision replicated)."""
  rows = ("data", "fsdp")
  put = lambda x, spec: jax.device_put(np.asarray(x), NamedSharding(mesh, spec))
  if isinstance(prompts, TokenInputs):
    return jax.tree.map(lambda x: put(x, PartitionSpec(rows)), prompts)
  vision = jax.tree.map(lambda x: put(x, PartitionSpec()), prompts.vision)
  return ModelInputs(put(prompts.input_ids, PartitionSpec(rows)), put(prompts.attention_mask, PartitionSpec(rows)),
                     put(prompts.positions, PartitionSpec(None, rows)),
                     put(prompts.decode_base, PartitionSpec(None, rows)), vision)


def test_generate_on_a_sharded_mesh_gives_the_one_device_tokens(decoder):
  model, params = decoder.model, mesh_lib.unbox(decoder.params)
  prompts = decoder.prompts
  assert prompts.input_ids.shape[0] == 4
  sampling = SamplingConfig(STEPS)
  expected = generate(model, params, prompts, sampling=sampling)

  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = jax.eval_shape(model.init, jax.random.key(0), *prompts.model_args())
  if decoder.config is None:
    rules, shardings = mesh_lib.DEFAULT_RULES, mesh_lib.logical_to_sharding(abstract, mesh)
  else:
    rules, shardings = qwen_sharding.RULES, qwen_sharding.param_shardings(abstract, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    sharded_params = jax.device_put(params, shardings)
    global_prompts = _shard_rows(prompts, mesh)
    out = generate(model, sharded_params, global_prompts, sampling=sampling)
  assert len(global_prompts.input_ids.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(expected.logprobs), rtol=0, atol=1e-5)


def test_generation_imports_no_model_task_or_training_code():
  code = ("import sys, jaxagents.generation; "
          "print([m for m in sys.modules if m.startswith(('jaxagents.models', 'jaxagents.tasks', 'jaxagents.rl', "
          "'jaxagents.train', 'jaxagents.envs', 'jaxagents.data'))])")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]", result.stdout
