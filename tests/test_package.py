"""The package's import graph has the DAG's shape: a flat core (the modules at the top: config and
preflight, on-disk formats, models, teachers, FLOPs, devices, seeding, locks) that every stage
may import, and one package per rule file (``data``, ``reinforce``, ``train``, ``evaluate``,
``report``) that imports the core and never another stage; the core imports no stage. And no
module imports one that (directly or not) imports it back.

Every import of the package counts, those inside functions too: a deferred import still makes
the two modules one unit that cannot be read, tested or moved apart."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mobileclip_repro"
STAGES = ("data", "reinforce", "train", "evaluate", "report")


def module_name(path: Path) -> str:
    """``train/train.py`` -> ``train.train``; ``config.py`` -> ``config``."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports: ``from mobileclip_repro import x``,
    ``from mobileclip_repro.x import y`` (y a module or a name in x), ``import mobileclip_repro.x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE.name:
            base = node.module.removeprefix(PACKAGE.name).lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix(f"{PACKAGE.name}.") for alias in node.names
                      if alias.name.startswith(f"{PACKAGE.name}.")}
    return {module for module in found if module in modules}


def package_imports() -> dict[str, set[str]]:
    """module (dotted, below the package) -> the package's modules it imports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def stage_of(module: str) -> str | None:
    return module.split(".")[0] if module.split(".")[0] in STAGES else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a stage from the core, or of one stage from another."""
    wrong = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if stage_of(target) and stage_of(target) != stage_of(module):
                where = f"stage {stage_of(module)}" if stage_of(module) else "the core"
                wrong.append(f"{module} ({where}) imports {target} (stage {stage_of(target)})")
    return wrong


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


def test_stages_import_the_core_and_never_each_other():
    graph = package_imports()
    assert {stage_of(module) for module in graph} >= set(STAGES)  # the walk sees every stage package
    assert layer_violations(graph) == []


def test_each_rule_file_has_its_stage_package():
    rule_files = {path.stem for path in (REPO / "workflow" / "rules").glob("*.smk")} - {"common"}
    assert rule_files == set(STAGES)
    assert all((PACKAGE / stage / "__init__.py").is_file() for stage in STAGES)


def test_the_layer_check_finds_a_stage_importing_another():
    graph = {"config": set(), "train.train": {"config", "reinforce.reinforce"}, "reinforce.reinforce": set(),
             "plan": {"report.cost"}, "report.cost": set()}
    assert layer_violations(graph) == ["plan (the core) imports report.cost (stage report)",
                                       "train.train (stage train) imports reinforce.reinforce (stage reinforce)"]


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                          ["c", "a", "b", "c"]]
