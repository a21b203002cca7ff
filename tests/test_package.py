"""The package's import graph: no module imports one that (directly or not) imports it back.

Every import of the package counts, those inside functions too: a deferred import still makes
the two modules one unit that cannot be read, tested or moved apart."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mobileclip_repro"


def package_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (``from mobileclip_repro import x``,
    ``from mobileclip_repro.x import y``, ``import mobileclip_repro.x``)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE.name:
                parts = node.module.split(".")
                imported |= {alias.name for alias in node.names} if len(parts) == 1 else {parts[1]}
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] for alias in node.names
                             if alias.name.startswith(f"{PACKAGE.name}.")}
        graph[path.stem] = (imported & modules) - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import path back to itself for each module that has one."""
    found = []
    for start in sorted(graph):
        paths = [[start]]
        seen = set()
        while paths:
            path = paths.pop()
            for module in sorted(graph[path[-1]]):
                if module == start:
                    found.append(path + [start])
                    paths = []
                    break
                if module not in seen:
                    seen.add(module)
                    paths.append(path + [module])
    return found


def test_no_module_imports_itself_back():
    assert cycles(package_imports()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                          ["c", "a", "b", "c"]]
