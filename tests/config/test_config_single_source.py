"""Defaults and choice lists are written once, in the frozen dataclasses of config/model.py.

The readers pass `choices_of(...)` (a field's `Literal`) to Section.choice, and the schema takes
its defaults from the dataclasses; a hand-written copy drifts the day a value is added to one
side only. Read from the source: what matters is that no second copy is written.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load
from gatewayd.config.model import (
    AuthConfig,
    BufferConfig,
    LoggingConfig,
    QualityStep,
    UplinkConfig,
    choices_of,
)

READERS = ("tables.py", "uplink.py", "devices.py", "rules.py", "parse.py", "check.py")


def _config_dir() -> Path:
    spec = importlib.util.find_spec("gatewayd.config")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _strings(node: ast.AST) -> bool:
    """A tuple or list written out of string constants."""
    return isinstance(node, ast.Tuple | ast.List) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    )


def written_choice_lists(source: str) -> list[int]:
    """Lines where `.choice(key, ("a", "b"), ...)` spells its allowed strings out."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "choice"
        and len(node.args) >= 2
        and _strings(node.args[1])
    ]


def written_defaults(source: str) -> list[int]:
    """Lines where a schema dict writes `"default": <a constant>`."""
    return [
        value.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Dict)
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant)
        and key.value == "default"
        and isinstance(value, ast.Constant)
    ]


def test_the_finders_see_a_written_copy() -> None:
    assert written_choice_lists('s.choice("sync", ("full", "normal"), "normal")\n') == [1]
    assert written_choice_lists('s.choice("sync", choices_of(BufferConfig, "sync"))\n') == []
    assert written_defaults('x = {"type": "integer", "default": 1000}\n') == [1]
    assert written_defaults('x = {"default": d.interval_ms}\n') == []


@pytest.mark.parametrize("name", READERS)
def test_readers_take_choice_lists_from_the_model(name: str) -> None:
    source = (_config_dir() / name).read_text(encoding="utf-8")
    assert written_choice_lists(source) == [], f"config/{name}: use choices_of(...)"


def test_schema_takes_defaults_from_the_model() -> None:
    source = (_config_dir() / "schema.py").read_text(encoding="utf-8")
    assert written_defaults(source) == [], "config/schema.py: read defaults from the dataclasses"


@pytest.mark.parametrize(
    ("cls", "field", "toml"),
    [
        (BufferConfig, "sync", "[buffer]\nsync = 'x'\n"),
        (LoggingConfig, "level", "[logging]\nlevel = 'x'\n"),
        (UplinkConfig, "protocol", "[uplink]\nprotocol = 'x'\n"),
        (AuthConfig, "algorithm", "[uplink.auth]\nalgorithm = 'x'\n"),
        (QualityStep, "bad", None),
    ],
)
def test_a_refused_choice_names_the_literal(cls: type, field: str, toml: str | None) -> None:
    if toml is None:  # a rule step: needs a point to attach to
        toml = (
            "[[rules]]\nname = 'r'\npoints = ['a/b']\n"
            "[[rules.steps]]\nkind = 'quality'\nbad = 'x'\n"
        )
    with pytest.raises(ConfigError) as err:
        load("[uplink.auth]\naudience = 'p'\n" * ("[uplink.auth]" not in toml) + toml)
    assert err.value.fix.endswith(", ".join(map(repr, choices_of(cls, field))))

