"""`bench/memory.py` on a tiny Qwen2.5-VL: the state is what eval_shape says (params + two AdamW moments, float32),
FSDP divides it over devices, and XLA's analysis of the update and rollout adds their temporaries."""

import jax
import numpy as np
import pytest

from jaxagents.bench import memory
from jaxagents.models.qwen_vl import QwenVLConfig
from tests.models.qwen_vl import tiny


@pytest.mark.slow  # four compilations; CI runs it in its slow stage (`.ci/run`)
def test_tiny_model_memory_is_the_state_plus_temporaries_and_fsdp_divides_the_state(monkeypatch):
  monkeypatch.setitem(memory.MODELS, "tiny", tiny.QWEN2_5_VL)
  shapes = dict(prompts_per_device=2, group=2, micro_prompts=1, prompt_tokens=24, visual_tokens=8, response=4,
                chunk=2)
  one = memory.measure("tiny", 1, **shapes)
  two = memory.measure("tiny", 2, **shapes)
  config = QwenVLConfig.from_hf(tiny.QWEN2_5_VL)
  assert np.isclose(one["params_billions"] * 1e9, memory.parameter_count(config))
  assert np.isclose(one["state"] * memory.GIB, 12 * one["params_billions"] * 1e9, rtol=1e-3)  # f32 + 2 moments
  assert two["state"] < 0.75 * one["state"]
  for m in (one, two):
    assert m["update_peak"] >= m["state"] and m["update_temp"] > 0 and m["rollout_peak"] > 0
  assert jax.device_count() >= 2
