"""Which package may import which: the layering of jaxagents, checked on the source with `ast`.

Every `import` and `from ... import` of every module under jaxagents/ and kernels_pallas/ counts, wherever it is
written (module level, inside a function, under `if TYPE_CHECKING`), relative imports resolved. Imports built from
strings (`importlib.import_module`, the task registry) are not seen.

Layers, from the bottom: kernels_pallas (standalone kernels) < layers < models; environments (envs), data
pipelines (data), sparse attention (sparse), sampling (generation), diffusion schedules and samplers (diffusion)
and RL math (rl) know no model; tasks put a
model, an environment and a loss together, and only the loop (train.py), scripts, benchmarks and the sampler of a
training run (sample_video.py) pick tasks.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jaxagents", "kernels_pallas")

MODELS, TASKS, RL, TRAIN = "jaxagents.models", "jaxagents.tasks", "jaxagents.rl", "jaxagents.train"
GENERATION, ENVS, DATA = "jaxagents.generation", "jaxagents.envs", "jaxagents.data"
PIPELINES = "jaxagents.pipelines"  # inference pipelines: models composed with samplers
# Entry points: scripts, benchmarks, and the sampler of a training run (it rebuilds the run's task from its config).
SCRIPTS = ("jaxagents.scripts", "scripts", "jaxagents.bench", "jaxagents.sample_video")

# The rules as a table. FORBIDDEN: (importers, what they must not import, why).
FORBIDDEN = (
  (("kernels_pallas",), ("jaxagents",), "kernels stand alone"),
  (("jaxagents.layers",), (MODELS, TASKS, RL, TRAIN, GENERATION), "layers are shared by models"),
  ((MODELS,), (TASKS, RL, TRAIN, GENERATION, ENVS, DATA, PIPELINES),
   "a model knows no task, loop, sampler, env or data"),
  ((RL, DATA, ENVS, "jaxagents.sparse", GENERATION, "jaxagents.diffusion"), (MODELS, TASKS, TRAIN, PIPELINES),
   "model-agnostic: they reach a model only through its inputs' methods"),
  ((RL,), (DATA, GENERATION, ENVS), "rl/ is pure math"),
)
# EXCLUSIVE: (imported, the only importers allowed besides itself, why).
EXCLUSIVE = (
  (TASKS, (TRAIN, *SCRIPTS), "the loop, scripts and benchmarks pick tasks"),
  (RL, (TASKS, *SCRIPTS), "RL math is used by tasks"),
)

def _under(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
  path = root.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: pathlib.Path, root: pathlib.Path = ROOT) -> set[str]:
  """Every module `path` imports; `from m import a` counts as importing m.a when that is a module, else m."""
  module = _module_name(path, root)
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
      for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.add(submodule if alias.name != "*" and _is_module(submodule, root) else base)
  return found


def all_imports() -> dict[str, set[str]]:
  """module name -> the first-party modules it imports, for every source file of PACKAGES."""
  sources = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
  return {_module_name(path, ROOT): {m for m in imports_of(path) if m.split(".")[0] in PACKAGES} for path in sources}


def violations(imports: dict[str, set[str]]) -> set[tuple[str, str, str]]:
  """(importer, imported, rule) for every import that breaks `FORBIDDEN` or `EXCLUSIVE`."""
  found = set()
  for importer, imported_modules in imports.items():
    for imported in imported_modules:
      for importers, targets, why in FORBIDDEN:
        if any(_under(importer, p) for p in importers) and any(_under(imported, t) for t in targets):
          found.add((importer, imported, why))
      for target, allowed, why in EXCLUSIVE:
        if _under(imported, target) and not any(_under(importer, p) for p in (target, *allowed)):
          found.add((importer, imported, why))
  return found


def test_the_walk_sees_the_packages_and_imports_inside_functions():
  imports = all_imports()
  assert "jaxagents.layers.attention" in imports and "kernels_pallas.block_sparse.api" in imports
  # layers/attention.py imports the sparse dispatcher inside a function (to avoid an import cycle).
  assert "jaxagents.sparse.dispatch" in imports["jaxagents.layers.attention"]


def test_relative_imports_resolve_and_from_imports_name_the_submodule(tmp_path):
  package = tmp_path / "jaxagents" / "pkg"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("from . import a, CONSTANT\n")
  (package / "a.py").write_text("")
  (package / "b.py").write_text("def f():\n  from ..models import qwen_vl\n  import jaxagents.train as t\n")
  assert imports_of(package / "__init__.py", tmp_path) == {"jaxagents.pkg", "jaxagents.pkg.a"}
  assert imports_of(package / "b.py", tmp_path) == {"jaxagents.models", "jaxagents.train"}


@pytest.mark.parametrize(("imports", "expected"), [
  ({"kernels_pallas.x": {"jaxagents.layers"}}, "kernels stand alone"),
  ({"jaxagents.layers.block": {"jaxagents.models.qwen_vl"}}, "layers are shared by models"),
  ({"jaxagents.models.qwen_vl.batching": {"jaxagents.envs.counting"}}, "a model knows no task"),
  ({"jaxagents.envs.counting": {"jaxagents.models.qwen_vl.inputs"}}, "model-agnostic"),
  ({"jaxagents.generation.rollout": {"jaxagents.train"}}, "model-agnostic"),
  ({"jaxagents.rl.grpo": {"jaxagents.data.sources"}}, "rl/ is pure math"),
  ({"jaxagents.sparse.search": {"jaxagents.tasks.grpo"}}, "model-agnostic"),
  ({"jaxagents.diffusion.samplers": {"jaxagents.models.mmdit"}}, "model-agnostic"),
  ({"jaxagents.models.mmdit.model": {"jaxagents.pipelines.text_to_image"}}, "a model knows no task"),
  ({"jaxagents.metrics": {"jaxagents.tasks.grpo"}}, "pick tasks"),
  ({"jaxagents.generation.rollout": {"jaxagents.rl.kl"}}, "used by tasks"),
])
def test_each_rule_catches_its_kind_of_import(imports, expected):
  assert any(expected in why for *_, why in violations(imports)), violations(imports)


@pytest.mark.parametrize("imports", [
  {"jaxagents.train": {"jaxagents.tasks", "jaxagents.models.qwen_vl"}},
  {"jaxagents.tasks.grpo": {"jaxagents.rl.grpo", "jaxagents.generation", "jaxagents.envs.counting",
                            "jaxagents.models.qwen_vl.batching", "jaxagents.tasks.base"}},
  {"jaxagents.models.qwen_vl.model": {"jaxagents.layers", "jaxagents.sparse.config"}},
  {"jaxagents.rl.grpo": {"jaxagents.rl._checks"}},
  {"jaxagents.envs.counting": {"jaxagents.data.sources"}},
])
def test_allowed_imports_pass(imports):
  assert violations(imports) == set()


def test_imports_follow_the_layering():
  found = violations(all_imports())
  assert not found, "imports against the layering (module docstring):\n" + "\n".join(
    f"  {importer} imports {imported}: {why}" for importer, imported, why in sorted(found))
