"""The systemd protocol of a real gateway: READY after the buffer is open, watchdog pings from the
loop, STOPPING on SIGTERM; SIGHUP re-reads the config without stopping."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from daemon_procs import NotifySocket, start
from helpers import free_port, gateway_toml, wait_for, write_config


def test_ready_after_buffer_open_then_watchdog_pings_then_stopping(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = write_config(tmp_path / "gw.toml", gateway_toml(tmp_path, free_port(), free_port(), ""))
    log = tmp_path / "gw.log"
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}  # ping every 0.3 s
    gw = start(cfg, procs, log, env=env)
    wait_for(lambda: "READY=1" in notify.states(), 20, "READY=1")
    assert (tmp_path / "buffer.sqlite").exists(), "READY only once the buffer is open"
    wait_for(lambda: notify.states().count("WATCHDOG=1") >= 3, 20, "three watchdog pings")
    assert any(s.startswith("STATUS=uplink ") for s in notify.states())
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    states = notify.states()
    notify.close()
    assert states.index("READY=1") < states.index("WATCHDOG=1") < states.index("STOPPING=1")
    assert states.count("READY=1") == 1


def test_no_watchdog_pings_for_another_pid(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = write_config(tmp_path / "gw.toml", gateway_toml(tmp_path, free_port(), free_port(), ""))
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    gw = start(cfg, procs, tmp_path / "gw.log", env=env)
    wait_for(lambda: "READY=1" in notify.states(), 20, "READY=1")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0
    assert "WATCHDOG=1" not in notify.states()
    notify.close()


def test_unusable_state_dir_never_reports_ready_and_exits_2(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    # A file where the state directory should be: even root cannot create it.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    state = blocker / "state"
    cfg = write_config(tmp_path / "gw.toml", gateway_toml(state, free_port(), free_port(), ""))
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, env={"NOTIFY_SOCKET": str(notify.path)})
    assert gw.wait(20) == 2, log.read_text()
    assert log.read_text().startswith(f"error: {state}"), log.read_text()
    assert "READY=1" not in notify.states()
    notify.close()


def test_sighup_rereads_the_config_and_keeps_running(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    text = gateway_toml(tmp_path, free_port(), free_port(), "")
    cfg = write_config(tmp_path / "gw.toml", text)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, env={"NOTIFY_SOCKET": str(notify.path)})
    wait_for(lambda: "READY=1" in notify.states(), 20, "READY=1")
    cfg.write_text(text.replace("version = 1", "version = 2"))
    gw.send_signal(signal.SIGHUP)
    # The file goes through the remote-config path: a candidate under the health deadline.
    wait_for(
        lambda: "config_candidate version=2 source=local_file" in log.read_text(),
        10,
        "the reload taken as a candidate",
    )
    cfg.write_text(text + "\nnot toml at all [[[\n")
    gw.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload_refused" in log.read_text(), 10, "a broken file refused")
    assert gw.poll() is None
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    notify.close()
