"""Multi-turn rollouts: a policy plays a batch of `Environment` episodes turn by turn, and the record is laid out so
that one teacher-forced pass (`scoring.completion_logprobs`) rescores every token the policy sampled.

Each turn, the prompts of the unfinished episodes go through ONE `generate` call; each response is decoded with the
caller's `TextCodec`, parsed by the environment (`Environment.parse_action`) and stepped. An unparseable or illegal
action is not an error: the environment's refusal is the next observation (`StepResult.valid` False).

Two context modes (`ContextMode`):

* "concat": the prompt of turn t is the whole conversation so far, instructions, o_0, a_0, o_1, a_1, ..., o_t
  (RAGEN, github.com/RAGEN-AI/RAGEN, `ragen/llm_agent/ctx_manager.py` `ContextManager.get_lm_inputs`). Training
  scores ONE sequence per episode, the conversation up to the last response, with `policy_mask` True exactly on the
  response tokens (RAGEN's `get_masks_and_scores` response mask on the assistant turns). A turn is played only if
  its prompt plus `max_new_tokens` fits in `context_budget` tokens; otherwise the episode ends there, truncated
  (`Episode.end == "budget"`, the environment not done). RAGEN caps the history in turns (`max_context_window`);
  the token budget that ends the episode is our choice (it applies in window mode too, where prompts stay short).
* "window": the prompt of turn t is the instructions, the last `history` (observation, action) pairs and o_t
  (verl-agent, github.com/langfengQ/verl-agent, `agent_system/environments/env_manager.py` `build_text_obs` over
  `agent_system/memory/memory.py` `SimpleMemory.fetch`; GiGPO, arXiv 2505.10978, Sec. 4). Its length does not grow
  with the turn count. Training has one row per (episode, turn), prompt + response with the mask on the response,
  and `row_episode` / `row_turn` for step-level credit (`rl.gigpo`, `step_values_to_tokens`). History entries show
  the parsed action, or the response text when it held none.

Token identity: every segment (instructions, each observation, each history action) is encoded on its own and
responses are kept as the sampled token ids, never decoded and re-encoded, so training scores exactly the tokens
the sampler conditioned on. (RAGEN re-tokenizes the chat text, whose tokens can split differently from the sampled
ones.) Response text for `parse_action` drops stop tokens.

Shapes: each turn's prompt batch is right-padded to a length bucket (a multiple of `length_multiple`) and its rows
to a power of two, at least `min_rows` (placeholder rows hold one pad token; their samples are discarded), so
`generate` compiles once per bucket, not once per turn.

KV cache: by default every turn prefills its whole prompt. With `cache_slots` (concat mode), each episode's cache
is kept across turns (`decode.generate_continued`): the prefix is unchanged, so a turn prefills only what it adds,
the previous response's last token (sampled, never fed) and the new observation. The batch then keeps one row per
episode for the whole rollout (a finished episode's row holds a one-token placeholder), and when a turn's tokens no
longer fit in the slots left, that turn re-prefills every row's whole conversation into the cleared cache.
`MultiTurnRollout.metrics` counts the tokens prefilled per turn and the resets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import jax
import numpy as np

from jaxagents.generation.decode import DecodeCache, generate, generate_continued
from jaxagents.generation.inputs import TokenInputs
from jaxagents.generation.sampling import SamplingConfig

if TYPE_CHECKING:  # generation depends on no environment code, only on the `EnvBatch` interface
  from jaxagents.envs.base import EnvBatch, Observation

ContextMode = Literal["concat", "window"]


class TextCodec(Protocol):
  """A tokenizer's text side: `encode(text) -> token ids` and `decode(token ids) -> text` (no special tokens added)."""

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Turn:
  """One turn of one episode.

  Attributes:
    observation_ids: [n_obs] the tokens of o_t as it appears in prompts (`observation_template`).
    prompt_ids: [P] the whole prompt this turn was sampled from.
    response_ids: [n] the sampled tokens, up to and including a stop token.
    sample_logprobs: [n] float32 their log-probs under the sampling distribution.
    response: the decoded response (stop tokens dropped); action: `parse_action` of it (None: none found).
    valid, reward, info: the environment's `StepResult` for this action.
  """

  observation_ids: np.ndarray
  prompt_ids: np.ndarray
  response_ids: np.ndarray
  sample_logprobs: np.ndarray
  response: str
  action: str | None
  valid: bool
  reward: float
  info: Mapping[str, Any]


@dataclasses.dataclass
class Episode:
  """observations: o_0 .. o_n (n = len(turns)); end: "done" (the environment finished), "budget" (concat context
  budget: truncated) or "max_turns"."""

  seed: int
  observations: list[Observation]
  turns: list[Turn]
  done: bool = False
  success: bool = False
  end: str = ""

  @property
  def truncated(self) -> bool:
    return self.end == "budget"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainingRows:
  """N rows of length S for `completion_logprobs(model, params, inputs, policy_mask, sampling)`.

  concat: N = E (one conversation per episode, right-padded); window: N = the number of turns played (each turn's
  prompt left-padded to L, then its response, as `TokenInputs.with_completions` lays them out).

  Attributes:
    inputs: `TokenInputs` [N, S].
    policy_mask: [N, S] bool, True exactly at the policy's sampled tokens.
    sample_logprobs: [N, S] float32, the sampler's log-prob at each policy token (0 elsewhere).
    token_turns: [N, S] int32, the turn of each policy token (-1 elsewhere).
    row_episode: [N] int32 the episode of each row; row_turn: [N] int32 its turn (-1 in concat: all of them).
  """

  inputs: TokenInputs
  policy_mask: np.ndarray
  sample_logprobs: np.ndarray
  token_turns: np.ndarray
  row_episode: np.ndarray
  row_turn: np.ndarray


@dataclasses.dataclass(frozen=True)
class MultiTurnRollout:
  """E episodes of at most max_turns turns.

  Attributes:
    mode: the `ContextMode`; instruction_ids: the instruction tokens that open every prompt.
    episodes: the per-episode, per-turn record (`Episode`, `Turn`).
    rewards: [E, max_turns] float32 environment rewards (0 after an episode's last turn).
    step_mask: [E, max_turns] bool, True at the turns played; valid: [E, max_turns] bool, the action was valid.
    num_turns: [E] int32; done, success, truncated: [E] bool.
    training: `TrainingRows`.
    metrics: "prefill_tokens" [turns run] int, the real (unpadded) tokens prefilled each turn; "cache_resets",
      the turns that re-prefilled whole conversations into a cleared cache (`cache_slots`).
  """

  mode: str
  instruction_ids: np.ndarray
  episodes: list[Episode]
  rewards: np.ndarray
  step_mask: np.ndarray
  valid: np.ndarray
  num_turns: np.ndarray
  done: np.ndarray
  success: np.ndarray
  truncated: np.ndarray
  training: TrainingRows
  metrics: dict[str, Any]


def multi_turn_rollout(
  model: Any,
  params: Any,
  envs: EnvBatch,
  seeds: Sequence[int],
  codec: TextCodec,
  *,
  mode: ContextMode,
  max_turns: int,
  sampling: SamplingConfig,
  key: jax.Array,
  instructions: str | None = None,
  context_budget: int | None = None,
  history: int = 2,
  observation_template: str = "{observation}",
  action_template: str = "{action}",
  length_multiple: int = 16,
  min_rows: int = 1,
  cache_slots: int | None = None,
  cache_dtype: Any = None,
) -> MultiTurnRollout:
  """Plays `len(envs)` episodes, reset with `seeds`, for at most `max_turns` turns each (module docstring).

  Args:
    model, params: a decoder with the `generate` protocol whose inputs are `TokenInputs` (`CausalLM`).
    envs: the episodes' environments (stepped one by one: an episode truncated by the budget is not stepped again).
    seeds: one per episode.
    codec: the tokenizer's text side.
    mode: "concat" or "window".
    max_turns: the most turns an episode plays.
    sampling: the sampler (`max_new_tokens` per turn); its `pad_id` pads, its `eos_ids` end a response.
    key: PRNG key, split once per turn (a fixed key gives the same rollout).
    instructions: the text that opens every prompt (default: the first environment's `instructions`).
    context_budget: the most tokens a turn may hold, prompt plus `max_new_tokens` (None: no limit).
    history: window mode: the number of past (observation, action) pairs in a prompt.
    observation_template: how o_t appears, `str.format` fields `observation` (its text) and `turn`; a chat model
      puts its user/assistant markers here.
    action_template: how a past action appears in window mode, field `action`.
    length_multiple: prompts and training rows are padded to a multiple of this many tokens.
    min_rows: each turn's batch is padded to a power of two rows, at least this many (the episode count: one
      compiled program serves every turn).
    cache_slots: concat mode: keep every episode's KV cache across turns in this many slots per row (module
      docstring); needs `context_budget`, and room for the longest conversation it allows. None: no reuse.
    cache_dtype: passed to `generate`.
  """
  if mode not in get_args(ContextMode):
    raise ValueError(f"mode: expected one of {get_args(ContextMode)}, got {mode!r}")
  if max_turns < 1:
    raise ValueError(f"max_turns: expected >= 1, got {max_turns}")
  if history < 0:
    raise ValueError(f"history: expected >= 0, got {history}")
  if length_multiple < 1 or min_rows < 1:
    raise ValueError(f"length_multiple / min_rows: expected >= 1, got {length_multiple} / {min_rows}")
  if context_budget is not None and context_budget < 1:
    raise ValueError(f"context_budget: expected a positive token count or None, got {context_budget}")
  if cache_slots is not None:
    if mode != "concat" or context_budget is None:
      raise ValueError(f"cache_slots: needs mode 'concat' and a context_budget, got mode {mode!r}, context_budget "
                       f"{context_budget}")
    longest = _round_up(context_budget - sampling.max_new_tokens, length_multiple) + sampling.max_new_tokens
    if cache_slots < longest:
      raise ValueError(f"cache_slots: expected >= {longest} (a whole conversation within context_budget, padded to "
                       f"length_multiple, plus max_new_tokens), got {cache_slots}")
  seeds = [int(seed) for seed in seeds]
  first = envs.reset(seeds)
  if instructions is None:
    instructions = envs.envs[0].instructions
  instruction_ids = _ids(codec.encode(instructions) if instructions else [])
  episodes = [Episode(seed, [observation], []) for seed, observation in zip(seeds, first, strict=True)]
  stop = set(sampling.eos_ids)
  past, prefill_tokens, resets = None, [], 0

  def observation_ids(episode: Episode, turn: int) -> np.ndarray:
    return _ids(codec.encode(observation_template.format(observation=episode.observations[turn].text, turn=turn)))

  for turn in range(max_turns):
    rows, prompts, observations = [], [], []
    for index, episode in enumerate(episodes):
      if episode.end:
        continue
      current = observation_ids(episode, turn)
      if mode == "concat":
        earlier = [piece for entry in episode.turns for piece in (entry.observation_ids, entry.response_ids)]
      else:
        earlier = []
        for old in range(max(turn - history, 0), turn):
          entry = episode.turns[old]
          action = entry.action if entry.action is not None else entry.response
          earlier += [observation_ids(episode, old), _ids(codec.encode(action_template.format(action=action)))]
      prompt = np.concatenate([instruction_ids, *earlier, current])
      if context_budget is not None and len(prompt) + sampling.max_new_tokens > context_budget:
        episode.end = "budget"
        continue
      rows.append(index)
      prompts.append(prompt)
      observations.append(current)
    if not rows:
      break
    key, turn_key = jax.random.split(key)
    if cache_slots is None:
      tokens, logprobs, lengths = _generate(model, params, prompts, sampling, turn_key, length_multiple, min_rows,
                                            cache_dtype)
      prefill_tokens.append(sum(len(p) for p in prompts))
    else:
      past, reset, prefilled, (tokens, logprobs, lengths) = _generate_reusing(
        model, params, episodes, rows, prompts, past, sampling, turn_key, length_multiple, min_rows, cache_slots,
        cache_dtype)
      resets += reset
      prefill_tokens.append(prefilled)
    for row, (index, prompt, current) in enumerate(zip(rows, prompts, observations, strict=True)):
      episode, env = episodes[index], envs.envs[index]
      response_ids = tokens[row, :lengths[row]].astype(np.int32)
      response = codec.decode([int(t) for t in response_ids if int(t) not in stop])
      action = env.parse_action(response)
      result = env.step(action)
      episode.turns.append(Turn(current, prompt, response_ids, logprobs[row, :lengths[row]].astype(np.float32),
                                response, action, bool(result.valid), float(result.reward), dict(result.info)))
      episode.observations.append(result.observation)
      if result.done:
        episode.end = "done"
  for episode, env in zip(episodes, envs.envs, strict=True):
    episode.end = episode.end or "max_turns"
    episode.done, episode.success = bool(env.done), bool(env.success)
  metrics = {"prefill_tokens": np.array(prefill_tokens, np.int64), "cache_resets": resets}
  return _record(mode, instruction_ids, episodes, max_turns, sampling, length_multiple, metrics)


def step_values_to_tokens(training: TrainingRows, step_values: Any) -> np.ndarray:
  """Broadcasts per-step values [E, max_turns] (e.g. GiGPO advantages) onto the policy tokens: [N, S], 0 elsewhere."""
  step_values = np.asarray(step_values)
  turns = np.maximum(training.token_turns, 0)
  if step_values.ndim != 2 or (training.token_turns.size and training.token_turns.max() >= step_values.shape[1]):
    raise ValueError(f"step_values: expected [E, max_turns] covering every turn, got shape {step_values.shape}")
  values = step_values[training.row_episode[:, None], turns]
  return np.where(training.policy_mask, values, 0).astype(step_values.dtype)


def _ids(ids: Sequence[int]) -> np.ndarray:
  return np.asarray(ids, np.int32).reshape(-1)


def _round_up(n: int, multiple: int) -> int:
  return max(-(-n // multiple), 1) * multiple


def _generate(model, params, prompts, sampling, key, length_multiple, min_rows, cache_dtype):
  """`generate` on right-padded prompt rows in shape buckets; returns host (tokens, logprobs, lengths) of the rows."""
  rows = len(prompts)
  bucket_rows = max(1 << (rows - 1).bit_length(), min_rows)
  length = _round_up(max(len(p) for p in prompts), length_multiple)
  ids = np.full((bucket_rows, length), sampling.pad_id, np.int32)
  mask = np.zeros((bucket_rows, length), np.int32)
  mask[rows:, 0] = 1  # placeholder rows: one pad token
  for row, prompt in enumerate(prompts):
    ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, 1
  out = generate(model, params, TokenInputs.from_ids(ids, mask), sampling=sampling, key=key, cache_dtype=cache_dtype)
  tokens, logprobs, lengths = jax.device_get((out.tokens, out.logprobs, out.lengths))
  return np.asarray(tokens)[:rows], np.asarray(logprobs)[:rows], np.asarray(lengths)[:rows]


def _generate_reusing(model, params, episodes, rows, prompts, past, sampling, key, length_multiple, min_rows,
                      cache_slots, cache_dtype):
  """`generate_continued` with one cache row per episode: each row prefills what its conversation added since the
  last turn, or, on the first turn and when that does not fit, its whole prompt into the cleared cache.

  Returns (the cache, 1 if it was reset else 0, the real tokens prefilled, host (tokens, logprobs, lengths) of
  `rows`).
  """
  batch = max(1 << (len(episodes) - 1).bit_length(), min_rows)
  steps = sampling.max_new_tokens
  new = {}  # episode -> (the tokens to prefill, the position of the first)
  for index, prompt in zip(rows, prompts, strict=True):
    turns = episodes[index].turns
    if past is not None and turns:  # the cache holds the last prompt and response, but the response's last token
      start = len(turns[-1].prompt_ids) + len(turns[-1].response_ids) - 1
      new[index] = (prompt[start:], start)
  width = 1 << (max((len(t) for t, _ in new.values()), default=1) - 1).bit_length()
  reset = past is None or len(new) < len(rows) or int(past.next_slot) + width + steps > cache_slots
  if reset:
    new = {index: (prompt, 0) for index, prompt in zip(rows, prompts, strict=True)}
    width = _round_up(max(len(p) for p in prompts), length_multiple)
    past = DecodeCache.empty(model, batch, cache_slots, cache_dtype) if past is None else past.cleared()
  ids = np.full((batch, width), sampling.pad_id, np.int32)
  mask = np.zeros((batch, width), np.int32)
  positions = np.zeros((batch, width), np.int32)
  mask[:, 0] = 1  # placeholder rows (finished episodes, batch padding): one pad token
  for index, (tokens, start) in new.items():
    ids[index, :len(tokens)], mask[index, :len(tokens)] = tokens, 1
    positions[index, :len(tokens)] = start + np.arange(len(tokens))
  out, past = generate_continued(model, params, TokenInputs(ids, mask, positions), past, sampling=sampling, key=key)
  tokens, logprobs, lengths = (np.asarray(x)[rows] for x in jax.device_get((out.tokens, out.logprobs, out.lengths)))
  return past, int(reset), sum(len(t) for t, _ in new.values()), (tokens, logprobs, lengths)


def _record(mode, instruction_ids, episodes, max_turns, sampling, length_multiple, metrics) -> MultiTurnRollout:
  count = len(episodes)
  rewards = np.zeros((count, max_turns), np.float32)
  step_mask = np.zeros((count, max_turns), bool)
  valid = np.zeros((count, max_turns), bool)
  for index, episode in enumerate(episodes):
    for turn, entry in enumerate(episode.turns):
      rewards[index, turn], step_mask[index, turn], valid[index, turn] = entry.reward, True, entry.valid
  training = (_concat_rows if mode == "concat" else _window_rows)(instruction_ids, episodes, sampling, length_multiple)
  return MultiTurnRollout(
    mode, instruction_ids, episodes, rewards, step_mask, valid,
    np.array([len(e.turns) for e in episodes], np.int32), np.array([e.done for e in episodes]),
    np.array([e.success for e in episodes]), np.array([e.truncated for e in episodes]), training, metrics,
  )


def _concat_rows(instruction_ids, episodes, sampling, length_multiple) -> TrainingRows:
  """One right-padded conversation per episode: instructions, then (o_t, a_t) for every turn played."""
  pieces = []
  for episode in episodes:
    ids, policy, logprobs, turns = [instruction_ids], [np.zeros(len(instruction_ids), bool)], [], []
    logprobs.append(np.zeros(len(instruction_ids), np.float32))
    turns.append(np.full(len(instruction_ids), -1, np.int32))
    for turn, entry in enumerate(episode.turns):
      for segment, is_policy in ((entry.observation_ids, False), (entry.response_ids, True)):
        ids.append(segment)
        policy.append(np.full(len(segment), is_policy))
        logprobs.append(entry.sample_logprobs if is_policy else np.zeros(len(segment), np.float32))
        turns.append(np.full(len(segment), turn if is_policy else -1, np.int32))
    pieces.append(tuple(np.concatenate(x) for x in (ids, policy, logprobs, turns)))
  length = _round_up(max(len(p[0]) for p in pieces), length_multiple)
  count = len(episodes)
  ids = np.full((count, length), sampling.pad_id, np.int32)
  mask = np.zeros((count, length), np.int32)
  policy = np.zeros((count, length), bool)
  logprobs = np.zeros((count, length), np.float32)
  turns = np.full((count, length), -1, np.int32)
  for row, (row_ids, row_policy, row_logprobs, row_turns) in enumerate(pieces):
    n = len(row_ids)
    ids[row, :n], mask[row, :n], policy[row, :n] = row_ids, 1, row_policy
    logprobs[row, :n], turns[row, :n] = row_logprobs, row_turns
  return TrainingRows(TokenInputs.from_ids(ids, mask), policy, logprobs, turns, np.arange(count, dtype=np.int32),
                      np.full(count, -1, np.int32))


def _window_rows(instruction_ids, episodes, sampling, length_multiple) -> TrainingRows:
  """One row per (episode, turn): the turn's prompt, left-padded to L, then its response (`with_completions`)."""
  entries = [(index, turn, entry) for index, episode in enumerate(episodes) for turn, entry in enumerate(episode.turns)]
  steps = sampling.max_new_tokens
  if not entries:
    empty = np.zeros((0, length_multiple + steps), np.int32)
    return TrainingRows(TokenInputs.from_ids(empty, empty), empty.astype(bool), empty.astype(np.float32), empty - 1,
                        np.zeros(0, np.int32), np.zeros(0, np.int32))
  length = _round_up(max(len(entry.prompt_ids) for _, _, entry in entries), length_multiple)
  count = len(entries)
  ids = np.full((count, length), sampling.pad_id, np.int32)
  mask = np.zeros((count, length), np.int32)
  tokens = np.full((count, steps), sampling.pad_id, np.int32)
  logprobs = np.zeros((count, length + steps), np.float32)
  lengths = np.zeros(count, np.int32)
  for row, (_, _, entry) in enumerate(entries):
    n, m = len(entry.prompt_ids), len(entry.response_ids)
    ids[row, length - n:], mask[row, length - n:] = entry.prompt_ids, 1
    tokens[row, :m], lengths[row] = entry.response_ids, m
    logprobs[row, length:length + m] = entry.sample_logprobs
  inputs, policy = TokenInputs.from_ids(ids, mask).with_completions(tokens, lengths, sampling.pad_id)
  row_episode = np.array([index for index, _, _ in entries], np.int32)
  row_turn = np.array([turn for _, turn, _ in entries], np.int32)
  turns = np.where(policy, row_turn[:, None], -1).astype(np.int32)
  return TrainingRows(inputs, np.asarray(policy), logprobs, turns, row_episode, row_turn)
