"""`multi_turn_rollout` on a toy "guess the hidden digit" environment with a word-level tokenizer and a tiny
`CausalLM`: the policy mask is exactly the sampled responses, environment tokens carry no gradient, the sampler's
log-probs equal a teacher-forced recompute of the whole conversation (concat, with and without a KV cache kept
across turns) or of each turn's row (window), window prompts stay bounded, the budget truncates, invalid actions
flow through, and a fixed key repeats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.envs.base import EnvBatch, Environment, Observation, StepResult
from jaxagents.generation import (
  DecodeCache,
  SamplingConfig,
  TokenInputs,
  completion_logprobs,
  generate_continued,
  multi_turn_rollout,
  step_values_to_tokens,
)
from jaxagents.rl.gigpo import gigpo_step_advantages

# Exactly the 16 ids of the shared tiny `CausalLM` (conftest `causal`).
WORDS = ("<pad>", "<eos>", "guess", "a", "digit", "higher", "lower", "correct", "invalid", *map(str, range(7)))
SAMPLING = SamplingConfig(3, temperature=0.7, top_k=6, eos_ids=(1,), pad_id=0)
SEEDS = (0, 1, 2, 3)  # step limits 1, 2, 3, 4


class WordCodec:
  def encode(self, text):
    return [WORDS.index(w) for w in text.split()]

  def decode(self, ids):
    return " ".join(WORDS[i] for i in ids)


class GuessDigit(Environment):
  """Guess the hidden digit (seed % 7); "higher"/"lower" hints; at most 1 + seed % 4 guesses, invalid ones count."""

  instructions = "guess a digit"

  def reset(self, seed):
    self.hidden, self.limit, self.steps, self._success = seed % 7, 1 + seed % 4, 0, False
    self._observation = Observation("guess a digit")
    return self._observation

  def parse_action(self, response):
    return next((w for w in response.split() if w.isdigit()), None)

  def step(self, action):
    self.steps += 1
    valid = action is not None
    if not valid:
      text = "invalid guess a digit"
    elif int(action) == self.hidden:
      text, self._success = "correct", True
    else:
      text = "higher" if self.hidden > int(action) else "lower"
    self._observation = Observation(text)
    return StepResult(self._observation, float(self._success), self.done, self._success, valid)

  def legal_actions(self):
    return [str(d) for d in range(7)]

  def snapshot(self):
    return (self.hidden, self.limit, self.steps, self._success, self._observation)

  def restore(self, snapshot):
    self.hidden, self.limit, self.steps, self._success, self._observation = snapshot

  def observe(self):
    return self._observation

  @property
  def done(self):
    return self._success or self.steps >= self.limit

  @property
  def success(self):
    return self._success


def play(causal, mode, key=1, **options):
  envs = EnvBatch(GuessDigit, len(SEEDS))
  # One (rows, length) bucket holds every turn of these short episodes: `generate` compiles once.
  out = multi_turn_rollout(causal.model, causal.params, envs, SEEDS, WordCodec(), mode=mode, max_turns=4,
                           sampling=SAMPLING, key=jax.random.key(key), length_multiple=32, min_rows=len(SEEDS),
                           **options)
  return out, envs


@pytest.fixture(scope="module")
def concat(causal):
  return play(causal, "concat")


@pytest.fixture(scope="module")
def window(causal):
  return play(causal, "window", history=1)


_score = jax.jit(completion_logprobs, static_argnums=(0, 4))


def test_concat_policy_mask_is_exactly_the_sampled_responses(concat):
  out, _ = concat
  training = out.training
  for index, episode in enumerate(out.episodes):
    ids = [out.instruction_ids] + [x for turn in episode.turns for x in (turn.observation_ids, turn.response_ids)]
    policy = [np.zeros(len(out.instruction_ids), bool)] + [
      np.full(len(x), is_response) for turn in episode.turns
      for x, is_response in ((turn.observation_ids, False), (turn.response_ids, True))]
    ids, policy = np.concatenate(ids), np.concatenate(policy)
    n = len(ids)
    np.testing.assert_array_equal(training.inputs.input_ids[index, :n], ids)
    np.testing.assert_array_equal(training.policy_mask[index, :n], policy)
    assert not training.policy_mask[index, n:].any() and not training.inputs.attention_mask[index, n:].any()
    # Each turn's prompt is the conversation before its response.
    for turn_index, turn in enumerate(episode.turns):
      start = np.flatnonzero(training.token_turns[index] == turn_index)[0]
      np.testing.assert_array_equal(turn.prompt_ids, ids[:start])
  assert training.policy_mask.sum() == sum(len(t.response_ids) for e in out.episodes for t in e.turns)


def test_concat_sampler_logprobs_equal_a_teacher_forced_recompute_of_the_conversation(causal, concat):
  out, _ = concat
  training = out.training
  assert out.num_turns.max() >= 3  # the recompute covers several turns of one sequence
  recomputed, _ = _score(causal.model, causal.params, training.inputs, training.policy_mask, SAMPLING)
  np.testing.assert_allclose(np.asarray(recomputed), training.sample_logprobs, rtol=0, atol=1e-5)
  for index, episode in enumerate(out.episodes):
    flat = np.concatenate([turn.sample_logprobs for turn in episode.turns] or [np.zeros(0)])
    np.testing.assert_array_equal(training.sample_logprobs[index][training.policy_mask[index]], flat)


def test_environment_tokens_carry_no_gradient(causal, concat):
  training = concat[0].training
  mask = jnp.asarray(training.policy_mask)

  @jax.jit
  def grads(weights):
    def loss(params):
      logp, _ = completion_logprobs(causal.model, params, training.inputs, mask, SAMPLING)
      return jnp.sum(weights * logp)
    return jax.grad(loss)(causal.params)

  base = np.where(training.policy_mask, 1.0, 0.0).astype(np.float32)
  noise = np.random.default_rng(0).normal(size=base.shape).astype(np.float32)
  off_mask = grads(base + np.where(training.policy_mask, 0.0, noise))
  on_mask = grads(base + np.where(training.policy_mask, noise, 0.0))
  reference = grads(base)
  leaves = lambda tree: jax.tree.leaves(jax.device_get(tree))
  for a, b in zip(leaves(reference), leaves(off_mask), strict=True):
    np.testing.assert_array_equal(a, b)  # weights on environment tokens change nothing
  assert any(not np.allclose(a, b) for a, b in zip(leaves(reference), leaves(on_mask), strict=True))


def test_window_prompts_stay_bounded_and_rows_recompute_to_the_sampler_logprobs(causal, concat, window):
  out, _ = window
  training = out.training
  longest_observation = max(len(t.observation_ids) for e in out.episodes for t in e.turns)
  longest_action = SAMPLING.max_new_tokens  # a history action is the parsed action or the response text
  bound = len(out.instruction_ids) + 2 * longest_observation + longest_action
  assert max(len(t.prompt_ids) for e in out.episodes for t in e.turns) <= bound
  last_concat = max(len(e.turns[-1].prompt_ids) for e in concat[0].episodes)
  assert bound < last_concat  # the concat conversation outgrows it
  # Turn 0's prompt is the instructions and o_0 only; later turns hold exactly one past (observation, action).
  for episode in out.episodes:
    for t, turn in enumerate(episode.turns):
      expected = [out.instruction_ids, turn.observation_ids]
      if t:
        past = episode.turns[t - 1]
        action = past.action if past.action is not None else past.response
        expected[1:1] = [past.observation_ids, np.asarray(WordCodec().encode(action), np.int32)]
      np.testing.assert_array_equal(turn.prompt_ids, np.concatenate(expected))
  assert len(training.row_episode) == out.num_turns.sum()
  np.testing.assert_array_equal(training.row_turn, [t for e in out.episodes for t in range(len(e.turns))])
  recomputed, _ = _score(causal.model, causal.params, training.inputs, training.policy_mask, SAMPLING)
  np.testing.assert_allclose(np.asarray(recomputed), training.sample_logprobs, rtol=0, atol=1e-5)
  assert training.policy_mask.sum() == sum(len(t.response_ids) for e in out.episodes for t in e.turns)


def test_finished_episodes_stop_being_prompted_and_invalid_actions_flow_through(concat):
  out, envs = concat
  for index, (episode, env) in enumerate(zip(out.episodes, envs.envs, strict=True)):
    assert env.steps == out.num_turns[index] == len(episode.turns)  # never stepped after it ended
    assert out.done[index] == env.done and episode.end in ("done", "max_turns")
    np.testing.assert_array_equal(out.step_mask[index], np.arange(4) < out.num_turns[index])
    for t, turn in enumerate(episode.turns):
      assert turn.valid == (turn.action is not None) == out.valid[index, t]
      if not turn.valid:
        assert episode.observations[t + 1].text == "invalid guess a digit"
        if t + 1 < len(episode.turns):
          refusal = WordCodec().encode("invalid guess a digit")
          np.testing.assert_array_equal(episode.turns[t + 1].observation_ids, refusal)
  assert len(set(out.num_turns.tolist())) >= 3  # episodes end at different turns (step limits 1 to 4, or a hit)
  assert (~out.valid & out.step_mask).any() and (out.valid & out.step_mask).any()


def test_the_context_budget_ends_the_episode_and_is_recorded(causal, concat):
  budget = 10  # turn 0 fits (instructions 3 + o_0 3 + 3 new tokens); turn 1 never does (at least 6 + 1 + 1 + 3)
  out, envs = play(causal, "concat", context_budget=budget)
  for index, episode in enumerate(out.episodes):
    env = envs.envs[index]
    if env.done:  # seed 0 (one guess) or a correct first guess
      assert episode.end == "done" and not out.truncated[index]
    else:
      assert episode.end == "budget" and out.truncated[index] and out.num_turns[index] == 1
    assert all(len(t.prompt_ids) + SAMPLING.max_new_tokens <= budget for t in episode.turns)
  assert out.truncated.any()
  assert out.training.inputs.attention_mask.sum(axis=1).max() <= budget


def test_a_fixed_key_repeats_the_rollout_and_another_key_does_not(causal, concat):
  again, _ = play(causal, "concat")
  other, _ = play(causal, "concat", key=2)
  np.testing.assert_array_equal(again.training.inputs.input_ids, concat[0].training.inputs.input_ids)
  np.testing.assert_array_equal(again.training.sample_logprobs, concat[0].training.sample_logprobs)
  np.testing.assert_array_equal(again.rewards, concat[0].rewards)
  assert other.training.inputs.input_ids.shape != again.training.inputs.input_ids.shape or not np.array_equal(
    other.training.inputs.input_ids, again.training.inputs.input_ids)


def test_gigpo_step_advantages_land_on_each_turns_tokens(window):
  out, _ = window
  keys = [[o.text for o in e.observations[:len(e.turns)]] for e in out.episodes]
  rewards = out.rewards - 0.1 * out.step_mask  # a step penalty, so steps differ
  advantages, _ = gigpo_step_advantages(keys, rewards, np.zeros(len(keys), np.int32), gamma=0.9, std=None)
  tokens = step_values_to_tokens(out.training, np.asarray(advantages))
  for row, (episode, turn) in enumerate(zip(out.training.row_episode, out.training.row_turn, strict=True)):
    mask = out.training.policy_mask[row]
    np.testing.assert_array_equal(tokens[row][mask], np.asarray(advantages)[episode, turn])
    assert not tokens[row][~mask].any()


def test_cache_reuse_prefills_only_new_tokens_and_keeps_logprobs_equal_to_the_recompute(causal):
  # 50 slots: turn 0 fills 32 + 3, turn 1 adds 8 + 3 at most, turn 2 no longer fits and resets. The sampler's
  # log-probs equal the teacher-forced ones of the whole conversation only if the kept cache holds exactly it.
  out, _ = play(causal, "concat", context_budget=32, cache_slots=50)
  training = out.training
  assert out.num_turns.max() >= 3 and out.metrics["cache_resets"] == 2  # turn 0 and turn 2
  conversation = [sum(len(e.turns[t].prompt_ids) for e in out.episodes if len(e.turns) > t) for t in range(4)]
  prefilled = out.metrics["prefill_tokens"]
  assert prefilled[0] == conversation[0] and prefilled[2] == conversation[2]
  # Turn 1 prefills only each episode's last response token (sampled, never fed) and its new observation.
  assert prefilled[1] == sum(1 + len(e.turns[1].observation_ids) for e in out.episodes if len(e.turns) > 1)
  assert prefilled[1] < conversation[1]
  recomputed, _ = _score(causal.model, causal.params, training.inputs, training.policy_mask, SAMPLING)
  np.testing.assert_allclose(np.asarray(recomputed), training.sample_logprobs, rtol=0, atol=1e-5)


def test_bad_arguments_raise_named_errors(causal):
  with pytest.raises(ValueError, match="mode"):
    play(causal, "chat")
  with pytest.raises(ValueError, match="cache_slots"):
    play(causal, "window", context_budget=32, cache_slots=64)
  with pytest.raises(ValueError, match="cache_slots"):
    play(causal, "concat", context_budget=32, cache_slots=34)  # a whole conversation needs 32 + 3
  past = DecodeCache.empty(causal.model, 2, 10)
  prompts = TokenInputs.from_ids(np.ones((2, 8), np.int32))
  with pytest.raises(ValueError, match="past"):  # 8 prompt + 3 generated slots do not fit in 10
    generate_continued(causal.model, causal.params, prompts, past, sampling=SAMPLING, key=jax.random.key(0))
