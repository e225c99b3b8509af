"""Sokoban: push every box onto a target, one move per turn, over procedurally generated, verified-solvable levels.

Levels (`generate_level`) follow gym-sokoban's generator (mpSchrader/gym-sokoban, `gym_sokoban/envs/room_utils.py`:
`room_topology_generation`, `place_boxes_and_player`, `reverse_playing`), which verl-agent and RAGEN use:

1. a random walk stamps small floor masks into a room of walls (the room's outer ring stays wall);
2. the boxes start on their targets and the player on another floor cell;
3. the level is played backwards: the player walks and pulls boxes. Every pull undone is a push, so every state
   reached is solvable. gym-sokoban searches depth-first and keeps the state with the best "box swaps x box
   displacement" score; ours (our choice) searches breadth-first in pulls up to `max_pushes` and picks, by the
   seed's generator, a state with no box on a target from the deepest layer that has one, so a level needs up to
   `max_pushes` pushes and difficulty is one number. The player starts on a random cell of its reachable region.

Every level is then solved by `sokoban_solver.solve` (A*, move-optimal) before it is served; `Level.optimal_moves`
is that solution's length. Levels are a pure function of (config, seed).

Text (RAGEN's symbols, RAGEN-AI/RAGEN `ragen/env/sokoban/config.py`, `SokobanEnvConfig.grid_lookup`; our layout:
one character per cell, no padding spaces, rows joined by newlines):

  #  wall          _  floor        O  target
  X  box           √  box on target
  P  player        S  player on target

Image: one solid `cell_pixels`-square tile per cell, uint8 RGB, in gym-sokoban's "tiny world" colours
(`room_to_tiny_world_rgb` in the same file), so each cell's content can be read back from its colour.

Actions: "up", "down", "left", "right"; moving into a box pushes it when the cell beyond it is floor without a box.
`parse_action` reads the last `<answer>...</answer>` in the response; without the tag (our fallback rule) the whole
response must be one action word. Both are case-insensitive and ignore surrounding spaces and a final "." or "!".

Refused actions (our choices): no action (None), an unknown word, and a blocked move (into a wall, or pushing a box
into a wall or another box) are refused: `valid=False`, the state is unchanged, and the observation's text says why
before the board. Each still counts as a step and costs the step reward, as a blocked move does in gym-sokoban and
RAGEN (a step with no change), so every episode ends within `max_steps`. `legal_actions()` lists only the moves that
change the state. Stepping a finished episode raises RuntimeError (`EnvBatch` never does).

Rewards are Dyna-Mind's (arXiv 2510.09577): -0.1 for every step that does not end the episode, +10 for the
step that solves the level, 0 for the last step of an episode that runs out of steps. (gym-sokoban instead adds -0.1
on every step, +-1 when a box enters or leaves a target and +10 on completion.) An L-move solution returns
10 - 0.1 (L - 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxagents.envs.base import FAILURE_REWARD as FAILURE_REWARD  # the rewards, Dyna-Mind's, as this module's
from jaxagents.envs.base import STEP_REWARD as STEP_REWARD
from jaxagents.envs.base import SUCCESS_REWARD as SUCCESS_REWARD
from jaxagents.envs.base import FrozenStateEnvironment, Observation, StepResult, answer_tag
from jaxagents.envs.sokoban_solver import MOVES, Cell, SearchLimitError, solve, walk

WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET = "#", "_", "O", "X", "√", "P", "S"
SYMBOLS = (WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET)
RGB = {  # gym-sokoban `room_to_tiny_world_rgb`
  WALL: (0, 0, 0),
  FLOOR: (243, 248, 238),
  TARGET: (254, 126, 125),
  BOX: (142, 121, 56),
  BOX_ON_TARGET: (254, 95, 56),
  PLAYER: (160, 212, 56),
  PLAYER_ON_TARGET: (219, 212, 56),
}

INSTRUCTIONS = (
  "You are solving a Sokoban puzzle. You are the player; push every box onto a target. Moving into a box pushes "
  "it one cell if the cell beyond it is free; you cannot pull boxes or push two at once.\n"
  "Symbols: # wall, _ floor, O target, X box, √ box on target, P player, S player on target.\n"
  "Actions: up, down, left, right. Answer with one action inside <answer></answer>, e.g. <answer>left</answer>."
)

# gym-sokoban's random-walk masks (`room_topology_generation`): the ones become floor around the walk's position.
_MASKS = np.array([
  [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
  [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
  [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
  [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
  [[0, 0, 0], [0, 1, 1], [0, 1, 0]],
], dtype=bool)
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


@dataclasses.dataclass(frozen=True)
class SokobanConfig:
  """Attributes:
    dim: (height, width) of the room including its outer wall (RAGEN's `dim_room`; 6x6 there).
    num_boxes: boxes (and targets) per level.
    max_steps: steps per episode, refused actions included (RAGEN's and gym-sokoban's default is 100).
    max_pushes: the reverse search's depth in pulls, so the most pushes a level needs (our choice).
    walk_steps: length of the topology's random walk; None: int(1.7 (height + width)), gym-sokoban's default.
    p_change_direction: the random walk's chance to turn at each step (gym-sokoban's 0.35).
    max_reverse_states: cap on the reverse search's states (bounds generation time on big rooms).
    max_tries: topologies tried before giving up on a seed.
    cell_pixels: side of one cell's tile in the image.
    render_image: whether observations carry an image.
  """

  dim: tuple[int, int] = (6, 6)
  num_boxes: int = 1
  max_steps: int = 100
  max_pushes: int = 6
  walk_steps: int | None = None
  p_change_direction: float = 0.35
  max_reverse_states: int = 4000
  max_tries: int = 100
  cell_pixels: int = 8
  render_image: bool = True

  def __post_init__(self):
    if min(self.dim) < 4:
      raise ValueError(f"dim: expected both sides >= 4 (a wall ring around floor), got {self.dim}")
    if self.num_boxes < 1:
      raise ValueError(f"num_boxes: expected >= 1, got {self.num_boxes}")
    if self.max_steps < 1 or self.max_pushes < 1:
      raise ValueError(f"max_steps, max_pushes: expected >= 1, got {self.max_steps}, {self.max_pushes}")


@dataclasses.dataclass(frozen=True)
class Level:
  """A starting position. Cells are (row, column); every cell outside `floor` is wall."""

  height: int
  width: int
  floor: frozenset[Cell]
  targets: frozenset[Cell]
  boxes: frozenset[Cell]
  player: Cell
  optimal_moves: int  # the length of a move-optimal solution (`sokoban_solver.solve`)


@dataclasses.dataclass(frozen=True)
class SokobanState:
  """Everything that determines the future: the snapshot `Sokoban.snapshot` returns."""

  level: Level
  player: Cell
  boxes: frozenset[Cell]
  num_steps: int

  @property
  def success(self) -> bool:
    return self.boxes == self.level.targets


def _topology(rng: np.random.Generator, config: SokobanConfig) -> frozenset[Cell]:
  height, width = config.dim
  walk_steps = config.walk_steps or int(1.7 * (height + width))
  room = np.zeros((height, width), dtype=bool)
  direction = _DIRECTIONS[rng.integers(4)]
  position = np.array([rng.integers(1, height - 1), rng.integers(1, width - 1)])
  for _ in range(walk_steps):
    if rng.random() < config.p_change_direction:
      direction = _DIRECTIONS[rng.integers(4)]
    position = np.clip(position + direction, 1, [height - 2, width - 2])
    room[position[0] - 1:position[0] + 2, position[1] - 1:position[1] + 2] |= _MASKS[rng.integers(len(_MASKS))]
  room[[0, -1], :] = room[:, [0, -1]] = False
  return frozenset((int(r), int(c)) for r, c in zip(*np.nonzero(room)))


def _reverse_play(rng, floor, targets, player, config) -> tuple[frozenset[Cell], tuple[Cell, ...]] | None:
  """Breadth-first reverse play (walks and pulls) from the solved position: (boxes, player region) of a state in
  the deepest layer reached with no box on a target, or None when no pull leaves every target free."""
  boxes = frozenset(targets)
  region = tuple(sorted(walk(floor, boxes, player)))
  seen = {(region[0], boxes)}  # a state is its box set and the player's region (named by its smallest cell)
  frontier, best = [(boxes, region)], []
  for _ in range(config.max_pushes):
    layer = []
    for boxes, region in frontier:
      reachable = set(region)
      for box in sorted(boxes):
        for delta in MOVES.values():
          stand = (box[0] + delta[0], box[1] + delta[1])  # the player beside the box steps away from it, pulling
          away = (stand[0] + delta[0], stand[1] + delta[1])
          if stand not in reachable or away not in floor or away in boxes:
            continue
          pulled = boxes - {box} | {stand}
          pulled_region = tuple(sorted(walk(floor, pulled, away)))
          if (pulled_region[0], pulled) not in seen:
            seen.add((pulled_region[0], pulled))
            layer.append((pulled, pulled_region))
    if not layer:
      break
    frontier = layer
    off_targets = [state for state in layer if not state[0] & targets]
    if off_targets:
      best = off_targets
    if len(seen) >= config.max_reverse_states:
      break
  return best[rng.integers(len(best))] if best else None


def generate_level(config: SokobanConfig, seed: int) -> Level:
  """The level that `seed` determines; raises RuntimeError if `max_tries` topologies gave none."""
  rng = np.random.default_rng(seed)
  for _ in range(config.max_tries):
    floor = _topology(rng, config)
    if len(floor) < config.num_boxes + 3:
      continue
    cells = sorted(floor)
    picks = rng.choice(len(cells), size=config.num_boxes + 1, replace=False)
    targets = frozenset(cells[i] for i in picks[1:])
    found = _reverse_play(rng, floor, targets, cells[picks[0]], config)
    if found is None:
      continue
    boxes, region = found
    player = region[rng.integers(len(region))]
    try:
      solution = solve(floor, targets, boxes, player)
    except SearchLimitError:  # too big to verify: skip it rather than serve an unverified level
      continue
    if solution is None:  # unreachable by construction; kept so no unverified level is ever served
      continue
    return Level(config.dim[0], config.dim[1], floor, targets, boxes, player, len(solution))
  raise RuntimeError(f"generate_level: no level after {config.max_tries} topologies (config={config}, seed={seed})")


def parse_level(text: str) -> Level:
  """A level from its text rendering (the legend above); `optimal_moves` is solved for (-1: unsolvable)."""
  rows = text.strip("\n").split("\n")
  width = max(len(row) for row in rows)
  cells = {(r, c): symbol for r, row in enumerate(rows) for c, symbol in enumerate(row)}
  unknown = set(cells.values()) - set(SYMBOLS)
  if unknown:
    raise ValueError(f"text: expected only the symbols {SYMBOLS}, got {sorted(unknown)}")
  floor = frozenset(cell for cell, symbol in cells.items() if symbol != WALL)
  targets = frozenset(cell for cell, s in cells.items() if s in (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET))
  boxes = frozenset(cell for cell, symbol in cells.items() if symbol in (BOX, BOX_ON_TARGET))
  players = [cell for cell, symbol in cells.items() if symbol in (PLAYER, PLAYER_ON_TARGET)]
  if len(players) != 1:
    raise ValueError(f"text: expected one player, got {len(players)}")
  solution = solve(floor, targets, boxes, players[0])
  return Level(len(rows), width, floor, targets, boxes, players[0], -1 if solution is None else len(solution))


def symbol_grid(state: SokobanState) -> list[list[str]]:
  """[height][width] symbols of the state (the legend above)."""
  level = state.level
  grid = [[WALL] * level.width for _ in range(level.height)]
  for r, c in level.floor:
    on_target = (r, c) in level.targets
    if (r, c) == state.player:
      grid[r][c] = PLAYER_ON_TARGET if on_target else PLAYER
    elif (r, c) in state.boxes:
      grid[r][c] = BOX_ON_TARGET if on_target else BOX
    else:
      grid[r][c] = TARGET if on_target else FLOOR
  return grid


def render_text(state: SokobanState) -> str:
  return "\n".join("".join(row) for row in symbol_grid(state))


def render_image(state: SokobanState, cell_pixels: int = 8) -> np.ndarray:
  """[height * cell_pixels, width * cell_pixels, 3] uint8: one solid tile per cell."""
  colors = np.array([[RGB[symbol] for symbol in row] for row in symbol_grid(state)], dtype=np.uint8)
  return np.repeat(np.repeat(colors, cell_pixels, axis=0), cell_pixels, axis=1)


class Sokoban(FrozenStateEnvironment):
  """The Sokoban environment (module docstring: levels, text, image, refused actions, rewards)."""

  instructions = INSTRUCTIONS
  state_type = SokobanState

  def __init__(self, config: SokobanConfig | None = None):
    super().__init__(config or SokobanConfig())

  def reset(self, seed: int) -> Observation:
    level = generate_level(self.config, seed)
    self._state = SokobanState(level, level.player, level.boxes, 0)
    return self.observe()

  def observe(self) -> Observation:
    state = self.state
    image = render_image(state, self.config.cell_pixels) if self.config.render_image else None
    return Observation(render_text(state), image)

  def parse_action(self, response: str) -> str | None:
    answer = answer_tag(response)
    word = (response if answer is None else answer).strip().rstrip(".!").strip().lower()
    return word if word in MOVES else None

  def _outcome(self, state: SokobanState, action: str | None) -> tuple[SokobanState | None, str]:
    """The state after `action`, or (None, why it is refused)."""
    if action is None:
      return None, "No action found. Answer with up, down, left or right inside <answer></answer>."
    word = action.strip().lower()
    if word not in MOVES:
      return None, f"'{action}' is not an action. The actions are up, down, left, right."
    delta = MOVES[word]
    ahead = (state.player[0] + delta[0], state.player[1] + delta[1])
    if ahead not in state.level.floor:
      return None, f"You cannot move {word}: a wall is in the way. Nothing moved."
    boxes = state.boxes
    if ahead in boxes:
      beyond = (ahead[0] + delta[0], ahead[1] + delta[1])
      if beyond not in state.level.floor or beyond in boxes:
        blocker = "a wall" if beyond not in state.level.floor else "another box"
        return None, f"You cannot push the box {word}: {blocker} is behind it. Nothing moved."
      boxes = boxes - {ahead} | {beyond}
    return dataclasses.replace(state, player=ahead, boxes=boxes), ""

  def step(self, action: str | None) -> StepResult:
    self._check_running()
    moved, reason = self._outcome(self.state, action)
    valid = moved is not None
    reward, done, success, info = self._advance(moved)
    observation = self.observe()
    if not valid:
      observation = dataclasses.replace(observation, text=f"{reason}\n{observation.text}")
      info["reason"] = reason
    return StepResult(observation, reward, done, success, valid, info)

  def legal_actions(self) -> list[str]:
    if self.done:
      return []
    return [word for word in MOVES if self._outcome(self.state, word)[0] is not None]

  def optimal_actions(self) -> list[str] | None:
    """A move-optimal plan from the current state (the solver as a scripted policy); None if it is unsolvable."""
    state = self.state
    return solve(state.level.floor, state.level.targets, state.boxes, state.player)
