"""Readers of the small top-level tables: [gateway] (with its labels), [buffer], [metrics],
[update], [logging] and [remote_config].

Invariants:
- each reader takes its table's Section and returns the frozen model type, reading every key
  it knows and calling `done()`, so an unknown key is an error naming its place;
- `load_document` (config/parse.py) and `gatewayd check` (config/check.py) call the same
  readers, so both say the same thing about the same mistake.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .errors import ConfigError
from .model import (
    BufferConfig,
    GatewayConfig,
    LoggingConfig,
    MetricsConfig,
    RemoteConfigConfig,
    UpdateConfig,
    choices_of,
)
from .section import INT_LIMIT, Section


def read_version(root: Section) -> int:
    """The document's top-level `version` (a push must raise it)."""
    return root.integer("version", GatewayConfig().version, lo=0, hi=INT_LIMIT)


def read_gateway(s: Section) -> GatewayConfig:
    """[gateway]: id, state_dir, labels and memory_limit_mb, in a GatewayConfig whose other
    fields are defaults (load_document fills them from their own tables; `gatewayd check` wants
    the state_dir)."""
    d = GatewayConfig()
    cfg = replace(
        d,
        gateway_id=s.ident("id", d.gateway_id),
        state_dir=s.text("state_dir", d.state_dir),
        labels=read_labels(s.table("labels")),
        memory_limit_mb=s.integer("memory_limit_mb", d.memory_limit_mb, lo=32),
    )
    s.done()
    return cfg


# Labels travel in the state document and in `fleet --select key=value`: no '=', ',', '/',
# '+', '#' or spaces, which would need quoting on a command line or in a topic.
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_LABELS = 16


def read_labels(s: Section) -> tuple[tuple[str, str], ...]:
    names = s.names()
    if len(names) > MAX_LABELS:
        raise ConfigError(
            s.at(names[MAX_LABELS]), f"more than {MAX_LABELS} labels", "keep the ones you select by"
        )
    out = []
    for key in names:
        if not _LABEL_KEY.fullmatch(key):
            raise ConfigError(
                s.at(key),
                "is not a valid label name",
                "use lower-case letters, digits and '_', starting with a letter (at most 32)",
            )
        value = s.text(key)
        if not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                s.at(key),
                f"{value[:40]!r} is not a valid label value",
                "use letters, digits, '_', '.', ':', '-' (at most 64, no spaces)",
            )
        out.append((key, value))
    s.done()
    return tuple(sorted(out))


def read_remote_config(s: Section) -> RemoteConfigConfig:
    d = RemoteConfigConfig()
    cfg = RemoteConfigConfig(
        enabled=s.flag("enabled", d.enabled),
        health_deadline_s=s.number("health_deadline_s", d.health_deadline_s, lo=1.0, hi=3600.0),
        require_signed=s.flag("require_signed", d.require_signed),
        signing_key=s.opt_text("signing_key"),
        max_document_bytes=s.integer(
            "max_document_bytes", d.max_document_bytes, lo=1024, hi=16 * 1024 * 1024
        ),
        commands_per_minute=s.integer(
            "commands_per_minute", d.commands_per_minute, lo=1, hi=60_000
        ),
    )
    s.done()
    if cfg.require_signed and not cfg.signing_key:
        raise ConfigError(
            s.at("signing_key"),
            "missing, demanded by require_signed = true",
            "give the PEM public key that signs configuration pushes",
        )
    return cfg


def read_update(s: Section) -> UpdateConfig:
    d = UpdateConfig()
    cfg = UpdateConfig(
        release_key=s.opt_text("release_key"),
        releases_dir=s.text("releases_dir", d.releases_dir),
        health_deadline_s=s.number("health_deadline_s", d.health_deadline_s, lo=1.0, hi=3600.0),
        max_starts=s.integer("max_starts", d.max_starts, lo=1, hi=100),
        max_bytes=s.integer("max_bytes", d.max_bytes, lo=1024),
        chunk_timeout_s=s.number("chunk_timeout_s", d.chunk_timeout_s, lo=1.0),
    )
    s.done()
    return cfg


def read_buffer(s: Section) -> BufferConfig:
    d = BufferConfig()
    cfg = BufferConfig(
        path=s.text("path", d.path),
        sync=s.choice("sync", choices_of(BufferConfig, "sync"), d.sync),
        max_bytes=s.integer("max_bytes", d.max_bytes, lo=64 * 1024, hi=2**48),
        max_age_s=s.opt_integer("max_age_s", lo=60, hi=10 * 365 * 24 * 3600),
    )
    s.done()
    return cfg


_LISTEN = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def read_metrics(s: Section) -> MetricsConfig:
    listen = s.text("listen", MetricsConfig().listen)
    m = _LISTEN.fullmatch(listen)
    if listen and (m is None or not 0 < int(m.group(1)) < 65536):
        raise ConfigError(
            s.at("listen"),
            f"{listen!r} is not host:port",
            'write e.g. "127.0.0.1:9108", or "" to turn the endpoint off',
        )
    s.done()
    return MetricsConfig(listen=listen)


def read_logging(s: Section) -> LoggingConfig:
    d = LoggingConfig()
    cfg = LoggingConfig(
        format=s.choice("format", choices_of(LoggingConfig, "format"), d.format),
        level=s.choice("level", choices_of(LoggingConfig, "level"), d.level),
    )
    s.done()
    return cfg
