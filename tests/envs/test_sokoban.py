"""Sokoban: levels are a pure function of the seed and always solvable, the solver is move-optimal (checked against a
plain breadth-first search), playing its plan earns the documented rewards, refused actions explain themselves and
change nothing, snapshots and clones are exact, and the image shows each cell's content in its colour."""

from collections import deque

import numpy as np
import pytest

from jaxagents.envs import sokoban
from jaxagents.envs.base import EnvBatch
from jaxagents.envs.sokoban_solver import MOVES, solve

SMALL = sokoban.SokobanConfig()
BIG = sokoban.SokobanConfig(dim=(8, 8), num_boxes=2)


def _bfs_optimal_moves(level):
  """Reference: the fewest moves by breadth-first search over every (player, boxes) state."""
  start = (level.player, level.boxes)
  distance = {start: 0}
  frontier = deque([start])
  while frontier:
    player, boxes = frontier.popleft()
    if boxes == level.targets:
      return distance[(player, boxes)]
    for dr, dc in MOVES.values():
      ahead = (player[0] + dr, player[1] + dc)
      if ahead not in level.floor:
        continue
      next_boxes = boxes
      if ahead in boxes:
        beyond = (ahead[0] + dr, ahead[1] + dc)
        if beyond not in level.floor or beyond in boxes:
          continue
        next_boxes = boxes - {ahead} | {beyond}
      if (ahead, next_boxes) not in distance:
        distance[(ahead, next_boxes)] = distance[(player, boxes)] + 1
        frontier.append((ahead, next_boxes))
  return None


def _play(env, actions):
  return [env.step(action) for action in actions]


def test_levels_are_a_pure_function_of_the_seed():
  a, b = sokoban.Sokoban(), sokoban.Sokoban()
  first, again = a.reset(5), b.reset(5)
  assert first.text == again.text and np.array_equal(first.image, again.image)
  texts = {sokoban.Sokoban().reset(seed).text for seed in range(30)}
  assert len(texts) >= 25


@pytest.mark.parametrize("config,num_seeds", [(SMALL, 200), (BIG, 40)], ids=["6x6_1box", "8x8_2boxes"])
def test_every_generated_level_is_solved_by_playing_the_solver_plan(config, num_seeds):
  for seed in range(num_seeds):
    env = sokoban.Sokoban(config)
    env.reset(seed)
    level = env.state.level
    assert len(level.boxes) == len(level.targets) == config.num_boxes
    assert not level.boxes & level.targets, "a level starts with every box off its target"
    assert all(0 < r < config.dim[0] - 1 and 0 < c < config.dim[1] - 1 for r, c in level.floor), "outer ring is wall"
    plan = env.optimal_actions()
    assert len(plan) == level.optimal_moves >= 1
    results = _play(env, plan)
    assert all(result.valid for result in results)
    assert [result.done for result in results] == [False] * (len(plan) - 1) + [True]
    assert results[-1].success and env.success and env.done
    assert [result.reward for result in results] == [-0.1] * (len(plan) - 1) + [10.0]


def test_solver_plan_is_as_short_as_breadth_first_search_over_all_states():
  for config, seeds in ((SMALL, range(40)), (BIG, range(20))):
    for seed in seeds:
      level = sokoban.generate_level(config, seed)
      assert level.optimal_moves == _bfs_optimal_moves(level)


def test_solver_finds_no_plan_for_a_box_in_a_corner_and_an_empty_plan_when_solved():
  stuck = sokoban.parse_level("#####\n#X__#\n#_P_#\n#__O#\n#####")
  assert solve(stuck.floor, stuck.targets, stuck.boxes, stuck.player) is None and stuck.optimal_moves == -1
  solved = sokoban.parse_level("#####\n#√P_#\n#####")
  assert solve(solved.floor, solved.targets, solved.boxes, solved.player) == []


def test_solver_walks_around_to_push_a_box_from_behind():
  level = sokoban.parse_level("######\n#____#\n#_XP_#\n#O___#\n######")
  plan = solve(level.floor, level.targets, level.boxes, level.player)
  assert plan == ["left", "up", "left", "down"] and level.optimal_moves == _bfs_optimal_moves(level) == 4


def test_text_uses_the_ragen_symbols_and_round_trips_through_parse_level():
  env = sokoban.Sokoban()
  text = env.reset(3).text
  assert set(text) <= set(sokoban.SYMBOLS) | {"\n"}
  assert text.count("P") + text.count("S") == 1 and text.count("X") == 1 and text.count("O") == 1
  level = sokoban.parse_level(text)
  assert (level.floor, level.targets, level.boxes, level.player) == (
    env.state.level.floor, env.state.level.targets, env.state.level.boxes, env.state.level.player)


def test_image_cells_show_their_content_colour():
  config = sokoban.SokobanConfig(dim=(7, 7), cell_pixels=8)
  env = sokoban.Sokoban(config)
  observation = env.reset(2)
  image = observation.image
  assert image.dtype == np.uint8 and image.shape == (7 * 8, 7 * 8, 3)
  for r, row in enumerate(observation.text.split("\n")):
    for c, symbol in enumerate(row):
      tile = image[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
      assert (tile == np.array(sokoban.RGB[symbol], dtype=np.uint8)).all(), (r, c, symbol)
  assert len(set(sokoban.RGB.values())) == len(sokoban.SYMBOLS), "every symbol has its own colour"


def test_parse_action_reads_the_last_answer_tag_or_a_bare_action_word():
  env = sokoban.Sokoban()
  assert env.parse_action("I think <answer>Up</answer>") == "up"
  assert env.parse_action("<answer>left</answer> no, <answer> RIGHT. </answer>") == "right"
  assert env.parse_action("  Down! ") == "down"
  assert env.parse_action("<answer>jump</answer>") is None
  assert env.parse_action("<answer>up, left</answer>") is None
  assert env.parse_action("I give up") is None
  assert env.parse_action("") is None


def test_refused_actions_explain_why_change_nothing_and_cost_a_step():
  env = sokoban.Sokoban()
  env.restore(sokoban.SokobanState(sokoban.parse_level("#####\n#P_X#\n#__O#\n#####"), (1, 1), frozenset({(1, 3)}), 0))
  board = env.observe().text
  cases = {None: "No action", "jump": "not an action", "up": "wall", "left": "wall"}
  for steps, (action, reason) in enumerate(cases.items(), start=1):
    result = env.step(action)
    assert not result.valid and not result.done and result.reward == -0.1
    assert reason in result.observation.text and result.observation.text.endswith(board)
    assert env.observe().text == board and env.state.num_steps == steps
  env.step("right")
  result = env.step("right")  # the box is against the wall
  assert not result.valid and "wall is behind it" in result.observation.text


def test_pushing_a_box_into_another_box_is_refused():
  env = sokoban.Sokoban()
  level = sokoban.parse_level("#######\n#PXX_O#\n#____O#\n#######")
  env.restore(sokoban.SokobanState(level, level.player, level.boxes, 0))
  result = env.step("right")
  assert not result.valid and "another box" in result.observation.text and env.state.player == (1, 1)


def test_legal_actions_are_exactly_the_moves_that_change_the_state():
  env = sokoban.Sokoban(BIG)
  for seed in range(5):
    env.reset(seed)
    for word in MOVES:
      probe = env.clone()
      assert probe.step(word).valid == (word in env.legal_actions())


def test_episode_ends_at_max_steps_with_the_failure_reward_and_refuses_further_steps():
  env = sokoban.Sokoban(sokoban.SokobanConfig(max_steps=3))
  env.reset(0)
  results = _play(env, [None, None, None])
  assert [r.done for r in results] == [False, False, True] and [r.reward for r in results] == [-0.1, -0.1, 0.0]
  assert not env.success and env.legal_actions() == []
  with pytest.raises(RuntimeError, match="episode is over"):
    env.step("up")


def test_clone_then_step_equals_step_and_leaves_the_original_untouched():
  env = sokoban.Sokoban(BIG)
  env.reset(11)
  before = env.observe()
  twin = env.clone()
  for action in env.optimal_actions()[:4] + ["jump"]:
    cloned = twin.step(action)
    assert env.observe().text == before.text and np.array_equal(env.observe().image, before.image)
    direct = env.clone().step(action)
    assert cloned.observation.text == direct.observation.text
    assert (cloned.reward, cloned.done, cloned.valid) == (direct.reward, direct.done, direct.valid)
    env.step(action)
    assert env.observe().text == twin.observe().text
    before = env.observe()


def test_snapshot_restore_round_trip():
  env = sokoban.Sokoban()
  env.reset(4)
  snapshot = env.snapshot()
  first = env.observe()
  _play(env, env.optimal_actions())
  assert env.done
  env.restore(snapshot)
  assert env.snapshot() == snapshot and not env.done and env.observe().text == first.text
  assert np.array_equal(env.observe().image, first.image)
  with pytest.raises(TypeError):
    env.restore("not a snapshot")


def test_env_batch_steps_unfinished_episodes_only():
  batch = EnvBatch(lambda: sokoban.Sokoban(), 3)
  observations = batch.reset([1, 2, 3])
  assert len({o.text for o in observations}) == 3
  plans = [env.optimal_actions() for env in batch.envs]
  for t in range(max(map(len, plans))):
    results = batch.step([plan[t] if t < len(plan) else "up" for plan in plans])
    assert [r is None for r in results] == [t >= len(plan) for plan in plans]
  assert batch.done.all() and batch.success.all()
