"""`gatewayd demo`: a simulated boiler, the cloud stand-in and the gateway, in one process.

Uses the example configuration with the addresses pointed at the simulators, a fresh device key
registered with the stand-in, and a temporary state directory. `--cloud` picks the stand-in:
`cloud-iot-core` (default: JWT, retained config topic), `azure` (the IoT Hub stand-in over
TLS with its own throw-away certificate: SAS token, device twin, direct methods), `aws` (the
AWS IoT Core stand-in with its own throw-away CA: the thing's certificate, named shadow,
jobs) or `thingsboard` (the ThingsBoard stand-in: the gateway API with a fresh access token,
shared attributes, RPC); `clearblade` runs the cloud stand-in behind TLS 1.2+ under the
clearblade profile. Every port it listens on is one the kernel picks (the simulators' and
the metrics endpoint's), so a demo never takes a port of a gatewayd service running on the same
machine (its metrics port, 127.0.0.1:9108, above all).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from gatewayd.config import MetricsConfig, example_path, load_document
from gatewayd.daemon import Gateway
from gatewayd.uplink.device_jwt import generate_key

STAND_INS = {
    "azure": "IoT Hub stand-in",
    "aws": "AWS IoT Core stand-in",
    "thingsboard": "ThingsBoard stand-in",
    "clearblade": "ClearBlade-like stand-in (TLS 1.2+)",
}


def demo_config(text: str, broker_port: int, device_port: int, state_dir: Path) -> dict[str, Any]:
    doc = tomllib.loads(text)
    doc["gateway"]["state_dir"] = str(state_dir)
    doc["uplink"].update(host="127.0.0.1", port=broker_port)
    # The stand-in listens on loopback without TLS; a real deployment keeps the default (on).
    doc["uplink"]["tls"] = {"enabled": False}
    for dev in doc["devices"]:
        dev["port"] = device_port
    return doc


def azure_demo_config(doc: dict[str, Any], hub: str, ca_file: str) -> dict[str, Any]:
    """The example's [uplink] replaced by the azure-iot-hub profile's few settings."""
    up = doc["uplink"]
    doc["uplink"] = {
        "profile": "azure-iot-hub",
        "hub": hub,
        "host": up["host"],
        "port": up["port"],
        "device": up["device"],
        "tls": {"ca_file": ca_file},
        "auth": {"kind": "sas", "device_key_file": "device.key"},
    }
    return doc


def thingsboard_demo_config(doc: dict[str, Any]) -> dict[str, Any]:
    """The example's [uplink] replaced by the thingsboard profile's few settings."""
    up = doc["uplink"]
    doc["uplink"] = {
        "profile": "thingsboard",
        "host": up["host"],
        "port": up["port"],
        "device": up["device"],
        "tls": {"enabled": False},
        "auth": {"access_token_file": "tb.token"},
    }
    return doc


async def _thingsboard(work: Path, device: str) -> Any:
    import secrets

    from gatewayd_sim.cloud.thingsboard import ThingsBoard

    cloud = ThingsBoard()
    token = secrets.token_urlsafe(15)
    cloud.add_device(device, token, gateway=True)
    (work / "tb.token").write_text(token + "\n")
    (work / "tb.token").chmod(0o600)
    return await cloud.start()


async def _azure_hub(work: Path, device: str) -> tuple[Any, str]:
    from gatewayd_sim.cloud.azure import AzureHub, server_tls

    ctx, ca_file = server_tls(work / "hub-tls")
    hub = AzureHub("demo-hub", tls=ctx)
    (work / "device.key").write_text(hub.add_device(device) + "\n")
    (work / "device.key").chmod(0o600)
    return await hub.start(), ca_file


def aws_demo_config(doc: dict[str, Any], ca_file: str, cert: str, key: str) -> dict[str, Any]:
    """The example's [uplink] replaced by the aws-iot-core profile's few settings."""
    up = doc["uplink"]
    doc["uplink"] = {
        "profile": "aws-iot-core",
        "region": "eu-west-1",
        "host": up["host"],
        "port": up["port"],
        "device": up["device"],
        "tls": {"ca_file": ca_file, "cert_file": cert, "key_file": key},
    }
    return doc


def clearblade_demo_config(doc: dict[str, Any], ca_file: str) -> dict[str, Any]:
    """The example under profile = "clearblade": Cloud IoT Core's identity and JWT, over TLS."""
    doc["uplink"]["profile"] = "clearblade"
    doc["uplink"]["tls"] = {"ca_file": ca_file}
    return doc


async def _clearblade(work: Path, up: dict[str, Any]) -> tuple[Any, str]:
    """The cloud stand-in behind TLS 1.2+ with a throw-away CA (the profile refuses plain MQTT);
    the profile itself keeps the rest of ClearBlade's rules (no retained state, idle limit)."""
    import ssl

    from gatewayd_sim.cloud import Broker, Registry
    from gatewayd_sim.cloud.certs import CertificateAuthority

    ca = CertificateAuthority(work / "ca")
    cert, key = ca.issue("broker", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    registry = Registry(up["project"], up["region"], up["registry"])
    registry.add(up["device"], generate_key(work / "device.key", up["auth"]["algorithm"]))
    return await Broker(registry, tls=ctx).start(), str(ca.ca_file)


async def _aws_iot(work: Path, device: str) -> tuple[Any, tuple[str, str, str]]:
    from gatewayd_sim.cloud.aws import AwsIotCore

    cloud = AwsIotCore(work / "aws")
    cert, key = cloud.issue_thing(device)
    return await cloud.start(), (str(cloud.ca.ca_file), str(cert), str(key))


async def run_demo(duration: float | None, out: Any, cloud: str = "cloud-iot-core") -> int:
    from gatewayd_sim.cloud import Broker, Registry
    from gatewayd_sim.modbus import ModbusTcpSlave
    from gatewayd_sim.plant import boiler

    with tempfile.TemporaryDirectory(prefix="gatewayd-demo-") as tmp:
        work = Path(tmp)
        doc = tomllib.loads(example_path().read_text())
        up = doc["uplink"]
        broker: Any
        ca_file = ""
        aws_files = ("", "", "")
        if cloud == "azure":
            broker, ca_file = await _azure_hub(work, up["device"])
        elif cloud == "aws":
            broker, aws_files = await _aws_iot(work, up["device"])
        elif cloud == "thingsboard":
            broker = await _thingsboard(work, up["device"])
        elif cloud == "clearblade":
            broker, ca_file = await _clearblade(work, up)
        else:
            registry = Registry(up["project"], up["region"], up["registry"])
            registry.add(up["device"], generate_key(work / "device.key", up["auth"]["algorithm"]))
            broker = await Broker(registry).start()
        slave = await ModbusTcpSlave().start()
        boiler(slave)
        raw = demo_config(example_path().read_text(), broker.port, slave.port, work)
        if cloud == "azure":
            raw = azure_demo_config(raw, broker.hub, ca_file)
        elif cloud == "aws":
            raw = aws_demo_config(raw, *aws_files)
        elif cloud == "thingsboard":
            raw = thingsboard_demo_config(raw)
        elif cloud == "clearblade":
            raw = clearblade_demo_config(raw, ca_file)
        cfg = load_document(raw)
        # Port 0: the kernel's choice (the configuration refuses 0, which a user never means).
        cfg = dataclasses.replace(cfg, metrics=MetricsConfig(listen="127.0.0.1:0"))
        gw = Gateway(cfg, config_dir=work)
        print(
            f"demo: Modbus boiler on 127.0.0.1:{slave.port}, "
            f"{STAND_INS.get(cloud, 'cloud broker')} on "
            f"127.0.0.1:{broker.port}, buffer {gw.buffer_path}",
            file=out,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        runner = loop.create_task(gw.run(stop))
        t0 = time.monotonic()
        first_cloud: float | None = None
        told_metrics = False
        try:
            while not stop.is_set() and not runner.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                server = gw.metrics_server
                if not told_metrics and server is not None and server.port:
                    told_metrics = True
                    print(
                        f"demo: metrics on http://127.0.0.1:{server.port}/metrics",
                        file=out,
                        flush=True,
                    )
                elapsed = time.monotonic() - t0
                if first_cloud is None and broker.recorder.unique:
                    first_cloud = elapsed
                print(_line(gw, broker, elapsed), file=out, flush=True)
                if duration is not None and elapsed >= duration:
                    stop.set()
        finally:
            stop.set()
            await runner
            await slave.stop()
            await broker.stop()
        elapsed = time.monotonic() - t0
        m = gw.metrics
        rec = broker.recorder
        first = f"{first_cloud:.2f} s" if first_cloud is not None else "never"
        print(
            f"summary: {elapsed:.1f} s, polled {m.total('readings'):.0f} readings "
            f"({m.total('readings') / elapsed:.1f}/s), buffered {m.total('buffered_records'):.0f}, "
            f"published {m.total('published_records'):.0f}, acked {m.total('acked_records'):.0f}; "
            f"cloud received {rec.unique} unique records, {rec.duplicates} duplicates; "
            f"first record at the cloud after {first}",
            file=out,
            flush=True,
        )
        return 0 if rec.unique else 1


def _line(gw: Gateway, broker: Any, elapsed: float) -> str:
    m = gw.metrics
    latest = {r["point"].split("/")[-1]: r["value"] for r in broker.recorder.records[-12:]}
    seen = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in list(latest.items())[:4]
    )
    state = "connected" if gw.uplink is not None and gw.uplink.connected else "offline"
    return (
        f"[{elapsed:5.1f}s] polled {m.total('readings'):.0f}"
        f" | buffered {m.total('buffered_records'):.0f}"
        f" | published {m.total('published_records'):.0f} | acked {m.total('acked_records'):.0f}"
        f" | cloud {broker.recorder.unique} | uplink {state} | {seen}"
    )
