"""How the modules of quarantine/ depend on each other: no import cycles (counting
imports inside functions, which only postpone a cycle), and no module reaching for
another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import quarantine

PACKAGE = Path(quarantine.__file__).parent
NAME = "quarantine"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = NAME if path.stem == "__init__" else f"{NAME}.{path.stem}"
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[tuple[str, str]]:
    """(module imported, name taken from it or '') of every import anywhere in *tree*."""
    package = name if name == NAME else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub, "") if sub in modules else (base, alias.name))
    return {(mod, attr) for mod, attr in found if mod in modules}


MODULES = _modules()
IMPORTS = {name: _imports(name, tree, set(MODULES)) for name, tree in MODULES.items()}
GRAPH = {name: {mod for mod, _ in found} - {name} for name, found in IMPORTS.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            if (found := visit(nxt)) is not None:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if (found := visit(start)) is not None:
            return found
    return None


def test_the_graph_is_read_from_the_code():
    # a check on the check: known edges, top level and inside functions
    assert "quarantine.app" in GRAPH["quarantine.cli"]
    assert "quarantine.supervisor" in GRAPH["quarantine.app"]  # inside build_supervisor()
    assert "quarantine.demo" in GRAPH["quarantine.cli"]  # inside the demo command
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_quarantine_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    private = sorted(f"{name} imports {mod}.{attr}" for name, found in IMPORTS.items()
                     for mod, attr in found if attr.startswith("_") and not attr.endswith("__"))
    assert private == []


@pytest.mark.timeout(120)
def test_every_module_imports_first_in_a_fresh_interpreter():
    # a cycle at the top level breaks only when one of its modules is imported first
    names = sorted(set(MODULES) - {f"{NAME}.__main__"})  # __main__ runs the command line
    failed = {}
    for name in names:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode:
            failed[name] = proc.stderr.strip().splitlines()[-1:]
    assert failed == {}
