"""Logging: one line per event, `event key=value ...`, to stdout (journald adds the time)."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    fmt = (
        "%(asctime)s %(levelname)s %(name)s %(message)s"
        if sys.stdout.isatty()
        else "level=%(levelname)s logger=%(name)s %(message)s"
    )
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler logs every job run at INFO; pymodbus logs each failure that the driver already
    # turns into a bad-quality reading and logs once.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
