"""The household: worlds are a pure function of the seed, the scripted expert reaches every generated goal with
admissible commands and the documented rewards, the goal check is exact (kind, receptacle and property), the
admissible commands are exactly the commands that succeed, refused commands say "Nothing happens." and change
nothing, and snapshots and clones are exact."""

import dataclasses

import pytest

from jaxagents.envs import household
from jaxagents.envs.base import EnvBatch


def _run_expert(env):
  results = []
  while not env.done:
    action = env.expert_action()
    assert action in env.legal_actions()
    results.append(env.step(action))
  return results


def _every_command(state):
  """Every command the grammar can form over the state's receptacles and objects."""
  receptacles, objects = state.receptacles, state.objects
  commands = ["look", "inventory"]
  for r in receptacles:
    commands += [f"go to {r}", f"open {r}", f"close {r}", f"examine {r}"]
  for o in objects:
    commands.append(f"examine {o}")
    for r in receptacles:
      commands += [f"take {o} from {r}", f"put {o} in/on {r}", f"clean {o} with {r}", f"heat {o} with {r}",
                   f"cool {o} with {r}"]
  return commands


def test_worlds_are_a_pure_function_of_the_seed():
  a, b = household.Household(), household.Household()
  assert a.reset(9).text == b.reset(9).text and a.snapshot() == b.snapshot()
  assert len({household.Household().reset(seed).text for seed in range(20)}) == 20


def test_expert_reaches_every_generated_goal_with_the_documented_rewards():
  goal_types = set()
  for seed in range(200):
    env = household.Household()
    first = env.reset(seed)
    goal_types.add(env.state.goal.goal_type)
    assert first.text.endswith(f"Your task is to: {env.task}.")
    assert not env.success
    assert any(household.kind(obj) == env.state.goal.object_kind for obj in env.state.objects)
    results = _run_expert(env)
    assert all(result.valid for result in results)
    assert [result.done for result in results] == [False] * (len(results) - 1) + [True]
    assert results[-1].success and env.success and env.done and env.expert_action() is None
    assert [result.reward for result in results] == [-0.1] * (len(results) - 1) + [10.0]
  assert goal_types == set(household.GOAL_TYPES)


def test_goal_needs_the_property_the_kind_and_the_receptacle():
  config = household.HouseholdConfig(goal_types=("pick_cool_then_place",))
  env = household.Household(config)
  env.reset(0)
  goal = env.state.goal
  obj = min(o for o in env.state.objects if household.kind(o) == goal.object_kind)
  source = env.state.where[obj]
  prefix = [f"go to {source}"] + ([f"open {source}"] if household.kind(source) in household.CLOSABLE else [])
  for command in prefix + [f"take {obj} from {source}", f"go to {goal.receptacle}"]:
    assert env.step(command).valid
  if household.kind(goal.receptacle) in household.CLOSABLE:
    assert env.step(f"open {goal.receptacle}").valid
  snapshot = env.snapshot()
  assert not env.step(f"put {obj} in {goal.receptacle}").success, "an object that is not cool does not count"
  env.restore(snapshot)
  for command in ["go to fridge 1", f"cool {obj} with fridge 1", "go to microwave 1", f"heat {obj} with microwave 1"]:
    assert env.step(command).valid
  assert obj in env.state.hot and obj not in env.state.cool, "heating undoes cooling"
  for command in ["go to fridge 1", f"cool {obj} with fridge 1", f"go to {goal.receptacle}"]:
    assert env.step(command).valid
  other = next(r for r in env.state.receptacles if r != goal.receptacle and env.state.accessible(r))
  probe = env.clone()
  assert probe.step(f"go to {other}").valid and not probe.step(f"put {obj} on {other}").success
  result = env.step(f"put {obj} in/on {goal.receptacle}")
  assert result.valid and result.success and result.done and result.reward == 10.0


def test_admissible_commands_are_exactly_the_commands_that_succeed():
  for seed in range(3):
    env = household.Household()
    env.reset(seed)
    while not env.done:
      legal = set(env.legal_actions())
      for command in _every_command(env.state):
        assert env.clone().step(command).valid == (command in legal), command
      env.step(env.expert_action())


def test_refused_commands_say_nothing_happens_and_change_nothing():
  env = household.Household()
  env.reset(1)
  closed = next(r for r in env.state.receptacles if household.kind(r) == "cabinet")
  assert env.step(f"go to {closed}").valid
  before = env.snapshot()
  hidden = env.state.contents(closed)
  refused = [None, "dance", "go to attic 1", f"go to {closed}", "take nothing 1 from countertop 1",
             "heat apple 1 with sinkbasin 1", f"put mug 1 in {closed}", "open fridge 1", f"close {closed}"]
  refused += [f"take {obj} from {closed}" for obj in hidden]  # the cabinet is still closed
  for steps, command in enumerate(refused, start=before.num_steps + 1):
    result = env.step(command)
    assert not result.valid and result.observation.text.startswith("Nothing happens.") and result.info["reason"]
    assert result.reward == -0.1 and not result.done
    assert dataclasses.replace(env.snapshot(), num_steps=0) == dataclasses.replace(before, num_steps=0)
    assert env.state.num_steps == steps and env.observe() == household.Observation(before.message)


def test_parse_action_reads_the_last_answer_tag_or_a_one_line_response():
  env = household.Household()
  assert env.parse_action("think...\n<answer>Go To  Cabinet 1.</answer>") == "go to cabinet 1"
  assert env.parse_action("<answer>look</answer><answer>inventory</answer>") == "inventory"
  assert env.parse_action("take mug 1 from countertop 1") == "take mug 1 from countertop 1"
  assert env.parse_action("I will look\naround") is None
  assert env.parse_action("<answer> </answer>") is None


def test_episode_ends_at_max_steps_with_the_failure_reward_and_refuses_further_steps():
  env = household.Household(household.HouseholdConfig(max_steps=2))
  env.reset(0)
  assert [env.step("look").reward, env.step("look").reward] == [-0.1, 0.0]
  assert env.done and not env.success and env.legal_actions() == []
  with pytest.raises(RuntimeError, match="episode is over"):
    env.step("look")


def test_clone_then_step_equals_step_and_leaves_the_original_untouched():
  env = household.Household()
  env.reset(7)
  for _ in range(4):
    before = env.snapshot()
    action = env.expert_action()
    twin = env.clone()
    cloned = twin.step(action)
    assert env.snapshot() == before
    direct = env.step(action)
    assert (cloned.observation, cloned.reward, cloned.done, cloned.valid) == (
      direct.observation, direct.reward, direct.done, direct.valid)
    assert twin.snapshot() == env.snapshot()


def test_snapshot_restore_round_trip():
  env = household.Household()
  first = env.reset(12)
  snapshot = env.snapshot()
  _run_expert(env)
  env.restore(snapshot)
  assert env.snapshot() == snapshot and env.observe() == first and not env.done
  with pytest.raises(TypeError):
    env.restore(None)


def test_env_batch_runs_the_expert_on_several_seeds():
  batch = EnvBatch(household.Household, 4)
  batch.reset([0, 1, 2, 3])
  while not batch.done.all():  # ends: every episode stops within max_steps
    results = batch.step([None if env.done else env.expert_action() for env in batch.envs])
    assert all(r is None or r.valid for r in results)
  assert batch.success.all()
