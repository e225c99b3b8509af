"""On-policy distillation with VGS (jaxagents/tasks/onpolicy_distill.py): one distillation update equals VGS's formula
(arXiv 2606.00564, Eq. 13-18, 22) computed here from plain `model.apply` calls with and without the image and one
`jax.grad` per loss term, γ = 0 is plain on-policy distillation, bad options are refused by field name, and a
SIGKILLed run resumes bitwise (slow).

The rollout batch is `OnPolicyDistill.prepare`'s, on hand-made completions instead of sampled ones."""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxagents import sharding
from jaxagents.envs import counting
from jaxagents.rl import grpo, vgs
from jaxagents.tasks import rollouts
from jaxagents.tasks.onpolicy_distill import OnPolicyDistill
from tests.tasks import configs, hand_made
from tests.tasks.checkpoints import saved_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_GROUP, _PROMPTS = 2, 2
# Each program here runs once on tiny shapes: LLVM at -O0 halves its compile time (the same math, unoptimised code).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _config(**rl):
  config = configs.load("vgs_shapes", "test")
  config.model = dict(hidden=32, layers=1, vision_depth=1, vision_width=16)  # small models: short compiles
  config.teacher.model = dict(hidden=48, layers=1, vision_depth=1, vision_width=16)
  config.rl.prompts_per_step = _PROMPTS
  config.rl.group_size = _GROUP
  config.rl.update(rl)
  return config


# -- the rollout batch --------------------------------------------------------------------------------------------


def _completions(examples):
  """Per prompt (G = 2): one right and one wrong answer each (the verifier reads the last digit); lengths 2, 2, 1, 2
  (a wrong answer cut before <eos>, an empty one), so both views' masks matter."""
  first, second = examples
  digit = lambda n: counting.TOKEN_ID[str(n)]
  return [[digit(first["count"]), counting.EOS], [digit(first["count"]), digit((first["count"] + 1) % 5)],
          [counting.EOS], [digit(second["count"]), counting.EOS]]


def _records(task, count):
  source = task.source(task.phases[2])
  items = [source[i] for i in range(count)]
  return {key: np.stack([item[key] for item in items]) for key in items[0]}


def _prepare(task, state, records):
  """`task.prepare` of the distillation phase on `records`, its sampler replaced by the hand-made completions."""

  def sample_groups(model, params, prompts, *, group_size, sampling, key):
    del model, params, key
    completions = _completions(counting.examples_from_batch(task.env, records))
    return hand_made.host_rollout(prompts, completions, group_size, sampling.max_new_tokens)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(rollouts, "sample_groups", sample_groups)
    batch, _ = task.prepare(state, records, jax.random.key(0), task.phases[2])
  return batch


def _state(task, trees):
  """The train state the loop builds, without its step counters: parameter trees and every optimizer's state."""
  return {**trees, "opt_state": {name: opt.tx.init(trees[opt.params]) for name, opt in task.optimizers().items()}}


# -- the formula, by hand -----------------------------------------------------------------------------------------


def _independent_grads(task, params, teacher_params, batch, examples, advantages):
  """Per-term gradients from plain `model.apply` calls and one `jax.grad` per term.

  The text-only rows are built here by hand: question words then the response, M-RoPE positions 0..L-1 on all
  three axes (a text-only row's), no vision inputs; the sampler's distribution by hand (suppressed ids at -inf,
  / temperature)."""
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["response_mask"])
  length = tokens.shape[1]
  questions = [counting.encode(e["prompt"]) for e in examples for _ in range(_GROUP)]
  text_ids = np.array([q + list(t) for q, t in zip(questions, np.asarray(batch["tokens"]), strict=True)], np.int32)
  text_positions = np.broadcast_to(np.arange(text_ids.shape[1]), (3, *text_ids.shape)).astype(np.int32)
  image = batch["image_inputs"]

  def logits(model, p, text):
    if text:
      out, _ = model.apply({"params": p}, text_ids, text_positions, np.ones_like(text_ids), None, None)
    else:
      out, _ = model.apply({"params": p}, image.input_ids, image.positions, image.attention_mask, image.vision,
                           image.row_prompt)
    out = out[:, -length - 1:-1].at[..., jnp.asarray(counting.NEVER_GENERATED)].set(-jnp.inf)
    return out / task.sampling.temperature

  t_img, t_txt = logits(task.teacher, teacher_params, False), logits(task.teacher, teacher_params, True)

  def terms(p):
    return vgs.vgs_terms(logits(task.model, p, False), logits(task.model, p, True), t_img, t_txt, mask)

  def adaptive_visual(p):
    t = terms(p)
    gamma_t = jnp.where(t["vds"] > t["vds_threshold"], 1.0, jnp.where(t["vds"] > t["vds_threshold_low"], 0.5, 0.0))
    return jnp.sum(t["token_weights"] * gamma_t * t["kl_vis"])  # Σ w γ_t/γ ℓ_Vis,t (App. E)

  def grpo_term(p):
    log_probs = jax.nn.log_softmax(logits(task.model, p, False), axis=-1)
    logp = jnp.where(mask, jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0], 0.0)
    return grpo.grpo_loss(logp, jax.lax.stop_gradient(logp), advantages, mask, config=task.loss_config)[0]

  return {"std": jax.grad(lambda p: terms(p)["std"])(params), "vis": jax.grad(lambda p: terms(p)["vis"])(params),
          "lp": jax.grad(lambda p: terms(p)["lp"])(params), "vis_adaptive": jax.grad(adaptive_visual)(params),
          "grpo": jax.grad(grpo_term)(params)}


def _group_normalised(rewards):
  """GRPO's outcome advantage written out: (r - group mean) / (unbiased group std + 1e-6), 0 for a flat group."""
  groups = rewards.reshape(-1, _GROUP)
  std = groups.std(axis=1, ddof=1, keepdims=True)
  return np.where(std > 0, (groups - groups.mean(axis=1, keepdims=True)) / (std + 1e-6), 0.0).ravel()


@pytest.fixture(scope="module")
def setup():
  """A state (random student and teacher: their distributions differ), one rollout batch and the reference
  gradients, shared by the update tests."""
  task = OnPolicyDistill(_config())
  # Seed 1: g_Std and g_Vis are far from parallel, and the Eq. 22 base gradient conflicts with g_Vis (below).
  trees = _jit(lambda key: sharding.unbox(task.init(key)))(jax.random.key(1))
  state = _state(task, trees)
  records = _records(task, _PROMPTS)
  examples = counting.examples_from_batch(task.env, records)
  batch = _prepare(task, state, records)
  assert np.asarray(batch["response_mask"]).sum(axis=1).tolist() == [2, 2, 1, 2]
  rewards = np.array([counting.reward(task.env, c, examples[b // _GROUP])
                      for b, c in enumerate(_completions(examples))])
  assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
  np.testing.assert_array_equal(np.asarray(batch["advantages"]), 0.0)  # alpha = 0: Eq. 22's GRPO term is off
  advantages = _group_normalised(rewards).astype(np.float32)
  reference = _jit(lambda p, tp, adv: _independent_grads(task, p, tp, batch, examples, adv))(
    state["params"], state["teacher_params"], advantages)
  return state, records, batch, advantages, reference


def _update(config, state, batch, with_grads=False):
  """The task's distillation update (and, if asked, its per-term gradients) on `batch`."""
  task = OnPolicyDistill(config)
  grads = None
  if with_grads:
    grads, _ = _jit(task.distill_grads)(state["params"], state["teacher_params"], batch)
  new_state, metrics = _jit(task.distill_update)(state, batch)
  return task, grads, new_state, metrics


def _assert_adam_step(config, state, new_params, direction):
  """new_params is one step of the transform chain's tail, clip_by_global_norm(1) then AdamW from a fresh state, along
  `direction`. Adam's first step is ~lr·sign(g), so it is compared where |g| is far above Adam's ε (there a wrong
  γ, λ or term flips signs); at |g| ~ ε float noise in g moves the step by a fraction of lr."""
  rl = config.rl
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(rl.learning_rate, weight_decay=rl.weight_decay))
  updates, _ = tx.update(direction, tx.init(state["params"]), state["params"])
  expected = optax.apply_updates(state["params"], updates)
  compared = total = 0
  for new, exp, g in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected), jax.tree.leaves(direction),
                         strict=True):
    clear = np.abs(np.asarray(g)) > 1e-5
    np.testing.assert_allclose(np.asarray(new)[clear], np.asarray(exp)[clear], rtol=1e-5,
                               atol=1e-3 * rl.learning_rate)
    compared, total = compared + clear.sum(), total + clear.size
  assert compared > 0.9 * total, (compared, total)


def _assert_trees_close(actual, expected):
  for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))))


def _cos(a, b):
  dot = sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  return float(dot) / _norm(a) / _norm(b)


def _assert_transform_inputs(new_state, g_std, g_vis, eta):
  """After the first step the steering state's running means are that step's values, computed by the transform
  from the gradients it was given: their norms, cosine and the dynamic η."""
  steering = new_state["opt_state"]["distill"][0]
  assert int(steering.count) == 1
  np.testing.assert_allclose(steering.norm_std_ema, _norm(g_std), rtol=1e-4)
  np.testing.assert_allclose(steering.norm_vis_ema, _norm(g_vis), rtol=1e-4)
  np.testing.assert_allclose(steering.cos_ema, _cos(g_std, g_vis), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(steering.eta_ema, eta, rtol=1e-4)


@pytest.mark.slow  # in CI after the suite (.ci/run): ~40 s of compilation
def test_vgs_update_is_the_norm_preserving_steered_distillation_gradient(setup):
  state, _, batch, _, ref = setup
  config = _config()
  gamma, lam = config.rl.gamma, config.rl.lam
  assert (gamma, lam) == (2.0, 0.01)  # the shipped config's (the paper's)
  _, grads, new_state, metrics = _update(config, state, batch, with_grads=True)
  for name in ("std", "vis", "lp"):
    _assert_trees_close(grads[name], ref[name])
  assert _norm(ref["lp"]) > 0  # some tokens pass the ℓ_LP gate
  combined = jax.tree.map(lambda s, v: s + gamma * v, ref["std"], ref["vis"])
  eta = _norm(ref["std"]) / _norm(combined)  # Eq. 15
  assert 0.1 < eta < 0.99  # the two gradients are not parallel: steering changes the direction
  _assert_transform_inputs(new_state, ref["std"], ref["vis"], eta)
  steered = jax.tree.map(lambda c, lp: eta * c + lam * eta * lp, combined, ref["lp"])  # Eq. 18's gradient
  _assert_adam_step(config, state, new_state["params"], steered)
  _assert_trees_close(new_state["teacher_params"], state["teacher_params"])  # the teacher is not trained here
  np.testing.assert_allclose(metrics["vgs/eta"], eta, rtol=1e-4)
  np.testing.assert_allclose(metrics["vgs/cos_std_vis"], _cos(ref["std"], ref["vis"]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["vgs/cos_out_vis"], _cos(steered, ref["vis"]), rtol=1e-4, atol=1e-6)


def test_gamma_zero_is_plain_on_policy_distillation(setup):
  state, _, batch, _, ref = setup
  config = _config(gamma=0.0, lam=0.0)
  _, _, new_state, metrics = _update(config, state, batch)
  _assert_transform_inputs(new_state, ref["std"], ref["vis"], 1.0)
  _assert_adam_step(config, state, new_state["params"], ref["std"])
  assert float(metrics["vgs/eta"]) == pytest.approx(1.0)


@pytest.mark.slow  # in CI after the suite (.ci/run): ~15 s of compilation
def test_grpo_mix_with_adaptive_gamma_and_projection_follows_eq_22(setup):
  state, records, _, advantages, ref = setup
  alpha, gamma, lam = 0.3, 2.0, 0.5  # λ larger than the paper's so that a misplaced g_LP shows in the update
  config = _config(alpha=alpha, eta=1.0, lam=lam, adaptive_gamma=True, project_conflicts=True)
  task = OnPolicyDistill(config)
  batch = _prepare(task, state, records)  # with alpha > 0 the batch carries GRPO's outcome advantages
  np.testing.assert_allclose(np.asarray(batch["advantages"]), advantages, rtol=1e-5)
  _, _, new_state, _ = _update(config, state, batch)
  assert _norm(ref["grpo"]) > 0 and _norm(ref["vis_adaptive"]) > 0
  # J = (1-α)·O_GRPO - α·ℓ_VGS-LP without η: the transform gets α·g_Std + (1-α)·g_GRPO and α·g_Vis (adaptive γ_t).
  base = jax.tree.map(lambda s, r: alpha * s + (1 - alpha) * r, ref["std"], ref["grpo"])
  visual = jax.tree.map(lambda v: alpha * v, ref["vis_adaptive"])
  steering = new_state["opt_state"]["distill"][0]
  np.testing.assert_allclose(steering.norm_std_ema, _norm(base), rtol=1e-4)
  np.testing.assert_allclose(steering.norm_vis_ema, _norm(visual), rtol=1e-4)
  np.testing.assert_allclose(steering.cos_ema, _cos(base, visual), rtol=1e-4, atol=1e-6)
  assert _cos(base, visual) < 0  # so the projection (not the paper's method) changes the base gradient
  projected = vgs.project_conflict(base, visual)
  direction = jax.tree.map(lambda b, v, lp: b + gamma * v + lam * alpha * lp, projected, visual, ref["lp"])
  _assert_adam_step(config, state, new_state["params"], direction)


@pytest.mark.parametrize("changes, field", [
  ({"rl.alpha": 0.3}, "config.rl.eta"),  # Eq. 22 drops η: a dynamic η is refused
  ({"rl.alpha": 0.3, "rl.eta": 1.0, "rl.freeze_eta_after": 5}, "config.rl.eta"),
  ({"rl.alpha": 1.0, "rl.eta": 1.0}, "config.rl.alpha"),
  ({"rl.alpha": 0.3, "rl.eta": 1.0, "rl.loss.beta": 0.04}, "config.rl.loss.beta"),  # Eq. 22's GRPO term has no KL
  ({"rl.eta": "fixed"}, "config.rl.eta"),
  ({"rl.eta": 0.0}, "config.rl.eta"),
  ({"teacher.steps": 0}, "config.teacher.steps"),
  ({"teacher.learning_rate": 0.0}, "config.teacher.learning_rate"),
  ({"data.text_only_fraction": 1.0}, "config.data.text_only_fraction"),
  ({"env.format": "rows"}, "config.rl.max_new_tokens"),  # 11-token completions, 2 new tokens
])
def test_bad_options_raise_naming_the_field(changes, field):
  config = _config()
  for dotted, value in changes.items():
    *sections, name = dotted.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  with pytest.raises(ValueError, match="^" + re.escape(field) + ": "):
    OnPolicyDistill(config)


# -- the job: SIGKILL and resume ----------------------------------------------------------------------------------


def _run(workdir, *, cache, kill_after=None):
  """`python -m jaxagents.train --config configs/vgs_shapes.py:test` in a subprocess on one CPU device, with a
  checkpoint every step (orbax starts a save only once the previous one is committed, so a run killed after step k
  has step k - 1's checkpoint)."""
  env = {k: v for k, v in os.environ.items() if k != "JAXAGENTS_SIGKILL_AFTER_STEP"}
  env["XLA_FLAGS"] = ""  # one CPU device: the subprocesses compile faster
  env["JAXAGENTS_COMPILATION_CACHE"] = str(cache)  # the second and third runs load the first one's programs
  if kill_after is not None:
    env["JAXAGENTS_SIGKILL_AFTER_STEP"] = str(kill_after)
  args = [sys.executable, "-m", "jaxagents.train", "--config", os.path.join(REPO, "configs", "vgs_shapes.py:test"),
          "--workdir", str(workdir), "--config.checkpoint.save_every=1", "--config.checkpoint.keep=10"]
  return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)


def _equal_trees(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow  # three runs of teacher SFT, student SFT and distillation (minutes of XLA compiles on CPU)
def test_sigkilled_vgs_job_resumes_bitwise_with_the_same_summary(tmp_path):
  # configs/vgs_shapes.py:test: 3 teacher steps, 2 student SFT steps, 3 distillation steps (6-8).
  cache = tmp_path / "xla"
  straight = _run(tmp_path / "straight", cache=cache)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = _run(tmp_path / "resumed", cache=cache, kill_after=7)  # the 2nd distillation step
  assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-3000:]}"
  _, after_sft = saved_state(tmp_path / "resumed", 5)
  resumed = _run(tmp_path / "resumed", cache=cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # Mid-distillation (step 6, or 7 if its save was committed too): the data position is restored as well.
  assert re.search(r"Resumed from step [67] ", resumed.stderr), resumed.stderr[-3000:]

  step_a, state_a = saved_state(tmp_path / "straight")
  step_b, state_b = saved_state(tmp_path / "resumed")
  assert step_a == step_b == 8
  assert set(state_a) >= {"params", "teacher_params", "opt_state", "step", "phase"}
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bitwise
  # The teacher trained in phase 1 and stayed fixed after it; the student moved in phase 3.
  assert _equal_trees(state_a["teacher_params"], after_sft["teacher_params"])
  assert not _equal_trees(state_a["params"], after_sft["params"])
  summary = lambda d: json.loads((d / "final_metrics.json").read_text())
  assert summary(tmp_path / "resumed") == summary(tmp_path / "straight")
  final = summary(tmp_path / "straight")
  assert {"teacher/eval/reward", "eval/reward", "eval/reward_after_sft", "eval/reward_after_teacher", "vgs/eta",
          "vgs/cos_std_vis", "reward/mean"} <= set(final)
  logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "teacher/eval/reward" in r] == [3]  # once, when the teacher is final
  assert [r["step"] for r in logged if "teacher/sft_loss" in r] == [1, 2, 3]
  assert [r["step"] for r in logged if "sft/loss" in r] == [4, 5]
  assert [r["step"] for r in logged if "vgs/std" in r] == [6, 7, 8]
  for name in ("metrics.jsonl", "reward.png", "before.json", "after_teacher.json", "after_sft.json", "config.json"):
    assert (tmp_path / "straight" / name).exists(), name
