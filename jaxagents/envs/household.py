"""A small text household in the spirit of ALFWorld (Shridhar et al., arXiv 2010.03768): find an object among
receptacles, maybe clean, heat or cool it, and put it in a named receptacle; goals are checked exactly.

The world (`generate_world`, a pure function of (config, seed); the layout and numbers are our choices): one room of
receptacles numbered per kind as ALFWorld numbers them ("cabinet 2"): 2-4 cabinets, 1-3 drawers, 1-2 shelves and one
each of countertop, diningtable, fridge, microwave, sinkbasin, stoveburner, garbagecan. Cabinets, drawers, the fridge
and the microwave open and close and start closed; an object in a closed receptacle can be neither seen nor taken.
4-8 objects ("mug 1", "apple 2") start in random receptacles, none clean, hot or cool.

Goals follow ALFWorld's task types, each naming one receptacle instance (ALFWorld names a receptacle kind):

  pick_and_place           "put a mug in cabinet 1"
  pick_clean_then_place    "put a clean mug in cabinet 1"     (clean X with sinkbasin 1)
  pick_heat_then_place     "put a hot apple on countertop 1"  (heat X with microwave 1)
  pick_cool_then_place     "put a cool apple in drawer 2"     (cool X with fridge 1)

The goal holds when some object of the goal's kind lies in the goal's receptacle with the goal's property; no object of
that kind starts there. Heating makes an object hot and not cool, cooling the reverse; cleaning lasts.

Commands are ALFWorld's: "go to R", "open R", "close R", "take O from R", "put O in/on R" ("in" and "on" are
accepted too), "clean O with sinkbasin 1", "heat O with microwave 1", "cool O with fridge 1", "examine R|O", "look",
"inventory". The player carries one object at a time, must be at a receptacle to use it, and a closed receptacle
must be opened before taking from or putting into it; appliances work closed (our choice). `legal_actions()` lists
the admissible commands of the state, as ALFWorld's `admissible_commands` does. Observation texts follow ALFWorld's
("You arrive at cabinet 1. The cabinet 1 is closed.", "You pick up the mug 1 from the countertop 1.").

`parse_action` reads the last `<answer>...</answer>` in the response; without the tag (our fallback rule) a one-line
response is the command. Commands are lower-cased, spaces collapsed and a final "." dropped. A command that does not
parse or cannot be done is refused: `valid=False`, the world is unchanged, and the text is ALFWorld's "Nothing
happens." followed by the reason. Every command, refused or not, counts as a step (`max_steps`, 50: the step budget
ALFWorld evaluations commonly use), so every episode ends; stepping a finished episode raises RuntimeError.

Rewards (our choice): Dyna-Mind's (arXiv 2510.09577), as in `sokoban.py`: -0.1 for every step that does not
end the episode, +10 for the step that achieves the goal, 0 for the last step of an episode that runs out of steps.

`expert_action` is a scripted planner that knows where everything is (as ALFWorld's handcoded expert does): it
solves every generated goal from any state.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxagents.envs.base import FrozenStateEnvironment, Observation, StepResult, answer_tag

GOAL_TYPES = ("pick_and_place", "pick_clean_then_place", "pick_heat_then_place", "pick_cool_then_place")
# goal type -> (property word in the goal, the receptacle that gives it, its verb)
TREATMENTS = {
  "pick_clean_then_place": ("clean", "sinkbasin 1", "clean"),
  "pick_heat_then_place": ("hot", "microwave 1", "heat"),
  "pick_cool_then_place": ("cool", "fridge 1", "cool"),
}
CLOSABLE = ("cabinet", "drawer", "fridge", "microwave")
PREPOSITION = {"countertop": "on", "diningtable": "on", "shelf": "on", "stoveburner": "on"}  # the rest: "in"
DESTINATIONS = ("cabinet", "drawer", "shelf", "countertop", "diningtable")  # goal receptacles
# object kind -> the treatments it admits (after ALFWorld's task lists: food and dishes heat and cool, etc.)
OBJECTS = {
  "apple": ("clean", "heat", "cool"), "potato": ("clean", "heat", "cool"), "tomato": ("clean", "heat", "cool"),
  "egg": ("heat", "cool"), "lettuce": ("clean", "cool"), "bread": ("heat", "cool"),
  "mug": ("clean", "heat", "cool"), "cup": ("clean", "heat", "cool"), "plate": ("clean", "heat", "cool"),
  "bowl": ("clean", "cool"), "pan": ("clean", "cool"), "knife": ("clean",), "spoon": ("clean",),
  "book": (), "keychain": (), "creditcard": (),
}
_VERB = {"pick_clean_then_place": "clean", "pick_heat_then_place": "heat", "pick_cool_then_place": "cool"}

INSTRUCTIONS = (
  "You are in a household. Reach the goal with text commands: go to R, open R, close R, take O from R, "
  "put O in/on R, clean O with sinkbasin 1, heat O with microwave 1, cool O with fridge 1, examine R, look, "
  "inventory. You can carry one object. Answer with one command inside <answer></answer>, "
  "e.g. <answer>go to cabinet 1</answer>."
)

_COMMANDS = (
  ("go", re.compile(r"go to (.+)")),
  ("take", re.compile(r"take (.+?) from (.+)")),
  ("put", re.compile(r"put (.+?) (?:in/on|in|on) (.+)")),
  ("treat", re.compile(r"(clean|heat|cool) (.+?) with (.+)")),
  ("open", re.compile(r"open (.+)")),
  ("close", re.compile(r"close (.+)")),
  ("examine", re.compile(r"examine (.+)")),
  ("look", re.compile(r"look")),
  ("inventory", re.compile(r"inventory")),
)


def kind(name: str) -> str:
  """"mug 1" -> "mug"."""
  return name.rsplit(" ", 1)[0]


def preposition(receptacle: str) -> str:
  return PREPOSITION.get(kind(receptacle), "in")


def _a(name: str) -> str:
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _listing(names) -> str:
  names = [_a(name) for name in names]
  if len(names) <= 1:
    return "".join(names) or "nothing"
  return ", ".join(names[:-1]) + f", and {names[-1]}"


@dataclasses.dataclass(frozen=True)
class HouseholdConfig:
  """Attributes (counts are inclusive ranges, drawn per seed; our choices):
    cabinets, drawers, shelves: how many of each receptacle.
    objects: how many objects besides the goal's own.
    goal_types: the task types goals are drawn from.
    max_steps: steps per episode, refused commands included.
  """

  cabinets: tuple[int, int] = (2, 4)
  drawers: tuple[int, int] = (1, 3)
  shelves: tuple[int, int] = (1, 2)
  objects: tuple[int, int] = (3, 7)
  goal_types: tuple[str, ...] = GOAL_TYPES
  max_steps: int = 50

  def __post_init__(self):
    unknown = set(self.goal_types) - set(GOAL_TYPES)
    if not self.goal_types or unknown:
      raise ValueError(f"goal_types: expected a non-empty subset of {GOAL_TYPES}, got {self.goal_types}")
    if self.max_steps < 1:
      raise ValueError(f"max_steps: expected >= 1, got {self.max_steps}")


@dataclasses.dataclass(frozen=True)
class Goal:
  goal_type: str
  object_kind: str
  receptacle: str

  @property
  def text(self) -> str:
    adjective = TREATMENTS[self.goal_type][0] + " " if self.goal_type in TREATMENTS else ""
    return f"put {_a(adjective + self.object_kind)} {preposition(self.receptacle)} {self.receptacle}"


@dataclasses.dataclass(frozen=True)
class HouseholdState:
  """Everything that determines the future: the snapshot `Household.snapshot` returns.

  Attributes:
    receptacles: every receptacle, in the order the room lists them.
    goal: the task.
    location: the receptacle the player is at; None: the middle of the room.
    holding: the object carried, or None.
    placement: (object, receptacle) for every object not carried, sorted.
    opened, clean, hot, cool: the open receptacles and the objects with each property.
    message: the last valid command's observation text.
    num_steps: steps taken.
  """

  receptacles: tuple[str, ...]
  goal: Goal
  location: str | None
  holding: str | None
  placement: tuple[tuple[str, str], ...]
  opened: frozenset[str] = frozenset()
  clean: frozenset[str] = frozenset()
  hot: frozenset[str] = frozenset()
  cool: frozenset[str] = frozenset()
  message: str = ""
  num_steps: int = 0

  @property
  def where(self) -> dict[str, str]:
    return dict(self.placement)

  @property
  def objects(self) -> list[str]:
    return sorted([obj for obj, _ in self.placement] + ([self.holding] if self.holding else []))

  def contents(self, receptacle: str) -> list[str]:
    return [obj for obj, place in self.placement if place == receptacle]

  def accessible(self, receptacle: str) -> bool:
    return kind(receptacle) not in CLOSABLE or receptacle in self.opened

  def has_property(self, obj: str, goal_type: str) -> bool:
    if goal_type not in TREATMENTS:
      return True
    return obj in {"clean": self.clean, "hot": self.hot, "cool": self.cool}[TREATMENTS[goal_type][0]]

  @property
  def success(self) -> bool:
    goal = self.goal
    return any(
      kind(obj) == goal.object_kind and place == goal.receptacle and self.has_property(obj, goal.goal_type)
      for obj, place in self.placement
    )


def _room_text(state: HouseholdState) -> str:
  return f"You are in the middle of a room. Looking quickly around you, you see {_listing(state.receptacles)}."


def _describe(state: HouseholdState, receptacle: str) -> str:
  if kind(receptacle) in CLOSABLE:
    if receptacle not in state.opened:
      return f"The {receptacle} is closed."
    return f"The {receptacle} is open. In it, you see {_listing(state.contents(receptacle))}."
  return f"On the {receptacle}, you see {_listing(state.contents(receptacle))}."


def generate_world(config: HouseholdConfig, seed: int) -> HouseholdState:
  """The starting state that `seed` determines."""
  rng = np.random.default_rng(seed)
  counts = {name: int(rng.integers(low, high + 1)) for name, (low, high) in
            (("cabinet", config.cabinets), ("drawer", config.drawers), ("shelf", config.shelves))}
  receptacles = [f"{name} {i}" for name, count in counts.items() for i in range(1, count + 1)]
  receptacles += ["countertop 1", "diningtable 1", "fridge 1", "microwave 1", "sinkbasin 1", "stoveburner 1",
                  "garbagecan 1"]
  receptacles = [receptacles[i] for i in rng.permutation(len(receptacles))]
  goal_type = config.goal_types[rng.integers(len(config.goal_types))]
  needed = _VERB.get(goal_type)
  eligible = sorted(name for name, treatments in OBJECTS.items() if needed is None or needed in treatments)
  object_kind = eligible[rng.integers(len(eligible))]
  destinations = sorted(r for r in receptacles if kind(r) in DESTINATIONS)
  goal = Goal(goal_type, object_kind, destinations[rng.integers(len(destinations))])
  num_others = int(rng.integers(config.objects[0], config.objects[1] + 1))
  kinds = [object_kind] + [str(name) for name in rng.choice(sorted(OBJECTS), size=num_others)]
  homes = [r for r in receptacles if kind(r) not in ("microwave", "garbagecan")]
  numbered: dict[str, int] = {}
  placement = []
  for object_name in kinds:
    numbered[object_name] = numbered.get(object_name, 0) + 1
    allowed = [r for r in homes if not (object_name == object_kind and r == goal.receptacle)]
    placement.append((f"{object_name} {numbered[object_name]}", allowed[rng.integers(len(allowed))]))
  state = HouseholdState(tuple(receptacles), goal, None, None, tuple(sorted(placement)))
  return dataclasses.replace(state, message=f"{_room_text(state)}\n\nYour task is to: {goal.text}.")


def _apply(state: HouseholdState, command: str) -> tuple[HouseholdState | None, str]:
  """The state after `command` (its `message` set), or (None, why it cannot be done)."""
  name, match = next(((name, m) for name, pattern in _COMMANDS if (m := pattern.fullmatch(command))), (None, None))
  if match is None:
    return None, f"'{command}' is not a command."
  args = match.groups()
  here, held = state.location, state.holding
  receptacles = set(state.receptacles)
  if name in ("go", "open", "close") and args[0] not in receptacles:
    return None, f"There is no {args[0]} here."
  if name == "go":
    if args[0] == here:
      return None, f"You are already at the {here}."
    return dataclasses.replace(state, location=args[0], message=f"You arrive at {args[0]}. "
                               f"{_describe(state, args[0])}"), ""
  if name in ("open", "close"):
    target = args[0]
    if target != here:
      return None, f"You are not at the {target}."
    if kind(target) not in CLOSABLE:
      return None, f"The {target} cannot be opened or closed."
    if (name == "open") == (target in state.opened):
      return None, f"The {target} is already {'open' if name == 'open' else 'closed'}."
    if name == "close":
      return dataclasses.replace(state, opened=state.opened - {target}, message=f"You close the {target}."), ""
    opened = dataclasses.replace(state, opened=state.opened | {target})
    return dataclasses.replace(opened, message=f"You open the {target}. {_describe(opened, target)}"), ""
  if name == "take":
    obj, source = args
    if source != here:
      return None, f"You are not at the {source}."
    if not state.accessible(source):
      return None, f"The {source} is closed."
    if state.where.get(obj) != source:
      return None, f"There is no {obj} in/on the {source}."
    if held is not None:
      return None, f"You are already carrying the {held}."
    placement = tuple(pair for pair in state.placement if pair[0] != obj)
    return dataclasses.replace(state, holding=obj, placement=placement,
                               message=f"You pick up the {obj} from the {source}."), ""
  if name == "put":
    obj, target = args
    if held != obj:
      return None, f"You are not carrying {_a(obj)}."
    if target != here:
      return None, f"You are not at the {target}."
    if not state.accessible(target):
      return None, f"The {target} is closed."
    placement = tuple(sorted(state.placement + ((obj, target),)))
    return dataclasses.replace(state, holding=None, placement=placement,
                               message=f"You put the {obj} {preposition(target)} the {target}."), ""
  if name == "treat":
    verb, obj, tool = args
    expected = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}[verb]
    if held != obj:
      return None, f"You are not carrying {_a(obj)}."
    if kind(tool) != expected or tool not in receptacles:
      return None, f"You can only {verb} things with the {expected}."
    if tool != here:
      return None, f"You are not at the {tool}."
    message = f"You {verb} the {obj} using the {tool}."
    if verb == "clean":
      return dataclasses.replace(state, clean=state.clean | {obj}, message=message), ""
    if verb == "heat":
      return dataclasses.replace(state, hot=state.hot | {obj}, cool=state.cool - {obj}, message=message), ""
    return dataclasses.replace(state, cool=state.cool | {obj}, hot=state.hot - {obj}, message=message), ""
  if name == "examine":
    target = args[0]
    if target == held or (here is not None and state.accessible(here) and state.where.get(target) == here):
      properties = [p for p, objects in (("clean", state.clean), ("hot", state.hot), ("cool", state.cool))
                    if target in objects]
      text = f"This is {_a(target)}. It is {' and '.join(properties)}." if properties else (
        f"There's nothing special about {target}.")
      return dataclasses.replace(state, message=text), ""
    if target != here:
      return None, f"You cannot see {_a(target)} from here."
    return dataclasses.replace(state, message=_describe(state, target)), ""
  if name == "look":
    text = _room_text(state) if here is None else f"You are facing the {here}. {_describe(state, here)}"
    return dataclasses.replace(state, message=text), ""
  text = f"You are carrying: {_a(held)}." if held else "You are not carrying anything."
  return dataclasses.replace(state, message=text), ""


def admissible_commands(state: HouseholdState) -> list[str]:
  """The commands that can be done in `state` (ALFWorld's `admissible_commands`)."""
  here, held = state.location, state.holding
  commands = [f"go to {r}" for r in state.receptacles if r != here]
  if here is not None:
    if kind(here) in CLOSABLE:
      commands.append(f"close {here}" if here in state.opened else f"open {here}")
    commands.append(f"examine {here}")
    if state.accessible(here):
      if held is None:
        commands += [f"take {obj} from {here}" for obj in state.contents(here)]
      else:
        commands.append(f"put {held} in/on {here}")
      commands += [f"examine {obj}" for obj in state.contents(here)]
    if held is not None:
      verb = {"sinkbasin": "clean", "microwave": "heat", "fridge": "cool"}.get(kind(here))
      if verb:
        commands.append(f"{verb} {held} with {here}")
  if held is not None:
    commands.append(f"examine {held}")
  return commands + ["look", "inventory"]


def expert_action(state: HouseholdState) -> str | None:
  """The scripted expert's next command (it sees inside closed receptacles); None once the goal holds."""
  if state.success:
    return None
  goal, here, held = state.goal, state.location, state.holding

  def reach(receptacle: str, then: str) -> str:
    if here != receptacle:
      return f"go to {receptacle}"
    return then if state.accessible(receptacle) else f"open {receptacle}"

  if held is not None and kind(held) == goal.object_kind:
    if not state.has_property(held, goal.goal_type):
      tool, verb = TREATMENTS[goal.goal_type][1], _VERB[goal.goal_type]
      return f"{verb} {held} with {tool}" if here == tool else f"go to {tool}"
    return reach(goal.receptacle, f"put {held} in/on {goal.receptacle}")
  if held is not None:  # put the wrong object down where it can be put
    if here is not None and state.accessible(here):
      return f"put {held} in/on {here}"
    return reach("countertop 1", f"put {held} in/on countertop 1")
  candidates = sorted((place == goal.receptacle, obj) for obj, place in state.placement
                      if kind(obj) == goal.object_kind)
  obj = candidates[0][1]
  source = state.where[obj]
  return reach(source, f"take {obj} from {source}")


class Household(FrozenStateEnvironment):
  """The household environment (module docstring: world, goals, commands, refused commands, rewards)."""

  instructions = INSTRUCTIONS
  state_type = HouseholdState

  def __init__(self, config: HouseholdConfig | None = None):
    super().__init__(config or HouseholdConfig())

  def reset(self, seed: int) -> Observation:
    self._state = generate_world(self.config, seed)
    return self.observe()

  @property
  def task(self) -> str:
    return self.state.goal.text

  def observe(self) -> Observation:
    return Observation(self.state.message)

  def parse_action(self, response: str) -> str | None:
    text = answer_tag(response)
    if text is None:
      if "\n" in response.strip():
        return None
      text = response
    command = " ".join(text.split()).lower().rstrip(".").strip()
    return command or None

  def step(self, action: str | None) -> StepResult:
    self._check_running()
    state = self.state
    if action is None:
      after, reason = None, "No command found: answer with one command inside <answer></answer>."
    else:
      after, reason = _apply(state, " ".join(action.split()).lower().rstrip(".").strip())
    valid = after is not None
    reward, done, success, info = self._advance(after)
    if valid:
      observation = self.observe()
    else:
      observation = Observation(f"Nothing happens. {reason}")
      info["reason"] = reason
    return StepResult(observation, reward, done, success, valid, info)

  def legal_actions(self) -> list[str]:
    return [] if self.done else admissible_commands(self.state)

  def expert_action(self) -> str | None:
    return expert_action(self.state)
