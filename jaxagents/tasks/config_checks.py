"""Named errors for job configs: every size, step count and group size is checked before anything runs, and a bad
value is reported by its dotted field name, the expected range and the value given."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def value(config, field: str) -> Any:
  """`config.<field>` for a dotted field name ("rl.group_size"); raises naming the field when it is absent."""
  node = config
  for part in field.split("."):
    node = node.get(part, _MISSING) if hasattr(node, "get") else getattr(node, part, _MISSING)
    if node is _MISSING:
      raise ValueError(f"config.{field}: required, but the config has no such field.")
  return node


def integer(config, field: str, minimum: int) -> int:
  """`config.<field>` as an int >= minimum (bools are refused)."""
  given = value(config, field)
  if isinstance(given, bool) or not isinstance(given, int) or given < minimum:
    raise ValueError(f"config.{field}: expected an integer >= {minimum}, got {given!r}.")
  return given


def positive(config, *fields: str) -> None:
  """Every named field is an integer >= 1."""
  for field in fields:
    integer(config, field, 1)


def non_negative(config, *fields: str) -> None:
  """Every named field is an integer >= 0."""
  for field in fields:
    integer(config, field, 0)


def number(config, field: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
  """`config.<field>` as a real number in [low, high] (or (low, high] with `low_open`)."""
  given = value(config, field)
  if isinstance(given, bool) or not isinstance(given, int | float):
    raise ValueError(f"config.{field}: expected a number, got {given!r}.")
  too_low = low is not None and (given <= low if low_open else given < low)
  if too_low or (high is not None and given > high):
    bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
    raise ValueError(f"config.{field}: expected a number in {bounds}, got {given!r}.")
  return float(given)
