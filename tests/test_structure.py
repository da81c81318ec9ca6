"""The package's shape, checked from the source with ast so it stays true: library code never
imports the command-line layer, and no two bqq_deploy modules import each other, directly or
round a loop (imports inside functions count: hiding a cycle there is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bqq_deploy"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bqq_deploy modules `name` imports anywhere in its source. `from pkg import sub`
    counts sub when it is a module; a package imported is its __init__."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A module's own ancestor packages are initialised before it by Python itself.
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = _imports(name, path, modules) - ancestors - {name}
    return graph


def test_only_the_cli_imports_the_cli():
    offenders = {name: sorted(t for t in targets if t.startswith("bqq_deploy.cli"))
                 for name, targets in _graph().items() if not name.startswith("bqq_deploy.cli")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The check would be worthless if a function-level import escaped it.
    source = tmp_path / "bqq_deploy" / "a.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from .b import thing\n    import bqq_deploy.c\n")
    modules = {"bqq_deploy.a": source, "bqq_deploy.b": source, "bqq_deploy.c": source}
    assert _imports("bqq_deploy.a", source, modules) == {"bqq_deploy.b", "bqq_deploy.c"}
