"""Logging: one line per event, `level=… logger=… event=<name> key=value …`, to stdout.

journald adds the time and keeps one entry per line, so a traceback is folded into one field
instead of spreading over lines. Every line passes the redaction guard on its way out: a value of
a secret-named key, a JWT or a PEM block never reaches the journal, whoever wrote the log call.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback

SECRET_KEYS = ("password", "passwd", "token", "jwt", "secret", "private_key", "authorization")

_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:[\w.-]*[_.-])?(?:" + "|".join(SECRET_KEYS) + r"))"
    r"(?P<sep>\"?\s*=\s*|\"\s*:\s*|:\s+(?:bearer\s+)?)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;}\]]+)",
    re.IGNORECASE,
)
# base64url header.payload.signature, as every JWT is; the header always starts with `{"` = eyJ.
_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.DOTALL)
REDACTED = "<redacted>"


def redact(text: str) -> str:
    """Remove secrets from a line: secret-named key=value pairs, JWTs, PEM blocks."""
    text = _PEM.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", text)


def quote(value: object) -> str:
    """A value safe to put after `key=`: quoted (JSON string) when it has spaces or quotes."""
    s = str(value)
    if s and not any(c in s for c in ' "=\n\t\\'):
        return s
    return json.dumps(s)


class LineFormatter(logging.Formatter):
    """`level=info logger=gatewayd event=<message>`; exceptions as `exc=… trace=…` on the line."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.tty:
            head = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {msg}"
        else:
            head = f"level={record.levelname.lower()} logger={record.name} event={msg}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)[-4:]
            trace = " < ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames)
            )
            head += f" exc={quote(f'{type(exc).__name__}: {exc}')} trace={quote(trace)}"
        return redact(head.replace("\n", "\\n"))


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LineFormatter(sys.stdout.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pymodbus logs each failure that the driver already turns into a
    # bad-quality reading and logs once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
