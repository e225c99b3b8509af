"""GUI-Actor (Wu et al. 2025, arXiv 2506.03143; microsoft/GUI-Actor): the attention-based action head over visual
patch tokens, its multi-patch labels and loss, region inference and the grounding verifier's candidate selection.

Typical use: `logits = ActionHead().apply({'params': params}, visual_embeds, pointer_states, visual_mask)`;
training: `multi_patch_loss(logits, labels)` with `multi_patch_labels(bbox, width, height)` per pointer; inference:
`prediction_regions(patch_attention(logits)[b, k, :n], n_width, n_height)`, or `verifier_candidates` then
`select_candidate` with a verifier.
"""

from jaxagents.models.gui_actor.action_head import (
  RELEASED_KEYS,
  RELEASED_PREFIX,
  ActionHead,
  multi_patch_loss,
  patch_attention,
  released_key_shapes,
)
from jaxagents.models.gui_actor.labels import MERGE_PATCH_SIZE, multi_patch_labels, point_token_index
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
  "Region",
  "multi_patch_labels",
  "multi_patch_loss",
  "patch_attention",
  "point_token_index",
  "predict_point",
  "prediction_regions",
  "released_key_shapes",
  "select_candidate",
  "select_from_scores",
  "verifier_candidates",
  "verifier_probability",
]
