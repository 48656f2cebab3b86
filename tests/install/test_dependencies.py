"""Runtime dependencies are what the daemon imports: nothing declared that the daemon never uses
(every one is installed on every gateway), nothing imported that is not declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DAEMON = ("gatewayd", "drivers", "buffer", "config")
# requirement (as declared, extras included) -> the top-level modules it installs
IMPORT_NAMES = {
    "paho-mqtt": {"paho"},
    "pyserial": {"serial"},
    "pyjwt[crypto]": {"jwt", "cryptography"},
}


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found: set[str] = set()
    for dep in deps:
        name = re.split(r"[<>=!~; ]", dep, maxsplit=1)[0].lower()
        found |= IMPORT_NAMES.get(name, {name.replace("-", "_")})
    return found


def _imported() -> set[str]:
    found: set[str] = set()
    for folder in DAEMON:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    first_party = {"gatewayd", "gatewayd_sim", *DAEMON}  # gatewayd_sim: the demo only
    return {m for m in found if m not in sys.stdlib_module_names and m not in first_party}


def test_every_runtime_dependency_is_imported_by_the_daemon() -> None:
    assert _declared() - _imported() == set(), "declared but never imported: move to an extra"


def test_every_third_party_import_of_the_daemon_is_declared() -> None:
    assert _imported() - _declared() == set(), "imported but not a runtime dependency"
