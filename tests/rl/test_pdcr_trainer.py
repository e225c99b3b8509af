"""The PDCR post-training job on the "rows" counting task: its per-token advantages equal an independent
recomputation from the model's own log-probs (per-row forwards and PDCR's formulas in numpy), tokens of a step
share the step's advantage, process="none" is GRPO, and an interrupted run resumes to the same state."""

import copy
import dataclasses
import shutil

import jax
import numpy as np
import pytest

from jaxagents import train as train_lib
from jaxagents.data import shapes
from jaxagents.rl import grpo, pdcr_trainer, trainer
from tests.rl import jobs

_GROUP, _PROMPTS = 3, 2


def _config(**rl):
  config = jobs.load_config("pdcr_shapes")
  config.model = dict(hidden=32, layers=1, vision_depth=1, vision_width=16)  # halves the compile times
  config.data.eval_examples = 4
  config.data.eval_samples = 2
  config.sft.steps = 3
  config.sft.batch_size = 8
  config.rl.steps = 3
  config.rl.prompts_per_step = 2
  config.rl.group_size = 4
  config.log_every = 1
  config.eval_every = 100
  config.checkpoint.save_every = 1
  config.checkpoint.keep = 10
  config.rl.update(rl)
  return config


# -- an independent recomputation ----------------------------------------------------------------------------------


def _words(text):
  return [shapes.TOKEN_ID[w] for w in text.split()]


def _completions(examples):
  """Hand-made rollouts per prompt (G = 3): the reference, a wrong total with a doubled delimiter, a one-step
  answer, and two without an answer, one with six steps (> K = 5: merged); rewards differ inside each group."""
  first, second = examples
  c0 = first["count"]
  return [
    shapes.rows_ids(first),
    _words(f"1 ; ; 0 ; = {(c0 + 1) % 10} <eos>"),
    _words(f"2 = {c0} <eos>"),  # one step with no delimiter
    shapes.rows_ids(second),
    _words("0 ; 1 ; 0 ; 0 ; 1 ; 0"),  # six steps, truncated before an answer
    _words("1 ; 0 ; 2 ; 0 ; 1 ;"),  # no answer at all
  ]


def _rollout(job, state, examples, completions):
  """A `Rollout` of hand-made completions, built like `ShapesGRPO.sample` builds a sampled one."""
  length = job.sampling.max_new_tokens
  tokens = np.full((len(completions), length), shapes.PAD, np.int32)
  lengths = np.array([len(c) for c in completions], np.int32)
  for row, completion in enumerate(completions):
    tokens[row, :len(completion)] = completion
  scores = job.score(tokens, examples, _GROUP)
  inputs, mask = shapes.model_batch(job.task, job.model_config, examples, list(tokens), repeat=_GROUP)
  mask[:, -length:] = np.arange(length)[None, :] < lengths[:, None]
  old_logp, _ = job._logprobs(state["params"], inputs, mask)
  return trainer.Rollout(examples, tokens, lengths, scores, inputs, mask, old_logp, old_logp, 0.0)


class _RowModel:
  """Log-probs of a completion under the policy, one row at a time (jitted once at a fixed padded length)."""

  def __init__(self, job, params):
    self.job, self.params = job, params
    self.length = job.sampling.max_new_tokens + 3
    self.forward = jax.jit(lambda p, inputs: job.model.apply(p, inputs.input_ids, inputs.positions,
                                                             inputs.attention_mask, inputs.vision)[0])

  def __call__(self, example, completion):
    """[len(completion)] log-probs of each completion token given the prompt, the image and the tokens before."""
    padded = list(completion) + [shapes.PAD] * (self.length - len(completion))  # later tokens are never seen
    inputs, _ = shapes.model_batch(self.job.task, self.job.model_config, [example], [padded])
    logits = np.asarray(self.forward(self.params, inputs), np.float64)[0]
    logits[:, list(shapes.NEVER_GENERATED)] = -np.inf  # the sampler's distribution (temperature 1)
    logits = logits / self.job.sampling.temperature
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    start = logits.shape[0] - self.length
    return np.array([logp[start + i - 1, token] for i, token in enumerate(completion)])


def _steps(completion, max_steps):
  """Step index of each token before the first `=` (a step ends with its run of `;`; extra steps merge into the
  last), written out from the trainer's documented rule."""
  steps, step, seen_content, after_delimiter = [], 0, False, False
  for token in completion:
    if token == shapes.EQUALS:
      break
    if token == shapes.STEP:
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


def _reference(job, params, batch):
  """What the equations need, from per-row forwards: A_O [B], and per rollout (step of each token before `=`,
  confidences c_0..c_S, visual dependence scores V_1..V_S)."""
  row_model = _RowModel(job, params)
  rewards = batch.scores.reshape(-1, _GROUP).astype(np.float64)
  std = rewards.std(axis=1, ddof=1, keepdims=True)
  outcome = np.where(std > 0, (rewards - rewards.mean(axis=1, keepdims=True)) / (std + 1e-6), 0.0).ravel()
  rows = []
  for b, length in enumerate(batch.lengths):
    example = batch.examples[b // _GROUP]
    completion = [int(t) for t in batch.tokens[b, :length]]
    steps = _steps(completion, job.max_steps)
    ends = [max(i for i, s in enumerate(steps) if s == k) for k in range(max(steps, default=-1) + 1)]
    answer = shapes.answer_template_ids(example["count"])
    # c_k scores `Y <eos>` after the teacher-forced `=` (score_answer_marker=False).
    confidence = np.array([row_model(example, completion[:end] + answer)[-2:].sum()
                           for end in [0] + [e + 1 for e in ends]])
    white = {**example, "image": np.full_like(example["image"], 255)}
    diff = row_model(example, completion) - row_model(white, completion)
    vds = np.array([diff[:len(steps)][np.array(steps) == k].sum() for k in range(len(ends))])
    rows.append((steps, confidence, vds))
  return outcome, rows


def _expected_advantages(options, reference, shape, process):
  """Per-token advantages [B, N] from the PDCR (PACR) equations (Eq. 4, 5, 7, 12-14), written out in numpy."""
  outcome, rows = reference
  returns = []
  for _, confidence, _ in rows:
    gains = np.diff(confidence)
    returns.append(np.array([sum(options.gamma ** (m - k) * gains[m] for m in range(k, len(gains)))
                             for k in range(len(gains))]))
  all_vds = np.concatenate([vds for _, _, vds in rows])
  visual_flat = _otsu(all_vds) if process == "pdcr" else np.zeros(len(all_vds), bool)
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


def _variant(job, **options):
  """The same compiled job with other process options."""
  variant = copy.copy(job)
  variant.process = dataclasses.replace(job.process, **options)
  return variant


@pytest.fixture(scope="module")
def setup():
  config = _config(prompts_per_step=_PROMPTS, group_size=_GROUP, gamma=0.9, lambda_p=0.7)
  job = pdcr_trainer.ShapesPDCR(config)
  job.compile()
  state = jax.jit(job.init_state)(jax.random.key(0))
  examples = job.examples(0, 0, _PROMPTS)
  batch = _rollout(job, state, examples, _completions(examples))
  return job, state, batch, _reference(job, state["params"], batch)


def _valid(batch):
  return np.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]


def test_token_advantages_match_an_independent_recomputation(setup):
  job, state, batch, reference = setup
  assert 0 < batch.scores.sum() < len(batch.scores)
  advantages, metrics = job.advantages(state, batch)
  assert np.asarray(advantages).shape == batch.old_logp.shape
  length = batch.tokens.shape[1]
  expected = _expected_advantages(job.process, reference, batch.tokens.shape, "pdcr")
  valid = _valid(batch)
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:][valid], expected[valid], atol=2e-4)
  _, rows = reference
  assert [len(vds) for _, _, vds in rows] == [4, 2, 1, 4, 5, 5]  # the six-step rollout is merged into K = 5
  all_vds = np.concatenate([vds for _, _, vds in rows])
  assert metrics["pdcr/perception_fraction"] == pytest.approx(_otsu(all_vds).mean())
  assert 0 < metrics["pdcr/perception_fraction"] < 1
  assert metrics["pdcr/steps"] == pytest.approx(np.mean([len(vds) for _, _, vds in rows]))
  gains = np.concatenate([np.diff(confidence) for _, confidence, _ in rows])
  assert metrics["pdcr/confidence_gain"] == pytest.approx(gains.mean(), abs=1e-4)


def test_pacr_advantages_match_an_independent_recomputation(setup):
  job, state, batch, reference = setup
  pacr = _variant(job, process="pacr")
  advantages, metrics = pacr.advantages(state, batch)
  length = batch.tokens.shape[1]
  expected = _expected_advantages(pacr.process, reference, batch.tokens.shape, "pacr")
  valid = _valid(batch)
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:][valid], expected[valid], atol=2e-4)
  assert metrics["pdcr/perception_fraction"] == 0.0


def test_tokens_of_a_step_share_its_advantage_and_the_answer_gets_the_outcome_only(setup):
  job, state, batch, reference = setup
  advantages, _ = job.advantages(state, batch)
  got = np.asarray(advantages)[:, -batch.tokens.shape[1]:]
  outcome = np.asarray(grpo.grpo_advantages(batch.scores, job.loss_config, group_size=_GROUP))
  for b, (steps, _, _) in enumerate(reference[1]):
    steps = np.array(steps)
    in_steps = got[b, :len(steps)]
    for k in np.unique(steps):
      assert np.all(in_steps[steps == k] == in_steps[steps == k][0])
    assert np.all(in_steps >= job.process.lambda_o * outcome[b] - 1e-6)  # the min-max term is in [0, 1]
    # The answer (from `=` on) gets lambda_o * A_O only.
    np.testing.assert_allclose(got[b, len(steps):batch.lengths[b]], job.process.lambda_o * outcome[b], rtol=1e-6)


def test_process_none_is_grpo_and_lambda_p_zero_gives_the_outcome_advantage(setup):
  job, state, batch, _ = setup
  plain = pdcr_trainer.ShapesPDCR(_config(prompts_per_step=_PROMPTS, group_size=_GROUP, process="none"))
  got, metrics = plain.advantages(state, batch)
  reference, _ = trainer.ShapesGRPO.advantages(plain, state, batch)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(reference))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(
    grpo.grpo_advantages(batch.scores, plain.loss_config, group_size=_GROUP)))
  assert metrics == {}
  advantages, _ = _variant(job, lambda_p=0.0).advantages(state, batch)
  length = batch.tokens.shape[1]
  np.testing.assert_allclose(np.asarray(advantages)[:, -length:],
                             np.broadcast_to(np.asarray(reference)[:, None], (len(batch.lengths), length)), rtol=1e-6)


def test_rejects_a_process_reward_on_the_single_digit_format():
  config = _config()
  config.data.task["format"] = "answer"
  with pytest.raises(ValueError, match="format"):
    pdcr_trainer.ShapesPDCR(config)
  with pytest.raises(ValueError, match="process"):
    pdcr_trainer.ShapesPDCR(_config(process="prm"))


# -- the job ----------------------------------------------------------------------------------------------------------


def test_interrupted_pdcr_run_resumes_to_the_same_state(tmp_path):
  # 2 SFT + 2 RL steps; 2 x 4 held-out samples share the rollouts' compiled sampler (8 rows).
  config = _config(steps=2)
  config.sft.steps = 2
  config.data.eval_examples = 2
  whole = train_lib.train(config, str(tmp_path / "whole"))
  for name in ("metrics.jsonl", "reward.png", "before.json", "after_sft.json", "final_metrics.json"):
    assert (tmp_path / "whole" / name).exists(), name
  for key in ("pdcr/perception_fraction", "pdcr/fallback_clusters", "pdcr/confidence_gain", "pdcr/vds_perception",
              "pdcr/vds_reasoning", "pdcr/steps", "reward/mean", "eval/sampled_reward", "eval/reward_after_sft"):
    assert np.isfinite(whole[key]), key
  # Interrupted after the first RL step: keep the checkpoints up to step 3 and run the same job again (it resumes
  # in the RL phase, so the SFT step is never compiled twice).
  shutil.copytree(tmp_path / "whole", tmp_path / "split")
  shutil.rmtree(tmp_path / "split" / "checkpoints" / "4")
  resumed = train_lib.train(config, str(tmp_path / "split"))
  a, b = jobs.latest_state(tmp_path / "whole", config), jobs.latest_state(tmp_path / "split", config)
  assert int(a["step"]) == int(b["step"]) == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for key in ("reward/mean", "pdcr/confidence_gain", "pdcr/perception_fraction", "eval/sampled_reward"):
    assert resumed[key] == whole[key], key
  assert whole["rollout/logprob_gap"] < 1e-5
