"""diffusers `AutoencoderKLFlux2` references for the VAE tests: tiny models with random weights and random
batch-norm statistics, written with `save_pretrained` (fp32, CPU, never downloaded)."""

import numpy as np
import pytest

from jaxagents.models.vae import Flux2VAEConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def randomize(model, seed: int = 0):
  """Every parameter and both batch-norm statistics random and away from their defaults (norm scales around 1,
  projections scaled by 1/sqrt(fan_in) so activations stay O(1) through the network)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.2 * noise)
      elif p.ndim > 1:
        p.copy_(noise / np.sqrt(p[0].numel()))
      else:
        p.copy_(0.2 * noise)
    model.bn.running_mean.copy_(torch.randn(model.bn.running_mean.shape, generator=generator))
    model.bn.running_var.copy_(0.1 + torch.rand(model.bn.running_var.shape, generator=generator) * 3)
    model.bn.num_batches_tracked.fill_(7)
  return model.eval()


def reference(config: Flux2VAEConfig, seed: int = 0):
  """The diffusers model of `config` (built from our `to_diffusers()` dict), randomised."""
  return randomize(diffusers.AutoencoderKLFlux2.from_config(config.to_diffusers()), seed)


def saved(config: Flux2VAEConfig, directory, seed: int = 0):
  """(reference model, directory) after `save_pretrained(directory)`."""
  model = reference(config, seed)
  model.save_pretrained(str(directory), safe_serialization=True)
  return model, directory


def nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def rel_err(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
