"""The VGS distillation job (jaxagents/rl/vgs_trainer.py): an interrupted run resumes to the same state, and one
distillation update equals VGS's formula (arXiv 2606.00564, Eq. 13-18, 22) computed here from plain `model.apply`
calls with and without the image and separate `jax.grad` calls per loss term."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from jaxagents import train as train_lib
from jaxagents.data import shapes
from jaxagents.rl import grpo, vgs, vgs_trainer
from tests.rl import jobs

_CACHE_OPTIONS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0.0,
                  "jax_persistent_cache_min_entry_size_bytes": 0}


def _config(**rl):
  config = jobs.load_config("vgs_shapes")
  config.data.eval_examples = 8
  config.data.eval_samples = 0
  config.teacher.steps = 2
  config.teacher.batch_size = 4
  config.sft.steps = 1
  config.sft.batch_size = 4
  config.rl.steps = 2
  config.rl.prompts_per_step = 2
  config.rl.group_size = 2
  config.log_every = 1
  config.eval_every = 100
  config.checkpoint.save_every = 1
  config.rl.update(rl)
  return config


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Every run and job here compiles the same few programs; a persistent compilation cache turns the repeats
  (a resumed run, a second job with the same config) into loads. The previous settings are restored after."""
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  for name, value in {**_CACHE_OPTIONS, "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla"))}.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.mark.slow  # ~2.5 min of XLA compiles; the shared run loop's resume is covered by the GRPO and PDCR tests
def test_interrupted_run_resumes_to_the_same_state(tmp_path):
  whole = train_lib.train(_config(), str(tmp_path / "whole"))
  train_lib.train(_config(steps=1), str(tmp_path / "split"))  # stops after teacher, SFT and 1 distillation step
  resumed = train_lib.train(_config(), str(tmp_path / "split"))
  a, b = jobs.latest_state(tmp_path / "whole", _config()), jobs.latest_state(tmp_path / "split", _config())
  assert int(a["step"]) == int(b["step"]) == 5
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The teacher trained in phase 1 and stayed fixed after it; the student moved in phases 2 and 3.
  init = jax.jit(vgs_trainer.ShapesVGS(_config()).init_state)(jax.random.key(0))
  assert not np.array_equal(a["teacher_params"]["params"]["text"]["final_norm"]["scale"],
                            init["teacher_params"]["params"]["text"]["final_norm"]["scale"])
  assert int(a["teacher_opt_state"][1][0].count) == 2 and int(a["sft_opt_state"][1][0].count) == 1
  assert int(a["opt_state"][0].count) == 2
  assert resumed["vgs/std"] == whole["vgs/std"] and resumed["reward/mean"] == whole["reward/mean"]
  for name in ("metrics.jsonl", "reward.png", "vgs.png", "before.json", "after_sft.json", "final_metrics.json"):
    assert (tmp_path / "whole" / name).exists(), name
  final = json.loads((tmp_path / "split" / "final_metrics.json").read_text())
  assert {"teacher/eval/reward", "eval/reward", "eval/reward_after_sft", "vgs/eta", "vgs/cos_std_vis"} <= set(final)
  logged = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "teacher/eval/reward" in r] == [3]  # once, when the teacher is final
  assert [r["step"] for r in logged if "teacher/sft_loss" in r] == [1, 2]
  assert [r["step"] for r in logged if "vgs/std" in r] == [4, 5]


# ---------------------------------------------------------------- one update against the formula


def _independent_grads(job, params, teacher_params, batch, advantages):
  """Per-term gradients from plain `model.apply` calls and one `jax.grad` per term.

  The text-only rows are built here by hand: question words then the response, M-RoPE positions 0..L-1 on all
  three axes (a text-only row's), no vision inputs; the sampler's distribution by hand (suppressed ids at -inf,
  / temperature)."""
  tokens, mask = jnp.asarray(batch.tokens), jnp.asarray(batch.response_mask)
  length = tokens.shape[1]
  questions = [shapes.encode(e["prompt"]) for e in batch.examples for _ in range(job.rl["group_size"])]
  text_ids = np.array([q + list(t) for q, t in zip(questions, batch.tokens, strict=True)], np.int32)
  text_positions = np.broadcast_to(np.arange(text_ids.shape[1]), (3, *text_ids.shape)).astype(np.int32)
  image = batch.image_inputs

  def logits(model, p, text):
    if text:
      out, _ = model.apply(p, text_ids, text_positions, np.ones_like(text_ids), None)
    else:
      out, _ = model.apply(p, image.input_ids, image.positions, image.attention_mask, image.vision)
    out = out[:, -length - 1:-1].at[..., jnp.asarray(shapes.NEVER_GENERATED)].set(-jnp.inf)
    return out / job.sampling.temperature

  t_img, t_txt = logits(job.teacher_model, teacher_params, False), logits(job.teacher_model, teacher_params, True)

  def terms(p):
    return vgs.vgs_terms(logits(job.model, p, False), logits(job.model, p, True), t_img, t_txt, mask)

  def adaptive_visual(p):
    t = terms(p)
    gamma_t = jnp.where(t["vds"] > t["vds_threshold"], 1.0, jnp.where(t["vds"] > t["vds_threshold_low"], 0.5, 0.0))
    return jnp.sum(t["token_weights"] * gamma_t * t["kl_vis"])  # Σ w γ_t/γ ℓ_Vis,t (App. E)

  def grpo_term(p):
    log_probs = jax.nn.log_softmax(logits(job.model, p, False), axis=-1)
    logp = jnp.where(mask, jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0], 0.0)
    return grpo.grpo_loss(logp, jax.lax.stop_gradient(logp), advantages, mask, config=job.loss_config)[0]

  return {"std": jax.grad(lambda p: terms(p)["std"])(params), "vis": jax.grad(lambda p: terms(p)["vis"])(params),
          "lp": jax.grad(lambda p: terms(p)["lp"])(params), "vis_adaptive": jax.grad(adaptive_visual)(params),
          "grpo": jax.grad(grpo_term)(params)}


@pytest.fixture(scope="module")
def setup():
  """A state (random student and teacher: their distributions differ), one rollout batch and the reference
  gradients, shared by the update tests."""
  job = vgs_trainer.ShapesVGS(_config())
  # Placed like a restored checkpoint's state, so that the updates compiled here are the resumed run's programs.
  state = jax.device_put(jax.jit(job.init_state)(jax.random.key(0)), jax.local_devices()[0])
  batch = job.sample(state, 0)
  assert batch.response_mask.sum() > batch.response_mask.shape[0]  # some responses run past one token
  advantages = np.array([1.0, 1.0, -1.0, -1.0], np.float32)  # hand-set (the rollout rewards may all be equal)
  reference = jax.jit(lambda p, tp, adv: _independent_grads(job, p, tp, batch, adv))(
    state["params"], state["teacher_params"], advantages)
  return state, batch, advantages, reference


def _update(config, state, batch, advantages, with_grads=False):
  """The job's compiled update (its state is donated, so it gets a copy) and, if asked, its per-term gradients."""
  job = vgs_trainer.ShapesVGS(config)
  job.compile()
  grads = None
  if with_grads:
    grads, _ = jax.jit(job.distill_grads)(state["params"], state["teacher_params"], batch.image_inputs,
                                          batch.text_inputs, batch.tokens, batch.response_mask, advantages)
  new_state, metrics = job._distill_update(jax.tree.map(jnp.copy, state), batch.image_inputs, batch.text_inputs,
                                           batch.tokens, batch.response_mask, advantages)
  return job, grads, new_state, metrics


def _assert_adam_step(job, state, new_params, direction):
  """new_params is one step of the transform chain's tail, clip_by_global_norm(1) then AdamW from a fresh state, along
  `direction`. Adam's first step is ~lr·sign(g), so it is compared where |g| is far above Adam's ε (there a wrong
  γ, λ or term flips signs); at |g| ~ ε float noise in g moves the step by a fraction of lr."""
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(job.rl["learning_rate"], weight_decay=job.rl["weight_decay"]))
  updates, _ = tx.update(direction, tx.init(state["params"]), state["params"])
  expected = optax.apply_updates(state["params"], updates)
  compared = total = 0
  for new, exp, g in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected), jax.tree.leaves(direction),
                         strict=True):
    clear = np.abs(np.asarray(g)) > 1e-5
    np.testing.assert_allclose(np.asarray(new)[clear], np.asarray(exp)[clear], rtol=1e-5,
                               atol=1e-3 * job.rl["learning_rate"])
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
  steering = new_state["opt_state"][0]
  assert int(steering.count) == 1
  np.testing.assert_allclose(steering.norm_std_ema, _norm(g_std), rtol=1e-4)
  np.testing.assert_allclose(steering.norm_vis_ema, _norm(g_vis), rtol=1e-4)
  np.testing.assert_allclose(steering.cos_ema, _cos(g_std, g_vis), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(steering.eta_ema, eta, rtol=1e-4)


def test_vgs_update_is_the_norm_preserving_steered_distillation_gradient(setup):
  state, batch, advantages, ref = setup
  gamma, lam = 2.0, 0.01  # the config's (the paper's); its compiled update is the resume test's
  job, grads, new_state, metrics = _update(_config(), state, batch, advantages, with_grads=True)
  for name in ("std", "vis", "lp"):
    _assert_trees_close(grads[name], ref[name])
  combined = jax.tree.map(lambda s, v: s + gamma * v, ref["std"], ref["vis"])
  eta = _norm(ref["std"]) / _norm(combined)  # Eq. 15
  assert 0.1 < eta < 0.99  # the two gradients are not parallel: steering changes the direction
  _assert_transform_inputs(new_state, ref["std"], ref["vis"], eta)
  steered = jax.tree.map(lambda c, lp: eta * c + lam * eta * lp, combined, ref["lp"])  # Eq. 18's gradient
  _assert_adam_step(job, state, new_state["params"], steered)
  np.testing.assert_allclose(metrics["vgs/eta"], eta, rtol=1e-4)
  np.testing.assert_allclose(metrics["vgs/cos_std_vis"], _cos(ref["std"], ref["vis"]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["vgs/cos_out_vis"], _cos(steered, ref["vis"]), rtol=1e-4, atol=1e-6)


def test_gamma_zero_is_plain_on_policy_distillation(setup):
  state, batch, advantages, ref = setup
  job, _, new_state, metrics = _update(_config(gamma=0.0, lam=0.0), state, batch, advantages)
  _assert_transform_inputs(new_state, ref["std"], ref["vis"], 1.0)
  _assert_adam_step(job, state, new_state["params"], ref["std"])
  assert float(metrics["vgs/eta"]) == pytest.approx(1.0)


def test_grpo_mix_with_adaptive_gamma_and_projection_follows_eq_22(setup):
  state, batch, advantages, ref = setup
  alpha, gamma, lam = 0.3, 2.0, 0.5  # λ larger than the paper's so that a misplaced g_LP shows in the update
  config = _config(alpha=alpha, eta=1.0, lam=lam, adaptive_gamma=True, project_conflicts=True)
  job, _, new_state, _ = _update(config, state, batch, advantages)
  assert _norm(ref["grpo"]) > 0 and _norm(ref["vis_adaptive"]) > 0
  # J = (1-α)·O_GRPO - α·ℓ_VGS-LP without η: the transform gets α·g_Std + (1-α)·g_GRPO and α·g_Vis (adaptive γ_t).
  base = jax.tree.map(lambda s, r: alpha * s + (1 - alpha) * r, ref["std"], ref["grpo"])
  visual = jax.tree.map(lambda v: alpha * v, ref["vis_adaptive"])
  steering = new_state["opt_state"][0]
  np.testing.assert_allclose(steering.norm_std_ema, _norm(base), rtol=1e-4)
  np.testing.assert_allclose(steering.norm_vis_ema, _norm(visual), rtol=1e-4)
  np.testing.assert_allclose(steering.cos_ema, _cos(base, visual), rtol=1e-4, atol=1e-6)
  assert _cos(base, visual) < 0  # so the projection (not the paper's method) changes the base gradient
  projected = vgs.project_conflict(base, visual)
  direction = jax.tree.map(lambda b, v, lp: b + gamma * v + lam * alpha * lp, projected, visual, ref["lp"])
  _assert_adam_step(job, state, new_state["params"], direction)


def test_bad_options_raise_naming_the_field():
  with pytest.raises(ValueError, match="config.rl.eta"):
    vgs_trainer.ShapesVGS(_config(alpha=0.3))  # Eq. 22 drops η: a dynamic η is refused
  with pytest.raises(ValueError, match="config.rl.alpha"):
    vgs_trainer.ShapesVGS(_config(alpha=1.0, eta=1.0))
  config = _config()
  config.teacher.steps = 0
  with pytest.raises(ValueError, match="config.teacher.steps"):
    vgs_trainer.ShapesVGS(config)
  config = _config()
  config.data.task.format = "rows"  # 11-token completions
  with pytest.raises(ValueError, match="config.rl.max_new_tokens"):
    vgs_trainer.ShapesVGS(config)
