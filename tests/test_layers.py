"""The layout is the architecture (docs/ARCHITECTURE.md): imports flow down the layers,
no module imports itself round a circle, and an import inside a function is only ever a
lazy one for start-up time, saying so."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "runner"

#: every module's layer; a module may import its own package and any lower layer
LAYERS: dict[str, int] = {
    "runner.errors": 0,
    "runner.clock": 0,
    "runner.indexfile": 0,
    "runner.sim": 0,
    "runner.manifest": 1,
    "runner.api": 2,
    "runner.state": 2,
    "runner.present": 3,
    "runner.run": 4,
    "runner.cli": 5,
    "runner": 5,  # the package's face
    "runner.__main__": 6,
}
LAZY = "Lazy import, for start-up time"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its package under runner, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> Iterator[tuple[str, ast.stmt, str]]:
    """(module imported, statement, where: ``top``, ``type`` for an import under ``if
    TYPE_CHECKING:``, ``inner`` for one inside a function) for every import of runner."""
    tree = ast.parse(path.read_text())
    package = module if _is_package(path) else module.rpartition(".")[0]
    where = {id(node): "top" for node in tree.body}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            where.update((id(stmt), "type") for stmt in node.body)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "runner" or name.startswith("runner."):
                yield name, node, where.get(id(node), "inner")


def _known(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    paths = dict(_modules())
    graph: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        for name, _, _ in _imports(module, path):
            target = _known(name, set(paths))
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def _upward(module: str, path: Path) -> list[str]:
    """The imports of ``module`` that do not run down the layers."""
    unit = _unit(module)
    if unit not in LAYERS:
        return [f"{module} is in no layer: place it in a package of LAYERS"]
    found = []
    for name, node, _ in _imports(module, path):
        target = _unit(name)
        if target == unit or target not in LAYERS:
            continue
        if target == "runner" and name != "runner":
            continue  # runner.X where X is not a module: a name of the face
        if LAYERS[target] >= LAYERS[unit] or unit == "runner.sim":
            found.append(f"{module}:{node.lineno} imports {target}, not a layer below its own")
    return sorted(set(found))


def _unmarked(module: str, path: Path) -> list[str]:
    """The imports inside a function of ``module`` without the lazy-import comment."""
    lines = path.read_text().splitlines()
    found = []
    for _, node, where in _imports(module, path):
        comment = "\n".join(lines[max(0, node.lineno - 4) : node.lineno])
        if where == "inner" and LAZY not in comment:
            found.append(f"{module}:{node.lineno}: an import inside a function")
    return sorted(set(found))


def test_every_import_runs_down_the_layers() -> None:
    assert [v for module, path in _modules() for v in _upward(module, path)] == []


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = _graph()
    seen: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(graph[module]):
            if seen.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])


def test_an_import_inside_a_function_is_a_lazy_one_and_says_so() -> None:
    assert [v for module, path in _modules() for v in _unmarked(module, path)] == []


def test_the_checks_see_an_upward_import_and_an_unmarked_lazy_one(tmp_path: Path) -> None:
    """The checks above are not vacuous: a manifest module importing the run is caught,
    and so is an import inside a function without the comment."""
    bad = tmp_path / "fields.py"
    bad.write_text("from runner.run.engine import Engine\n\n\ndef f():\n    import runner.sim\n")
    assert len(_upward("runner.manifest.fields", bad)) == 1
    assert len(_unmarked("runner.manifest.fields", bad)) == 1
