"""Tiny Qwen-VL configs (vlm.md §4) and randomized HF reference models for parity tests (no downloads)."""

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


def hf_config(family):
  """The transformers config object of a tiny family config (eager attention)."""
  import transformers

  cls = {"qwen2_vl": transformers.Qwen2VLConfig, "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
         "qwen3_vl": transformers.Qwen3VLConfig}[family]
  kwargs = copy.deepcopy(TINY[family])
  kwargs.pop("model_type")
  config = cls(**kwargs)
  config._attn_implementation = "eager"
  return config


def hf_model(family, seed=0):
  """A tiny HF model with every tensor re-initialised (vlm.md §4 harness rules: N(0, 0.2^2); norms 1 + N(0, 0.1^2)).

  HF's own init leaves biases at 0 and norms at 1, which would let a converter that drops them pass.
  """
  import torch
  import transformers

  cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
         "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
         "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
  torch.manual_seed(seed)
  model = cls(hf_config(family)).eval()
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if "norm" in name or "ln_q" in name:
        tensor.copy_(1 + 0.1 * torch.randn_like(tensor)) if name.endswith("weight") else tensor.normal_(0, 0.1)
      elif tensor.is_floating_point():
        tensor.normal_(0, 0.2)
  return model
