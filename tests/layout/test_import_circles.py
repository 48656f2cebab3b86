"""config/, buffer/ and gatewayd/uplink/ import their own modules in one direction: no circle,
however indirect.

Read from the source (AST), without importing it: a circle may make the import itself fail, or
pass only in the order a test happens to import things. TYPE_CHECKING imports and imports inside
functions count too: each is one refactor away from a real circle.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

# package as installed -> the packages whose internal imports must not form a circle
PACKAGES = ("gatewayd.config", "gatewayd.buffer", "gatewayd.uplink")


def _modules(root: Path) -> dict[str, Path]:
    """Module name relative to the package -> its file: "model", "channels" (a subpackage's
    __init__), "channels.azure"; the package's own __init__ is "__init__"."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = path
    return out


def import_graph(package: str, root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports, from the files under `root`.

    `from . import x` and `from pkg import x` name the module x when there is one, else the
    package's __init__ (x is a name it re-exports).
    """
    modules = _modules(root)
    top = package.split(".")

    def local(absolute: list[str]) -> str | None:
        if absolute[: len(top)] != top:
            return None
        rel = ".".join(absolute[len(top) :]) or "__init__"
        return rel if rel in modules else None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = top + ([] if name == "__init__" else name.split("."))
        pkg = here if is_package else here[:-1]  # the package a relative import starts from
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[: len(pkg) - (node.level - 1)]
                    base = base + (node.module.split(".") if node.module else [])
                else:
                    base = (node.module or "").split(".")
                for alias in node.names:
                    found = local([*base, alias.name]) or local(base)
                    if found:
                        deps.add(found)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    # `import a.b.c` binds the deepest module that exists in the package
                    for n in range(len(parts), 0, -1):
                        if found := local(parts[:n]):
                            deps.add(found)
                            break
        graph[name] = deps - {name}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str] | None:
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


def _installed_dir(package: str) -> Path:
    """Where the package's files are, found without importing it."""
    spec = importlib.util.find_spec(package.split(".")[0])
    assert spec is not None and spec.submodule_search_locations
    if package == "gatewayd.uplink":  # a plain folder of gatewayd/
        return Path(next(iter(spec.submodule_search_locations))) / "uplink"
    # config/ and buffer/ install as gatewayd.config and gatewayd.buffer (package-dir)
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_circle_finder_sees_an_indirect_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circle(graph) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


def test_graph_of_files_sees_a_circle_through_type_checking_and_the_front_door(
    tmp_path: Path,
) -> None:
    # The shape config/ had: model -> rules -> parse (under TYPE_CHECKING) -> model.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .model import A\n")
    (pkg / "model.py").write_text("from .rules import R\n")
    (pkg / "rules.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .parse import Section\n"
    )
    (pkg / "parse.py").write_text("from . import model\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("from .. import rules\nfrom top.pkg import A\n")
    graph = import_graph("top.pkg", pkg)
    assert graph == {
        "__init__": {"model"},
        "model": {"rules"},
        "rules": {"parse"},
        "parse": {"model"},
        "sub": set(),
        # `from top.pkg import A`: a name of the package's __init__, which imports the rest
        "sub.leaf": {"rules", "__init__"},
    }
    assert circle(graph) == ["model", "rules", "parse", "model"]
    (pkg / "rules.py").write_text("")
    assert circle(import_graph("top.pkg", pkg)) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_without_a_circle(package: str) -> None:
    graph = import_graph(package, _installed_dir(package))
    assert len(graph) > 3, graph  # the walk found the package's modules
    found = circle(graph)
    assert found is None, f"import circle in {package}: " + " -> ".join(found or [])


def test_uplink_front_door_alone_imports_the_session_loop() -> None:
    graph = import_graph("gatewayd.uplink", _installed_dir("gatewayd.uplink"))
    assert {"session", "window", "credentials", "paho_socket", "channels.azure"} <= graph.keys()
    assert [m for m, deps in graph.items() if "session" in deps] == ["__init__"]


def test_config_model_imports_no_reader() -> None:
    # The frozen types sit below every reader: the readers import the model, never the reverse.
    graph = import_graph("gatewayd.config", _installed_dir("gatewayd.config"))
    readers = {"parse", "section", "tables", "uplink", "devices", "rules", "check", "schema"}
    assert not graph["model"] & readers, graph["model"]
