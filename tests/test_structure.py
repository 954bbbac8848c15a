"""The package's shape: imports go one way down the pipeline, and functions read as recipes (one screen at most)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bintally"

# Bottom to top: a module may import from its own layer or any layer below it, never above.
LAYERS = [
    {"bintally", "errors", "io", "paths", "progress", "settings", "labels", "text"},
    {"data"},
    {"models"},
    {"sources"},
    {"inference"},
    {"evaluation"},
    {"training"},
    {"tuning"},
    {"export"},
    {"audit"},
    {"serving"},
    {"cli", "__main__"},
]
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else module  # "bintally" itself holds only __version__
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module}: part of no layer in tests/test_structure.py")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every bintally module `name` imports, at module level or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_imports_never_go_up_the_layers():
    upward = [f"{name} -> {target}" for name, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(name)]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(modules().values()), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_functions_fit_on_a_screen(path):
    long = [f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: " + "; ".join(long)


def top_level_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


LAZY_PACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if "\nLAZY = " in p.read_text())


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_names_loaded_on_first_use_are_in_the_module_named_for_them(package):
    lazy = importlib.import_module(f"bintally.{package}").LAZY
    missing = [f"{name} (bintally.{package}.{module})" for name, module in sorted(lazy.items())
               if name not in top_level_names(PACKAGE / package / f"{module}.py")]
    assert not missing, "names that load from a module that lacks them: " + ", ".join(missing)
