"""`gatewayd schema` describes the whole configuration, installed drivers' options included."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gatewayd.config import example_path, load_document

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = sorted((ROOT / "drivers").glob("*/sample.toml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


@pytest.mark.parametrize(
    "path", [example_path(), *SAMPLES], ids=["gateway.toml", *(p.parent.name for p in SAMPLES)]
)
def test_shipped_configs_are_valid_against_the_schema(schema: dict[str, Any], path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    jsonschema.validate(doc, schema)
    load_document({"uplink": {"auth": {"kind": "none"}}, **doc})  # and parsing agrees


def test_the_schema_names_every_installed_driver_and_its_ranges(schema: dict[str, Any]) -> None:
    devices = schema["properties"]["devices"]["items"]
    assert {"modbus_tcp", "modbus_rtu", "serial_line"} <= set(
        devices["properties"]["driver"]["enum"]
    )
    tcp = next(
        c["then"]
        for c in devices["allOf"]
        if c["if"]["properties"]["driver"]["const"] == "modbus_tcp"
    )
    assert tcp["properties"]["port"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
        "default": 502,
    }
    assert tcp["properties"]["points"]["items"]["properties"]["table"]["enum"] == [
        "coil",
        "discrete",
        "input",
        "holding",
    ]


def test_a_key_of_another_driver_is_refused_by_the_schema(schema: dict[str, Any]) -> None:
    doc = {"devices": [{"id": "g", "driver": "serial_line", "serial_port": "/dev/x", "max_gap": 4}]}
    with pytest.raises(jsonschema.ValidationError, match="max_gap"):
        jsonschema.validate(doc, schema)
