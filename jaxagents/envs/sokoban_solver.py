"""An exact Sokoban solver: the fewest moves (steps) that put every box on a target, or None when none exist.

A* over push states. A state is (player cell, box cells) right after a push; between pushes the player walks by
breadth-first search through the cells free of walls and boxes, so one edge is "walk to the cell behind a box, then
push it" and costs the walk's length plus one. Because every edge's cost is exactly the number of moves it takes and
the heuristic (the sum over boxes of the Manhattan distance to the nearest target) never overestimates and changes by
at most one per push, the first goal state popped is move-optimal; pushes are the states, so the search stays far
smaller than one over every (player, boxes) pair. The start state keeps the player's exact cell (the first walk
starts there).

Pruning: a box is never pushed onto a simple dead square, a floor cell from which no sequence of pushes (ignoring
the other boxes) can bring a box to any target (the classic "dead square" test, as in Junghanns & Schaeffer,
Sokoban: Enhancing general single-agent search methods using domain knowledge, AI 2001). Such a box could never
be solved, so the pruning loses no solution.

Cells are (row, column) pairs; `floor` is every cell that is not a wall (anything outside it is a wall).
Actions are the words "up", "down", "left", "right".
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable

Cell = tuple[int, int]

MOVES: dict[str, Cell] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


class SearchLimitError(RuntimeError):
  """The search expanded `max_expansions` states without finishing (solvability unknown)."""


def _add(cell: Cell, delta: Cell) -> Cell:
  return (cell[0] + delta[0], cell[1] + delta[1])


def _sub(cell: Cell, delta: Cell) -> Cell:
  return (cell[0] - delta[0], cell[1] - delta[1])


def live_cells(floor: frozenset[Cell], targets: Iterable[Cell]) -> frozenset[Cell]:
  """The floor cells from which a lone box can be pushed onto some target (the complement are dead squares).

  Found backwards from the targets: a box at y came from y - d if both y - d (its old cell) and y - 2d (where the
  player stood to push it) are floor.
  """
  live = set(targets)
  frontier = deque(live)
  while frontier:
    cell = frontier.popleft()
    for delta in MOVES.values():
      before = _sub(cell, delta)
      if before in floor and _sub(before, delta) in floor and before not in live:
        live.add(before)
        frontier.append(before)
  return frozenset(live)


def walk(floor: frozenset[Cell], boxes: frozenset[Cell], start: Cell) -> dict[Cell, tuple[Cell, str] | None]:
  """Breadth-first search of the cells the player reaches from `start` without pushing: cell -> (previous, move)."""
  came_from: dict[Cell, tuple[Cell, str] | None] = {start: None}
  frontier = deque([start])
  while frontier:
    cell = frontier.popleft()
    for name, delta in MOVES.items():
      nxt = _add(cell, delta)
      if nxt in floor and nxt not in boxes and nxt not in came_from:
        came_from[nxt] = (cell, name)
        frontier.append(nxt)
  return came_from


def _path(came_from: dict[Cell, tuple[Cell, str] | None], goal: Cell) -> list[str]:
  moves = []
  while came_from[goal] is not None:
    goal, name = came_from[goal]
    moves.append(name)
  return moves[::-1]


def _distance(came_from: dict[Cell, tuple[Cell, str] | None]) -> dict[Cell, int]:
  distance: dict[Cell, int] = {}
  for cell in came_from:  # insertion order is breadth-first order: a cell's predecessor is always seen first
    link = came_from[cell]
    distance[cell] = 0 if link is None else distance[link[0]] + 1
  return distance


def solve(
  floor: Iterable[Cell],
  targets: Iterable[Cell],
  boxes: Iterable[Cell],
  player: Cell,
  max_expansions: int = 200_000,
) -> list[str] | None:
  """A move-optimal action list that solves the level, [] if it is already solved, None if it is unsolvable.

  Raises:
    ValueError: the counts of boxes and targets differ, or a box or the player is not on the floor.
    SearchLimitError: more than `max_expansions` push states were expanded.
  """
  floor, targets, boxes = frozenset(floor), frozenset(targets), frozenset(boxes)
  if len(boxes) != len(targets):
    raise ValueError(f"boxes: expected as many boxes as targets ({len(targets)}), got {len(boxes)}")
  if not boxes <= floor or player not in floor or player in boxes:
    raise ValueError(f"boxes/player: expected distinct floor cells, got boxes={sorted(boxes)} player={player}")
  live = live_cells(floor, targets)
  if not boxes <= live:
    return None

  def heuristic(box_cells: frozenset[Cell]) -> int:
    return sum(min(abs(b[0] - t[0]) + abs(b[1] - t[1]) for t in targets) for b in box_cells)

  start = (player, boxes)
  cost = {start: 0}
  parent: dict[tuple[Cell, frozenset[Cell]], tuple[tuple[Cell, frozenset[Cell]], Cell, str]] = {}
  tie = itertools.count()  # FIFO among equal priorities keeps the result deterministic
  queue = [(heuristic(boxes), next(tie), 0, start)]
  expansions = 0
  while queue:
    _, _, moves_so_far, state = heapq.heappop(queue)
    if moves_so_far > cost[state]:
      continue
    player_cell, box_cells = state
    if box_cells == targets:
      return _reconstruct(floor, parent, state)
    expansions += 1
    if expansions > max_expansions:
      raise SearchLimitError(f"max_expansions: expanded {max_expansions} push states without solving the level")
    distance = _distance(walk(floor, box_cells, player_cell))
    for box in sorted(box_cells):
      for name, delta in MOVES.items():
        stand, destination = _sub(box, delta), _add(box, delta)
        if stand not in distance or destination not in live or destination in box_cells:
          continue
        next_state = (box, box_cells - {box} | {destination})
        next_cost = moves_so_far + distance[stand] + 1
        if next_cost < cost.get(next_state, next_cost + 1):
          cost[next_state] = next_cost
          parent[next_state] = (state, stand, name)
          heapq.heappush(queue, (next_cost + heuristic(next_state[1]), next(tie), next_cost, next_state))
  return None


def _reconstruct(floor, parent, state) -> list[str]:
  pushes = []
  while state in parent:
    previous, stand, name = parent[state]
    pushes.append(_path(walk(floor, previous[1], previous[0]), stand) + [name])
    state = previous
  return [move for push in reversed(pushes) for move in push]
