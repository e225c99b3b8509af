"""GUI-Actor (Wu et al. 2025, arXiv 2506.03143; microsoft/GUI-Actor): the attention-based action head over visual
patch tokens, the whole model (a Qwen-VL backbone + the head) and its released checkpoints, its multi-patch labels and
loss, region inference and the grounding verifier's candidate selection.

Typical use: `logits = ActionHead().apply({'params': params}, visual_embeds, pointer_states, visual_mask)`;
training: `multi_patch_loss(logits, labels)` with `multi_patch_labels(bbox, width, height)` per pointer; inference:
`prediction_regions(patch_attention(logits)[b, k, :n], n_width, n_height)`, or `verifier_candidates` then
`select_candidate` with a verifier. The whole model: `config, params = load_params(checkpoint_dir)`, then
`GUIActor(config).apply({'params': params}, inputs)` (LM and pointer logits) or `ground(GUIActor(config), params,
inputs, image_grid_thw)` (ranked regions and a point per row).
"""

from jaxagents.models.gui_actor.action_head import (
  RELEASED_KEYS,
  RELEASED_PREFIX,
  ActionHead,
  multi_patch_loss,
  patch_attention,
  released_key_shapes,
)
from jaxagents.models.gui_actor.convert import hf_to_params, load_config, load_params, params_to_hf
from jaxagents.models.gui_actor.labels import MERGE_PATCH_SIZE, multi_patch_labels, point_token_index
from jaxagents.models.gui_actor.model import (
  Grounding,
  GUIActor,
  GUIActorConfig,
  GUIActorOutput,
  gather_tokens,
  ground,
  token_counts,
)
from jaxagents.models.gui_actor.regions import (
  VERIFIER_THRESHOLD,
  VERIFIER_THRESHOLD_PRO,
  Region,
  predict_point,
  prediction_regions,
  select_candidate,
  select_from_scores,
  verifier_candidates,
  verifier_probability,
)

__all__ = [
  "MERGE_PATCH_SIZE",
  "RELEASED_KEYS",
  "RELEASED_PREFIX",
  "VERIFIER_THRESHOLD",
  "VERIFIER_THRESHOLD_PRO",
  "ActionHead",
  "GUIActor",
  "GUIActorConfig",
  "GUIActorOutput",
  "Grounding",
  "Region",
  "gather_tokens",
  "ground",
  "hf_to_params",
  "load_config",
  "load_params",
  "multi_patch_labels",
  "multi_patch_loss",
  "params_to_hf",
  "patch_attention",
  "point_token_index",
  "predict_point",
  "prediction_regions",
  "released_key_shapes",
  "select_candidate",
  "select_from_scores",
  "token_counts",
  "verifier_candidates",
  "verifier_probability",
]
