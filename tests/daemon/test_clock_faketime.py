"""The real daemon under libfaketime, its wall clock stepped both ways, by seconds and by years.

libfaketime re-reads its offset from FAKETIME_TIMESTAMP_FILE on every call (FAKETIME_NO_CACHE),
so writing the file steps the daemon's wall clock, as NTP does on a Pi without a real-time
clock. CLOCK_MONOTONIC is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as the kernel leaves it
when the wall clock is stepped. (libfaketime 0.9.10 makes time.sleep fail with EINVAL in that
mode; the daemon never calls it. FAKETIME_FORCE_MONOTONIC_FIX=0 keeps its condition-variable
wrapper from making the GIL hand-over spin.)
"""

from __future__ import annotations

import glob
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require_binary
from daemon_procs import start, try_scrape, with_metrics
from helpers import Subscriber, free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.clock import PLAUSIBLE_S
from gatewayd.uplink.device_jwt import generate_key

FIXTURES = Path(__file__).parent.parent / "fixtures"
TOPIC = "/devices/gw-test/events"
INTERVAL_S = 0.1  # as in the issue: a week forward blocked the old loop for 15.7 s
WINDOW_S = 5.0  # watched after each step
POINTS = '[[devices.points]]\nid = "u16"\ntable = "holding"\naddress = 1\ntype = "uint16"\n'


def faketime_env(offset_file: Path) -> dict[str, str]:
    require_binary("faketime")  # the Debian package that ships libfaketime
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not libs:
        pytest.fail("faketime is installed but libfaketimeMT.so.1 is not under /usr/lib/*/")
    offset_file.write_text("+0\n")
    return {
        "LD_PRELOAD": libs[0],
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Without this, libfaketime's pthread_cond_timedwait wrapper turns the GIL's timed wait
        # into a spin: the process runs at 100 % CPU and the loop lags seconds with no step.
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def watch_polls(port: int, seconds: float) -> tuple[float, float]:
    """Scrape for `seconds`: (longest time without a new poll, polls made), by this process's
    own clock, so a daemon whose loop hangs shows as one long gap."""
    t_end = time.monotonic() + seconds
    last_change = time.monotonic()
    first = last = None
    gap = 0.0
    while time.monotonic() < t_end:
        s = try_scrape(port)
        now = time.monotonic()
        polls = s.get("gatewayd_polls_total", device="plc") if s is not None else None
        if polls is not None and polls != last:
            gap = max(gap, now - last_change)
            last_change, last = now, polls
            first = polls if first is None else first
        time.sleep(0.1)
    gap = max(gap, time.monotonic() - last_change)
    return gap, (last or 0) - (first or 0)


STEPS = [  # (offset from the real time, what the daemon sees)
    ("+20", "forward 20 s"),
    ("+0", "back 20 s"),
    ("+7d", "forward a week"),
    ("+0", "back a week"),
    ("+6y", "forward 6 years"),
    ("+0", "back 6 years"),
    ("-6y", "back 6 years, to before the build"),
    ("+0", "forward 6 years, clock set"),
]


def test_polling_carries_on_through_wall_clock_steps_both_ways(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = faketime_env(tmp_path / "faketime")
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    toml = gateway_toml(tmp_path, mosquitto.port, device_port, POINTS, int(INTERVAL_S * 1000))
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    sub = Subscriber(mosquitto.port, TOPIC)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, env=env)

    def polling() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_polls_total", device="plc") >= 5

    wait_for(polling, 20, "the daemon polling under libfaketime")
    rss_before = rss_kib(gw.pid)

    def counts() -> tuple[float, float]:
        s = try_scrape(metrics_port)
        if s is None:
            return float("nan"), float("nan")
        return s.get("gatewayd_loop_stalls_total"), s.get(
            "gatewayd_polls_missed_total", device="plc"
        )

    rows = []
    for offset, what in [("+0", "no step (baseline)"), *STEPS]:
        (tmp_path / "faketime").write_text(offset + "\n")
        stalls, missed = counts()
        gap, polls = watch_polls(metrics_port, WINDOW_S)
        stalls2, missed2 = counts()
        rows.append((what, gap, polls, rss_kib(gw.pid), stalls2 - stalls, missed2 - missed))
    s = try_scrape(metrics_port)
    lag = s.get("gatewayd_loop_lag_max_seconds") if s is not None else float("inf")
    print(f"\nstep | longest poll gap s | polls in {WINDOW_S:g} s | RSS KiB | stalls | missed")
    for what, gap, polls, rss, stalls, missed in rows:
        print(f"{what} | {gap:.2f} | {polls:.0f} | {rss} | {stalls:.0f} | {missed:.0f}")
    print(f"RSS before {rss_before} KiB; loop lag max {lag:.3f} s")

    # Before the fix: back 20 s, no poll for 21 s; forward a week, the loop blocked 15.7 s;
    # forward 30 days or more, a hang. Here a poll every 0.1 s goes on through every step (the
    # gap is measured by scraping every 0.1 s; the margins are for a loaded 2-core machine).
    expected = WINDOW_S / INTERVAL_S
    for what, gap, polls, *_ in rows:
        assert gap < INTERVAL_S + 0.9, f"{what}: no poll for {gap:.2f} s"
        assert polls >= expected / 2, f"{what}: {polls:.0f} polls in {WINDOW_S:g} s"
    assert lag < 2.0, f"the loop stalled {lag:.1f} s"
    assert max(r[3] for r in rows) - rss_before < 30_000, "memory grew with the clock steps"
    text = log.read_text()
    steps = re.findall(r"event=clock_stepped step_s=(-?[\d.]+)", text)
    assert len(steps) == len(STEPS), text
    assert "event=clock_unsynced" in text and "event=clock_synced" in text, text

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, text
    sub.close()
    # Whatever was taken while the clock read 2020 went out marked, never as good.
    with sub.lock:
        early = [r for r in sub.records if r["ts"] < PLAUSIBLE_S * 1000]
        assert sub.records
    assert all(r.get("quality") == "uncertain" for r in early), early[:3]
    assert all(r.get("reason") == "clock_unsynced" for r in early), early[:3]


def test_readings_taken_before_the_clock_is_set_leave_with_corrected_stamps(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A Pi boots in 2020, polls for a while with the uplink held (a JWT needs a true clock),
    then NTP sets the clock: the buffered readings reach the cloud stamped when they were taken,
    marked, and none is expired as too old."""
    env = faketime_env(tmp_path / "faketime")
    (tmp_path / "faketime").write_text("-6y\n")
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    generate_key(tmp_path / "device.key", "ES256")
    auth = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
    toml = gateway_toml(
        tmp_path,
        mosquitto.port,
        device_port,
        POINTS,
        int(INTERVAL_S * 1000),
        auth=auth,
        tail="[buffer]\nmax_age_s = 3600\n",
    )
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    sub = Subscriber(mosquitto.port, TOPIC)
    log = tmp_path / "gw.log"
    t0_ms = time.time() * 1000
    gw = start(cfg, procs, log, env=env)

    def buffered() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_buffered_records_total") >= 10

    wait_for(buffered, 20, "readings buffered while the uplink waits for the clock")
    time.sleep(1.5)
    (tmp_path / "faketime").write_text("+0\n")
    stepped_ms = time.time() * 1000

    def delivered() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_acked_records_total") >= 15

    wait_for(delivered, 30, "the buffered readings acknowledged once the clock is set")
    s = try_scrape(metrics_port)
    assert s is not None
    assert s.get("gatewayd_buffer_evicted_records_total", lane="telemetry", reason="age") == 0
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    sub.close()
    with sub.lock:
        got = list(sub.records)
    assert got
    stamps = [r["ts"] for r in got]
    # Stamped when taken (by the monotonic offset at the step), not 2020 and not "now".
    assert min(stamps) >= t0_ms - 2000, sorted(stamps)[:3]
    assert max(stamps) <= time.time() * 1000 + 2000
    before = [r for r in got if r["ts"] < stepped_ms - 1000]
    assert before, "readings taken before the step"
    assert all(
        r.get("quality") == "uncertain" and r.get("reason") == "clock_unsynced" for r in before
    ), before[:3]
