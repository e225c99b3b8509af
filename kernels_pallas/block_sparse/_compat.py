"""The one place that knows Pallas API names that moved between JAX releases (jax-ml/jax `docs/pallas/CHANGELOG.md`).

Supported: jax 0.10.x (CPU CI) and 0.11.x (GPU machines). Everything else in this package imports Pallas
backend modules from here, so a rename is fixed in one file.
  * Triton compiler params: `TritonCompilerParams` became `pltriton.CompilerParams` (0.7.0); passing them is
    also how a `pallas_call` is forced onto the Triton lowering since `backend=` was removed (0.9.1). The
    Triton lowering is deprecated from 0.11.0 and warns when it lowers on a GPU.
  * TPU compiler params: `TPUCompilerParams` became `pltpu.CompilerParams` (0.7.0).
  * `pltpu.InterpretParams` (the TPU interpreter that simulates VMEM/SMEM and DMAs) is optional.
  * The Mosaic GPU interpreter's `InterpretGPUParams` (simulates shared memory, TMA, barriers and warpgroups on
    the CPU) has only a private path in jax 0.10/0.11 (`jax._src.pallas.mosaic_gpu.interpret.params`); optional.
"""

from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

TritonCompilerParams = getattr(pltriton, "CompilerParams", None) or pltriton.TritonCompilerParams
TPUCompilerParams = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
TPUInterpretParams = getattr(pltpu, "InterpretParams", None)

try:
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as MosaicGPUInterpretParams
except ImportError:  # pragma: no cover - a jax without the Mosaic GPU interpreter
  MosaicGPUInterpretParams = None


def is_tpu_interpret_params(interpret) -> bool:
  """True for a `pltpu.InterpretParams` (TPU-simulating interpreter), False for bools and anything else."""
  return TPUInterpretParams is not None and isinstance(interpret, TPUInterpretParams)


__all__ = [
  "MosaicGPUInterpretParams",
  "TPUCompilerParams",
  "TPUInterpretParams",
  "TritonCompilerParams",
  "is_tpu_interpret_params",
  "pl",
  "pltpu",
]
