"""Released Qwen-VL shapes as transformers config dicts (the values of the hub `config.json` files), for
`QwenVLConfig.from_hf`, full-size shape tests (`jax.eval_shape`) and benchmarks with random weights.

Sizes: Qwen2/2.5-VL-7B 8.29B parameters, 0.68B of them vision; Qwen3-VL-8B 8.767B, 0.576B vision. Qwen3-VL-8B's
`intermediate_size` 12288 is a reconstruction, not read from its hub file: it reproduces the published parameter
count, while the transformers class default 22016 does not.
"""

_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
               vision_end_token_id=151653)
_QWEN2_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                   num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, hidden_act="silu",
                   rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})

QWEN2_VL_7B = dict(
  model_type="qwen2_vl", tie_word_embeddings=False, **_TOKENS, text_config=_QWEN2_TEXT,
  vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                     temporal_patch_size=2, spatial_merge_size=2, in_channels=3, hidden_act="quick_gelu"),
)

QWEN2_5_VL_7B = dict(
  model_type="qwen2_5_vl", tie_word_embeddings=False, **_TOKENS, text_config=_QWEN2_TEXT,
  vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                     patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
)

QWEN3_VL_8B = dict(
  model_type="qwen3_vl", tie_word_embeddings=False, **_TOKENS,
  text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                   hidden_act="silu", attention_bias=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                    "mrope_interleaved": True}),
  vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                     patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                     num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24],
                     hidden_act="gelu_pytorch_tanh"),
)

PRESETS = {"qwen2_vl_7b": QWEN2_VL_7B, "qwen2_5_vl_7b": QWEN2_5_VL_7B, "qwen3_vl_8b": QWEN3_VL_8B}
