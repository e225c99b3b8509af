"""A trained policy as a Hugging Face checkpoint directory that transformers and vLLM load as they are.

    export_hf("runs/grpo/export", config, params, processor)

Writes, next to `save_params`' `config.json` and safetensors (atomic, sharded at 5 GB), what a hub repository of
the family holds besides the weights: the tokenizer files and chat template (the processor's own tokenizer,
`save_pretrained`), `preprocessor_config.json` (the image options the model was trained with), and
`generation_config.json` (the stop ids and pad id; greedy unless `sampling` says otherwise). The directory is
written into a temporary sibling and renamed into place, so a reader never sees half an export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

from jaxagents.models.qwen_vl.config import QwenVLConfig
from jaxagents.models.qwen_vl.convert import save_params
from jaxagents.models.qwen_vl.preprocess import ImageOptions
from jaxagents.models.qwen_vl.processor import Processor

_PROCESSOR_CLASS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                    "qwen3_vl": "Qwen3VLProcessor"}


def image_options_to_hf(options: ImageOptions, family: str) -> dict[str, Any]:
  """`preprocessor_config.json` of `options` (the keys `ImageOptions.from_hf` reads back)."""
  return {
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": _PROCESSOR_CLASS[family],
    "min_pixels": options.min_pixels, "max_pixels": options.max_pixels,
    "size": {"shortest_edge": options.min_pixels, "longest_edge": options.max_pixels},
    "patch_size": options.patch_size, "temporal_patch_size": options.temporal_patch_size,
    "merge_size": options.merge_size, "image_mean": list(options.mean), "image_std": list(options.std),
    "resample": options.resample, "rescale_factor": options.rescale_factor, "do_convert_rgb": options.convert_rgb,
    "do_resize": True, "do_rescale": True, "do_normalize": True,
  }


def export_hf(directory: str, config: QwenVLConfig, params: Any, processor: Processor, *, dtype: Any = None,
              sampling: dict[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes `params` (unboxed or `LogicallyPartitioned`, on any devices) as an HF checkpoint directory.

  Args:
    directory: the export directory; refused if it exists and is not empty unless `overwrite`.
    config, params: the model.
    processor: the tokenizer, chat template, image options and stop ids to ship with it.
    dtype: the stored dtype (e.g. jnp.bfloat16); None keeps the params' dtype (float32 reproduces our logits).
    sampling: generation defaults written to generation_config.json, e.g. dict(do_sample=True, temperature=0.7).
  Returns:
    `directory`.
  """
  if processor.config.image_token_id != config.image_token_id or processor.config.family != config.family:
    ours = (processor.config.family, processor.config.image_token_id)
    raise ValueError(f"processor: its config (family, image token) {ours} is not the model's "
                     f"{(config.family, config.image_token_id)}")
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"directory: {directory} exists and is not empty; pass overwrite=True to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    save_params(params, config, staging, dtype=dtype)
    processor.tokenizer.save_pretrained(staging)
    _write_json(os.path.join(staging, "preprocessor_config.json"),
                image_options_to_hf(processor.image_options, config.family))
    video = {**image_options_to_hf(processor.video_options, config.family),
             **{k: v for k, v in dataclasses.asdict(processor.video_options).items()
                if k in ("fps", "min_frames", "max_frames", "num_frames", "do_sample_frames")}}
    video["video_processor_type"] = video.pop("image_processor_type").replace("Image", "Video")
    _write_json(os.path.join(staging, "video_preprocessor_config.json"), video)
    stop_ids = list(processor.stop_ids)
    _write_json(os.path.join(staging, "generation_config.json"),
                {"eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0], "pad_token_id": processor.pad_id,
                 "do_sample": False, **(sampling or {})})
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
