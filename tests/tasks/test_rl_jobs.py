"""The RL jobs on the one loop: SIGKILL and resume is bitwise, the summary of a resumed run equals the uninterrupted
run's, a non-finite reward stops the job with the loop's message and the last good checkpoint, every size in an RL
config is checked by name, and a sharded GRPO step equals the one-device step."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxagents import metrics as metrics_lib
from jaxagents import sharding
from jaxagents import train as train_lib
from jaxagents.tasks import base, counting_vlm, get_task
from tests.tasks import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(config: str, workdir, *extra, kill_after=None):
  """`python -m jaxagents.train --config configs/<config>` in a subprocess on one CPU device."""
  env = {k: v for k, v in os.environ.items() if k != "JAXAGENTS_SIGKILL_AFTER_STEP"}
  env["XLA_FLAGS"] = ""  # one CPU device: the subprocesses compile faster
  if kill_after is not None:
    env["JAXAGENTS_SIGKILL_AFTER_STEP"] = str(kill_after)
  args = [sys.executable, "-m", "jaxagents.train", "--config", os.path.join(REPO, "configs", config),
          "--workdir", str(workdir), *extra]
  return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def _saved_state(workdir):
  """The latest checkpoint's state as host numpy arrays."""
  checkpoints = workdir / "checkpoints"
  step = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  path = os.fspath(checkpoints / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
  return step, checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def test_sigkilled_grpo_job_resumes_bitwise_with_the_same_summary(tmp_path):
  # configs/grpo_shapes.py:test: 4 SFT steps, 4 GRPO steps; a checkpoint every step (asynchronous: orbax finishes
  # one save before it starts the next, so a kill after step 7 leaves step 6 or 7, mid-GRPO, as the latest).
  every_step = ("--config.checkpoint.save_every=1", "--config.checkpoint.keep=10")
  straight = _run("grpo_shapes.py:test", tmp_path / "straight", *every_step)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = _run("grpo_shapes.py:test", tmp_path / "resumed", *every_step, kill_after=7)
  assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-3000:]}"
  resumed = _run("grpo_shapes.py:test", tmp_path / "resumed", *every_step)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from step 6" in resumed.stderr or "Resumed from step 7" in resumed.stderr, resumed.stderr[-3000:]

  step_a, state_a = _saved_state(tmp_path / "straight")
  step_b, state_b = _saved_state(tmp_path / "resumed")
  assert step_a == step_b == 8
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  assert set(state_a) >= {"params", "ref_params", "opt_state", "step", "phase"}
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bitwise
  summary = lambda d: json.loads((d / "final_metrics.json").read_text())
  assert summary(tmp_path / "resumed") == summary(tmp_path / "straight")
  assert {"sft/loss", "reward/mean", "eval/reward", "eval/reward_after_sft", "rollout/logprob_gap"} <= set(
    summary(tmp_path / "straight"))
  assert summary(tmp_path / "straight")["rollout/logprob_gap"] < 1e-5  # one graph for rollout and training
  for name in ("metrics.jsonl", "reward.png", "before.json", "after_sft.json", "config.json"):
    assert (tmp_path / "straight" / name).exists(), name


def test_non_finite_reward_stops_the_job_with_the_loops_message_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  config = configs.load("grpo_shapes", "test")
  config.checkpoint = dict(save_every=1, keep=10, async_save=False)
  config.log_every = 1
  rewards, calls = counting_vlm.rewards, []

  def poisoned(env, tokens, examples, repeat):
    values = rewards(env, tokens, examples, repeat)
    if repeat == config.rl.group_size:  # a rollout's rewards (evaluations score 1 or eval.samples per prompt)
      calls.append(1)
      return values * np.nan if len(calls) == 2 else values  # the second GRPO step, global step 6
    return values

  monkeypatch.setattr(counting_vlm, "rewards", poisoned)
  with pytest.raises(FloatingPointError, match=r"Non-finite training metrics at step 6: .*reward/mean.*last good "
                                               r"checkpoint is step 5"):
    train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved[-1] == 5
  logged = metrics_lib.read_metrics(tmp_path / "metrics.jsonl")
  assert all(np.isfinite(r.get("reward/mean", 0.0)) for r in logged)


@pytest.mark.parametrize("field, value", [
  ("rl.group_size", 0), ("rl.updates_per_batch", 0), ("rl.prompts_per_step", -1), ("sft.batch_size", 0),
  ("rl.steps", -2), ("rl.max_new_tokens", 0), ("eval.examples", 0), ("rl.temperature", -1.0),
])
@pytest.mark.parametrize("job", ["grpo_shapes", "pdcr_shapes", "vgs_shapes"])
def test_every_size_and_step_count_of_an_rl_config_is_checked_by_name(job, field, value):
  config = configs.load(job, "test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=rf"config\.{re.escape(field)}: expected"):
    get_task(config.task, config)


def _one_grpo_step(config, mesh):
  """Init, then one GRPO step (prepare + update) of the task under `mesh`: (tokens, loss metrics, params)."""
  task = get_task(config.task, config)
  # SGD instead of the job's Adam: Adam's first step is lr * sign(g), which turns float-summation-order noise in
  # near-zero gradient entries into +-lr differences; with SGD the parameters show the gradients themselves.
  task._optimizers = {**task.optimizers(), "rl": base.Optimizer(optax.sgd(1.0))}
  rules = (*getattr(task, "logical_rules", ()), *sharding.DEFAULT_RULES)
  phase = task.phases[1]
  with sharding.active(mesh, rules):
    boxed = jax.eval_shape(task.init, jax.random.key(0))
    shardings = sharding.logical_to_sharding(boxed, mesh, rules)
    trees = jax.jit(lambda key: sharding.unbox(task.init(key)), out_shardings=shardings)(jax.random.key(0))
    state = {**trees, "opt_state": {name: opt.tx.init(trees[opt.params]) for name, opt in task.optimizers().items()}}
    records = {k: np.stack(v) for k, v in _records(task, config.rl.prompts_per_step).items()}
    batch, host = task.prepare(state, records, jax.random.key(1), phase)
    update = jax.jit(lambda s, b: task.update(s, b, jax.random.key(2), phase))
    new_state, metrics = update(state, batch)
  tokens = np.asarray(batch["inputs"].input_ids)
  return tokens, jax.device_get(metrics), jax.device_get(host), jax.device_get(new_state["params"])


def _records(task, count):
  source = task.source(task.phases[1])
  items = [source[i] for i in range(count)]
  return {key: [item[key] for item in items] for key in items[0]}


@pytest.mark.slow  # minutes on 2 cores; CI runs it in its slow stage (`.ci/run`)
def test_sharded_grpo_step_equals_the_one_device_step():
  assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
  config = configs.load("grpo_shapes", "test")
  config.rl.prompts_per_step = 4  # one prompt per batch shard of data=2 x fsdp=2
  one = _one_grpo_step(config, sharding.make_mesh({}, jax.devices()[:1]))
  eight = _one_grpo_step(config, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  np.testing.assert_array_equal(eight[0], one[0])  # the same sampled tokens
  for key in ("loss", "pg_loss", "kl", "grad_norm"):
    np.testing.assert_allclose(eight[1][key], one[1][key], rtol=1e-5, atol=1e-7, err_msg=key)
  for key in ("reward/mean", "rollout/logprob_gap"):
    np.testing.assert_allclose(eight[2][key], one[2][key], rtol=1e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eight[3], one[3])


def test_shortened_grpo_job_raises_the_held_out_reward(tmp_path):
  """The README's main job shortened to 100 GRPO steps after its SFT warm start (half the config's): the held-out
  sampled reward (256 prompts x 4 samples, the same draws at every evaluation) must rise by 0.03. One device, as the
  README's command runs on a CPU (the sharded tests are above)."""
  config = configs.load("grpo_shapes")
  config.rl.steps = 100
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  after_sft = json.loads((tmp_path / "after_sft.json").read_text())["eval/sampled_reward"]
  assert result["eval/sampled_reward"] > after_sft + 0.03, (after_sft, result["eval/sampled_reward"])
