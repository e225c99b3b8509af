"""Every citation in the code is one a reader of the repository can follow.

A docstring or comment cites a paper (arXiv id with section or equation) or a reference implementation (repository,
file, function). It must not cite the private design notes the code was written from (their file names, their
folder, their section signs), a path on the machine that wrote it, or an issue number of a tracker that is not
named. This test walks the Python sources of the packages, the tests and the configs, and lists every offending
line.

The patterns are assembled from pieces (`_SPEC`, `_SECTION`) so that this file does not match itself.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("jaxagents", "kernels_pallas", "tests", "configs")

_SPEC = "sp" + "ec"
_SECTION = "\u00a7"
_NOTE_FILES = ("rl_algorithms", "mminference_pallas", "vlm", "generative", "agent_systems")

FORBIDDEN = {
  "a design-note file name": re.compile(r"\b(?:" + "|".join(_NOTE_FILES) + r")\.md\b"),
  "a design-note file": re.compile(r"\b" + _SPEC + r"\s+`?[a-z_]+\.md\b", re.IGNORECASE),
  "the design-note folder": re.compile(r"\b" + _SPEC + r"s/"),
  "a design-note section": re.compile(r"\b" + _SPEC + r"(?:'s|s)?\W{0,4}" + _SECTION, re.IGNORECASE),
  "the design note as a source": re.compile(
    r"(?<!\w)\(" + _SPEC + r"\)|\bthe " + _SPEC + r"(?:'s)?\b|\b" + _SPEC + r"'s\b", re.IGNORECASE),
  "a test named after the design note": re.compile(r"\bdef test_\w*_" + _SPEC + r"(?:_\w*)?\b"),
  "an absolute machine path": re.compile(r"(?<![\w.])/(?:work|root|Users)/|(?<![\w.])/home/[A-Za-z0-9_.-]+/"),
  "an issue number without its tracker": re.compile(r"\bissue\s*#?\s*\d", re.IGNORECASE),
}


def python_sources() -> list[pathlib.Path]:
  return sorted(path for name in SCANNED_DIRS for path in (ROOT / name).rglob("*.py"))


def offending_lines(text: str) -> list[tuple[int, str, str]]:
  """(line number, rule, line) for every line of `text` that matches a forbidden pattern."""
  hits = []
  for number, line in enumerate(text.splitlines(), start=1):
    for rule, pattern in FORBIDDEN.items():
      if pattern.search(line):
        hits.append((number, rule, line.strip()))
  return hits


def test_the_scan_covers_the_packages_tests_and_configs():
  sources = python_sources()
  for name in SCANNED_DIRS:
    assert any(path.is_relative_to(ROOT / name) for path in sources), f"no Python file found under {name}/"
  assert pathlib.Path(__file__).resolve() in sources  # this file is scanned too: its patterns must not match it


@pytest.mark.parametrize(
  "line",
  [
    f'"""Group advantages ({_SPEC} {_NOTE_FILES[0]}.md {_SECTION}1.1)."""',
    f"# {_SPEC.capitalize()} {_SECTION}5.4: at least four calibration videos",
    f"  (MMInference {_SPEC} {_SECTION}1.2 step 4)",
    f"Qwen-VL (../shared/{_SPEC}s/{_NOTE_FILES[2]}.md).",
    f"the hub values of {_NOTE_FILES[2]}.md {_SECTION}3.2",
    f"written out from the {_SPEC}'s rule",
    f"def test_otsu_{_SPEC}_oracle():",
    '"""Block-sparse layouts (/' + 'work/shared/notes.md)."""',
    "# see /" + "home/alice/notes",
    "The job (issue" + " 4 items 6-7):",
    "cf. MInference issue" + " #86",
  ],
)
def test_each_kind_of_unfollowable_citation_is_caught(line):
  assert offending_lines(line), line


@pytest.mark.parametrize(
  "line",
  [
    "DeepSeekMath GRPO (arXiv 2402.03300, Eq. 3)",
    "verl `verl/trainer/ppo/core_algos.py::compute_policy_loss_vanilla`",
    "specs = nn.get_partition_spec(variables)['params']",
    "grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2)",
    "def test_equal_configs_hash_equal_and_jit_specializes_once():",
    "additional_special_tokens=SPECIAL",
    "the pipeline issues no new DMA (https://github.com/microsoft/MInference/issues/86)",
    "tmp_path / 'work/out'",
    "module = importlib.util.module_from_spec(spec)",
    'assert all(tuple(spec) == ("norm",) for spec in specs.values())',
  ],
)
def test_ordinary_code_is_not_flagged(line):
  assert not offending_lines(line), line


def test_no_source_file_cites_a_design_note_a_machine_path_or_a_bare_issue_number():
  hits = [
    f"{path.relative_to(ROOT)}:{number}: {rule}: {line}"
    for path in python_sources()
    for number, rule, line in offending_lines(path.read_text(encoding="utf-8"))
  ]
  assert not hits, f"{len(hits)} unfollowable citations (cite the paper or the reference code instead):\n" + "\n".join(
    hits)
