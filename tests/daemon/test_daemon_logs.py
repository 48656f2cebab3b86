"""Logs: one line per event in one style (logfmt, or JSON), stamped off journald, and never a key,
token or password."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_procs import start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.logs import LineFormatter, redact, under_journald
from gatewayd.uplink.device_jwt import generate_key

FIXTURES = Path(__file__).parent.parent / "fixtures"
JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJwMSIsImlhdCI6MX0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("uplink_auth password=hunter2 host=x", "hunter2"),
        ('config {"password": "two words", "port": 1}', "two words"),
        ("token=abc123 next=1", "abc123"),
        ("auth_token='q w e'", "q w e"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        (f"connect with {JWT} failed", JWT),
        (
            "key -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY----- end",
            "MHcCAQEE",
        ),
        ("private_key=/etc/gatewayd/device.key", "/etc/gatewayd/device.key"),
    ],
)
def test_redaction_removes_secret(line: str, secret: str) -> None:
    out = redact(line)
    assert secret not in out
    assert "<redacted>" in out


def test_redaction_keeps_ordinary_fields() -> None:
    line = "event=uplink_token_refresh uplink_tokens_minted=3 trace=device_jwt.py:67:mint_jwt"
    assert redact(line) == line


def _format(logger: logging.Logger, fn: object, fmt: str = "logfmt") -> list[str]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(LineFormatter(fmt, timestamps=False))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        fn()  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
    return buf.getvalue().splitlines()


def test_exception_is_folded_into_the_same_line_and_redacted() -> None:
    log = logging.getLogger("gatewayd.test_logs")

    def crash() -> None:
        try:
            raise ValueError(f"bad reply\nwith token={JWT}")
        except ValueError:
            log.exception("driver_crashed device=%s", "plc")

    lines = _format(log, crash)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "level=error logger=gatewayd.test_logs event=driver_crashed device=plc"
    )
    assert 'exc="ValueError: bad reply\\nwith token=<redacted>' in lines[0]
    assert "trace=" in lines[0] and "test_daemon_logs.py" in lines[0]
    assert JWT not in lines[0]


def test_gateway_at_debug_never_logs_its_jwt_key_or_password(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    generate_key(tmp_path / "device.key", "ES256")
    points = (FIXTURES / "plc_points.toml").read_text()
    auth = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
    toml = gateway_toml(tmp_path, mosquitto.port, device_port, points, auth=auth)
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, log_level="DEBUG")

    def acked() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_acked_records_total") > 0

    wait_for(acked, 20, "records acked with a JWT-authenticated session")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    text = log.read_text()
    assert "event=uplink_connected" in text
    assert "eyJ" not in text and "PRIVATE KEY" not in text
    key_body = (tmp_path / "device.key").read_text().splitlines()[1]
    assert key_body not in text
    assert all(LOGFMT.fullmatch(line) for line in text.splitlines()), text
    assert all(line.startswith("ts=") for line in text.splitlines()), text


# A strict logfmt line: bare values without spaces, quotes or `=`, or JSON-quoted strings.
_PAIR = r'[a-z_][\w.-]*=(?:[^\s"=\\]+|"(?:[^"\\]|\\.)*")'
LOGFMT = re.compile(f"{_PAIR}(?: {_PAIR})*")


def _mixed_styles(log: logging.Logger) -> None:
    """The three styles call sites used before, and a None."""
    log.warning("uplink_connect_failed reason=%s attempt=%d", "Connection refused", 2)  # bare
    log.warning("buffer_append_failed error=%s", json.dumps("disk I/O error"))  # JSON quotes
    log.info("config_rejected version=%d reason=%r", 3, "bad 'rule'")  # a Python repr
    log.info("config_applied version=%s reason=%r", 4, None)  # reason=None
    log.info("free text with = signs and 'quotes'")


def test_one_style_whatever_the_call_site_wrote() -> None:
    lines = _format(
        logging.getLogger("gatewayd.style"),
        lambda: _mixed_styles(logging.getLogger("gatewayd.style")),
    )
    assert len(lines) == 5, lines
    for line in lines:
        assert LOGFMT.fullmatch(line), line
        assert "None" not in line and "'bad" not in line, line
    assert lines[0].endswith('event=uplink_connect_failed reason="Connection refused" attempt=2')
    assert lines[1].endswith('event=buffer_append_failed error="disk I/O error"')
    assert lines[2].endswith("event=config_rejected version=3 reason=\"bad 'rule'\"")
    assert lines[3].endswith("event=config_applied version=4")


def test_json_format_has_the_same_fields() -> None:
    log = logging.getLogger("gatewayd.style")
    docs = [json.loads(line) for line in _format(log, lambda: _mixed_styles(log), "json")]
    assert docs[0] == {
        "level": "warning",
        "logger": "gatewayd.style",
        "event": "uplink_connect_failed",
        "reason": "Connection refused",
        "attempt": 2,
    }
    assert docs[2]["reason"] == "bad 'rule'" and "reason" not in docs[3]
    assert docs[4]["event"] == "free text with = signs and 'quotes'"


def test_json_lines_are_redacted_too() -> None:
    log = logging.getLogger("gatewayd.style")
    lines = _format(log, lambda: log.info("uplink_auth password=%s jwt=%s", "hunter2", JWT), "json")
    doc = json.loads(lines[0])
    assert doc["password"] == "<redacted>" and doc["jwt"] == "<redacted>"
    assert "hunter2" not in lines[0] and JWT not in lines[0]


def test_journald_is_recognised_by_its_stream(tmp_path: Path, monkeypatch) -> None:
    with open(tmp_path / "out", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not under_journald(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not under_journald(f), "another stream: our stdout was redirected"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(f)


def test_daemon_logs_json_at_the_configured_level_and_unstamped_under_journald(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # No device answers: the first failure is a WARNING, the repeats are DEBUG lines.
    device_port, metrics_port = free_port(), free_port()
    points = (FIXTURES / "plc_points.toml").read_text()
    toml = gateway_toml(tmp_path, mosquitto.port, device_port, points)
    toml = toml.replace("[uplink]\n", '[logging]\nformat = "json"\nlevel = "DEBUG"\n[uplink]\n', 1)
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    log = tmp_path / "gw.log"
    log.touch()
    st = log.stat()
    journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    gw = start(cfg, procs, log, env=journal, log_level=None)

    def polled() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_polls_total", device="plc") >= 5

    wait_for(polled, 20, "polls of the absent device")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    docs = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"ready", "gateway_stopped"} <= {d["event"] for d in docs}
    assert {"warning", "debug"} <= {d["level"] for d in docs if d["logger"] != "asyncio"}, docs
    assert not any("ts" in d for d in docs), "journald stamps its entries itself"
