"""The uplink's modules import each other in one direction: no circle, however indirect."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = "gatewayd.uplink"


def _imports_within(package_dir: Path) -> dict[str, set[str]]:
    """module name -> the modules of the same package it imports (TYPE_CHECKING ones too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    base = node.module
                elif node.level == 0 and (node.module or "").startswith(PACKAGE + "."):
                    base = (node.module or "")[len(PACKAGE) + 1 :]
                else:
                    continue
                if base:
                    deps.add(base.split(".")[0])
                else:  # `from . import x`
                    deps.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(PACKAGE + "."):
                        deps.add(a.name[len(PACKAGE) + 1 :].split(".")[0])
        graph[name] = {d for d in deps if d != name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_circle_finder_sees_an_indirect_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circle(graph) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_uplink_modules_import_without_a_circle() -> None:
    # Found without importing it: a circle may make the import itself fail.
    spec = importlib.util.find_spec("gatewayd")
    assert spec is not None and spec.submodule_search_locations
    package_dir = Path(next(iter(spec.submodule_search_locations))) / "uplink"
    graph = _imports_within(package_dir)
    assert {"session", "window", "credentials", "paho_socket"} <= graph.keys()
    circle = _circle(graph)
    assert circle is None, "import circle in gatewayd/uplink: " + " -> ".join(circle or [])
    # Only the package's front door imports the session loop.
    assert [m for m, deps in graph.items() if "session" in deps] == ["__init__"]
