"""The multi-turn environment interface: reset / step over text (and optional image) observations, with snapshots.

An environment knows no model. A policy's text response is turned into an action by the environment's own
`parse_action` (each environment states its answer format); an unparseable or illegal action is not an error: the
episode goes on with an observation saying why the action was refused (`StepResult.valid` False), as in verl-agent's
`projection` functions (verl-agent, `agent_system/environments/env_package/sokoban/projection.py`) and RAGEN's
invalid-action feedback.

`snapshot()` returns an immutable copy of everything that determines the future, and `restore(snapshot)` puts an
environment back there: `clone()` is `restore` into a fresh copy. Planning from a state (Dyna-Mind's ReSim tree
expansion, arXiv 2510.09577 Sec. 3.1) steps clones without touching the episode being played; `legal_actions()`
lists what such a search may try.

`FrozenStateEnvironment` serves environments whose whole state is one immutable value (Sokoban, the household
world): snapshots are that value, and one `_advance` books every step (step count, Dyna-Mind's rewards, refusals).

`EnvBatch` steps many independent episodes of one environment class, each with its own seed; finished episodes
ignore further actions.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# Dyna-Mind's rewards (arXiv 2510.09577): -0.1 per step that does not end the episode, +10 on success, 0 on failure.
STEP_REWARD = -0.1
SUCCESS_REWARD = 10.0
FAILURE_REWARD = 0.0

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def answer_tag(response: str) -> str | None:
  """The text of the last `<answer>...</answer>` in a response (case-insensitive), or None without one."""
  answers = _ANSWER.findall(response)
  return answers[-1] if answers else None


@dataclasses.dataclass(frozen=True)
class Observation:
  """What the policy sees: `text` always; `image` [H, W, 3] uint8 when the environment renders one."""

  text: str
  image: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class StepResult:
  """One step's outcome.

  Attributes:
    observation: the state after the step (for a refused action: the unchanged state and the reason).
    reward: the environment's own reward for this step (training rewards, e.g. Dyna-GRPO's, are the task's).
    done: the episode is over (success, or the step limit reached).
    success: the goal holds (checked exactly, never by a judge).
    valid: the action parsed and was legal.
    info: anything else (e.g. "reason" for a refused action).
  """

  observation: Observation
  reward: float
  done: bool
  success: bool
  valid: bool = True
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Environment(abc.ABC):
  """A deterministic single-episode environment: `reset(seed)` then `step(action)` until `done`."""

  #: the answer format, stated in the instructions given to the policy
  instructions: str = ""

  @abc.abstractmethod
  def reset(self, seed: int) -> Observation:
    """Starts the episode that `seed` determines and returns its first observation."""

  @abc.abstractmethod
  def step(self, action: str | None) -> StepResult:
    """Applies one action (as `parse_action` returns it; None: the response held no action)."""

  @abc.abstractmethod
  def parse_action(self, response: str) -> str | None:
    """The action in a policy's text response, or None when it holds none."""

  @abc.abstractmethod
  def legal_actions(self) -> Sequence[str]:
    """The actions that may be tried from the current state (for search and scripted policies)."""

  @abc.abstractmethod
  def snapshot(self) -> Any:
    """An immutable value from which `restore` rebuilds the current state exactly."""

  @abc.abstractmethod
  def restore(self, snapshot: Any) -> None:
    """Returns to the state `snapshot` was taken in."""

  @abc.abstractmethod
  def observe(self) -> Observation:
    """The current observation (the same as the last `reset`/`step` returned for a valid action)."""

  @property
  @abc.abstractmethod
  def done(self) -> bool:
    """Whether the episode is over."""

  @property
  @abc.abstractmethod
  def success(self) -> bool:
    """Whether the goal holds now."""

  def clone(self) -> Environment:
    """An independent copy in the same state: stepping it leaves this one unchanged."""
    copy = self.__class__.__new__(self.__class__)
    copy.__dict__.update(self.__dict__)
    copy.restore(self.snapshot())
    return copy


class FrozenStateEnvironment(Environment):
  """An environment whose state is one immutable value with `num_steps` and `success` (a frozen dataclass): the
  snapshot is the value itself. Subclasses set `state_type`, build the state in `reset`, and call `_advance` from
  `step`. `config.max_steps` ends an episode that has not succeeded."""

  state_type: type = object

  def __init__(self, config: Any):
    self.config = config
    self._state = None

  @property
  def state(self) -> Any:
    if self._state is None:
      raise RuntimeError(f"{type(self).__name__}: call reset(seed) first")
    return self._state

  @property
  def done(self) -> bool:
    return self.state.success or self.state.num_steps >= self.config.max_steps

  @property
  def success(self) -> bool:
    return self.state.success

  def snapshot(self) -> Any:
    return self.state

  def restore(self, snapshot: Any) -> None:
    if not isinstance(snapshot, self.state_type):
      raise TypeError(f"snapshot: expected a {self.state_type.__name__}, got {type(snapshot).__name__}")
    self._state = snapshot

  def _check_running(self) -> None:
    if self.done:
      raise RuntimeError("step: the episode is over (goal reached or max_steps reached); call reset(seed)")

  def _advance(self, after: Any | None) -> tuple[float, bool, bool, dict]:
    """Books one step: the state becomes `after` (None: a refused action, the state stays) with one more step.
    Returns (reward, done, success, info) under Dyna-Mind's rewards: a refused action costs a step too."""
    self._state = dataclasses.replace(self.state if after is None else after, num_steps=self.state.num_steps + 1)
    success, done = self.success, self.done
    reward = SUCCESS_REWARD if success else FAILURE_REWARD if done else STEP_REWARD
    return reward, done, success, {"num_steps": self._state.num_steps}


class EnvBatch:
  """`num_envs` independent episodes of one environment, reset with one seed each and stepped together."""

  def __init__(self, make_env: Callable[[], Environment], num_envs: int):
    if num_envs < 1:
      raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
    self.envs = [make_env() for _ in range(num_envs)]

  def __len__(self) -> int:
    return len(self.envs)

  def reset(self, seeds: Sequence[int]) -> list[Observation]:
    if len(seeds) != len(self.envs):
      raise ValueError(f"seeds: expected {len(self.envs)} seeds (one per episode), got {len(seeds)}")
    return [env.reset(int(seed)) for env, seed in zip(self.envs, seeds, strict=True)]

  def step(self, actions: Sequence[str | None], active: Sequence[bool] | None = None) -> list[StepResult | None]:
    """Steps every unfinished episode where `active` (default: all); the others return None and stay as they were
    (a rollout that ends an episode itself, e.g. at its context budget, leaves it inactive but not done)."""
    if len(actions) != len(self.envs):
      raise ValueError(f"actions: expected {len(self.envs)} actions (one per episode), got {len(actions)}")
    active = [True] * len(self.envs) if active is None else list(active)
    if len(active) != len(self.envs):
      raise ValueError(f"active: expected {len(self.envs)} flags (one per episode), got {len(active)}")
    return [env.step(action) if on and not env.done else None
            for env, action, on in zip(self.envs, actions, active, strict=True)]

  @property
  def done(self) -> np.ndarray:
    return np.array([env.done for env in self.envs])

  @property
  def success(self) -> np.ndarray:
    return np.array([env.success for env in self.envs])
