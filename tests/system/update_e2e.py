"""The host's side of the self-update step of nspawn_systest.sh: the operator.

    update_e2e.py prepare DIR            wheels of this tree at 0.2.0 and its dependencies, a
                                         release key (DIR/release.pub), the files in DIR/www
    update_e2e.py config DIR PORT        print a gateway.toml for the container: the host's
                                         mosquitto on PORT, no devices, [update] release_key
    update_e2e.py run DIR PORT           mosquitto on PORT and an HTTP server for DIR/www; send
                                         the signed update; wait until 0.2.0 reports `applied`;
                                         then an update to 0.3.0, which dies at every start:
                                         systemd restarts it, the start check (ExecStartPre,
                                         from 0.2.0) switches back after max_starts

Prints `ok:`/`FAIL:`/`figure:` lines like the script. Runs on the host's .venv python (paho,
cryptography); the container only sees 127.0.0.1 (nspawn shares the host's network here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from update_harness import (
    FileServer,
    Operator,
    ReleaseKey,
    Wheels,
    publish_folder,
    update_command,
)

from gatewayd_sim.procs import Mosquitto

NEW = "0.2.0"
DIES = "0.3.0"


def prepare(d: Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    wheels = Wheels(d / "wheels")
    publish_folder(d / "www", wheels.files(NEW))
    publish_folder(d / "www-dies", wheels.files(DIES, "dies"))
    ReleaseKey(d)
    return 0


def config(port: int) -> str:
    return f"""version = 1
[gateway]
id = "gw-systest"
[metrics]
listen = ""
[update]
release_key = "/etc/gatewayd/release.pub"
health_deadline_s = 60
max_starts = 2
[uplink]
host = "127.0.0.1"
port = {port}
project = "p"
region = "r"
registry = "g"
device = "gw-test"
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
"""


def run(d: Path, port: int) -> int:
    broker = Mosquitto(d / "mosquitto", port)
    broker.start()
    http = FileServer(d / "www")
    op = Operator(port)
    fails = 0
    try:
        try:
            op.software(lambda sw: sw.get("version") == "0.1.0", 60, "0.1.0 connected")
        except AssertionError as exc:
            print(f"FAIL: the installed 0.1.0 never reported to the host's broker: {exc}")
            return 1
        key = ReleaseKey.load(d)
        files = sorted((d / "www").glob("*.whl"))
        t = time.monotonic()
        op.send(update_command("systest", NEW, files, key, url=http.url))
        r = op.result("systest", 240)
        if r["status"] == "ok":
            print(f"ok: the update command was accepted ({r['reason']})")
        else:
            print(f"FAIL: update command: {r}")
            return 1
        try:
            sw = op.software(
                lambda sw: (
                    sw.get("version") == NEW and (sw.get("update") or {}).get("status") == "applied"
                ),
                240,
                f"{NEW} applied",
            )
            print(f"ok: {NEW} runs under systemd and reports applied ({sw['update']['reason']})")
            print(f"figure: update_s={time.monotonic() - t:.1f} (command to healthy on {NEW})")
            print(f"figure: update_bytes={http.sent} (served over HTTP)")
        except AssertionError as exc:
            print(f"FAIL: {exc}; last states: {[s for _, s in op.states[-2:]]}")
            return fails + 1
        dies = FileServer(d / "www-dies")
        try:
            files = sorted((d / "www-dies").glob("*.whl"))
            t = time.monotonic()
            op.send(update_command("systest-dies", DIES, files, key, url=dies.url))
            r = op.result("systest-dies", 240)
            if r["status"] != "ok":
                print(f"FAIL: update command to {DIES}: {r}")
                return fails + 1
            sw = op.software(
                lambda sw: (
                    sw.get("version") == NEW
                    and (sw.get("update") or {}).get("status") == "rolled_back"
                ),
                240,
                f"back on {NEW} after {DIES}'s crash loop",
            )
            print(f"ok: {DIES} died at every start; the start check put back {NEW}: "
                  f"{sw['update']['reason']}")  # fmt: skip
            print(f"figure: crash_loop_rollback_s={time.monotonic() - t:.1f} (command to back)")
        except AssertionError as exc:
            print(f"FAIL: {exc}; last states: {[s for _, s in op.states[-2:]]}")
            fails += 1
        finally:
            dies.close()
    finally:
        op.close()
        http.close()
        broker.stop()
    return fails


def main(argv: list[str]) -> int:
    cmd, d = argv[0], Path(argv[1])
    if cmd == "prepare":
        return prepare(d)
    if cmd == "config":
        sys.stdout.write(config(int(argv[2])))
        return 0
    return run(d, int(argv[2]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
