"""A pseudo-terminal pair: the simulator holds the master, the gateway opens `path`.

A pty ignores the baud rate, so simulators sleep for each frame's wire time themselves.
The simulator keeps the slave side open too, so the master never sees EIO while the gateway
closes and reopens the port.
"""

from __future__ import annotations

import contextlib
import os
import tty


def wire_time_s(nbytes: int, baud: int | None, bits_per_char: int = 11) -> float:
    """Time `nbytes` take on the line; 11 bits a character (start, 8 data, parity or 2 stop)."""
    return 0.0 if not baud else nbytes * bits_per_char / baud


class Pty:
    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as they are
        tty.setraw(self.master)
        self.path = os.ttyname(self._slave)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
