"""Logging: one line per event, in one style, to stdout.

Invariants:
- every line is logfmt (`level=… logger=… event=<name> key=value …`, a value quoted with JSON
  escapes when it holds a space, a quote, `=` or a backslash) or, with `[logging] format =
  "json"`, one JSON object with the same fields. Log calls write `event key=%s …`; whatever a
  call site passed (a bare value with spaces, a JSON-quoted or a Python-quoted string) is
  parsed back into fields here, and a value of None is left out, so the output has one style;
- a line carries `ts=` (UTC, milliseconds) unless stdout is the journal (JOURNAL_STREAM names
  our stdout): journald stamps its entries itself;
- a traceback is folded into the line (`exc=… trace=…`), never spread over lines;
- every line passes the redaction guard on its way out: a value of a secret-named key, a JWT or
  a PEM block never reaches the journal, whoever wrote the log call.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys
import time
import traceback
from typing import IO

SECRET_KEYS = ("password", "passwd", "token", "jwt", "secret", "private_key", "authorization")

_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:[\w.-]*[_.-])?(?:" + "|".join(SECRET_KEYS) + r"))"
    r"(?P<sep>\"?\s*=\s*|\"\s*:\s*|:\s+(?:bearer\s+)?)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;}\]]+)",
    re.IGNORECASE,
)
_SECRET_KEY = re.compile(r"(?:^|[_.-])(?:" + "|".join(SECRET_KEYS) + r")$", re.IGNORECASE)
# base64url header.payload.signature, as every JWT is; the header always starts with `{"` = eyJ.
_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.DOTALL)
REDACTED = "<redacted>"
FORMATS = ("logfmt", "json")


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


# -- a message back into fields ----------------------------------------------------------------

_EVENT = re.compile(r"[A-Za-z_][\w.:-]*")
_KEY = re.compile(r"\s+([A-Za-z_][\w.-]*)=")  # where a field starts
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")
_DQ = re.compile(r'"(?:[^"\\]|\\.)*"')
_SQ = re.compile(r"'(?:[^'\\]|\\.)*'")

Value = str | int | float


def parse_message(msg: str) -> tuple[str, list[tuple[str, Value]]]:
    """`event k=v k="v w" k='v'` -> (event, fields). A message that does not start with an event
    name followed by fields is the event text itself."""
    m = _EVENT.match(msg)
    if m is None or (m.end() < len(msg) and _KEY.match(msg, m.end()) is None):
        return msg, []
    fields: list[tuple[str, Value]] = []
    pos = m.end()
    while pos < len(msg):
        k = _KEY.match(msg, pos)
        if k is None:  # trailing text that is not a field: keep it, do not lose it
            fields.append(("msg", msg[pos:].strip()))
            break
        key, pos = k.group(1), k.end()
        value, pos = _value(msg, pos)
        if value is not None:
            fields.append((key, value))
    return m.group(0), fields


def _value(msg: str, pos: int) -> tuple[Value | None, int]:
    for quoted, decode in ((_DQ, json.loads), (_SQ, ast.literal_eval)):
        q = quoted.match(msg, pos)
        if q is not None and _at_field_end(msg, q.end()):
            try:
                return str(decode(q.group(0))), q.end()
            except (ValueError, SyntaxError):
                break
    nxt = _KEY.search(msg, pos)
    end = nxt.start() if nxt is not None else len(msg)
    raw = msg[pos:end]
    if raw == "None":  # a Python None: no value
        return None, end
    if _NUMBER.fullmatch(raw):
        return (float(raw) if "." in raw else int(raw)), end
    return raw, end


def _at_field_end(msg: str, pos: int) -> bool:
    return pos == len(msg) or _KEY.match(msg, pos) is not None


# -- formatting --------------------------------------------------------------------------------


def under_journald(stream: IO[str]) -> bool:
    """True when `stream` is the journal's stream socket (systemd sets JOURNAL_STREAM=dev:ino)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class LineFormatter(logging.Formatter):
    """A record as one logfmt or JSON line: ts (optional), level, logger, event, fields."""

    def __init__(self, fmt: str = "logfmt", timestamps: bool = True) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
        self.json = fmt == "json"
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        event, fields = parse_message(redact(record.getMessage()))
        head: list[tuple[str, Value]] = []
        if self.timestamps:
            t = time.gmtime(record.created)
            ms = int(record.created * 1000) % 1000
            head.append(("ts", time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"))
        head += [("level", record.levelname.lower()), ("logger", record.name), ("event", event)]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)[-4:]
            trace = " < ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames)
            )
            fields += [("exc", redact(f"{type(exc).__name__}: {exc}")), ("trace", trace)]
        pairs = head + [(k, REDACTED if _SECRET_KEY.search(k) else v) for k, v in fields]
        if self.json:
            doc: dict[str, Value] = {}
            for k, v in pairs:
                doc.setdefault(k, v)  # a field may not overwrite ts/level/logger/event
            return json.dumps(doc, ensure_ascii=False, default=str)
        return " ".join(f"{k}={_logfmt(v)}" for k, v in pairs)


def _logfmt(v: Value) -> str:
    if isinstance(v, str):
        return quote(v)
    return repr(v) if isinstance(v, float) else str(v)


_forced_level: str | None = None  # `gatewayd --log-level`: wins over the configuration


def force_level(level: str | None) -> None:
    global _forced_level
    _forced_level = level


def setup(level: str = "INFO", fmt: str = "logfmt", stream: IO[str] | None = None) -> None:
    """Route every logger to one line per record on stdout (or `stream`), at `level` unless
    `force_level` chose one."""
    level = _forced_level or level
    out = stream or sys.stdout
    handler = logging.StreamHandler(out)
    handler.setFormatter(LineFormatter(fmt, timestamps=not under_journald(out)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
