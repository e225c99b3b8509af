"""Full-size FLUX.2 presets, built with `jax.eval_shape` (nothing allocated), against diffusers'
`Flux2Transformer2DModel` built on torch's meta device from the same config.json fields (no download). The Lens
count is checked in test_lens.py against the shapes `LensTransformer2DModel` builds."""

import math

import pytest

from jaxagents.models import mmdit

# The transformer/config.json fields of each checkpoint that differ from diffusers' defaults (= FLUX.2-dev).
DIFFUSERS_CONFIGS = {
  "flux2-dev": {},
  "flux2-klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                         guidance_embeds=False),
  "flux2-klein-9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
                         guidance_embeds=False),
}
EXPECTED = {"flux2-dev": 32_223_281_152, "flux2-klein-4b": 3_875_544_576, "flux2-klein-9b": 9_078_581_248}


@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_flux2_presets_match_the_diffusers_config_and_parameter_count(name):
  config = mmdit.get_config(name)
  fields = {"_class_name": "Flux2Transformer2DModel", **DIFFUSERS_CONFIGS[name]}
  assert mmdit.MMDiTConfig.from_diffusers(fields) == config
  ours = sum(math.prod(s) for s in mmdit.param_shapes(config).values())
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  with torch.device("meta"):
    reference = diffusers.Flux2Transformer2DModel(**DIFFUSERS_CONFIGS[name])
  reference_count = sum(p.numel() for p in reference.parameters())
  print(f"{name}: ours {ours:,}, diffusers Flux2Transformer2DModel {reference_count:,}")
  assert ours == reference_count == EXPECTED[name]
