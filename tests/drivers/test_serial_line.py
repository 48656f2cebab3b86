"""Serial line instruments over real pseudo-terminals: NMEA GGA/RMC with checksums, key=value,
CSV and regex lines; bad and partial lines are dropped and counted, never raised."""

from __future__ import annotations

import asyncio
import re

import pytest
from helpers import wait_for
from modbus_env import group

from gatewayd.config import ConfigError, DeviceConfig, PointConfig, load
from gatewayd.drivers.options import device_config
from gatewayd.drivers.serial_line import LineError, SerialLineDriver, parse_line
from gatewayd.drivers.serial_line.options import SerialLineOptions
from gatewayd.reading import Quality
from gatewayd_sim.modbus.signals import constant
from gatewayd_sim.serial import LineFaults, LineInstrument, gps_lines, kv_lines, nmea


def line_point(pid: str, field: str, **kw: object) -> PointConfig:
    return PointConfig(
        id=pid, table="input", address=0, field=field, type=kw.pop("type", "float64"), **kw
    )  # type: ignore[arg-type]


def line_device(path: str, fmt: str, points: list[PointConfig], **kw: object) -> DeviceConfig:
    return device_config(
        SerialLineOptions,
        id="inst",
        driver="serial_line",
        serial_port=path,
        line_format=fmt,
        interval_ms=200,
        points=tuple(points),
        **kw,
    )


def test_nmea_gps_over_pty_with_faults_dropped_and_counted() -> None:
    gps = LineInstrument(gps_lines(48.1173, -11.5167, alt=545.4), rate_hz=20).start()
    try:
        pts = [
            line_point("lat", "GGA.lat"),
            line_point("lon", "GGA.lon"),
            line_point("alt", "GGA.alt"),
            line_point("sats", "GGA.sats", type="int64"),
            line_point("status", "RMC.status", type="string"),
            line_point("speed", "RMC.speed_kn"),
        ]
        drv = SerialLineDriver(line_device(gps.path, "nmea", pts))

        async def body() -> None:
            g = group(drv.device)
            first = await drv.poll(g)
            assert {r.reason for r in first} == {"no_data"}
            await asyncio.to_thread(wait_for, lambda: drv.counters["lines"] >= 4, 10, "GPS lines")
            values = {r.point: r.value for r in await drv.poll(g)}
            assert values["inst/lat"] == pytest.approx(48.1173, abs=1e-6)
            assert values["inst/lon"] == pytest.approx(-11.5167, abs=1e-6)
            assert values == {
                **values,
                "inst/alt": 545.4,
                "inst/sats": 8,
                "inst/status": "A",
                "inst/speed": 0.0,
            }
            for fault, reason in (
                ("bad_checksum", "checksum"),
                ("garbage", "unparsable"),
                ("partial", "partial"),
            ):
                gps.faults = LineFaults(**{fault: True}, times=3)  # type: ignore[arg-type]
                await asyncio.to_thread(
                    wait_for,
                    lambda r=reason: drv.counters[f"lines_dropped.{r}"] >= 1,
                    10,
                    reason,  # type: ignore[misc]
                )
            good = drv.counters["lines"]
            await asyncio.to_thread(
                wait_for, lambda: drv.counters["lines"] > good + 4, 10, "recovery"
            )
            assert all(r.quality is Quality.GOOD for r in await drv.poll(g))
            await drv.close()

        asyncio.run(body())
    finally:
        gps.stop()


def test_kv_sensor_over_pty_goes_stale_when_silent() -> None:
    sensor = LineInstrument(
        kv_lines({"temp": constant(21.5), "hum": constant(40.25)}), rate_hz=20
    ).start()
    try:
        pts = [line_point("t", "temp", unit="degC"), line_point("h", "hum", scale=0.01)]
        drv = SerialLineDriver(line_device(sensor.path, "kv", pts))

        async def body() -> None:
            g = group(drv.device)
            await drv.poll(g)
            await asyncio.to_thread(
                wait_for, lambda: drv.counters["lines"] >= 2, 10, "sensor lines"
            )
            assert [r.value for r in await drv.poll(g)] == [21.5, pytest.approx(0.4025)]
            sensor.faults.garbage = True
            await asyncio.to_thread(
                wait_for, lambda: drv.counters["lines_dropped.unparsable"] >= 2, 10, "garbage"
            )
            await asyncio.sleep(1.1)
            assert {r.reason for r in await drv.poll(g)} == {"stale"}
            await drv.close()

        asyncio.run(body())
    finally:
        sensor.stop()


def test_line_formats_parse_fields() -> None:
    assert parse_line("T: 21.5, RH=40 ;p=1013", "kv") == {"T": "21.5", "RH": "40", "p": "1013"}
    assert parse_line("2024-01-01;3.5; 7", "csv", delimiter=";") == {
        "0": "2024-01-01",
        "1": "3.5",
        "2": "7",
    }
    rx = re.compile(r"W:(?P<weight>[-0-9.]+)kg")
    assert parse_line("ST,GS W:12.5kg", "regex", rx) == {"weight": "12.5"}
    rmc = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    f = parse_line(rmc, "nmea")
    assert (float(f["RMC.lat"]), float(f["RMC.lon"]), f["RMC.speed_kn"]) == (
        pytest.approx(48.1173),
        pytest.approx(11.516667, abs=1e-6),
        "022.4",
    )
    with pytest.raises(LineError, match="checksum"):
        parse_line(rmc[:-2] + "00", "nmea")
    with pytest.raises(LineError, match="unparsable"):
        parse_line("no fields here", "kv")


def test_serial_line_config_needs_fields_and_a_port() -> None:
    doc = (
        '[uplink.auth]\nkind = "none"\n'
        '[[devices]]\nid = "gps"\ndriver = "serial_line"\nline_format = "nmea"\n'
    )
    with pytest.raises(ConfigError, match=r"devices\[0\].serial_port: missing"):
        load(doc)
    with pytest.raises(ConfigError, match=r"devices\[0\].points\[0\].field: missing"):
        load(doc + 'serial_port = "/dev/ttyS0"\n[[devices.points]]\nid = "lat"\n')
