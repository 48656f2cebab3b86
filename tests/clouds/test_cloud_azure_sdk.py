"""The Azure IoT Hub stand-in checked by the vendor's own device SDK, `azure-iot-device`.

A stand-in written from our reading of the docs could share our misreadings; the SDK is an
independent client. It pins paho-mqtt < 2 (ours is >= 2.1), so it lives in its own venv, made
once and cached under /tmp (SDK_VENV), and runs its documented flows (tests/azure_sdk_flows.py)
in a subprocess: telemetry, twin get, reported patch, a desired-property patch, a direct method.
The SDK always connects to port 8883: the stand-in listens on 8883 of a random 127.x.y.z.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from helpers import BrokerThread

from gatewayd_sim.cloud.azure import AzureHub, server_tls

SDK = "azure-iot-device==2.14.0"
SDK_VENV = Path("/tmp/gatewayd-sdk-azure-iot-device-2.14.0")
FLOWS = Path(__file__).parent.parent / "azure_sdk_flows.py"


def _sdk_python() -> Path:
    py = SDK_VENV / "bin" / "python"
    if (SDK_VENV / "installed").exists():
        return py
    try:
        subprocess.run([sys.executable, "-m", "venv", str(SDK_VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", SDK], check=True, capture_output=True
        )
    except subprocess.CalledProcessError as exc:
        msg = f"cannot install {SDK} into {SDK_VENV}: {exc.stderr or exc}"
        if IN_CI:
            pytest.fail(f"{msg}; CI must reach PyPI", pytrace=False)
        pytest.skip(msg)
    (SDK_VENV / "installed").write_text(SDK)
    return py


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[BrokerThread, str, str]]:
    for _ in range(5):
        addr = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        ctx, ca = server_tls(tmp_path / "tls", ips=(addr,))
        try:
            bt = BrokerThread(AzureHub("sdkhub", host=addr, port=8883, tls=ctx))
        except OSError:
            continue
        break
    else:
        pytest.fail("no free 127.x.y.z:8883 for the stand-in")
    try:
        yield bt, addr, ca
    finally:
        bt.stop()


def test_vendor_sdk_telemetry_twin_and_direct_method(
    hub: tuple[BrokerThread, str, str],
) -> None:
    bt, addr, ca = hub
    az: AzureHub = bt.broker
    key = az.add_device("sdk-dev")
    az.devices["sdk-dev"].desired = {"interval": 5}
    az.devices["sdk-dev"].desired_version = 3
    conn = f"HostName=sdkhub.azure-devices.net;DeviceId=sdk-dev;SharedAccessKey={key};"
    conn += f"GatewayHostName={addr}"
    p = subprocess.Popen(
        [str(_sdk_python()), str(FLOWS), conn, ca],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steps: dict[str, dict[str, Any]] = {}
    method: Any = None
    try:
        assert p.stdout is not None
        for line in p.stdout:
            msg = json.loads(line)
            steps[msg["step"]] = msg
            if msg["step"] == "ready":
                bt.loop.call_soon_threadsafe(az.update_desired, "sdk-dev", {"interval": 7})
                method = bt.call(az.invoke("sdk-dev", "reboot", {"delay": 1}, 20), timeout=30)
            if msg["step"] == "done":
                break
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read() if p.stderr else ""
    assert "done" in steps and steps["done"]["ok"], (steps, err[-3000:])
    # Telemetry: counted by id, with the content type the SDK put in the topic.
    assert az.recorder.missing(set(range(1000, 1010))) == set()
    assert az.content_types["application/json"] == 10
    # Twin get: the desired properties and $version as the SDK parses them.
    twin = steps["twin"]["twin"]
    assert twin["desired"] == {"interval": 5, "$version": 3}
    # Reported patch, merged and versioned by the stand-in.
    assert az.devices["sdk-dev"].reported == {"sdk": {"firmware": "1.2.3"}}
    assert az.devices["sdk-dev"].reported_version == 2
    # Desired patch pushed with its version; the direct method answered with a status.
    assert steps["desired_patch"]["patch"] == {"interval": 7, "$version": 4}
    assert steps["method"]["name"] == "reboot" and steps["method"]["payload"] == {"delay": 1}
    assert method == (200, {"done": {"delay": 1}})
    # The SDK's SAS token was verified and its expiry is enforced.
    assert len(az.sas_expiries) == 1 and all(e.accepted for e in az.auth_log)
