"""Qwen3 through the Qwen-VL text stack: hidden-state parity with transformers 5.25 `Qwen3ForCausalLM` (eager,
fp32 CPU) on tiny randomised models loaded from a `save_pretrained` directory, the params tree shared with
`qwen_vl.text.TextDecoder`, and FLUX.2-klein's prompt embeddings against the pipeline's own lines.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxagents.models.qwen_vl.text import TextDecoder  # noqa: E402
from jaxagents.models.text_encoders import prompts, qwen3_text  # noqa: E402
from jaxagents.models.text_encoders.qwen3_text import Qwen3Text, Qwen3TextEncoder  # noqa: E402
from tests.models.text_encoders import tiny  # noqa: E402


@pytest.fixture(scope="module", params=list(tiny.QWEN3))
def loaded(request, tmp_path_factory):
  hf = tiny.qwen3_model(request.param)
  directory = str(tmp_path_factory.mktemp(request.param))
  hf.save_pretrained(directory)
  config, params = qwen3_text.load_params(directory)
  return request.param, hf, config, params


def test_every_hidden_state_matches_transformers(loaded):
  name, hf, config, params = loaded
  ids, mask = tiny.right_padded((10, 6), seed=5)
  out = jax.jit(Qwen3Text(config).apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  with torch.no_grad():
    ref = hf.model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                   output_hidden_states=True).hidden_states
  assert len(ref) == config.num_layers + 1
  for index, expected in enumerate(ref):
    ours = qwen3_text.hidden_state(out, index, config.num_layers)
    # Right padding: every position, padding included, is what the FLUX.2-klein pipeline passes on.
    assert tiny.relative_error(ours, expected.numpy()) < 1e-5, (name, index)
    assert np.abs(np.asarray(ours) - expected.numpy()).max() < 1e-4 * np.abs(expected.numpy()).max()


def test_the_params_tree_is_the_qwen_vl_text_decoders(loaded):
  """Same tree and shapes, and the same final states when `TextDecoder` runs our params."""
  name, _, config, params = loaded
  if name != "bias_mha_odd":
    pytest.skip("the variant with every optional projection bias suffices")

  class Decoder(flax.linen.Module):
    @flax.linen.compact
    def __call__(self, ids, positions, mask):
      decoder = TextDecoder(config, name="decoder")
      return decoder(decoder.embed_tokens(ids), positions, mask)[0]

  ids, mask = tiny.right_padded((6, 4), seed=6)
  positions = jnp.broadcast_to(jnp.arange(6), (3, 2, 6))
  abstract = jax.eval_shape(Decoder().init, jax.random.key(0), jnp.asarray(ids), positions, jnp.asarray(mask))
  decoder = flax.traverse_util.flatten_dict(flax.linen.unbox(abstract)["params"]["decoder"], sep="/")
  ours = flax.traverse_util.flatten_dict(params, sep="/")
  assert {k: v.shape for k, v in decoder.items()} == {k: v.shape for k, v in ours.items()}
  final = jax.jit(Decoder().apply)({"params": {"decoder": params}}, jnp.asarray(ids), positions, jnp.asarray(mask))
  out = jax.jit(Qwen3Text(config).apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(final, out["last_hidden_state"], rtol=1e-6, atol=1e-6)


def test_flux2_klein_prompt_embeddings_equal_the_pipelines(loaded, tmp_path):
  name, hf, config, params = loaded
  if name != "gqa":
    pytest.skip("one model suffices for the pipeline restatement")
  tokenizer = prompts.load_tokenizer(tiny.save_qwen_tokenizer(tmp_path))
  texts = ["a red cube", "two cats on a sofa, photo"]
  layers, max_length = (1, 3, 4), 64  # 4 = the final-normed state
  encoder = Qwen3TextEncoder(tokenizer, config, params, hidden_states_layers=layers, max_length=max_length)
  features = encoder.encode(texts)
  # diffusers `Flux2KleinPipeline._get_qwen3_prompt_embeds`, restated.
  ids, masks = [], []
  for text in texts:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    encoded = tokenizer(chat, return_tensors="pt", padding="max_length", truncation=True, max_length=max_length)
    ids.append(encoded["input_ids"])
    masks.append(encoded["attention_mask"])
  with torch.no_grad():
    output = hf(input_ids=torch.cat(ids), attention_mask=torch.cat(masks), output_hidden_states=True, use_cache=False)
  stacked = torch.stack([output.hidden_states[k] for k in layers], dim=1)
  batch, channels, length, width = stacked.shape
  reference = stacked.permute(0, 2, 1, 3).reshape(batch, length, channels * width).numpy()
  assert features.concatenated().shape == reference.shape == (2, max_length, 3 * config.hidden_size)
  assert tiny.relative_error(features.concatenated(), reference) < 1e-5
  np.testing.assert_array_equal(features.mask, torch.cat(masks).numpy().astype(bool))


@pytest.mark.parametrize(
  "change, match",
  [({"use_sliding_window": True}, "use_sliding_window"),
   ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type"),
   ({"model_type": "qwen2"}, "model_type")],
)
def test_unsupported_configs_are_named(change, match):
  with pytest.raises(ValueError, match=match):
    qwen3_text.text_config_from_hf({**tiny.QWEN3["gqa"], "model_type": "qwen3", **change})


def test_a_checkpoint_of_another_shape_is_named(loaded, tmp_path):
  _, hf, config, _ = loaded
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(3, np.float32)
  with pytest.raises(ValueError, match=r"q_norm\.weight.*\(3,\)"):
    qwen3_text.hf_to_params(tensors, config)
  del tensors["model.layers.0.self_attn.q_norm.weight"]
  with pytest.raises(ValueError, match=r"1 missing \['layers\.0\.self_attn\.q_norm\.weight'\]"):
    qwen3_text.hf_to_params(tensors, config)
