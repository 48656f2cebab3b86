"""Serial line instruments on a pseudo-terminal: an NMEA 0183 GPS and a key=value sensor.

Each writes its lines at `rate_hz`, every line delayed by its wire time at `baud`, with faults:
`bad_checksum` (NMEA), `garbage` (a line of random bytes), `partial` (half a line, no newline,
then the next line), each applied to the next `times` lines (None: until cleared).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from .pty import Pty, wire_time_s


@dataclass
class LineFaults:
    bad_checksum: bool = False
    garbage: bool = False
    partial: bool = False
    times: int | None = None


def nmea(body: str) -> str:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def _ddmm(deg: float, lon: bool) -> tuple[str, str]:
    a = abs(deg)
    d = int(a)
    text = f"{d:03d}" if lon else f"{d:02d}"
    hemi = ("E" if deg >= 0 else "W") if lon else ("N" if deg >= 0 else "S")
    return f"{text}{(a - d) * 60:07.4f}", hemi


def gps_lines(
    lat: float, lon: float, alt: float = 12.5, speed_kn: float = 0.0
) -> Callable[[float], list[str]]:
    """GGA and RMC sentences for a receiver at (lat, lon), circling slowly when speed_kn > 0."""

    def lines(t: float) -> list[str]:
        la = lat + (0.001 * math.sin(t / 60) if speed_kn else 0.0)
        (lat_s, ns), (lon_s, ew) = _ddmm(la, False), _ddmm(lon, True)
        hms = time.strftime("%H%M%S", time.gmtime()) + ".00"
        dmy = time.strftime("%d%m%y", time.gmtime())
        return [
            nmea(f"GPGGA,{hms},{lat_s},{ns},{lon_s},{ew},1,08,0.9,{alt:.1f},M,46.9,M,,"),
            nmea(f"GPRMC,{hms},A,{lat_s},{ns},{lon_s},{ew},{speed_kn:.1f},84.4,{dmy},,,A"),
        ]

    return lines


def kv_lines(signals: dict[str, Callable[[float], float]]) -> Callable[[float], list[str]]:
    return lambda t: [" ".join(f"{k}={f(t):.2f}" for k, f in signals.items())]


class LineInstrument:
    def __init__(
        self, lines: Callable[[float], list[str]], rate_hz: float = 10.0, baud: int | None = 9600
    ) -> None:
        self.lines, self.rate_hz, self.baud = lines, rate_hz, baud
        self.faults = LineFaults()
        self.sent = 0
        self.pty = Pty()
        self.path = self.pty.path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="line-sim")
        self._rng = random.Random(0)

    def start(self) -> LineInstrument:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pty.close()

    def _mangle(self, line: str) -> bytes:
        f = self.faults
        if f.times is not None:
            f.times -= 1
            if f.times < 0:
                self.faults = LineFaults()
                return (line + "\r\n").encode()
        if f.garbage:
            return bytes(self._rng.randrange(256) for _ in range(20)) + b"\r\n"
        if f.partial:
            return line[: len(line) // 2].encode()
        if f.bad_checksum and "*" in line:
            head, _, cs = line.rpartition("*")
            return f"{head}*{int(cs, 16) ^ 0x5A:02X}\r\n".encode()
        return (line + "\r\n").encode()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            for line in self.lines(time.monotonic() - t0):
                raw = self._mangle(line)
                time.sleep(wire_time_s(len(raw), self.baud, 10))  # 8N1 is usual for instruments
                with contextlib.suppress(OSError):
                    os.write(self.pty.master, raw)
                self.sent += 1
            self._stop.wait(1 / self.rate_hz)
