"""Fault tests counted by record id: every record appended reaches the broker, duplicates reported.

The uplink runs in-process against a real mosquitto (through a black-holing proxy) or the cloud
stand-in; a producer appends 1,000 records/s throughout the fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from blackhole_proxy import BlackHoleProxy
from helpers import Mosquitto
from uplink_harness import Collector, Harness, jwt_auth, until, uplink_cfg

from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry


def _report(name: str, sent: list[int], dups: int) -> None:
    print(f"{name}: {len(sent)} records sent, 0 lost, {dups} duplicates")


def test_mosquitto_sigkilled_and_restarted_mid_stream_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        proxy = await BlackHoleProxy(mosquitto.port).start()
        col = Collector(mosquitto.port)
        await until(lambda: col.subscribed, 10, "collector subscribed")
        h = await Harness.open(tmp_path, uplink_cfg(proxy.port))
        try:
            h.produce()
            await until(lambda: h.metrics.total("acked_records") > 1000, 15, "1000 acked")
            mosquitto.kill()
            await until(lambda: not h.uplink.connected, 10, "uplink notices the broker died")
            # Hold the gateway off until the collector is back, so that the count is the
            # gateway's delivery, not the collector's reconnect race.
            proxy.refuse = True
            await asyncio.sleep(1.0)
            seen = col.subscribed
            mosquitto.start()
            await until(lambda: col.subscribed > seen, 15, "collector re-subscribed")
            proxy.refuse = False
            await until(lambda: h.uplink.connected, 15, "uplink reconnected")
            await asyncio.sleep(1.0)
            await h.halt()
            await h.drained(20)
            await until(lambda: not col.missing(h.sent), 10, "every record at the collector")
            assert h.metrics.total("uplink_connects") >= 2
            _report("sigkill", h.sent, col.duplicates())
        finally:
            await h.close()
            col.close()
            await proxy.stop()

    asyncio.run(scenario())


def test_partition_is_detected_by_keepalive_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A 6 s black hole with keepalive 2 s (30 s in the issue; scaled down to keep the suite fast).

    The PUBACK deadline is set far out, so only keepalive can detect the dead connection.
    """

    async def scenario() -> None:
        proxy = await BlackHoleProxy(mosquitto.port).start()
        col = Collector(mosquitto.port)
        await until(lambda: col.subscribed, 10, "collector subscribed")
        cfg = uplink_cfg(proxy.port, keepalive_s=2, puback_timeout_s=120.0, connect_timeout_s=2.0)
        h = await Harness.open(tmp_path, cfg)
        try:
            h.produce()
            await until(lambda: h.metrics.total("acked_records") > 1000, 15, "1000 acked")
            proxy.partition()
            t0 = time.monotonic()
            await until(lambda: not h.uplink.connected, 15, "keepalive detects the partition")
            detected = time.monotonic() - t0
            assert "Keep alive timeout" in (h.uplink.last_error or ""), h.uplink.last_error
            assert h.metrics.total("uplink_puback_timeouts") == 0
            await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - t0)))
            assert proxy.dropped_bytes > 0
            proxy.heal()
            await until(lambda: h.uplink.connected, 15, "uplink reconnected after the partition")
            await h.halt()
            await h.drained(20)
            await until(lambda: not col.missing(h.sent), 10, "every record at the collector")
            print(f"partition detected after {detected:.1f} s")
            _report("partition", h.sent, col.duplicates())
        finally:
            await h.close()
            col.close()
            await proxy.stop()

    asyncio.run(scenario())


def test_token_expiring_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """The gateway's clock is 57 s behind the cloud's: its 60 s tokens expire 3 s after connect.

    The stand-in closes each connection when its token expires, long before the gateway's own
    refresh (at 85 % of its clock's lifetime) is due.
    """

    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        broker = await Broker(registry).start()
        cfg = uplink_cfg(broker.port, auth=jwt_auth(lifetime_s=60))
        h = await Harness.open(tmp_path, cfg, wall_clock=lambda: time.time() - 57)
        try:
            h.produce()
            await until(lambda: broker.expired_disconnects >= 2, 20, "two tokens expire")
            await h.halt()
            await h.drained(20)
            rec = broker.recorder
            assert not rec.missing(set(h.sent)), rec.report(set(h.sent))
            assert h.metrics.total("uplink_token_refreshes") == 0
            _report("token expiry", h.sent, rec.duplicates)
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_token_refresh_while_publishing_loses_and_reorders_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        broker = await Broker(registry).start()
        # 8 s tokens (below the config file's 60 s floor) so that the test sees refreshes; each
        # refresh leaves half the life (4 s) to drain in-flight messages, enough when loaded.
        cfg = uplink_cfg(broker.port, auth=jwt_auth(lifetime_s=8))
        h = await Harness.open(tmp_path, cfg)
        try:
            h.produce()
            await until(lambda: h.metrics.total("uplink_token_refreshes") >= 2, 40, "two refreshes")
            await h.halt()
            await h.drained(20)
            rec = broker.recorder
            assert not rec.missing(set(h.sent)), rec.report(set(h.sent))
            received = [r["id"] for r in rec.records]
            assert received == sorted(h.sent), "refresh re-ordered or repeated records"
            assert broker.expired_disconnects == 0
            # The refresh is counted before its reconnect; the new token's CONNECT may still be
            # on its way.
            await until(
                lambda: sum(e.accepted for e in broker.auth_log) >= 3, 10, "a third connection"
            )
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_clock_before_build_date_holds_uplink_then_alarms_go_first(tmp_path: Path) -> None:
    from gatewayd.reading import Lane

    async def scenario() -> None:
        broker = await Broker().start()  # open: accepts any token
        generate_key(tmp_path / "device.key", "ES256")
        cfg = dataclasses.replace(uplink_cfg(broker.port, auth=jwt_auth()), batch_max_records=50)
        # Held while the clock is implausible, so the backlog builds up before the first take.
        h = await Harness.open(tmp_path, cfg, wall_clock=lambda: 0.0)
        try:
            tele = await h.append(500)
            alarms = await h.append(3, lane=Lane.ALARM, point="plc/alarm")
            await until(lambda: h.uplink.last_error == "clock_implausible", 5, "uplink held")
            assert broker.connections == 0
            assert h.metrics.get("uplink_clock_held") == 1
            h.uplink.wall_clock = time.time
            await h.drained(20)
            first = [r["id"] for r in broker.recorder.records[:3]]
            assert first == alarms and alarms[0] > tele[-1]
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())
