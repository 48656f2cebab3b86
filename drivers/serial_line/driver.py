"""Serial line instruments: a reader thread keeps the latest value of every field; a poll turns
the points' fields into Readings.

Invariants: a line with a bad checksum or that parses to nothing is dropped and counted
(`lines_dropped.checksum`, `.unparsable`, `.partial`, `.too_long`), never raised;
a point whose field has not arrived since `3 x interval` is a bad reading ("no_data", "stale");
a lost port is reopened by the reader with a capped backoff.
"""

from __future__ import annotations

import contextlib
import logging
import re
import termios
import threading
import time
from typing import Any

from gatewayd.backoff import exponential
from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.config.options import device_options
from gatewayd.reading import Quality, Reading, Value, now_ms

from ..base import Driver, PollGroup, WriteError
from .options import OPTIONS, SerialLineOptions
from .parse import LineError, parse_line

log = logging.getLogger("gatewayd.drivers.serial_line")
MAX_LINE = 1024  # bytes; longer without a newline is garbage


class SerialLineDriver(Driver):
    options = OPTIONS

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.opts = o = device_options(device, SerialLineOptions)
        self._regex = re.compile(o.line_regex) if o.line_format == "regex" else None
        self._latest: dict[str, tuple[str, float, int]] = {}  # field: (text, monotonic, ts_ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # counters are bumped by the reader thread and by polls

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._read_forever, daemon=True, name=f"line:{self.device.id}"
            )
            self._thread.start()

    async def poll(self, group: PollGroup) -> list[Reading]:
        self._start()
        with self._lock:
            self.counters["polls"] += 1
        now, ts = time.monotonic(), now_ms()
        max_age = max(3 * group.interval_ms / 1000, 1.0)
        out = []
        for p in group.points:
            pid = f"{self.device.id}/{p.id}"
            seen = self._latest.get(p.field)
            if seen is None:
                out.append(Reading(pid, ts, None, Quality.BAD, "no_data"))
            elif now - seen[1] > max_age:
                out.append(Reading(pid, ts, None, Quality.BAD, "stale"))
            else:
                value = _convert(p, seen[0])
                if value is None:
                    out.append(Reading(pid, seen[2], None, Quality.BAD, "bad_value"))
                else:
                    out.append(Reading(pid, seen[2], value))
        return out

    def handle_line(self, raw: bytes) -> None:
        """Parse one line (without its newline) into the latest values, or count it dropped."""
        line = raw.decode("ascii", errors="replace").strip()
        if not line:
            return
        if self.opts.line_format == "nmea" and line.rfind("$") > 0:
            # a sentence cut off by the next one: drop the fragment, keep the whole sentence
            self._count("lines_dropped.partial")
            line = line[line.rfind("$") :]
        try:
            fields = parse_line(line, self.opts.line_format, self._regex, self.opts.csv_delimiter)
        except LineError as exc:
            self._count(f"lines_dropped.{exc.reason}")
            return
        self._count("lines")
        now, ts = time.monotonic(), now_ms()
        for k, v in fields.items():
            self._latest[k] = (v, now, ts)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _read_forever(self) -> None:
        import serial

        d = self.opts
        failures = 0
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(
                    d.serial_port,
                    baudrate=d.baud,
                    parity=d.parity,
                    stopbits=d.stopbits,
                    bytesize=d.bytesize,
                    timeout=0.2,
                )
            except (serial.SerialException, OSError, ValueError, termios.error) as exc:
                failures += 1
                if failures == 1:
                    log.warning("port_unavailable device=%s error=%s", self.device.id, exc)
                self._stop.wait(exponential(failures, 0.5, 30.0))
                continue
            failures = 0
            try:
                self._read_lines(port)
            except (serial.SerialException, OSError, termios.error) as exc:
                log.warning("port_lost device=%s error=%s", self.device.id, exc)
                self._count("reconnects")
            finally:
                with contextlib.suppress(Exception):
                    port.close()

    def _read_lines(self, port: Any) -> None:
        buf = b""
        port.reset_input_buffer()
        while not self._stop.is_set():
            buf += port.read(max(1, port.in_waiting))
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                self.handle_line(line)
            if len(buf) > MAX_LINE:
                self._count("lines_dropped.too_long")
                buf = b""

    async def write(self, point: PointConfig, value: Value) -> None:
        raise WriteError(
            f"{self.device.id}/{point.id}",
            "serial line instruments are read-only",
            "remove the write",
        )

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None


def _convert(p: PointConfig, text: str) -> Value:
    if p.type == "string":
        return text
    if p.type == "bool":
        return text.lower() in ("1", "true", "on", "yes", "a")
    try:
        v = float(text)
    except ValueError:
        return None
    if p.scale != 1.0 or p.offset != 0.0:
        return v * p.scale + p.offset
    return int(v) if p.type == "int64" else v
