"""Tiny Qwen-VL configs and randomized HF reference models for parity tests (no downloads)."""

import copy

TOK = dict(image_token_id=254, video_token_id=255, vision_start_token_id=252, vision_end_token_id=253)
TEXT_Q2 = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=1024, pad_token_id=249,
               bos_token_id=249, eos_token_id=251,
               rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
QWEN2_VL = dict(model_type="qwen2_vl", tie_word_embeddings=False, **TOK, text_config=TEXT_Q2,
                vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                                   temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                                   hidden_act="quick_gelu"))
QWEN2_5_VL = dict(model_type="qwen2_5_vl", tie_word_embeddings=False, **TOK, text_config=TEXT_Q2,
                  vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                     patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                                     window_size=56, fullatt_block_indexes=[1, 3], tokens_per_second=2,
                                     hidden_act="silu"))
QWEN3_VL = dict(model_type="qwen3_vl", tie_word_embeddings=True, **TOK,
                text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                                 max_position_embeddings=1024, pad_token_id=249, attention_bias=False,
                                 rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                  "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
                vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                   patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                                   num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
                                   hidden_act="gelu_pytorch_tanh"))
TINY = {"qwen2_vl": QWEN2_VL, "qwen2_5_vl": QWEN2_5_VL, "qwen3_vl": QWEN3_VL}


def with_changes(family, text=None, vision=None):
  """A copy of the tiny `family` config dict with `text` / `vision` entries updated."""
  config = copy.deepcopy(TINY[family])
  config["text_config"].update(text or {})
  config["vision_config"].update(vision or {})
  return config


def hf_config(family, config=None):
  """The transformers config object of a tiny family config (`config`, default `TINY[family]`; eager attention)."""
  import transformers

  cls = {"qwen2_vl": transformers.Qwen2VLConfig, "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
         "qwen3_vl": transformers.Qwen3VLConfig}[family]
  kwargs = copy.deepcopy(TINY[family] if config is None else config)
  kwargs.pop("model_type")
  config = cls(**kwargs)
  config._attn_implementation = "eager"
  return config


def hf_model(family, seed=0, config=None):
  """A tiny HF model (of `config`, default `TINY[family]`) with every tensor re-initialised (N(0, 0.2^2);
  norms 1 + N(0, 0.1^2)).

  HF's own init leaves biases at 0 and norms at 1, which would let a converter that drops them pass.
  """
  import torch
  import transformers

  cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
         "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
         "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
  torch.manual_seed(seed)
  model = cls(hf_config(family, config)).eval()
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if "norm" in name or "ln_q" in name:
        tensor.copy_(1 + 0.1 * torch.randn_like(tensor)) if name.endswith("weight") else tensor.normal_(0, 0.1)
      elif tensor.is_floating_point():
        tensor.normal_(0, 0.2)
  return model


PAD, VS, VE, IMG, VID = 249, 252, 253, 254, 255
IMAGE_GRIDS = [[1, 4, 6], [1, 6, 4], [1, 2, 2]]
VIDEO_GRIDS = [[2, 4, 4], [3, 2, 4]]


def left_pad(rows, pad=PAD):
  """Left-pads token rows to one length: (input_ids [B, L] int64, attention_mask [B, L] int64)."""
  import numpy as np

  length = max(len(r) for r in rows)
  ids = np.full((len(rows), length), pad, np.int64)
  mask = np.zeros((len(rows), length), np.int64)
  for b, row in enumerate(rows):
    ids[b, length - len(row):] = row
    mask[b, length - len(row):] = 1
  return ids, mask


def batch(family, kind, seed=0):
  """The parity inputs: kind 'text', 'images' or 'video' -> dict of numpy arrays in HF's argument names.

  Includes `mm_token_type_ids` (1 at image pads, 2 at video pads) and, for Qwen2.5-VL video,
  `second_per_grid_ts`. Pixel values are random normals of the right patch width.
  """
  import numpy as np

  rng = np.random.default_rng(seed)
  patch_dim = 3 * 2 * (16 if family == "qwen3_vl" else 14) ** 2
  out = {}
  if kind == "text":
    rows = [list(range(5, 12)), [12, 13, 14]]
  elif kind == "images":
    rows = [[5, 6, VS, *[IMG] * 6, VE, 7, VS, *[IMG] * 6, VE, 8, 9], [10, VS, IMG, VE, 11]]
    out["pixel_values"] = rng.standard_normal((52, patch_dim)).astype(np.float32)
    out["image_grid_thw"] = np.array(IMAGE_GRIDS, np.int64)
  elif kind == "video":
    out["pixel_values_videos"] = rng.standard_normal((56, patch_dim)).astype(np.float32)
    out["video_grid_thw"] = np.array(VIDEO_GRIDS, np.int64)
    if family == "qwen3_vl":  # one <t seconds> VS pads VE block per frame group (`Qwen3VLProcessor`), inside VS ... VE
      def video(t, hw):
        return [tok for f in range(t) for tok in (20 + f, 21, VS, *[VID] * (hw // 4), VE)]
      rows = [[5, VS, *video(2, 16), VE, 6], [9, VS, *video(3, 8), VE, 10]]
    else:
      rows = [[5, VS, *[VID] * 8, VE, 6, 7, 8], [9, VS, *[VID] * 6, VE, 10]]
      if family == "qwen2_5_vl":
        out["second_per_grid_ts"] = np.array([1.0, 0.5], np.float32)
  else:
    raise ValueError(kind)
  ids, mask = left_pad(rows)
  out.update(input_ids=ids, attention_mask=mask,
             mm_token_type_ids=np.where(ids == IMG, 1, np.where(ids == VID, 2, 0)).astype(np.int64))
  return out


def hf_logits(model, inputs):
  """fp32 logits [B, L, V] of an HF model on `batch()` inputs, plus its (3, B, L) position ids."""
  import torch

  kwargs = {k: torch.from_numpy(v) for k, v in inputs.items()}
  model.model.rope_deltas = None  # HF caches it between calls
  with torch.no_grad():
    positions, _ = model.model.get_rope_index(
      kwargs["input_ids"], kwargs["mm_token_type_ids"], image_grid_thw=kwargs.get("image_grid_thw"),
      video_grid_thw=kwargs.get("video_grid_thw"), attention_mask=kwargs["attention_mask"],
      **({"second_per_grid_ts": kwargs["second_per_grid_ts"]} if "second_per_grid_ts" in kwargs else {}))
    model.model.rope_deltas = None
    logits = model(**kwargs).logits
  return logits.float().numpy(), positions.numpy()


# Every field `QwenVLConfig.from_hf` reads, set away from both our defaults and transformers' class defaults, so
# that a field dropped by `to_hf` / `save_params` comes back different.
_TEXT_ALL = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=3,
                 num_key_value_heads=1, rms_norm_eps=1e-5, hidden_act="gelu", max_position_embeddings=2048,
                 bos_token_id=90, eos_token_id=[91, 92], pad_token_id=93,
                 rope_parameters={"rope_type": "default", "rope_theta": 12345.0, "mrope_section": [2, 3, 3]})
_VISION_ALL = dict(depth=2, num_heads=2, patch_size=4, temporal_patch_size=1, spatial_merge_size=3, in_channels=4,
                   hidden_act="gelu", rope_parameters={"rope_type": "axial", "rope_theta": 777.0})
_TOP_ALL = dict(image_token_id=80, video_token_id=81, vision_start_token_id=82, vision_end_token_id=83,
                tie_word_embeddings=True)
EVERY_FIELD = {
  "qwen2_vl": dict(model_type="qwen2_vl", **_TOP_ALL, text_config=_TEXT_ALL,
                   vision_config=dict(_VISION_ALL, embed_dim=16, hidden_size=48, mlp_ratio=3)),
  "qwen2_5_vl": dict(model_type="qwen2_5_vl", **_TOP_ALL, text_config=_TEXT_ALL,
                     vision_config=dict(_VISION_ALL, hidden_size=16, intermediate_size=24, out_hidden_size=48,
                                        window_size=36, fullatt_block_indexes=[0], tokens_per_second=3)),
  "qwen3_vl": dict(model_type="qwen3_vl", **_TOP_ALL,
                   text_config=dict(_TEXT_ALL, head_dim=8, attention_bias=True,
                                    rope_parameters={"rope_type": "default", "rope_theta": 12345.0,
                                                     "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
                   vision_config=dict(_VISION_ALL, hidden_size=16, intermediate_size=24, out_hidden_size=48,
                                      num_position_embeddings=16, deepstack_visual_indexes=[1, 0])),
}
