"""Self-update: time from the `update` command to healthy on the new version, and the bytes it
took, by URL (HTTP) and by MQTT chunks; beside them, measured in the same run on the same box, a
plain restart of the running release (SIGTERM -> the new process's first state message).

Real parts: wheels of this tree built at other versions (the release: gatewayd and every
dependency), a releases directory with real venvs, mosquitto, a simulated PLC, a supervisor loop
standing in for systemd (tests/update_harness.py).

    .venv/bin/python bench/bench_update.py            # one update by each way, one restart
    .venv/bin/python bench/bench_update.py --reps 3

"healthy" is the gateway's own verdict: the state message whose `software.update` says
`applied` (uplink connected and every device polled on the new version). `install` is the
daemon's fetch + verify + build time (its `update_installed seconds=` log line).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from update_harness import (
    FileServer,
    Operator,
    ReleaseKey,
    Supervisor,
    Wheels,
    install_first_release,
    publish_folder,
    site_config,
    update_command,
)

from gatewayd_sim.procs import Mosquitto, free_port, wait_for, wait_port

REPO = Path(__file__).parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=1, help="updates by each way (and restarts)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        return run(Path(tmp), args.reps)


def run(root: Path, reps: int) -> int:
    t0 = time.monotonic()
    wheels = Wheels(root / "wheels")
    versions = [f"0.{9 + i}.0" for i in range(2 * reps)]
    for v in ["0.1.0", *versions]:
        wheels.project(v)
    print(f"built {1 + len(versions)} release wheels in {time.monotonic() - t0:.0f} s")
    releases = root / "releases"
    releases.mkdir()
    install_first_release(releases, "0.1.0", wheels.files("0.1.0"))
    key = ReleaseKey(root)
    broker = Mosquitto(root / "mosquitto", free_port())
    broker.start()
    device_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gatewayd_sim", "modbus", "--map",
         str(REPO / "tests" / "fixtures" / "plc_map.toml"), "--port", str(device_port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(device_port)
    state = root / "state"
    state.mkdir()
    config = root / "gateway.toml"
    config.write_text(
        site_config(
            state, broker.port, device_port, key.public_path, releases, health_deadline_s=60
        )
    )
    www = root / "www"
    http = FileServer(www)
    op = Operator(broker.port)
    log = root / "daemon.log"
    sup = Supervisor(releases, config, log)
    rows: dict[str, list[tuple[float, float | None, int, int]]] = {"url": [], "mqtt": []}
    restarts: list[float] = []
    try:
        op.software(lambda sw: sw.get("version") == "0.1.0", 60, "0.1.0 up")
        for i, version in enumerate(versions):
            way = "url" if i % 2 == 0 else "mqtt"
            files = wheels.files(version)
            release_bytes = sum(f.stat().st_size for f in files)
            cid = f"bench-{version}"
            sent0, http0 = op.sent_bytes, http.sent
            t = time.monotonic()
            if way == "url":
                publish_folder(www, files)
                op.send(update_command(cid, version, files, key, url=http.url))
            else:
                op.send(update_command(cid, version, files, key, source="mqtt"))
                op.send_chunks(version, files)
            op.software(
                lambda sw, cid=cid: (
                    (sw.get("update") or {}).get("id") == cid
                    and sw["update"]["status"] == "applied"
                ),
                300,
                f"{version} applied",
            )
            took = time.monotonic() - t
            wire = (op.sent_bytes - sent0) + (http.sent - http0)
            installs = re.findall(
                rf"update_installed version={re.escape(version)} .* seconds=([0-9.]+)",
                log.read_text(errors="replace"),
            )
            rows[way].append((took, float(installs[-1]) if installs else None, wire, release_bytes))
            # The baseline on the release now running: a restart, no update.
            assert sup.proc is not None
            starts = sup.starts
            t = time.monotonic()
            sup.proc.terminate()
            wait_for(lambda s=starts: sup.starts > s, 30, "the supervisor's restart")
            since = time.monotonic()  # states from here on come from the new process
            op.software(lambda sw, v=version: sw.get("version") == v, 60, "restarted", since=since)
            restarts.append(time.monotonic() - t)
    finally:
        sup.stop()
        op.close()
        http.close()
        sim.terminate()
        broker.stop()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    print(f"\nself-update, {reps} per way; medians (release = gatewayd + dependency wheels)")
    print(f"{'':22}{'command->healthy':>18}{'install':>10}{'on the wire':>14}{'release':>10}")
    for way, label in (("url", "update by URL (HTTP)"), ("mqtt", "update by MQTT chunks")):
        r = rows[way]
        installs = [x[1] for x in r if x[1] is not None]
        print(
            f"{label:22}{med([x[0] for x in r]):>16.1f} s{med(installs):>8.1f} s"
            f"{med([x[2] for x in r]) / 1e6:>11.2f} MB{med([x[3] for x in r]) / 1e6:>7.2f} MB"
        )
    print(f"{'baseline: a restart':22}{med(restarts):>16.1f} s{'-':>10}{'-':>14}{'-':>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
