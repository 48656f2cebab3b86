"""Faults under load, each counted by record id at a subscriber: lost and duplicated.

Load: one device, 100 points every 100 ms (1,000 readings/s). The gateway reaches mosquitto
through a FaultProxy, the subscriber directly, so the subscriber sees everything the broker
accepted. After each fault the gateway is stopped, restarted without devices, and left to drain
its buffer; then every id its buffer ever handed out must have arrived.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from harness import LatencySubscriber, Mosquitto, Rig, delivered_range, free_port, rig, wait_for
from proxy import FaultProxy

POINTS, INTERVAL_MS = 100, 100


def _depth(db: Path) -> int:
    with sqlite3.connect(db, timeout=5) as c:
        return int(c.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def _stop(r: Rig) -> None:
    assert r.gateway is not None
    r.gateway.send_signal(signal.SIGTERM)
    r.gateway.wait(15)


def _drain_and_count(
    r: Rig, receiver: Any, broker_port: int, lossy: bool = False, **cfg: str
) -> dict[str, Any]:
    """Stop the gateway, drain what it buffered with a device-less gateway, stop that too, and
    count by id what `receiver` (a subscriber or the stand-in's recorder: `.counts`,
    `.duplicates`) got of every id the buffer ever handed out. `lossy`: ids may be missing for
    good (evicted), so do not wait for them."""
    db = (r.state_dir or r.work) / "buffer.sqlite"
    _stop(r)
    r.device_ports = []
    r.start_gateway(r.config(broker_port, POINTS, INTERVAL_MS, **cfg))
    wait_for(lambda: _depth(db) == 0, 300, "the buffer to drain", interval=0.2)
    _stop(r)
    expected = delivered_range(db)
    if lossy:
        time.sleep(1.0)  # the last PUBACKed records on their way to the subscriber
    else:
        wait_for(lambda: expected <= set(receiver.counts), 30, "the last records at the receiver")
    return {
        "stored": len(expected),
        "lost": len(expected - set(receiver.counts)),
        "duplicated": receiver.duplicates,
    }


def _setup(r: Rig) -> tuple[Mosquitto, FaultProxy, LatencySubscriber]:
    r.start_devices(1, POINTS)
    broker = Mosquitto(r.work / "mq")
    broker.start()
    r.procs.append(broker.proc)  # type: ignore[arg-type]
    proxy = FaultProxy(broker.port, free_port())
    sub = LatencySubscriber(broker.port)
    r.start_gateway(r.config(proxy.listen_port, POINTS, INTERVAL_MS))
    wait_for(lambda: sub.unique > 1000, 30, "load to flow")
    return broker, proxy, sub


def _first_new_record(sub: LatencySubscriber, timeout: float) -> float:
    """Seconds until a record id not seen before arrives."""
    seen = set(sub.counts)
    t0 = time.monotonic()
    wait_for(lambda: len(sub.counts) > len(seen), timeout, "a new record", interval=0.01)
    return time.monotonic() - t0


def broker_kill(outage_s: float) -> dict[str, Any]:
    with rig() as r:
        broker, proxy, sub = _setup(r)
        broker.kill()
        proxy.set_mode("down")
        time.sleep(outage_s)
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub.subscribed.wait(10)  # the subscriber is back before the gateway may publish
        proxy.set_mode("up")
        back = _first_new_record(sub, 120)
        time.sleep(2.0)
        out = {"fault": f"broker SIGKILL for {outage_s:g} s", "first_puback_after_return_s": back}
        out.update(_drain_and_count(r, sub, proxy.listen_port))
        proxy.close()
        sub.close()
        return out


def partition(outage_s: float) -> dict[str, Any]:
    with rig() as r:
        _broker, proxy, sub = _setup(r)
        proxy.set_mode("blackhole")
        time.sleep(outage_s)
        proxy.set_mode("up")
        back = _first_new_record(sub, 120)
        time.sleep(2.0)
        out = {
            "fault": f"black-holing partition for {outage_s:g} s",
            "first_record_after_heal_s": back,
        }
        out.update(_drain_and_count(r, sub, proxy.listen_port))
        proxy.close()
        sub.close()
        return out


def gateway_kill() -> dict[str, Any]:
    with rig() as r:
        _broker, proxy, sub = _setup(r)
        assert r.gateway is not None
        cfg = r.work / "gateway.toml"
        r.gateway.send_signal(signal.SIGKILL)
        r.gateway.wait(5)
        r.start_gateway(cfg)
        back = _first_new_record(sub, 60)
        time.sleep(3.0)
        out = {
            "fault": "gateway SIGKILL under load, restarted at once",
            "first_record_after_restart_s": back,
        }
        out.update(_drain_and_count(r, sub, proxy.listen_port))
        proxy.close()
        sub.close()
        return out


def jwt_expiry(seconds: float) -> dict[str, Any]:
    """Under load against the cloud stand-in, with 60 s tokens: refreshes must lose nothing."""
    import asyncio
    import threading

    from gatewayd.uplink.device_jwt import generate_key
    from gatewayd_sim.cloud import Broker, Registry

    with rig() as r:
        r.start_devices(1, POINTS)
        registry = Registry("bench-project", "local", "gateways")
        registry.add("bench", generate_key(r.work / "device.key", "ES256"))
        broker = Broker(registry)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(10)
        auth = (
            'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\n'
            'audience = "bench-project"\nlifetime_s = 60'
        )
        extra = 'project = "bench-project"\nregion = "local"\nregistry = "gateways"'
        cfg = r.config(broker.port, POINTS, INTERVAL_MS, extra=extra, auth=auth)
        r.start_gateway(cfg)
        wait_for(lambda: broker.recorder.unique > 1000, 30, "load to flow")
        time.sleep(seconds)
        out = {"fault": f"60 s device tokens under load for {seconds:g} s"}
        out.update(_drain_and_count(r, broker.recorder, broker.port, extra=extra, auth=auth))
        out["connections_accepted"] = sum(1 for e in broker.auth_log if e.accepted)
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        return out


# A sawtooth of period 10 s made from the first counter register, with a high alarm on it: one
# raise and one clear every 10 s, in the alarm lane, among the telemetry.
ALARM_RULE = """
[[rules]]
name = "saw"
points = ["dev0/r0"]
[[rules.steps]]
kind = "expr"
expr = "value % 200"
[[rules.steps]]
kind = "alarm"
high = 150
hysteresis = 10
severity = "major"
"""


def disk_full(outage_s: float, size_mb: int = 4) -> dict[str, Any]:
    """The buffer's file system fills during an outage: evictions counted, no alarm lost."""
    import json
    import subprocess
    import sys

    with rig() as r:
        small = r.work / "small"
        small.mkdir()
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(small)],
                capture_output=True,
            ).returncode
            == 0
        )
        if not mounted:
            return {"error": "cannot mount a small tmpfs here (needs root); part skipped"}
        try:
            r.state_dir = small
            r.start_devices(1, POINTS)
            broker = Mosquitto(r.work / "mq")
            broker.start()
            r.procs.append(broker.proc)  # type: ignore[arg-type]
            proxy = FaultProxy(broker.port, free_port())
            sub = LatencySubscriber(broker.port)
            cfg = r.config(proxy.listen_port, POINTS, INTERVAL_MS, tail=ALARM_RULE)
            proxy.set_mode("down")
            r.start_gateway(cfg)
            time.sleep(outage_s)
            proxy.set_mode("up")
            time.sleep(3.0)
            out: dict[str, Any] = {
                "fault": f"{size_mb} MB file system filled during a {outage_s:g} s outage"
            }
            # Records evicted at the door get no id: the count to check against is what the
            # gateway gave its buffer (the drain's gateway has no devices and gives nothing).
            from gatewayd.status import fetch, parse

            appended = int(parse(fetch("127.0.0.1", 9108)).total("gatewayd_buffered_records_total"))
            out.update(_drain_and_count(r, sub, proxy.listen_port, lossy=True))
            db = small / "buffer.sqlite"
            stats = json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "gatewayd",
                        "buffer",
                        "--file",
                        str(db),
                        "stats",
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            evicted = {k: int(v) for k, v in stats.get("evicted", {}).items()}
            received = out["stored"] - out["lost"]
            out.update(
                {
                    "appended": appended,
                    "received": received,
                    "evicted": evicted,
                    # every record the gateway buffered arrived or was counted evicted: those
                    # evicted from the file (ids not received) and those refused at the door
                    "every_loss_counted": appended == received + sum(evicted.values())
                    and out["lost"] <= sum(evicted.values()),
                    "alarms_evicted": sum(n for k, n in evicted.items() if k.startswith("alarm/")),
                    "alarms_received": sub.alarms,
                }
            )
            proxy.close()
            sub.close()
            return out
        finally:
            for p in r.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
            subprocess.run(["umount", "-l", str(small)], capture_output=True)
