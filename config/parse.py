"""Validation of configuration documents into the frozen types of `model`.

Every accessor knows the path of the value it reads, so an error always names the place.
Unknown keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import math
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

from . import profiles
from .errors import ConfigError
from .model import (
    AuthConfig,
    BufferConfig,
    DeviceConfig,
    GatewayConfig,
    LoggingConfig,
    MetricsConfig,
    PointConfig,
    PresenceConfig,
    RemoteConfigConfig,
    TlsConfig,
    TopicsConfig,
    UpdateConfig,
    UplinkConfig,
)
from .options import Lookup, OptionSet, Placed, entry_point_options, read_options
from .rules import parse_rules

T = TypeVar("T")
_MISSING: Any = object()
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` lets "\n" through
# Every number is bounded, even where a field names no limit of its own: a push may carry
# 10**400, which no float(), metric or timer downstream survives. 2**53 - 1 is the largest
# integer that every JSON reader (and a float) holds exactly.
INT_LIMIT = 2**53 - 1
NUM_LIMIT = 1e15
# What a topic or client id template may name (UplinkConfig.template_values).
_PLACEHOLDERS = ("project", "region", "registry", "device", "device_id", "hub")


def example_path() -> Path:
    """The commented example configuration shipped with the package (also used by the demo)."""
    return Path(__file__).parent / "examples" / "gateway.toml"


def load_file(path: str | Path, drivers: Lookup | None = None) -> GatewayConfig:
    return load_document(read_document(path), drivers)


def read_document(path: str | Path) -> dict[str, Any]:
    """The TOML file as a document, not yet validated; every failure is a ConfigError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            str(p), f"cannot read: {exc.strerror}", "check the path and its permissions"
        ) from exc
    return parse_bytes(raw, source=str(p))


def parse_bytes(raw: bytes, source: str = "<config>") -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            source,
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}",
            "save the file as UTF-8",
        ) from None
    return parse_text(text, source)


def parse_text(text: str, source: str = "<config>") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            source, f"not valid TOML: {exc}", "fix the syntax at the line shown"
        ) from exc
    except RecursionError:
        raise ConfigError(
            source,
            "nested too deeply for a configuration (arrays or inline tables)",
            "the schema nests 4 levels; flatten the value",
        ) from None


def load(text: str, source: str = "<config>", drivers: Lookup | None = None) -> GatewayConfig:
    """Parse and validate TOML text."""
    return load_document(parse_text(text, source), drivers)


def load_document(doc: Any, drivers: Lookup | None = None) -> GatewayConfig:
    """Validate an already-parsed document (a local file or a remote push).

    `drivers` finds the options a device's driver declares; by default the `options` of its
    `gatewayd.drivers` entry point (config/options.py), each looked up once per document.
    """
    lookup = _cached(drivers or entry_point_options)
    if not isinstance(doc, Mapping):
        raise ConfigError("<document>", f"expected a table, got {_kind(doc)}", "send a JSON object")
    root = Section(doc, "")
    gw = root.table("gateway")
    cfg = GatewayConfig(
        version=root.integer("version", 0, lo=0, hi=INT_LIMIT),
        gateway_id=gw.ident("id", "gateway"),
        state_dir=gw.text("state_dir", GatewayConfig().state_dir),
        labels=_labels(gw.table("labels")),
        memory_limit_mb=gw.integer("memory_limit_mb", GatewayConfig().memory_limit_mb, lo=32),
        buffer=_buffer(root.table("buffer")),
        uplink=_uplink(root.table("uplink")),
        devices=tuple(_device(s, lookup) for s in root.tables("devices")),
        remote_config=_remote_config(root.table("remote_config")),
        metrics=_metrics(root.table("metrics")),
        update=_update(root.table("update")),
        logging=_logging(root.table("logging")),
    )
    gw.done()
    known = (f"{d.id}/{p.id}" for d in cfg.devices for p in d.points)
    cfg = replace(cfg, rules=parse_rules(root.tables("rules"), known))
    root.done()
    _unique((d.id for d in cfg.devices), "devices", "id")
    _check_across(cfg.devices, lookup)
    return cfg


def _cached(lookup: Lookup) -> Lookup:
    seen: dict[str, OptionSet] = {}

    def cached(kind: str, place: str) -> OptionSet:
        if kind not in seen:
            seen[kind] = lookup(kind, place)
        return seen[kind]

    return cached


# Labels travel in the state document and in `fleet --select key=value`: no '=', ',', '/',
# '+', '#' or spaces, which would need quoting on a command line or in a topic.
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_LABELS = 16


def _labels(s: Section) -> tuple[tuple[str, str], ...]:
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


def _remote_config(s: Section) -> RemoteConfigConfig:
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


def _update(s: Section) -> UpdateConfig:
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


def _buffer(s: Section) -> BufferConfig:
    cfg = BufferConfig(
        path=s.text("path", BufferConfig().path),
        sync=s.choice("sync", ("full", "normal"), BufferConfig().sync),
        max_bytes=s.integer("max_bytes", BufferConfig().max_bytes, lo=64 * 1024, hi=2**48),
        max_age_s=s.opt_integer("max_age_s", lo=60, hi=10 * 365 * 24 * 3600),
    )
    s.done()
    return cfg


_LISTEN = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def _metrics(s: Section) -> MetricsConfig:
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


def _logging(s: Section) -> LoggingConfig:
    d = LoggingConfig()
    cfg = LoggingConfig(
        format=s.choice("format", ("logfmt", "json"), d.format),
        level=s.choice("level", ("DEBUG", "INFO", "WARNING", "ERROR"), d.level),
    )
    s.done()
    return cfg


def _uplink(s: Section) -> UplinkConfig:
    profile, limits = _profile(s)
    d = profiles.defaults(profile, s.text("region", ""), s.text("hub", ""))
    tls = s.table("tls")
    auth = s.table("auth")
    topics = s.table("topics")
    presence = s.table("presence")
    demanded = f'missing, demanded by profile = "{profile.name}"'
    if not d.host and "host" not in s.names() and "hosts" not in s.names():
        raise ConfigError(s.at("host"), demanded, "set it to the broker's host name")
    if "{hub}" in profile.host and not d.hub:
        raise ConfigError(
            s.at("hub"), demanded, "set it to the hub's name (NAME.azure-devices.net)"
        )
    port = s.integer("port", d.port, lo=1, hi=65535)
    hosts = _hosts(s, port)
    if profile.auth_kind is None and "kind" not in auth.names():
        raise ConfigError(auth.at("kind"), demanded, 'set it to "jwt", "password" or "none"')
    cfg = UplinkConfig(
        profile=profile.name,
        broker=s.text("broker", ""),
        host=hosts[0][0] if hosts else s.text("host", d.host),
        port=hosts[0][1] if hosts else port,
        hosts=hosts,
        project=s.text("project", d.project),
        region=s.text("region", d.region),
        registry=s.text("registry", d.registry),
        device=s.text("device", d.device),
        hub=d.hub,
        channel=d.channel,
        client_id=s.template("client_id", d.client_id),
        protocol=s.choice("protocol", ("3.1.1", "5"), d.protocol),
        keepalive_s=s.integer("keepalive_s", d.keepalive_s, lo=5, hi=1200),
        connect_timeout_s=s.number("connect_timeout_s", d.connect_timeout_s, lo=0.5, hi=300),
        batch_max_records=s.integer("batch_max_records", d.batch_max_records, lo=1, hi=100_000),
        batch_max_bytes=s.integer(
            "batch_max_bytes", d.batch_max_bytes, lo=1024, hi=256 * 1024 * 1024
        ),
        inflight_window=s.integer("inflight_window", d.inflight_window, lo=1, hi=65535),
        max_messages_per_s=s.number(
            "max_messages_per_s", d.max_messages_per_s, lo=0.1, hi=1_000_000.0
        ),
        puback_timeout_s=s.number("puback_timeout_s", d.puback_timeout_s, lo=0.5, hi=3600.0),
        backoff_base_s=s.number("backoff_base_s", d.backoff_base_s, lo=0.01, hi=3600.0),
        backoff_cap_s=s.number("backoff_cap_s", d.backoff_cap_s, lo=0.01, hi=3600.0),
        encoder=s.text("encoder", d.encoder),
        clean_session=s.flag("clean_session", d.clean_session),
        session_expiry_s=s.integer("session_expiry_s", d.session_expiry_s, lo=0, hi=2**32 - 1),
        retain_state=s.flag("retain_state", d.retain_state),
        presence=_presence(presence),
        tls=TlsConfig(
            enabled=tls.flag("enabled", True),
            ca_file=tls.opt_text("ca_file"),
            verify=tls.flag("verify", True),
            cert_file=tls.opt_text("cert_file"),
            key_file=tls.opt_text("key_file"),
            server_name=tls.opt_text("server_name"),
        ),
        auth=AuthConfig(
            kind=auth.choice(
                "kind", ("jwt", "password", "sas", "x509", "none"), profile.auth_kind or "none"
            ),
            algorithm=auth.choice("algorithm", ("ES256", "RS256"), "ES256"),
            private_key=auth.text("private_key", AuthConfig().private_key),
            audience=auth.text("audience", ""),
            lifetime_s=auth.integer("lifetime_s", 3600, lo=60, hi=24 * 3600),
            key_id=auth.opt_text("key_id"),
            username=auth.text("username", d.auth.username),
            password=auth.opt_text("password"),
            claims=_claims(auth.table("claims")),
            device_key=auth.opt_text("device_key"),
            device_key_file=auth.opt_text("device_key_file"),
        ),
        topics=TopicsConfig(
            events=topics.template("events", d.topics.events),
            state=topics.template("state", d.topics.state),
            config=topics.template("config", d.topics.config),
            commands=topics.template("commands", d.topics.commands),
            command_results=topics.template("command_results", d.topics.command_results),
        ),
    )
    for sub in (tls, auth, topics, presence, s):
        sub.done()
    if cfg.auth.kind == "jwt" and not cfg.auth.audience:
        raise ConfigError(
            auth.at("audience"),
            'missing, demanded by kind = "jwt"',
            "set it to the project id (Cloud IoT Core) or the broker's audience",
        )
    if cfg.auth.kind == "password" and cfg.auth.password is None:
        raise ConfigError(
            auth.at("password"),
            'missing, demanded by kind = "password"',
            'set it, or use kind = "jwt"',
        )
    if cfg.auth.kind == "sas" and (cfg.auth.device_key is None) == (
        cfg.auth.device_key_file is None
    ):
        raise ConfigError(
            auth.at("device_key"),
            'kind = "sas" needs exactly one of device_key and device_key_file',
            "set device_key to the device's primary key (base64), or device_key_file to a "
            "file holding it",
        )
    if cfg.auth.kind == "x509" and not (cfg.tls.cert_file and cfg.tls.key_file):
        raise ConfigError(
            tls.at("cert_file"),
            'missing, demanded by [uplink.auth] kind = "x509"',
            "set cert_file and key_file to the device certificate and its key",
        )
    if cfg.backoff_cap_s < cfg.backoff_base_s:
        raise ConfigError(s.at("backoff_cap_s"), "is below backoff_base_s", "raise the cap")
    profiles.check(cfg, limits, s.at)
    return cfg


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]")


def _hosts(s: Section, port: int) -> tuple[tuple[str, int], ...]:
    """`hosts = ["a:8883", "b"]`: host[:port] entries (`port` when none), IPv6 in brackets."""
    if "hosts" not in s.names():
        return ()
    if "host" in s.names():
        raise ConfigError(
            s.at("hosts"), "is set together with host", "keep one: hosts lists every broker"
        )
    items = s.strings("hosts")
    if not items:
        raise ConfigError(s.at("hosts"), "is empty", 'list the brokers, e.g. ["a:8883", "b:8883"]')
    out = []
    for i, item in enumerate(items):
        host, sep, num = item.rpartition(":")
        if not sep or (host.count(":") and not host.startswith("[")):
            host, num = item, str(port)
        if not _HOST.fullmatch(host) or not num.isdigit() or not 0 < int(num) < 65536:
            raise ConfigError(
                f"{s.at('hosts')}[{i}]",
                f"{item[:60]!r} is not host or host:port",
                'write e.g. "broker-1.example.com:8883" or "[2001:db8::1]:8883"',
            )
        out.append((host.strip("[]"), int(num)))
    if len(set(out)) != len(out):
        raise ConfigError(s.at("hosts"), "lists a broker twice", "list each broker once")
    return tuple(out)


def _profile(s: Section) -> tuple[profiles.Profile, profiles.Limits]:
    names = tuple(n for n in profiles.PROFILES if n)
    profile = profiles.PROFILES[s.choice("profile", names) if "profile" in s.names() else ""]
    if "broker" not in s.names():
        return profile, profile.limits
    if profile.name != "mqtt":
        raise ConfigError(
            s.at("broker"), 'applies to profile = "mqtt" only', 'set profile = "mqtt" or remove it'
        )
    brokers = tuple(n for n in profiles.BROKERS if n)
    return profile, profiles.BROKERS[s.choice("broker", brokers)]


def _presence(s: Section) -> PresenceConfig:
    d = PresenceConfig()
    return PresenceConfig(
        enabled=s.flag("enabled", d.enabled),
        topic=s.text("topic", d.topic),
        online=s.text("online", d.online),
        offline=s.text("offline", d.offline),
    )


_RESERVED_CLAIMS = ("iat", "exp", "aud")


def _claims(s: Section) -> tuple[tuple[str, str | int | float | bool], ...]:
    out = []
    for key in s.names():
        if key in _RESERVED_CLAIMS:
            raise ConfigError(
                s.at(key), "is set by the gateway itself", "remove it (audience: set `audience`)"
            )
        out.append((key, s.scalar(key)))
    s.done()
    return tuple(out)


def _device(s: Section, lookup: Lookup) -> DeviceConfig:
    """The keys every device has; the rest are the driver's (its OptionSet, config/options.py)."""
    driver = s.text("driver")
    declared = lookup(driver, s.at("driver"))
    cfg = DeviceConfig(
        id=s.ident("id"),
        driver=driver,
        interval_ms=s.integer("interval_ms", 1000, lo=10, hi=24 * 3600 * 1000),
        timeout_s=s.number("timeout_s", 1.0, lo=0.01, hi=60.0),
        options=read_options(declared.device, s, _MISSING) if declared.device else None,
        points=tuple(_point(p, declared) for p in s.tables("points")),
    )
    s.done()
    _unique((p.id for p in cfg.points), s.at("points"), "id")
    if declared.check is not None:
        declared.check(cfg, s.at)
    return cfg


def _check_across(devices: tuple[DeviceConfig, ...], lookup: Lookup) -> None:
    """Each driver's rules across its devices (e.g. one setting per shared serial bus)."""
    by_driver: dict[str, list[Placed]] = {}
    for i, d in enumerate(devices):
        by_driver.setdefault(d.driver, []).append(Placed(i, d))
    for driver, placed in by_driver.items():
        check_all = lookup(driver, f"devices[{placed[0].index}].driver").check_all
        if check_all is not None:
            check_all(placed)


def _point(s: Section, declared: OptionSet) -> PointConfig:
    """A point: id and interval_ms here, the rest from the driver's point schema."""
    base = PointConfig(
        id=s.ident("id"),
        interval_ms=s.opt_integer("interval_ms", lo=10, hi=24 * 3600 * 1000),
    )
    if declared.point is None or declared.make_point is None:
        cfg = replace(base, unit=s.text("unit", ""))
        s.done()
        return cfg
    values = read_options(declared.point, s, _MISSING)
    s.done()
    return cast(PointConfig, declared.make_point(values, base, s.at))


def _unique(values: Any, place: str, key: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(
                f"{place}[{i}].{key}", f"{v!r} is used twice", "give each a unique id"
            )
        seen.add(v)


def _show(v: float) -> str:
    """A number short enough for a message (int → str is refused past 4300 digits)."""
    if isinstance(v, int) and abs(v) >= 10**20:
        try:
            return f"an integer of {len(str(abs(v)))} digits"
        except ValueError:
            return "an integer of more than 4300 digits"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _kind(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


class Section:
    """A table of the document, with the path it sits at and the keys read from it."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self._data = data
        self._path = path
        self._read: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], what: str) -> Any:
        self._read.add(key)
        if key not in self._data:
            if default is _MISSING:
                raise ConfigError(self.at(key), "missing", f"set it to {what}")
            return default
        v = self._data[key]
        # bool is an int subclass in Python; never accept it where a number is meant.
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            raise ConfigError(self.at(key), f"expected {what}, got {_kind(v)}", f"write {what}")
        return v

    def text(self, key: str, default: Any = _MISSING) -> str:
        return cast(str, self._get(key, default, (str,), "a string"))

    def peek(self, key: str) -> Any:
        """The raw value (None when absent), for a key whose reading depends on its shape."""
        return self._data.get(key)

    def names(self) -> list[str]:
        return [str(k) for k in self._data]

    def scalar(self, key: str) -> str | int | float | bool:
        what = "a string, number or boolean"
        v = self._get(key, _MISSING, (str, int, float, bool), what)
        if isinstance(v, int | float) and not isinstance(v, bool):
            self._finite(key, v, -NUM_LIMIT, NUM_LIMIT)
        return cast("str | int | float | bool", v)

    def template(self, key: str, default: Any = _MISSING) -> str:
        """A text with `{placeholder}`s from _PLACEHOLDERS only: nothing else survives format()."""
        v = self.text(key, default)
        fix = f"use only {', '.join('{' + n + '}' for n in _PLACEHOLDERS)}; no other braces"
        try:
            fields = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ConfigError(self.at(key), f"{v!r}: {exc}", fix) from None
        for _, name, spec, conv in fields:
            if name is None:
                continue
            if name not in _PLACEHOLDERS or spec or conv:
                near = difflib.get_close_matches(name, _PLACEHOLDERS, n=1)
                hint = f"did you mean {{{near[0]}}}? " if near else ""
                shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ConfigError(
                    self.at(key), f"{v!r}: unknown placeholder {shown + '}'}", hint + fix
                )
        return v

    def opt_text(self, key: str) -> str | None:
        return cast("str | None", self._get(key, None, (str,), "a string"))

    def ident(self, key: str, default: Any = _MISSING) -> str:
        v = self.text(key, default)
        if not _ID.fullmatch(v):
            raise ConfigError(
                self.at(key),
                f"{v!r} is not a valid id",
                "use letters, digits, '_', '.', '-' (at most 64, no '/')",
            )
        return v

    def strings(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        v = self._get(key, default, (list, tuple), "an array of strings")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.at(key)}[{i}]", f"expected a string, got {_kind(item)}", "quote it"
                )
        return tuple(v)

    def integers(
        self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> tuple[int, ...]:
        """An array of integers, each within lo..hi (an error names its index)."""
        v = self._get(key, default, (list, tuple), "an array of integers")
        for i, item in enumerate(v):
            at = f"{key}[{i}]"
            if not isinstance(item, int) or isinstance(item, bool):
                raise ConfigError(
                    self.at(at), f"expected an integer, got {_kind(item)}", "write an integer"
                )
            self._bounded(at, item, lo, hi)
            self._range(at, item, lo, hi, None)
        return tuple(v)

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = _MISSING) -> Any:
        v = self.text(key, default)
        if v not in allowed:
            near = difflib.get_close_matches(v, allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                self.at(key),
                f"{v!r} is not allowed",
                f"{hint}use one of {', '.join(map(repr, allowed))}",
            )
        return v

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        return cast(bool, self._get(key, default, (bool,), "true or false"))

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        lo: int | None = None,
        hi: int | None = None,
        fix: str | None = None,
    ) -> int:
        v = cast(int, self._get(key, default, (int,), "an integer"))
        self._bounded(key, v, lo, hi)
        self._range(key, v, lo, hi, fix)
        return v

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        v = cast("int | None", self._get(key, None, (int,), "an integer"))
        if v is not None:
            self._bounded(key, v, lo, hi)
            self._range(key, v, lo, hi, None)
        return v

    def number(
        self, key: str, default: Any = _MISSING, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        v = self._get(key, default, (int, float), "a number")
        self._finite(key, v, lo, hi)
        self._range(key, v, lo, hi, None)
        return float(v)

    def opt_number(
        self, key: str, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        v = self._get(key, None, (int, float), "a number")
        if v is None:
            return None
        self._finite(key, v, lo, hi)
        self._range(key, v, lo, hi, None)
        return float(v)

    def _bounded(self, key: str, v: int, lo: int | None, hi: int | None) -> None:
        if abs(v) > INT_LIMIT:  # said before the range: str() of 10**5000 itself raises
            lo = -INT_LIMIT if lo is None else lo
            hi = INT_LIMIT if hi is None else hi
            raise ConfigError(
                self.at(key), f"{_show(v)} is out of range", f"use an integer from {lo} to {hi}"
            )

    def _finite(self, key: str, v: float, lo: float | None, hi: float | None) -> None:
        """NaN passes every comparison and ±Inf (or 10**400) breaks float arithmetic: refuse
        them before any range check, naming the range the field allows."""
        if isinstance(v, float) and math.isfinite(v) and abs(v) <= NUM_LIMIT:
            return
        if isinstance(v, int) and abs(v) <= NUM_LIMIT:
            return
        if isinstance(v, float) and math.isnan(v):
            problem = "NaN is not a number"
        elif isinstance(v, float) and math.isinf(v):
            problem = f"{'-' if v < 0 else ''}Infinity is not a finite number"
        else:
            problem = f"{_show(v)} is out of range"
        if lo is not None and hi is not None:
            fix = f"use a number from {lo:g} to {hi:g}"
        elif lo is not None:
            fix = f"use a finite number of at least {lo:g}"
        elif hi is not None:
            fix = f"use a finite number of at most {hi:g}"
        else:
            fix = "use a finite number"
        raise ConfigError(self.at(key), problem, fix)

    def _range(
        self, key: str, v: float, lo: float | None, hi: float | None, fix: str | None
    ) -> None:
        if lo is not None and v < lo:
            raise ConfigError(self.at(key), f"{v} is below {lo}", fix or f"use at least {lo}")
        if hi is not None and v > hi:
            raise ConfigError(self.at(key), f"{v} is above {hi}", fix or f"use at most {hi}")

    def table(self, key: str) -> Section:
        v = self._get(key, {}, (dict,), "a table")
        return Section(v, self.at(key))

    def tables(self, key: str) -> list[Section]:
        v = self._get(key, [], (list,), "an array of tables")
        out = []
        for i, item in enumerate(v):
            place = f"{self.at(key)}[{i}]"
            if not isinstance(item, Mapping):
                raise ConfigError(
                    place, f"expected a table, got {_kind(item)}", "write [[" + key + "]]"
                )
            out.append(Section(item, place))
        return out

    def done(self) -> None:
        """Refuse keys nobody read: they are typos or settings of another version."""
        for key in self._data:
            if key not in self._read:
                near = difflib.get_close_matches(str(key), sorted(self._read), n=1)
                hint = (
                    f"did you mean {near[0]!r}?"
                    if near
                    else f"known keys: {', '.join(sorted(self._read))}"
                )
                raise ConfigError(self.at(str(key)), "unknown key", hint)


__all__ = [
    "Section",
    "example_path",
    "load",
    "load_document",
    "load_file",
    "parse_bytes",
    "parse_text",
    "read_document",
]
