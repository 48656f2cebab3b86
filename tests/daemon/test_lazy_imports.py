"""A plain profile loads only what it uses: a real `gatewayd run` (plain MQTT to mosquitto, no
auth, one simulated Modbus TCP device) polls, publishes and gets PUBACKs, and in all that time
never imports the modules of other profiles, drivers, auth kinds or subcommands.

What the process imported is read from `python -v`, which prints every module the moment it is
loaded, from any thread and by any means (`import`, importlib, entry points): the real process is
observed, nothing patched. (`-X importtime` misses modules loaded by importlib.import_module.)
Issue 20: each of these costs start-up time and resident memory on a small box (cryptography's
Rust extension alone is ~9 MB of RSS).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from daemon_procs import NotifySocket, scrape, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

FIXTURES = Path(__file__).parent.parent / "fixtures"
IMPORT_LINE = re.compile(r"import '?([\w.]+)'? # ")

# Module (or package: its submodules too) -> what would need it.
NOT_FOR_THIS_PROFILE = {
    "cryptography": "JWT auth, key rotation, a signed update or config",
    "jwt": "JWT auth",
    "asyncua": "an OPC UA device",
    "gatewayd.drivers.opcua": "an OPC UA device",
    "gatewayd.drivers.serial_line": "a serial_line device",
    "gatewayd.fleet": "`gatewayd fleet`",
    "gatewayd.uplink.channels.aws": 'profile = "aws"',
    "gatewayd.uplink.channels.azure": 'profile = "azure"',
    "gatewayd.uplink.channels.thingsboard": 'profile = "thingsboard"',
    "gatewayd.lifecycle.keys": "device-key rotation (JWT auth)",
    "gatewayd.demo": "`gatewayd demo`",
    "gatewayd.status": "`gatewayd status`",
    "gatewayd_sim": "the simulators (tests, demo)",
    "difflib": "a did-you-mean for a mistake in the configuration",
}


def imported(stderr: str) -> list[str]:
    """Module names from `python -v` lines: `import 'name' # <loader>`, `import name # builtin`."""
    return [m[1] for line in stderr.splitlines() if (m := IMPORT_LINE.match(line))]


def test_a_plain_mqtt_modbus_gateway_never_imports_other_profiles_modules(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    text = gateway_toml(
        tmp_path,
        mosquitto.port,
        device_port,
        (FIXTURES / "plc_points.toml").read_text(),
        extra_uplink='profile = "mqtt"',
    )
    cfg = write_config(tmp_path / "gw.toml", with_metrics(text, metrics_port))
    notify = NotifySocket(tmp_path / "notify.sock")
    err = tmp_path / "gw.err"
    with err.open("wb") as out:
        gw = subprocess.Popen(
            [sys.executable, "-v", "-m", "gatewayd", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
        )
    procs.append(gw)
    wait_for(lambda: "READY=1" in notify.states() or gw.poll() is not None, 30, "READY=1")
    assert gw.poll() is None, err.read_text()
    # The whole path ran: polls buffered, published, PUBACKed (acked), the metrics endpoint read.
    wait_for(
        lambda: (
            (m := try_scrape(metrics_port)) is not None
            and m.get("gatewayd_acked_records_total") >= 20
        ),
        30,
        "20 records acked",
    )
    assert scrape(metrics_port).get("gatewayd_uplink_connected") == 1
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, err.read_text()
    notify.close()

    names = imported(err.read_text())
    # The observation itself works: what this profile needs is seen being imported.
    for needed in ("paho.mqtt.client", "gatewayd.uplink.channels.topic", "gatewayd.drivers.modbus"):
        assert needed in names, f"{needed} not in the `python -v` output"
    wrong = {
        top: [n for n in names if n == top or n.startswith(top + ".")]
        for top in NOT_FOR_THIS_PROFILE
    }
    report = [
        f"{top} ({len(mods)} modules, first {mods[0]}): only {NOT_FOR_THIS_PROFILE[top]} needs it"
        for top, mods in wrong.items()
        if mods
    ]
    assert not report, "imported by a plain MQTT + Modbus gateway:\n" + "\n".join(report)
