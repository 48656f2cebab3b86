"""Logs: one line per event, key=value, and never a key, token or password."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_procs import start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.logs import LineFormatter, redact
from gatewayd.uplink.device_jwt import generate_key

FIXTURES = Path(__file__).parent / "fixtures"
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


def _format(logger: logging.Logger, fn: object) -> list[str]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(LineFormatter(tty=False))
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
    assert all(line.startswith("level=") for line in text.splitlines()), text
