"""The Dyna-Mind Sokoban job (`tasks.agentic_rl`): training rows mask exactly the policy tokens and carry each
row's advantage there, SFT batches are `multi_turn` window rows of the ReSim examples, refined episodes train
a^refine against s_t by default (against s_t^refine on request) with one row per turn played, config checks by name,
and (slow) the whole job through the loop for both algorithms."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxagents.envs import resim
from jaxagents.envs.sokoban_codec import InteriorSokoban
from jaxagents.tasks import TASKS, agentic_rl, get_task
from tests.tasks import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**rl):
  config = configs.load("agentic_sokoban", "test")
  config.rl.update(rl)
  return config


def test_training_rows_mask_the_responses_and_carry_their_advantage():
  prompts = [np.array([5, 6, 7]), np.array([8])]
  responses = [np.array([9, 10, 1]), np.array([11, 1])]
  batch = agentic_rl.training_batch(prompts, responses, [0.5, -1.0], 8, 4, pad_id=0)
  ids, mask = np.asarray(batch["inputs"].input_ids), batch["completion_mask"]
  assert ids.shape == (8, 12) and mask.shape == (8, 12)  # rows padded to 8
  np.testing.assert_array_equal(ids[0, 5:11], [5, 6, 7, 9, 10, 1])
  np.testing.assert_array_equal(ids[mask], [9, 10, 1, 11, 1])
  np.testing.assert_array_equal(batch["advantages"][mask], [0.5, 0.5, 0.5, -1.0, -1.0])
  assert not batch["advantages"][~mask].any() and not mask[2:].any()


def test_sft_batch_is_the_window_layout_of_the_resim_examples():
  task = agentic_rl.AgenticRL(_config())
  records = {key: value[:8] for key, value in task.sft_records().items()}
  batch, _ = task.prepare({}, records, jax.random.key(0), task.phases[0])
  ids, mask = np.asarray(batch["inputs"].input_ids), np.asarray(batch["completion_mask"])
  for row in range(8):
    length = records["response_length"][row]
    np.testing.assert_array_equal(ids[row][mask[row]], records["response"][row, :length])
    assert task.codec.decode(ids[row][mask[row]][:-1]).startswith("<think>")


def test_refined_context_holds_the_response_and_the_real_states_its_plan_reaches(monkeypatch):
  # A scripted sampler (no model): every response plans "right down" and answers "left".
  task = agentic_rl.AgenticRL(_config())
  codec = task.codec
  response = np.asarray(codec.encode("<think>plan right down\n</think><answer>left</answer>") + [codec.eos_id])
  monkeypatch.setattr(task, "_sample", lambda params, prompts, key: (
    [response] * len(prompts), [codec.decode(response[:-1])] * len(prompts)))
  seeds = [0, 3]
  num_steps, success, rows = task.play_refined(None, seeds, jax.random.key(1))
  assert len(rows) == num_steps.sum()
  env = InteriorSokoban(task.env_config)
  encode = lambda text: codec.encode(text + "\n")
  for episode, seed in enumerate(seeds):
    observation = env.reset(seed).text
    turns = [row for row in rows if row[0] == episode]
    assert len(turns) == num_steps[episode]
    for _, plain, refine, refined in turns:
      assert list(plain) == encode(observation)  # s_t (a refusal's reason included): the default training context
      clone, expected = env.clone(), encode(observation) + list(response[:-1]) + codec.encode("\n")
      for k, action in enumerate(("right", "down")):
        if clone.done:
          break
        clone.step(action)
        expected += (encode(action) if k else []) + encode(clone.observe().text)
      assert list(refine) == expected  # s_t + a + s'_{t+1} + a_2 + s'_{t+2}, the real states
      np.testing.assert_array_equal(refined, response)
      observation = env.step("left").observation.text  # the refined answer is what the real environment played
    assert env.done and env.success == success[episode]


@pytest.mark.slow  # in CI after the suite (.ci/run): compiles generation for two prompt buckets (~20 s on 2 cores)
def test_refined_episodes_of_a_model_have_one_row_per_turn():
  task = agentic_rl.AgenticRL(_config(max_new_tokens=8))
  params = task.model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  num_steps, success, rows = task.play_refined(params, [0, 1], jax.random.key(1))
  assert len(rows) == num_steps.sum() == 2 * task.env_config.max_steps and not success.any()  # untrained policy
  assert all(len(refine) > len(plain) and len(response) <= 8 for _, plain, refine, response in rows)


def test_config_is_checked_by_name_and_the_task_is_registered():
  assert TASKS["agentic_rl"] == "jaxagents.tasks.agentic_rl:AgenticRL"
  with pytest.raises(ValueError, match="rl.algorithm"):
    get_task("agentic_rl", _config(algorithm="ppo"))
  config = _config()
  config.rl.group_size = 0
  with pytest.raises(ValueError, match="group_size"):
    get_task("agentic_rl", config)


def test_plans_of_resim_traces_are_what_refinement_executes():
  task = agentic_rl.AgenticRL(_config())
  env = InteriorSokoban(task.env_config)
  env.reset(2)
  trace = resim.resim_trace(env, plan_depth=3)
  assert resim.refine_plan(trace, task.dyna.max_plan_depth) == env.optimal_actions()[:3]


@pytest.mark.slow  # in CI after the suite (.ci/run): two subprocess runs of the whole job through the loop
@pytest.mark.parametrize("variant", ["test", "grpo"])
def test_the_job_runs_through_the_loop_and_reports_held_out_success(tmp_path, variant):
  extra = ["--config.sft.steps=2", "--config.rl.steps=2", "--config.model.num_layers=1",
           "--config.model.embed_dim=32", "--config.model.head_dim=16", "--config.model.mlp_dim=64",
           "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.resim.levels=8",
           "--config.eval.levels=4", "--config.env.max_steps=3"] if variant == "grpo" else []
  env = {**os.environ, "XLA_FLAGS": ""}
  args = [sys.executable, "-m", "jaxagents.train", "--config",
          os.path.join(REPO, "configs", f"agentic_sokoban.py:{variant}"), "--workdir", str(tmp_path), *extra]
  run = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert 0.0 <= final["eval/success"] <= 1.0 and "eval/success_after_sft" in final
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("sft/loss" in r for r in records) and any("rollout/success" in r for r in records)
  if variant == "test":  # Dyna-GRPO: the first RL step is a simulation step
    assert any(r.get("dyna/simulation") == 1.0 for r in records)


