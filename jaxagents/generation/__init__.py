"""Model-agnostic sampling, decoding, scoring and group rollouts for cached decoders (QwenVL, CausalLM).

`generate` (decode.py) runs prefill + a compiled decode loop over a KV cache and returns tokens, log-probs and
lengths; `completion_logprobs` (scoring.py) recomputes log-probs teacher-forced, under the same sampling
distribution (sampling.py); `rollout` (rollout.py) samples groups and lays them out for that recompute;
`multi_turn_rollout` (multi_turn.py) plays environment episodes turn by turn (a concatenated conversation or a
sliding window of turns) and lays them out the same way. Models are reached only through the decoder protocol
(decode.py) and inputs through `PromptBatch` (inputs.py); nothing here imports a model, a task or a training loop.
"""

from jaxagents.generation.decode import DecodeCache, Generation, generate, generate_continued
from jaxagents.generation.inputs import PromptBatch, TokenInputs, roll_to_left_padding
from jaxagents.generation.multi_turn import (
  ContextMode,
  Episode,
  MultiTurnRollout,
  TextCodec,
  TrainingRows,
  Turn,
  multi_turn_rollout,
  step_values_to_tokens,
)
from jaxagents.generation.rollout import Rollout, rollout
from jaxagents.generation.sampling import SamplingConfig, choose, sampling_logits
from jaxagents.generation.scoring import completion_logprobs

__all__ = [
  "ContextMode",
  "DecodeCache",
  "Episode",
  "Generation",
  "MultiTurnRollout",
  "PromptBatch",
  "Rollout",
  "SamplingConfig",
  "TextCodec",
  "TokenInputs",
  "TrainingRows",
  "Turn",
  "choose",
  "completion_logprobs",
  "generate",
  "generate_continued",
  "multi_turn_rollout",
  "roll_to_left_padding",
  "rollout",
  "sampling_logits",
  "step_values_to_tokens",
]
