"""GPT-OSS parity with transformers 5.25 (`GptOssForCausalLM`, eager attention, fp32 CPU) on tiny randomised models
whose weights reach our params through `gpt_oss_convert.load_params` from a `save_pretrained` directory; the
full-size GPT-OSS-20B parameter count through `jax.eval_shape`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxagents.models.text_encoders import gpt_oss_convert  # noqa: E402
from jaxagents.models.text_encoders.gpt_oss import (  # noqa: E402
  GPT_OSS_20B,
  GptOss,
  GptOssConfig,
  clamped_swiglu,
  param_count,
)
from tests.models.text_encoders import tiny  # noqa: E402

LENGTHS = (11, 7)  # longer than every tiny sliding window; the second row right-padded by 4


def _run(config, params, ids, mask=None, moe_implementation="ragged"):
  """Our forward, jitted as one program (eager dispatch would compile every op on its own)."""
  apply = jax.jit(GptOss(config, moe_implementation=moe_implementation).apply, static_argnames="logits")
  return apply({"params": params}, jnp.asarray(ids), None if mask is None else jnp.asarray(mask), logits=True)


@pytest.fixture(scope="module", params=list(tiny.GPT_OSS))
def loaded(request, tmp_path_factory):
  """(name, HF model, our config, our params loaded from its safetensors, inputs, our outputs on them)."""
  hf = tiny.gpt_oss_model(request.param)
  directory = str(tmp_path_factory.mktemp(request.param))
  hf.save_pretrained(directory)
  config, params = gpt_oss_convert.load_params(directory)
  ids, mask = tiny.right_padded(LENGTHS, seed=1)
  out = _run(config, params, ids, mask)
  return request.param, hf, config, params, (ids, mask), out


def test_every_hidden_state_and_the_logits_match_transformers(loaded):
  """transformers' tuple ends with the final-normed state; the raw output of the last layer (which Lens reads:
  layer 23 of GPT-OSS-20B's 24) is caught with a hook."""
  name, hf, config, _, (ids, mask), out = loaded
  raw_last = []
  hook = hf.model.layers[-1].register_forward_hook(lambda module, args, output: raw_last.append(output))
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)), output_hidden_states=True)
  hook.remove()
  ref_hidden, ref_logits = [h.numpy() for h in ref.hidden_states], ref.logits.numpy()
  assert tiny.relative_error(out["layer_outputs"][-1], raw_last[0].numpy()) < 1e-5
  ours = [out["embeddings"], *out["layer_outputs"][:-1], out["last_hidden_state"]]
  assert len(ours) == len(ref_hidden) == config.num_layers + 1
  # Right padding: pad rows still see real keys, so every position matches, padding included.
  for index, (a, b) in enumerate(zip(ours, ref_hidden, strict=True)):
    assert a.shape == b.shape
    assert tiny.relative_error(a, b) < 1e-5, (name, index, tiny.relative_error(a, b))
    assert np.abs(np.asarray(a) - b).max() < 1e-4 * max(1.0, np.abs(b).max())
  assert tiny.relative_error(out["logits"], ref_logits) < 1e-5
  assert np.abs(np.asarray(out["logits"]) - ref_logits).max() < 1e-4 * np.abs(ref_logits).max()


def test_ragged_and_dense_experts_agree(loaded):
  """'ragged' (the default, compared with transformers above) against the every-expert reference."""
  name, _, config, params, (ids, mask), out = loaded
  if name == "mha_top1_tied":
    pytest.skip("two of the three variants suffice (k < E with GQA, k = E with MQA); each costs a compilation")
  dense = _run(config, params, ids, mask, moe_implementation="dense")
  assert tiny.relative_error(out["layer_outputs"], dense["layer_outputs"]) < 1e-6, name


def test_valid_tokens_ignore_the_padding_and_the_other_rows(loaded):
  name, _, config, params, (ids, _), out = loaded
  if name != "gqa_yarn":
    pytest.skip("one variant suffices (sliding and full layers, GQA); each costs a compilation")
  n = LENGTHS[1]
  alone = _run(config, params, ids[1:, :n])["layer_outputs"]
  np.testing.assert_allclose(out["layer_outputs"][:, 1, :n], alone[:, 0], rtol=1e-5, atol=1e-5)


def test_swiglu_clamps_the_gate_above_and_the_up_projection_on_both_sides():
  gate_up = jnp.array([[10.0, -10.0, -3.0, 3.0]])  # (gate, up) pairs: (10, -10), (-3, 3)
  out = np.asarray(clamped_swiglu(gate_up, alpha=1.702, limit=2.0))
  sigmoid = 1 / (1 + np.exp(-1.702 * np.array([2.0, -3.0])))
  np.testing.assert_allclose(out[0], [(-2.0 + 1) * 2.0 * sigmoid[0], (2.0 + 1) * -3.0 * sigmoid[1]], rtol=1e-6)


def test_config_round_trips_through_the_transformers_dict(loaded):
  _, hf, config, *_ = loaded
  assert GptOssConfig.from_hf(config.to_hf()) == config
  again = transformers.GptOssConfig(**config.to_hf())
  for key in ("layer_types", "sliding_window", "num_local_experts", "num_experts_per_tok", "rope_parameters",
              "swiglu_limit", "swiglu_alpha", "attention_bias", "tie_word_embeddings"):
    assert getattr(again, key) == getattr(hf.config, key), key


def test_legacy_rope_scaling_keys_are_read():
  hf = {**GPT_OSS_20B, "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 4096}}
  del hf["rope_parameters"]
  assert GptOssConfig.from_hf(hf) == GptOssConfig.from_hf(GPT_OSS_20B)


@pytest.mark.parametrize(
  "change, match",
  [
    ({"layer_types": ["sliding_attention", "local"]}, "layer_types"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type"),
    ({"sliding_window": None}, "sliding_window"),
    ({"model_type": "llama"}, "model_type"),
  ],
)
def test_bad_configs_are_named(change, match):
  base = {**tiny.GPT_OSS["mha_top1_tied"], "num_hidden_layers": 2, "model_type": "gpt_oss"}
  with pytest.raises(ValueError, match=match):
    GptOssConfig.from_hf({**base, **change})


def test_gpt_oss_20b_has_the_published_parameter_count():
  """20.91B parameters, 3.61B active per token (embedding table excluded), as the model card's Table 1; equal to
  transformers' count of the same config built on the meta device."""
  config = GptOssConfig.from_hf(GPT_OSS_20B)
  ours = param_count(config)
  with torch.device("meta"):
    reference = transformers.GptOssForCausalLM(transformers.GptOssConfig(**json.loads(json.dumps(GPT_OSS_20B))))
  assert ours == sum(p.numel() for p in reference.parameters())
  assert round(ours / 1e9, 2) == 20.91
  shapes = jax.eval_shape(lambda: GptOss(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  moe = shapes["params"]["layers"]["moe"]
  per_layer_experts = sum(int(np.prod(moe[k].value.shape)) for k in ("gate_up", "gate_up_bias", "down", "down_bias"))
  idle = per_layer_experts * (config.num_experts - config.experts_per_token) // config.num_experts
  active = ours - idle - config.vocab_size * config.hidden_size
  assert round(active / 1e9, 2) == 3.61


def test_bfloat16_weights_and_activations_stay_close_to_float32(loaded):
  name, _, config, params, (ids, mask), out = loaded
  if name != "gqa_yarn":
    pytest.skip("one variant suffices; each costs a compilation")
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  apply = jax.jit(GptOss(config, dtype=jnp.bfloat16).apply)
  low = apply({"params": half}, jnp.asarray(ids), jnp.asarray(mask))
  assert low["layer_outputs"].dtype == jnp.bfloat16
  assert tiny.relative_error(low["layer_outputs"].astype(jnp.float32), out["layer_outputs"]) < 2e-2
