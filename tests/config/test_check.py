"""`gatewayd check` reports every reason `run` would refuse a file, all at once; `run` refuses
the same, with the same messages, instead of retrying forever.

The cases are files: tests/config_cases/check_*/gateway.toml and the exact errors, one a line,
in expected.err (`{dir}` stands for the case's folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.check import problems
from gatewayd.config import example_path

CASES = sorted((Path(__file__).parent.parent / "config_cases").absolute().glob("check_*"))


@pytest.fixture(autouse=True)
def _no_systemd_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_reports_every_error_of_the_case(case: Path) -> None:
    expected = (case / "expected.err").read_text().strip().replace("{dir}", str(case))
    report = problems(case / "gateway.toml")
    assert "\n".join(str(e) for e in report.errors) == expected


def _gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_and_run_refuse_all_at_once_with_the_same_messages() -> None:
    case = Path(__file__).parent.parent / "config_cases" / "check_all_at_once"
    toml = str(case / "gateway.toml")
    expected = (case / "expected.err").read_text().strip().splitlines()
    check = _gatewayd("check", toml)
    assert check.returncode == 2, check.stdout
    lines = check.stderr.strip().splitlines()
    assert lines == [f"error: {e}" for e in expected] + [f"{len(expected)} errors in {toml}"]
    # run, with the same file: refused at start (it retried a misspelled driver forever).
    run = _gatewayd("run", "--config", toml)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr == check.stderr


def _example_with_a_key(tmp_path: Path, mode: int) -> Path:
    cfg = tmp_path / "gateway.toml"
    text = example_path().read_text()
    cfg.write_text(text.replace('state_dir = "/var/lib/gatewayd"', f'state_dir = "{tmp_path}"'))
    from gatewayd.uplink.device_jwt import generate_key

    generate_key(tmp_path / "device.key", "ES256")
    (tmp_path / "device.key").chmod(mode)
    return cfg


def test_example_with_its_key_checks_ok(tmp_path: Path) -> None:
    res = _gatewayd("check", str(_example_with_a_key(tmp_path, 0o600)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok: version 1")


def test_a_key_readable_by_others_is_refused_by_check(tmp_path: Path) -> None:
    cfg = _example_with_a_key(tmp_path, 0o644)
    report = problems(cfg)
    assert [str(e) for e in report.errors] == [
        f"uplink.auth.private_key: {tmp_path}/device.key: is readable by group or others "
        f"(mode 0644); run `chmod 600 {tmp_path}/device.key`"
    ]


def test_the_example_without_its_key_is_refused(tmp_path: Path) -> None:
    cfg = _example_with_a_key(tmp_path, 0o600)
    (tmp_path / "device.key").unlink()
    res = _gatewayd("check", str(cfg))
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: uplink.auth.private_key: {tmp_path}/device.key: ")


def test_check_does_not_create_the_state_directory(tmp_path: Path) -> None:
    cfg = _example_with_a_key(tmp_path, 0o600)
    state = tmp_path / "not" / "yet"
    cfg.write_text(cfg.read_text().replace(f'state_dir = "{tmp_path}"', f'state_dir = "{state}"'))
    assert problems(cfg).errors == []
    assert not state.exists() and not (tmp_path / "not").exists()
