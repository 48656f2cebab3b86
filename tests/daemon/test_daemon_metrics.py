"""The Prometheus endpoint of a real gateway: parseable text, counters that move, bad requests."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from daemon_procs import scrape, start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.status import parse

FIXTURES = Path(__file__).parent.parent / "fixtures"
SAMPLE = re.compile(
    r'^(gatewayd|process)_[a-z_]+(\{([a-z_]+="[^"\\]*",?)+\})? (-?[0-9.e+]+|\+Inf)$'
)
# A rule whose expression fails on every reading: its errors must show in the metrics.
DIV0_RULE = """
[[rules]]
name = "div0"
points = ["plc/u16"]
[[rules.steps]]
kind = "expr"
expr = "value / 0"
"""


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_metrics_endpoint_serves_prometheus_text_with_counters_moving(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    toml = gateway_toml(tmp_path, mosquitto.port, device_port, points, tail=DIV0_RULE)
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log)
    started = time.time()

    def acked() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_acked_records_total") > 0

    wait_for(acked, 20, "acked records in the metrics")
    raw = _raw(metrics_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    text = body.decode()
    families: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            _, _, name, help_text = line.split(" ", 3)
            assert "no description" not in help_text, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in helped, f"no HELP before {line}"
            assert kind in ("counter", "gauge", "histogram"), line
            assert name.endswith("_total") == (kind == "counter"), line
            families[name] = kind
        else:
            assert SAMPLE.match(line), line
            name = line.split("{")[0].split(" ")[0]
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in families or families.get(family) == "histogram", f"no TYPE: {line}"
    first = parse(text)
    # Every stage has its series from the start, even at zero.
    for name in (
        "gatewayd_polls_total",
        "gatewayd_poll_failures_total",
        "gatewayd_rules_dropped_total",
        "gatewayd_buffered_records_total",
        "gatewayd_published_records_total",
        "gatewayd_acked_records_total",
        "gatewayd_buffer_evicted_records_total",
        "gatewayd_uplink_reconnects_total",
        "gatewayd_config_outcomes_total",
        "gatewayd_buffer_depth",
        "gatewayd_buffer_bytes",
        "gatewayd_buffer_oldest_age_seconds",
        "gatewayd_buffer_hours_left",
        "gatewayd_uplink_connected",
    ):
        assert name in first.values, name
    assert first.get("gatewayd_uplink_connected") == 1
    for status in ("applied", "rejected", "rolled_back"):
        assert first.get("gatewayd_config_outcomes_total", -1, status=status) == 0
    assert first.get("gatewayd_config_version") == 1

    # The process's own figures, as Prometheus client libraries name them.
    assert first.get("process_resident_memory_bytes") > 10 << 20
    assert first.get("process_open_fds") >= 5
    assert 0 < first.get("process_cpu_seconds_total") < 600
    assert started - 60 < first.get("process_start_time_seconds") <= started + 5
    # Counters that were kept but not exported before: expression errors, late window readings.
    assert first.get("gatewayd_rules_expression_errors_total") > 0
    assert "gatewayd_rules_late_readings_total" in first.values
    # The poll-duration histogram: cumulative buckets ending in +Inf = count = polls made.
    buckets = sorted(
        (float(lab["le"]), v)
        for lab, v in first.series("gatewayd_poll_duration_seconds_bucket")
        if lab["device"] == "plc"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    count = first.get("gatewayd_poll_duration_seconds_count", device="plc")
    assert buckets[-1][1] == count > 0
    assert count == first.get("gatewayd_polls_total", device="plc")
    assert 0 < first.get("gatewayd_poll_duration_seconds_sum", device="plc") < count * 30

    def moved() -> bool:
        s = scrape(metrics_port)
        return all(
            s.get(n, **lab) > first.get(n, **lab)
            for n, lab in (
                ("gatewayd_polls_total", {"device": "plc"}),
                ("gatewayd_readings_total", {"device": "plc"}),
                ("gatewayd_buffered_records_total", {}),
                ("gatewayd_published_records_total", {}),
                ("gatewayd_acked_records_total", {}),
            )
        )

    wait_for(moved, 20, "every pipeline counter moving between scrapes")

    # A peer's bytes never hurt the daemon: bad requests get a 4xx, the endpoint keeps serving.
    assert _raw(metrics_port, b"GET /secret HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert _raw(metrics_port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert _raw(metrics_port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(metrics_port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")[
        :12
    ] in (b"HTTP/1.1 431", b"")
    assert _raw(metrics_port, b"GET /metrics HTT") == b""  # cut short: closed without answer
    assert scrape(metrics_port).get("gatewayd_uplink_connected") == 1
    assert gw.poll() is None

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()


def test_metrics_port_taken_is_logged_and_the_gateway_runs_on(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        toml = with_metrics(gateway_toml(tmp_path, free_port(), free_port(), ""), port)
        cfg = write_config(tmp_path / "gw.toml", toml)
        log = tmp_path / "gw.log"
        gw = start(cfg, procs, log)
        wait_for(lambda: "event=ready" in log.read_text(), 20, "the gateway ready")
        assert "event=metrics_listen_failed" in log.read_text()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0, log.read_text()


def test_metrics_endpoint_is_on_loopback_by_default_and_empty_turns_it_off() -> None:
    from gatewayd.config import load

    base = '[uplink.auth]\nkind = "none"\n'
    assert load(base).metrics.listen == "127.0.0.1:9108"
    assert load('[metrics]\nlisten = ""\n' + base).metrics.listen == ""
    assert load('[metrics]\nlisten = "[::1]:9200"\n' + base).metrics.listen == "[::1]:9200"


def test_evictions_of_a_full_buffer_show_by_lane_and_reason(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    # No broker and the smallest buffer allowed: it fills within seconds.
    toml = gateway_toml(tmp_path, free_port(), device_port, points, interval_ms=10)
    toml = toml.replace("[uplink]\n", "[buffer]\nmax_bytes = 65536\n[uplink]\n", 1)
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log)

    def evicted() -> float:
        s = try_scrape(metrics_port)
        if s is None:
            return 0.0
        return s.get("gatewayd_buffer_evicted_records_total", lane="telemetry", reason="full")

    wait_for(evicted, 30, "evictions counted")
    s = scrape(metrics_port)
    assert 0 < s.get("gatewayd_buffer_bytes") <= 65536
    assert s.get("gatewayd_buffer_depth") > 0
    assert s.get("gatewayd_buffer_oldest_age_seconds") >= 0
    assert s.get("gatewayd_uplink_connected") == 0
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()


def test_every_metric_the_code_names_has_help() -> None:
    """A family that shows only in some states (an error reason, a remint) has its HELP too."""
    from gatewayd.metrics import HELP

    root = Path(__file__).parent.parent.parent
    call = re.compile(r"""\.(?:inc|set|total_from|observe)\(\s*["']([a-z_]+)["']""")
    names: set[str] = set()
    for folder in ("gatewayd", "drivers", "buffer"):
        for path in (root / folder).rglob("*.py"):
            names.update(call.findall(path.read_text()))
    assert len(names) > 40, names
    missing = sorted(n for n in names if n not in HELP)
    assert not missing, f"add to HELP in gatewayd/metrics.py: {missing}"


def test_demo_never_takes_the_service_metrics_port(tmp_path: Path) -> None:
    """Before: `gatewayd demo` bound 127.0.0.1:9108, the port of a gatewayd service."""
    import contextlib
    import sys

    from gatewayd.config import MetricsConfig

    service_port = int(MetricsConfig().listen.rpartition(":")[2])
    with contextlib.ExitStack() as stack:
        held = stack.enter_context(socket.socket())
        try:  # a service on this machine: the port is in use
            held.bind(("127.0.0.1", service_port))
            held.listen()
        except OSError:
            pass  # already in use by something else, which serves the same purpose
        out = subprocess.run(
            [sys.executable, "-m", "gatewayd", "demo", "--duration", "3"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "metrics_listen_failed" not in text, text
    m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", text)
    assert m is not None and int(m.group(1)) != service_port, text
