"""ReSim, reasoning with simulations (Dyna-Mind, arXiv 2510.09577, Sec. 3.1), on Sokoban for tiny text policies.

ReSim turns real interaction into reasoning that simulates the future: from states visited on real trajectories it
expands a search tree with the environment itself (each legal action, to depth d), scores the leaves, and writes a
reasoning trace that walks through the simulated futures before the chosen action; SFT on those traces is stage 1
of Dyna-Mind, the warm start of Dyna-GRPO (`rl.dyna_grpo`).

Here:
* States (`collect_states`): every state of the solver's move-optimal trajectory from each level's start (the
  expert), plus the ends of short random walks of legal moves from it (off-expert states), keeping the solvable
  ones.
* The tree (`expand`): every legal action is stepped on a clone of the environment (`Environment.clone`), to depth
  `depth`; a node's score is the solver's distance to the goal from it (`Sokoban.optimal_actions`, move-optimal A*;
  None for a dead state), the search signal the paper gets from rollouts.
* The trace (`resim_trace`), compact because a tiny model must generate it every turn:

    <think>up
    <board after up>
    3
    left
    <board after left>
    dead
    plan left down
    </think><answer>left</answer>

  one block per legal action at depth 1 (the action, the real board a clone reaches, its distance to the goal or
  "dead"), then the plan: the first `plan_depth` actions of a move-optimal solution; the answer is the plan's first
  action, so it is always optimal. Boards are shown as the observation shows them (`InteriorSokoban`: no outer
  wall ring).

Reconstructions (the paper's traces are written by an LLM that summarises the tree in free text; its code is not
available): the fixed text layout above; depth-1 boards only in the text (deeper nodes only score); the solver's
distance instead of rollout values; blocked moves are left out of the trace (they change nothing); the plan (which
Dyna-GRPO's simulation improvement executes, `refine_plan`) is the solver's; the mix of expert and random-walk
states.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from jaxagents.envs import sokoban
from jaxagents.envs.sokoban_codec import InteriorSokoban, SokobanCodec

DEAD = "dead"
_PLAN = re.compile(r"plan((?: (?:up|down|left|right))+)")


@dataclasses.dataclass(frozen=True)
class Node:
  """A simulated state: the action that led to it from its parent, its board text, its distance to the goal (the
  solver's move count; 0 when solved; None when no solution exists) and its children (legal actions, if deeper)."""

  action: str
  board: str
  distance: int | None
  children: tuple[Node, ...] = ()


def _search_clone(env: sokoban.Sokoban) -> sokoban.Sokoban:
  """A clone whose step count is zeroed, so the search is never cut by the episode's step limit."""
  clone = env.clone()
  clone.restore(dataclasses.replace(clone.snapshot(), num_steps=0))
  return clone


def _distance(env: sokoban.Sokoban) -> int | None:
  if env.success:
    return 0
  plan = env.optimal_actions()
  return None if plan is None else len(plan)


def expand(env: sokoban.Sokoban, depth: int = 1) -> tuple[Node, ...]:
  """The search tree below `env`'s current state: one node per legal action, `depth` levels deep (solved states
  are leaves). `env` itself is left unchanged."""
  if depth < 1:
    raise ValueError(f"depth: expected >= 1, got {depth}")
  nodes = []
  for action in env.legal_actions():
    child = _search_clone(env)
    child.step(action)
    below = expand(child, depth - 1) if depth > 1 and not child.success else ()
    nodes.append(Node(action, child.observe().text, _distance(child), below))
  return tuple(nodes)


def resim_trace(env: sokoban.Sokoban, *, depth: int = 1, plan_depth: int = 3) -> str:
  """The ReSim response at `env`'s current state (module docstring); raises ValueError on an unsolvable state."""
  plan = env.optimal_actions()
  if not plan:
    raise ValueError("env: expected an unsolved, solvable state (the answer must be an optimal action)")
  lines = []
  for node in expand(env, depth):
    lines += [node.action, node.board, DEAD if node.distance is None else str(node.distance)]
  lines.append("plan " + " ".join(plan[:plan_depth]))
  return "<think>" + "\n".join(lines) + f"\n</think><answer>{plan[0]}</answer>"


def refine_plan(response: str, max_plan_depth: int = 5) -> list[str]:
  """The planned actions of a response: the words of its last "plan ..." line (at most `max_plan_depth`), or the
  answered action alone when there is no plan line (Dyna-GRPO's a_1..a_d)."""
  plans = _PLAN.findall(response)
  if plans:
    return plans[-1].split()[:max_plan_depth]
  answer = sokoban.Sokoban().parse_action(response)
  return [answer] if answer else []


def collect_states(config: sokoban.SokobanConfig, seeds: Sequence[int], *, random_walks: int = 2,
                   walk_length: int = 3, seed: int = 0) -> list[sokoban.SokobanState]:
  """Solvable, unsolved states from real trajectories of the levels `seeds`: the expert's, then `random_walks`
  walks of up to `walk_length` random legal moves from the start per level (a generator seeded by `seed`)."""
  rng = np.random.default_rng(seed)
  env = InteriorSokoban(dataclasses.replace(config, max_steps=10**6))  # an expert plan may outlast the step limit
  states, seen = [], set()

  def keep(state):
    key = (state.level, state.player, state.boxes)
    if key not in seen and not state.success:
      seen.add(key)
      states.append(dataclasses.replace(state, num_steps=0))

  for level_seed in seeds:
    env.reset(int(level_seed))
    start = env.snapshot()
    for action in env.optimal_actions():
      keep(env.snapshot())
      env.step(action)
    for _ in range(random_walks):
      env.restore(start)
      for _ in range(int(rng.integers(1, walk_length + 1))):
        legal = env.legal_actions()
        if not legal:
          break
        env.step(legal[int(rng.integers(len(legal)))])
      if not env.done and env.optimal_actions() is not None:
        keep(env.snapshot())
  return states


@dataclasses.dataclass(frozen=True)
class SFTExample:
  """One ReSim SFT example: `input_ids` = prompt + response; `loss_mask` True exactly on the response (the policy
  tokens, as `multi_turn` training rows mask them)."""

  prompt_ids: np.ndarray
  response_ids: np.ndarray

  @property
  def input_ids(self) -> np.ndarray:
    return np.concatenate([self.prompt_ids, self.response_ids])

  @property
  def loss_mask(self) -> np.ndarray:
    return np.concatenate([np.zeros(len(self.prompt_ids), bool), np.ones(len(self.response_ids), bool)])


def sft_examples(states: Sequence[sokoban.SokobanState], codec: SokobanCodec, config: sokoban.SokobanConfig, *,
                 instructions: str = "", observation_template: str = "{observation}\n", depth: int = 1,
                 plan_depth: int = 3) -> list[SFTExample]:
  """One example per state: the prompt a window-mode rollout with no history gives (`multi_turn`: instructions,
  then the observation through `observation_template`), the ReSim trace and the end-of-sequence token."""
  env = InteriorSokoban(config)
  instruction_ids = codec.encode(instructions) if instructions else []
  examples = []
  for state in states:
    env.restore(state)
    prompt = instruction_ids + codec.encode(observation_template.format(observation=env.observe().text, turn=0))
    response = codec.encode(resim_trace(env, depth=depth, plan_depth=plan_depth)) + [codec.eos_id]
    examples.append(SFTExample(np.asarray(prompt, np.int32), np.asarray(response, np.int32)))
  return examples


def sft_records(examples: Sequence[SFTExample], prompt_length: int, response_length: int,
                pad_id: int) -> dict[str, np.ndarray]:
  """Fixed-shape arrays of the examples: "prompt" [N, prompt_length] left-padded with "prompt_mask", "response"
  [N, response_length] right-padded with "response_length" [N] (`TokenInputs.with_completions` lays them out as
  `multi_turn` window rows). Raises ValueError when an example does not fit."""
  count = len(examples)
  prompt = np.full((count, prompt_length), pad_id, np.int32)
  prompt_mask = np.zeros((count, prompt_length), np.int32)
  response = np.full((count, response_length), pad_id, np.int32)
  lengths = np.zeros(count, np.int32)
  for row, example in enumerate(examples):
    n, m = len(example.prompt_ids), len(example.response_ids)
    if n > prompt_length or m > response_length:
      raise ValueError(f"prompt_length/response_length: example {row} needs {n}/{m} tokens, got "
                       f"{prompt_length}/{response_length}")
    prompt[row, prompt_length - n:], prompt_mask[row, prompt_length - n:] = example.prompt_ids, 1
    response[row, :m], lengths[row] = example.response_ids, m
  return {"prompt": prompt, "prompt_mask": prompt_mask, "response": response, "response_length": lengths}
