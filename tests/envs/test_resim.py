"""ReSim (Dyna-Mind, arXiv 2510.09577, Sec. 3.1) on Sokoban: the simulated boards of a trace are the boards a
clone of the real environment reaches, the distances are the solver's, the answer is an optimal action, the
search leaves the episode untouched, SFT examples mask exactly the response, and everything is deterministic."""

import numpy as np
import pytest

from jaxagents.envs import resim, sokoban
from jaxagents.envs.sokoban_codec import InteriorSokoban, SokobanCodec

CONFIG = sokoban.SokobanConfig(dim=(6, 6), max_pushes=2, max_steps=10, render_image=False)


def parse_trace(trace: str):
  """{action: (board, distance)}, the plan and the answer of a ReSim trace."""
  think = trace[len("<think>"):trace.index("\n</think>")].split("\n")
  plan = think[-1].split()[1:]
  blocks, lines = {}, think[:-1]
  while lines:
    action, lines = lines[0], lines[1:]
    board = "\n".join(lines[:4])
    blocks[action] = (board, None if lines[4] == resim.DEAD else int(lines[4]))
    lines = lines[5:]
  answer = trace[trace.index("<answer>") + len("<answer>"):trace.index("</answer>")]
  return blocks, plan, answer


@pytest.fixture(scope="module")
def states():
  return resim.collect_states(CONFIG, range(12), random_walks=2, seed=0)


def test_simulated_boards_equal_the_clone_stepped_boards(states):
  env = InteriorSokoban(CONFIG)
  for state in states:
    env.restore(state)
    blocks, _, _ = parse_trace(resim.resim_trace(env))
    assert set(blocks) == set(env.legal_actions())
    for action, (board, distance) in blocks.items():
      clone = env.clone()
      clone.step(action)
      assert board == clone.observe().text
      solution = clone.optimal_actions()
      assert distance == (0 if clone.success else None if solution is None else len(solution))


def test_answer_is_optimal_and_opens_the_plan(states):
  env = InteriorSokoban(CONFIG)
  for state in states:
    env.restore(state)
    distance = len(env.optimal_actions())
    blocks, plan, answer = parse_trace(resim.resim_trace(env, plan_depth=3))
    assert plan[0] == answer and 1 <= len(plan) <= 3
    assert blocks[answer][1] == distance - 1  # one move closer to the goal: an optimal action
    assert min(d for _, d in blocks.values() if d is not None) == distance - 1
    assert resim.refine_plan(resim.resim_trace(env, plan_depth=3)) == plan


def test_expand_leaves_the_episode_unchanged_and_goes_depth_deep():
  env = InteriorSokoban(CONFIG)
  env.reset(4)
  before = env.snapshot()
  tree = resim.expand(env, depth=2)
  assert env.snapshot() == before
  assert all(len(node.children) == (0 if node.distance == 0 else len(node.children)) for node in tree)
  assert any(node.children for node in tree)
  assert all(not child.children for node in tree for child in node.children)


def test_collection_and_examples_are_deterministic():
  codec = SokobanCodec()
  runs = [resim.sft_examples(resim.collect_states(CONFIG, range(6), seed=3), codec, CONFIG) for _ in range(2)]
  assert len(runs[0]) == len(runs[1]) > 6
  for a, b in zip(*runs, strict=True):
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_collected_states_are_solvable_unsolved_and_include_off_expert_states(states):
  env = InteriorSokoban(CONFIG)
  expert = 0
  for state in states:
    env.restore(state)
    assert not env.success and env.optimal_actions()
  for seed in range(12):
    env.reset(seed)
    expert += len(env.optimal_actions())
  assert len(states) > expert  # random-walk states beyond the expert's


def test_sft_examples_mask_exactly_the_response_and_records_keep_the_layout(states):
  codec = SokobanCodec()
  examples = resim.sft_examples(states[:4], codec, CONFIG)
  env = InteriorSokoban(CONFIG)
  for state, example in zip(states, examples, strict=False):
    env.restore(state)
    assert codec.decode(example.prompt_ids) == env.observe().text + "\n"
    assert codec.decode(example.response_ids[:-1]) == resim.resim_trace(env)
    assert example.response_ids[-1] == codec.eos_id
    np.testing.assert_array_equal(example.input_ids[example.loss_mask], example.response_ids)
  records = resim.sft_records(examples, 32, 128, codec.pad_id)
  for row, example in enumerate(examples):
    n, m = len(example.prompt_ids), len(example.response_ids)
    np.testing.assert_array_equal(records["prompt"][row, 32 - n:], example.prompt_ids)
    assert records["prompt_mask"][row].sum() == n and records["response_length"][row] == m
  with pytest.raises(ValueError, match="prompt_length"):
    resim.sft_records(examples, 4, 128, codec.pad_id)


def test_refine_plan_falls_back_to_the_answer():
  assert resim.refine_plan("<answer>up</answer>") == ["up"]
  assert resim.refine_plan("<think>plan left down up right left down\n</think>", max_plan_depth=5) == [
    "left", "down", "up", "right", "left"]
  assert resim.refine_plan("nothing") == []
