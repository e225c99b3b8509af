"""PDCR / PACR process advantages of the GRPO task on the counting environment's "rows" format
(jaxagents/tasks/process_rewards.py): the per-token advantages equal an independent recomputation from the model's
own log-probs (one forward per row, built by `token_batch` with no shared vision features, no padding and no
`with_completions`, then the PDCR equations written out in numpy), tokens of a step share the step's advantage and
the answer gets the outcome only, λ_P = 0 gives the outcome advantage, advantage="grpo" on the same task is plain
GRPO, and a process reward on the single-digit "answer" format is refused by name.

The rollouts are made by hand (no sampling), on one device (`sharding.current()` outside a mesh)."""

import copy
import dataclasses

import jax
import numpy as np
import pytest

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.models.qwen_vl.batching import token_batch
from jaxagents.rl import grpo
from jaxagents.tasks import counting_vlm, rollouts
from jaxagents.tasks.grpo import GRPO
from tests.tasks import configs, hand_made

_GROUP, _PROMPTS = 3, 2


def _config(**rl):
  config = configs.load("pdcr_shapes", "test")
  config.model = dict(hidden=32, layers=1, vision_depth=1, vision_width=16)  # halves the compile times
  config.rl.prompts_per_step = _PROMPTS
  config.rl.group_size = _GROUP
  config.rl.process.update(gamma=0.9, lambda_p=0.7)  # not the defaults, so that a dropped γ or λ_P shows
  config.rl.update(rl)
  return config


# -- hand-made rollouts ---------------------------------------------------------------------------------------------


def _words(text):
  return [counting.TOKEN_ID[w] for w in text.split()]


def _completions(examples):
  """Hand-made rollouts per prompt (G = 3): the reference, a wrong total with a doubled delimiter, a one-step
  answer, and two without an answer, one with six steps (> K = 5: merged); rewards differ inside each group."""
  first, second = examples
  c0 = first["count"]
  return [
    counting.rows_ids(first),
    _words(f"1 ; ; 0 ; = {(c0 + 1) % 10} <eos>"),
    _words(f"2 = {c0} <eos>"),  # one step with no delimiter
    counting.rows_ids(second),
    _words("0 ; 1 ; 0 ; 0 ; 1 ; 0"),  # six steps, truncated before an answer
    _words("1 ; 0 ; 2 ; 0 ; 1 ;"),  # no answer at all
  ]


def _records(task, count):
  """The first `count` records of the RL phase's source, batched as the loop's grain pipeline batches them."""
  source = task.source(task.phases[1])
  items = [source[i] for i in range(count)]
  return {key: np.stack([item[key] for item in items]) for key in items[0]}


def _host_rollout(task, prompts, completions):
  """Hand-made completions of `prompts` ([N] prompts, G completions each) as the sampler would return them."""
  return hand_made.host_rollout(prompts, completions, _GROUP, task.sampling.max_new_tokens)


# -- an independent recomputation -----------------------------------------------------------------------------------


class _RowModel:
  """Log-probs of a completion under the policy, one row at a time: the prompt and the completion as one row of
  `token_batch` (positions from `rope_index` over the whole row, the board's own vision features), jitted once at a
  fixed length."""

  def __init__(self, task, params):
    self.task, self.params = task, params
    self.length = task.sampling.max_new_tokens + 3  # the longest confidence query: every step, then `= Y <eos>`
    self.forward = jax.jit(lambda p, inputs: task.model.apply({"params": p}, *inputs.model_args())[0])

  def __call__(self, example, completion):
    """[len(completion)] log-probs of each completion token given the prompt, the image and the tokens before."""
    task = self.task
    padded = list(completion) + [counting.PAD] * (self.length - len(completion))  # later tokens are never seen
    inputs, _ = token_batch(task.model_config, [counting.prompt_ids(task.env, example)], [[example["image"]]],
                            counting_vlm.image_options(task.env, task.model_config), pad_id=counting.PAD,
                            completions=[padded])
    logits = np.asarray(self.forward(self.params, inputs), np.float64)[0]
    logits[:, list(counting.NEVER_GENERATED)] = -np.inf  # the sampler's distribution
    logits = logits / task.sampling.temperature
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    start = logits.shape[0] - self.length
    return np.array([logp[start + i - 1, token] for i, token in enumerate(completion)])


def _steps(completion, max_steps):
  """Step index of each token before the first `=` (a step ends with its run of `;`; extra steps merge into the
  last), written out from the documented rule."""
  steps, step, seen_content, after_delimiter = [], 0, False, False
  for token in completion:
    if token == counting.EQUALS:
      break
    if token == counting.STEP:
      after_delimiter = seen_content
    else:
      if after_delimiter:
        step, after_delimiter = step + 1, False
      seen_content = True
    steps.append(min(step, max_steps - 1))
  return steps


def _otsu(values):
  """Perception labels by brute force over every split of the sorted values (Otsu's criterion)."""
  ordered = np.sort(values)
  if len(values) < 2 or ordered[-1] - ordered[0] < 1e-8:
    return np.zeros(len(values), bool)
  costs = [((ordered[:k] - ordered[:k].mean()) ** 2).sum() + ((ordered[k:] - ordered[k:].mean()) ** 2).sum()
           for k in range(1, len(values))]
  return values > ordered[int(np.argmin(costs))]


def _minmax(values):
  if len(values) < 2 or values.max() - values.min() < 1e-8:
    return np.zeros_like(values)
  return (values - values.min()) / (values.max() - values.min())


def _rewards(examples, completions):
  """The verifier's reward of each hand-made completion: its total after `=` equals the count."""
  rewards = []
  for b, completion in enumerate(completions):
    words = [counting.VOCAB[t] for t in completion]
    answer = words[words.index("=") + 1:] if "=" in words else []
    rewards.append(float(answer == [str(examples[b // _GROUP]["count"]), "<eos>"]))
  return np.array(rewards)


def _reference(task, params, examples, completions):
  """What the equations need, from per-row forwards: A_O [B], and per rollout (step of each token before `=`,
  confidences c_0..c_S, visual dependence scores V_1..V_S)."""
  row_model = _RowModel(task, params)
  rewards = _rewards(examples, completions).reshape(-1, _GROUP)
  std = rewards.std(axis=1, ddof=1, keepdims=True)
  outcome = np.where(std > 0, (rewards - rewards.mean(axis=1, keepdims=True)) / (std + 1e-6), 0.0).ravel()
  rows = []
  for b, completion in enumerate(completions):
    example = examples[b // _GROUP]
    steps = _steps(completion, task.process.max_steps)
    ends = [max(i for i, s in enumerate(steps) if s == k) for k in range(max(steps, default=-1) + 1)]
    answer = counting.answer_template_ids(example["count"])
    # c_k scores `Y <eos>` after the teacher-forced `=` (score_answer_marker=False).
    confidence = np.array([row_model(example, completion[:end] + answer)[-2:].sum()
                           for end in [0] + [e + 1 for e in ends]])
    white = {**example, "image": np.full_like(example["image"], 255)}
    diff = row_model(example, completion) - row_model(white, completion)
    vds = np.array([diff[:len(steps)][np.array(steps) == k].sum() for k in range(len(ends))])
    rows.append((steps, confidence, vds))
  return outcome, rows


def _expected_advantages(options, reference, shape):
  """Per-token advantages [B, N] from the PDCR (PACR) equations (Eq. 4, 5, 7, 12-14), written out in numpy."""
  outcome, rows = reference
  returns = []
  for _, confidence, _ in rows:
    gains = np.diff(confidence)
    returns.append(np.array([sum(options.gamma ** (m - k) * gains[m] for m in range(k, len(gains)))
                             for k in range(len(gains))]))
  all_vds = np.concatenate([vds for _, _, vds in rows])
  visual_flat = _otsu(all_vds) if options.process == "pdcr" else np.zeros(len(all_vds), bool)
  visual = np.split(visual_flat, np.cumsum([len(r) for r in returns])[:-1])
  step_advantages = [np.zeros(len(r)) for r in returns]
  for group in range(len(rows) // _GROUP):
    members = range(group * _GROUP, (group + 1) * _GROUP)
    for cluster in (False, True):
      pool = [(b, k) for b in members for k in range(len(returns[b])) if visual[b][k] == cluster]
      normalised = _minmax(np.array([returns[b][k] for b, k in pool]))
      for (b, k), value in zip(pool, normalised, strict=True):
        step_advantages[b][k] = value
  expected = np.zeros(shape)
  for b, (steps, _, _) in enumerate(rows):
    process_term = np.zeros(shape[1])
    process_term[:len(steps)] = step_advantages[b][steps] if steps else 0.0
    expected[b] = options.lambda_o * outcome[b] + options.lambda_p * process_term
  return expected


# -- fixtures -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Setup:
  task: GRPO
  state: dict
  records: dict
  examples: list
  completions: list
  sampled: rollouts.HostRollout
  old_logp: jax.Array
  reference: tuple

  def process(self, process_reward=None):
    """(token advantages [B, L + T], metrics) of `process_reward` (default: the task's) on the hand-made batch,
    from the outcome advantage the task computes, as `GRPO.prepare` calls it."""
    scores = sharding.shard_batch(counting_vlm.rewards(self.task.env, self.sampled.tokens, self.examples, _GROUP))
    outcome = grpo.grpo_advantages(scores, self.task.outcome_config, group_size=_GROUP)
    return (process_reward or self.task.process)({"params": self.state["params"]}, self.examples, self.sampled,
                                                 self.old_logp, outcome)

  def valid(self):
    return np.arange(self.sampled.tokens.shape[1])[None, :] < self.sampled.lengths[:, None]


def _variant(process_reward, **options):
  """The same process reward (and compiled model passes) with other options."""
  variant = copy.copy(process_reward)
  variant.options = dataclasses.replace(process_reward.options, **options)
  return variant


@pytest.fixture(scope="module")
def setup():
  task = GRPO(_config())
  state = jax.jit(lambda key: sharding.unbox(task.init(key)))(jax.random.key(0))
  records = _records(task, _PROMPTS)
  examples = counting.examples_from_batch(task.env, records)
  completions = _completions(examples)
  sampled = _host_rollout(task, counting_vlm.prompts(task.env, task.model_config, examples), completions)
  old_logp, _ = rollouts.recompute_logprobs({"params": state["params"]}, sampled.inputs, sampled.completion_mask,
                                            model=task.model, sampling=task.sampling)
  reference = _reference(task, state["params"], examples, completions)
  return _Setup(task, state, records, examples, completions, sampled, old_logp, reference)


def test_pdcr_token_advantages_match_an_independent_recomputation(setup):
  rewards = _rewards(setup.examples, setup.completions)
  assert 0 < rewards.sum() < len(rewards)
  advantages, metrics = setup.process()
  assert advantages.shape == setup.old_logp.shape
  length = setup.sampled.tokens.shape[1]
  expected = _expected_advantages(setup.task.process.options, setup.reference, setup.sampled.tokens.shape)
  valid = setup.valid()
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:][valid], expected[valid], atol=2e-4)
  np.testing.assert_array_equal(np.asarray(advantages)[:, :-length], 0.0)  # the prompt has no advantage
  _, rows = setup.reference
  assert [len(vds) for _, _, vds in rows] == [4, 2, 1, 4, 5, 5]  # the six-step rollout is merged into K = 5
  all_vds = np.concatenate([vds for _, _, vds in rows])
  assert float(metrics["pdcr/perception_fraction"]) == pytest.approx(_otsu(all_vds).mean())
  assert 0 < float(metrics["pdcr/perception_fraction"]) < 1
  assert float(metrics["pdcr/steps"]) == pytest.approx(np.mean([len(vds) for _, _, vds in rows]))
  gains = np.concatenate([np.diff(confidence) for _, confidence, _ in rows])
  assert float(metrics["pdcr/confidence_gain"]) == pytest.approx(gains.mean(), abs=1e-4)


def test_pacr_token_advantages_match_an_independent_recomputation(setup):
  pacr = _variant(setup.task.process, process="pacr")
  advantages, metrics = setup.process(pacr)
  length = setup.sampled.tokens.shape[1]
  expected = _expected_advantages(pacr.options, setup.reference, setup.sampled.tokens.shape)
  valid = setup.valid()
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:][valid], expected[valid], atol=2e-4)
  assert float(metrics["pdcr/perception_fraction"]) == 0.0


def test_tokens_of_a_step_share_its_advantage_and_the_answer_gets_the_outcome_only(setup):
  advantages, _ = setup.process()
  lengths = setup.sampled.lengths
  got = np.asarray(advantages)[:, -setup.sampled.tokens.shape[1]:]
  outcome, rows = setup.reference
  lambda_o = setup.task.process.options.lambda_o
  for b, (steps, _, _) in enumerate(rows):
    steps = np.array(steps)
    in_steps = got[b, :len(steps)]
    for k in np.unique(steps):
      assert np.all(in_steps[steps == k] == in_steps[steps == k][0])
    assert np.all(in_steps >= lambda_o * outcome[b] - 1e-5)  # the min-max term is in [0, 1]
    # The answer (from `=` on) gets lambda_o * A_O only.
    np.testing.assert_allclose(got[b, len(steps):lengths[b]], lambda_o * outcome[b], rtol=1e-5, atol=1e-6)


def test_lambda_p_zero_gives_the_outcome_advantage(setup):
  advantages, _ = setup.process(_variant(setup.task.process, lambda_p=0.0))
  length = setup.sampled.tokens.shape[1]
  outcome, _ = setup.reference
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:],
                             np.broadcast_to(outcome[:, None], (len(outcome), length)), rtol=1e-5, atol=1e-6)


def _prepare(task, setup, monkeypatch):
  """`task.prepare` of the RL phase on the setup's records, its sampler replaced by the hand-made completions."""

  def sample_groups(model, params, prompts, *, group_size, sampling, key):
    del model, params, sampling, key
    assert group_size == _GROUP
    return _host_rollout(task, prompts, setup.completions)

  monkeypatch.setattr(rollouts, "sample_groups", sample_groups)
  return task.prepare(setup.state, setup.records, jax.random.key(0), task.phases[1])


def test_advantage_grpo_on_the_rows_format_is_plain_grpo(setup, monkeypatch):
  plain = GRPO(_config(advantage="grpo"))
  assert plain.process is None
  batch, metrics = _prepare(plain, setup, monkeypatch)
  outcome, _ = setup.reference
  np.testing.assert_allclose(np.asarray(batch["advantages"]), outcome, rtol=1e-5, atol=1e-6)  # [B]: one per row
  assert not any(key.startswith("pdcr/") for key in metrics)
  # The PDCR task's prepare hands its loss the process reward's advantages, from the same outcome advantage.
  batch, metrics = _prepare(setup.task, setup, monkeypatch)
  advantages, _ = setup.process()
  np.testing.assert_array_equal(np.asarray(batch["advantages"]), np.asarray(advantages))
  assert "pdcr/perception_fraction" in metrics


def test_a_process_reward_on_the_single_digit_format_is_refused_by_name():
  config = _config()
  config.env.format = "answer"
  with pytest.raises(ValueError, match=r"config\.env\.format: process rewards need the multi-step 'rows' format"):
    GRPO(config)
  with pytest.raises(ValueError, match=r"config\.rl\.advantage: expected one of"):
    GRPO(_config(advantage="prm"))
  config = _config()
  config.rl.process["lambda"] = 1.0
  with pytest.raises(ValueError, match=r"config\.rl\.process: unknown options \['lambda'\]"):
    GRPO(config)
