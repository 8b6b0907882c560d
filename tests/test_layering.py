"""The import graph of jaxmi: no module imports a higher layer, and no two modules import each other.

Every module under jaxmi/ is parsed with ``ast`` (nothing is imported), and every import counts, also one
inside a function or under ``if TYPE_CHECKING``: an import hidden in a function still ties the layers
together, it only delays the cycle to run time. ``from jaxmi.data import builders`` is an import of the
module ``jaxmi.data.builders``; ``from jaxmi.data import DataConfig`` is one of the package ``jaxmi.data``.

Layers, lowest first. A module may import its own layer or a lower one; packages of one layer may import
each other only one way round.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmi"

LAYERS = (
  ("jaxmi", "jaxmi.errors"),  # the package root holds only the version; errors import nothing
  (
    "jaxmi.augment",
    "jaxmi.config",
    "jaxmi.parallel",
    "jaxmi.plots",
    "jaxmi.records",
    "jaxmi.workdir",
  ),  # utilities: import only jaxmi.errors
  ("jaxmi.data",),
  ("jaxmi.nets",),
  ("jaxmi.train",),
  ("jaxmi.attacks", "jaxmi.defenses", "jaxmi.explain"),  # the methods
  ("jaxmi.metrics",),
  ("jaxmi.experiments",),  # the drivers: validate, load, run, write
  ("jaxmi.report", "jaxmi.demo"),
  ("jaxmi.cli",),
)


@dataclasses.dataclass(frozen=True)
class Import:
  importer: str  # dotted module name
  imported: str  # dotted module name, resolved to a module of the package
  where: str  # file:line


def module_names(package: Path) -> dict[str, Path]:
  """Dotted name -> file of every module under ``package`` (a package is its __init__.py)."""
  names = {}
  for path in sorted(package.rglob("*.py")):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    names[".".join(parts)] = path
  return names


def _longest_module(name: str, modules) -> str | None:
  parts = name.split(".")
  while parts and ".".join(parts) not in modules:
    parts.pop()
  return ".".join(parts) or None


def imports(package: Path) -> list[Import]:
  """Every import of a module of ``package`` by another module of it, at any depth of the file."""
  modules = module_names(package)
  root = package.name
  found = []
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the importer's package, ``level - 1`` packages up
          base = name.split(".") if is_package else name.split(".")[:-1]
          base = base[: len(base) - (node.level - 1)]
          module = ".".join(base + ([node.module] if node.module else []))
        else:
          module = node.module
        # ``from p import x``: x is the submodule p.x when there is one, else a name defined in p.
        targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names]
      for target in targets:
        if target != root and not target.startswith(root + "."):
          continue
        imported = _longest_module(target, modules)
        imp = Import(name, imported, f"{path.relative_to(package.parent)}:{node.lineno}")
        if imported is not None and imported != name and imp not in found:
          found.append(imp)
  return found


def layer_of(module: str, layers=LAYERS) -> tuple[int, str] | None:
  """(layer index, the layer entry ``module`` belongs to), by the longest matching entry.

  An entry covers its submodules, except the root package's, which covers only its own __init__.py.
  """
  best = None
  for index, entries in enumerate(layers):
    for entry in entries:
      covers = module == entry or ("." in entry and module.startswith(entry + "."))
      if covers and (best is None or len(entry) > len(best[1])):
        best = (index, entry)
  return best


def unplaced(package: Path, layers=LAYERS) -> list[str]:
  return [name for name in module_names(package) if layer_of(name, layers) is None]


def upward_imports(found: list[Import], layers=LAYERS) -> list[str]:
  """One line per import of a higher layer, and per pair of same-layer packages that import each other."""
  problems = []
  between = {}  # (importer entry, imported entry) of one layer -> first import
  for imp in found:
    if layer_of(imp.importer, layers) is None or layer_of(imp.imported, layers) is None:
      continue  # reported by unplaced()
    (low, low_entry), (high, high_entry) = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
    if high > low:
      problems.append(
        f"{imp.where}: {imp.importer} (layer {low}, {low_entry}) imports {imp.imported} "
        f"(layer {high}, {high_entry}), a higher layer"
      )
    elif high == low and low_entry != high_entry:
      between.setdefault((low_entry, high_entry), imp)
  for (a, b), imp in sorted(between.items()):
    if (b, a) in between and a < b:
      back = between[(b, a)]
      problems.append(
        f"{imp.where}: {imp.importer} imports {imp.imported}, and {back.where}: {back.importer} "
        f"imports {back.imported}: {a} and {b} share a layer and may import each other one way only"
      )
  return problems


def cycles(found: list[Import]) -> list[str]:
  """One line per strongly connected component of more than one module, naming the imports inside it."""
  graph = {}
  for imp in found:
    graph.setdefault(imp.importer, set()).add(imp.imported)
    graph.setdefault(imp.imported, set())
  # Tarjan's algorithm, iterative (no recursion limit on a deep graph).
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  for start in sorted(graph):
    if start in index:
      continue
    work = [(start, iter(sorted(graph[start])))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is None:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          component = set()
          while True:
            member = stack.pop()
            on_stack.discard(member)
            component.add(member)
            if member == node:
              break
          if len(component) > 1:
            components.append(component)
      elif child not in index:
        index[child] = low[child] = len(index)
        stack.append(child)
        on_stack.add(child)
        work.append((child, iter(sorted(graph[child]))))
      elif child in on_stack:
        low[node] = min(low[node], index[child])
  problems = []
  for component in components:
    inside = sorted(
      {
        f"{imp.where} ({imp.importer} -> {imp.imported})"
        for imp in found
        if imp.importer in component and imp.imported in component
      }
    )
    problems.append(f"cycle between {', '.join(sorted(component))}: " + "; ".join(inside))
  return problems


# ----------------------------------------------------------------------------------------------------------------------
# The package itself.


def test_every_module_has_a_layer():
  missing = unplaced(PACKAGE)
  assert not missing, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {', '.join(missing)}"


def test_no_module_imports_a_higher_layer():
  problems = upward_imports(imports(PACKAGE))
  assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycle_between_modules():
  problems = cycles(imports(PACKAGE))
  assert not problems, "import cycles (imports inside functions count):\n" + "\n".join(problems)


# ----------------------------------------------------------------------------------------------------------------------
# The checks catch what they are for, on a small made-up package.

TOY_LAYERS = (("toy.base",), ("toy.low",), ("toy.left", "toy.right"), ("toy.high",))


def _toy(tmp_path, files: dict[str, str]) -> Path:
  package = tmp_path / "toy"
  for name, text in {"__init__.py": "", **files}.items():
    (package / name).parent.mkdir(parents=True, exist_ok=True)
    (package / name).write_text(text)
  return package


def test_an_upward_import_inside_a_function_is_named_by_file_and_line(tmp_path):
  package = _toy(
    tmp_path,
    {
      "low.py": "import os\n\ndef f():\n  from toy.high import g\n  return g\n",
      "high.py": "from toy import low\n\ndef g():\n  pass\n",
    },
  )
  problems = upward_imports(imports(package), TOY_LAYERS)
  assert len(problems) == 1 and problems[0].startswith(
    "toy/low.py:4: toy.low (layer 1, toy.low) imports toy.high (layer 3, toy.high)"
  ), problems


def test_from_package_import_submodule_is_an_import_of_the_submodule(tmp_path):
  package = _toy(
    tmp_path,
    {
      "low/__init__.py": "from toy.low.a import x\n",
      "low/a.py": "x = 1\n",
      "low/b.py": "from toy.low import a\nfrom toy.low import x\nfrom . import a as same\n",
    },
  )
  found = {(imp.importer, imp.imported, imp.where) for imp in imports(package)}
  assert found == {
    ("toy.low", "toy.low.a", "toy/low/__init__.py:1"),
    ("toy.low.b", "toy.low.a", "toy/low/b.py:1"),
    ("toy.low.b", "toy.low", "toy/low/b.py:2"),
    ("toy.low.b", "toy.low.a", "toy/low/b.py:3"),
  }
  # low/__init__ -> a and b -> low (the package): no cycle, as at run time.
  assert not cycles(imports(package))


def test_a_cycle_hidden_in_a_function_is_found_and_each_import_named(tmp_path):
  package = _toy(
    tmp_path,
    {
      "low/__init__.py": "from toy.low.a import x\n",
      "low/a.py": "x = 1\n\ndef f():\n  from toy.low import b\n",
      "low/b.py": "from toy.low.a import x\n",
    },
  )
  assert cycles(imports(package)) == [
    "cycle between toy.low.a, toy.low.b: toy/low/a.py:4 (toy.low.a -> toy.low.b); "
    "toy/low/b.py:1 (toy.low.b -> toy.low.a)"
  ]


def test_packages_of_one_layer_may_import_each_other_one_way_only(tmp_path):
  one_way = {"left.py": "from toy import right\n", "right.py": "from toy import low\n", "low.py": ""}
  assert not upward_imports(imports(_toy(tmp_path / "a", one_way)), TOY_LAYERS)
  both_ways = {**one_way, "right.py": "def f():\n  import toy.left\n"}
  problems = upward_imports(imports(_toy(tmp_path / "b", both_ways)), TOY_LAYERS)
  assert problems == [
    "toy/left.py:1: toy.left imports toy.right, and toy/right.py:2: toy.right imports toy.left: "
    "toy.left and toy.right share a layer and may import each other one way only"
  ]


def test_a_module_outside_every_layer_is_reported(tmp_path):
  package = _toy(tmp_path, {"low.py": "", "extra.py": "", "high/__init__.py": "", "high/sub.py": ""})
  assert unplaced(package, TOY_LAYERS) == ["toy", "toy.extra"]
  # The root package's entry covers its __init__.py only, not every module below it.
  assert unplaced(package, (("toy",), *TOY_LAYERS)) == ["toy.extra"]
