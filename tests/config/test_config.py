"""Configuration errors are data: each case is a file and the exact message it must produce."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, example_path, load, load_document, load_file, parse_bytes

# check_* cases are what only `gatewayd check` finds (tests/config/test_check.py runs them).
CASES_DIR = Path(__file__).parent.parent / "config_cases"
CASES = sorted(c for c in CASES_DIR.iterdir() if not c.name.startswith("check_"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case_gives_exact_error(case: Path) -> None:
    raw = (case / "gateway.toml").read_bytes()  # bytes: some cases are not UTF-8
    with pytest.raises(ConfigError) as err:
        load_document(parse_bytes(raw, source="gateway.toml"))
    assert str(err.value) == (case / "expected.err").read_text().strip()


def test_example_config_loads() -> None:
    cfg = load_file(example_path())
    assert cfg.version == 1
    assert [p.id for p in cfg.devices[0].points][:2] == ["flow_temp", "return_temp"]
    assert cfg.uplink.tls.enabled and cfg.uplink.tls.verify, "TLS is verified by default"
    assert cfg.uplink.auth.kind == "jwt"


def test_check_command_exit_codes(tmp_path: Path) -> None:
    # (the example checks ok with its key and state folder: tests/config/test_check.py)
    bad = tmp_path / "bad.toml"
    bad.write_text("[uplink]\nport = 0\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "uplink.port: 0 is below 1" in res.stderr


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"uplink.port: expected an integer, got a boolean"):
        load("[uplink]\nport = true\n")


# Files that once printed a traceback from `check` or crashed `run` (issue 14).
CRASHERS = ["non_utf8", "deep_nesting", "topic_placeholder_typo", "client_id_brace"]


@pytest.mark.parametrize("name", CRASHERS)
@pytest.mark.parametrize("command", ["check", "run"])
def test_malformed_file_is_an_error_with_its_place_not_a_traceback(name: str, command: str) -> None:
    case = Path(__file__).parent.parent / "config_cases" / name
    args = (
        [str(case / "gateway.toml")]
        if command == "check"
        else ["--config", str(case / "gateway.toml")]
    )
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = (case / "expected.err").read_text().strip()
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    # The place inside the file (or the file itself, for a file that is no TOML at all).
    place = expected.split(": ", 1)[1] if expected.startswith("gateway.toml:") else expected
    assert place in res.stderr, res.stderr


def test_nan_and_huge_numbers_are_refused_in_documents_too() -> None:
    base: dict[str, object] = {"uplink": {"auth": {"kind": "none"}}}
    for section, key, value, problem in [
        ("remote_config", "health_deadline_s", float("nan"), "NaN is not a number"),
        ("uplink", "puback_timeout_s", float("inf"), "Infinity is not a finite number"),
        ("uplink", "connect_timeout_s", -float("inf"), "-Infinity is not a finite number"),
        ("uplink", "keepalive_s", 10**400, "an integer of 401 digits is out of range"),
        ("uplink", "backoff_cap_s", 10**400, "an integer of 401 digits is out of range"),
    ]:
        doc = json.loads(json.dumps(base))
        doc.setdefault(section, {})[key] = value
        with pytest.raises(ConfigError) as err:
            load_document(doc)
        assert str(err.value).startswith(f"{section}.{key}: {problem}; use "), err.value
    with pytest.raises(ConfigError, match=r"^version: an integer of 401 digits is out of range"):
        load_document({**base, "version": 10**400})
