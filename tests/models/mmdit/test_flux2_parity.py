"""The MMDiT configured as FLUX.2 against diffusers `Flux2Transformer2DModel` (torch, CPU, float32): tiny random
reference modules are written with `save_pretrained` and read back through `convert.load_params`."""

import jax
import numpy as np
import pytest

from jaxagents.layers.multi_axis_rope import flux_position_ids
from jaxagents.models import mmdit

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

_BASE = dict(in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4))
CASES = {
  "double+single,guidance": (dict(_BASE), 3, 5, 7, [0.3, 0.9]),
  "double-only,no-guidance,3x8-heads": (
    dict(_BASE, num_layers=2, num_single_layers=0, attention_head_dim=8, num_attention_heads=3,
         axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False, out_channels=5), 4, 4, 1, [0.0, 1.0]),
  "single-only,1x24-heads,mlp2.5,patch2": (
    dict(_BASE, num_layers=0, num_single_layers=3, attention_head_dim=24, num_attention_heads=1,
         axes_dims_rope=(4, 8, 6, 6), mlp_ratio=2.5, patch_size=2, joint_attention_dim=10), 5, 2, 3, [0.5, 0.25]),
}


def _reference(tmp_path, kwargs):
  torch.manual_seed(0)
  module = diffusers.Flux2Transformer2DModel(**kwargs).eval()
  with torch.no_grad():
    for parameter in module.parameters():
      if parameter.ndim == 1:  # the QK-norm weights are ones at init: make them matter
        parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
  module.save_pretrained(str(tmp_path))
  return module


def _inputs(config, height, width, text_len, sigma, seed=0):
  rng = np.random.default_rng(seed)
  batch = len(sigma)
  img = rng.standard_normal((batch, height * width, config.in_channels)).astype(np.float32)
  txt = rng.standard_normal((batch, text_len, config.text_dim)).astype(np.float32)
  return img, txt, np.asarray(sigma, np.float32), np.linspace(1.0, 4.0, batch).astype(np.float32)


def _compare(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
  assert error < 1e-5, error
  assert np.max(np.abs(ours - reference)) < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_flux2_matches_diffusers_flux2_transformer(tmp_path, case):
  kwargs, height, width, text_len, sigma = CASES[case]
  module = _reference(tmp_path, kwargs)
  config, params = mmdit.load_params(str(tmp_path))
  img, txt, sigma, guidance = _inputs(config, height, width, text_len, sigma)
  img_ids, txt_ids = flux_position_ids(height, width, text_len)
  with torch.no_grad():
    expected = module(
      hidden_states=torch.from_numpy(img), encoder_hidden_states=torch.from_numpy(txt),
      timestep=torch.from_numpy(sigma), img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
      guidance=torch.from_numpy(guidance) if config.guidance_embeds else None,
    ).sample.numpy()
  out = jax.jit(mmdit.MMDiT(config).apply)({"params": params}, img, txt, sigma, img_ids, txt_ids, None, guidance)
  assert out.shape == (len(sigma), height * width, config.out_features)
  _compare(out, expected)


def test_flux2_text_mask_and_missing_guidance_match_diffusers(tmp_path):
  """A key mask passed to every attention (`joint_attention_kwargs['attention_mask']`), and guidance=None on a
  guidance-embedding model (the reference then embeds the timestep alone)."""
  module = _reference(tmp_path, dict(_BASE, num_layers=2, num_single_layers=2))
  config, params = mmdit.load_params(str(tmp_path))
  height, width, text_len = 2, 3, 6
  img, txt, sigma, _ = _inputs(config, height, width, text_len, [0.7, 0.1], seed=1)
  txt_mask = np.arange(text_len)[None] < np.array([[6], [2]])
  img_ids, txt_ids = flux_position_ids(height, width, text_len)
  joint_mask = np.concatenate([txt_mask, np.ones((2, height * width), bool)], axis=1)
  with torch.no_grad():
    expected = module(
      hidden_states=torch.from_numpy(img), encoder_hidden_states=torch.from_numpy(txt),
      timestep=torch.from_numpy(sigma), img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
      guidance=None, joint_attention_kwargs={"attention_mask": torch.from_numpy(joint_mask)[:, None, None, :]},
    ).sample.numpy()
  out = jax.jit(mmdit.MMDiT(config).apply)({"params": params}, img, txt, sigma, img_ids, txt_ids, txt_mask, None)
  _compare(out, expected)
