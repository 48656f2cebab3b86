"""The reader of [uplink]: a cloud profile's defaults, the broker addresses, TLS, auth, topics
and presence, checked against the profile's hard limits.

Invariants:
- a profile (config/profiles.py) gives defaults that any key of [uplink] may override and limits
  that none may break; the limits are checked here, after templating, as the broker sees them;
- every sub-table is read in full and closed with `done()`: an unknown key is an error.
"""

from __future__ import annotations

import re

from . import profiles
from .errors import ConfigError
from .model import (
    AuthConfig,
    PresenceConfig,
    TlsConfig,
    TopicsConfig,
    UplinkConfig,
    choices_of,
)
from .section import Section


def read_uplink(s: Section) -> UplinkConfig:
    profile, limits = _profile(s)
    d = profiles.defaults(
        profile, s.text("region", ""), s.text("hub", ""), s.text("account_prefix", "")
    )
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
    if "{account_prefix}" in profile.host and not d.account_prefix and "host" not in s.names():
        raise ConfigError(
            s.at("account_prefix"),
            demanded,
            "set it to the part before -ats of `aws iot describe-endpoint --endpoint-type "
            "iot:Data-ATS`, and region, or set host",
        )
    plain = profile.plain_port is not None and tls.peek("enabled") is False
    port = s.integer("port", profile.plain_port if plain else d.port, lo=1, hi=65535)
    hosts = _hosts(s, port)
    if profile.auth_kind is None and "kind" not in auth.names():
        raise ConfigError(auth.at("kind"), demanded, 'set it to "jwt", "password" or "none"')
    cfg = UplinkConfig(
        profile=profile.name,
        broker=s.text("broker", d.broker),
        host=hosts[0][0] if hosts else s.text("host", d.host),
        port=hosts[0][1] if hosts else port,
        hosts=hosts,
        project=s.text("project", d.project),
        region=s.text("region", d.region),
        registry=s.text("registry", d.registry),
        device=s.text("device", d.device),
        hub=d.hub,
        account_prefix=d.account_prefix,
        channel=d.channel,
        client_id=s.template("client_id", d.client_id),
        protocol=s.choice("protocol", choices_of(UplinkConfig, "protocol"), d.protocol),
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
        field_device_name=_field_device_name(s, d),
        presence=_presence(presence),
        tls=TlsConfig(
            enabled=tls.flag("enabled", d.tls.enabled),
            ca_file=tls.opt_text("ca_file"),
            verify=tls.flag("verify", d.tls.verify),
            cert_file=tls.opt_text("cert_file"),
            key_file=tls.opt_text("key_file"),
            server_name=tls.opt_text("server_name"),
        ),
        auth=AuthConfig(
            kind=auth.choice(
                "kind", choices_of(AuthConfig, "kind"), profile.auth_kind or "none"
            ),
            algorithm=auth.choice(
                "algorithm", choices_of(AuthConfig, "algorithm"), d.auth.algorithm
            ),
            private_key=auth.text("private_key", d.auth.private_key),
            audience=auth.text("audience", d.auth.audience),
            lifetime_s=auth.integer("lifetime_s", d.auth.lifetime_s, lo=60, hi=24 * 3600),
            key_id=auth.opt_text("key_id"),
            username=auth.text("username", d.auth.username),
            password=auth.opt_text("password"),
            claims=_claims(auth.table("claims")),
            device_key=auth.opt_text("device_key"),
            device_key_file=auth.opt_text("device_key_file"),
            access_token=auth.opt_text("access_token"),
            access_token_file=auth.opt_text("access_token_file"),
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
    if cfg.auth.kind == "access_token" and (cfg.auth.access_token is None) == (
        cfg.auth.access_token_file is None
    ):
        raise ConfigError(
            auth.at("access_token"),
            'kind = "access_token" needs exactly one of access_token and access_token_file',
            "set access_token_file to a file holding the device's access token (ThingsBoard: "
            "the gateway device's Manage credentials), or access_token to the token",
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


FIELD_DEVICE_PLACEHOLDERS = ("gateway", "field_device")


def _field_device_name(s: Section, d: UplinkConfig) -> str:
    if "field_device_name" not in s.names():
        return d.field_device_name
    if d.channel != "thingsboard":
        raise ConfigError(
            s.at("field_device_name"),
            f"names field devices in ThingsBoard only, not under channel {d.channel!r}",
            'remove it, or set profile = "thingsboard"',
        )
    v = s.template("field_device_name", d.field_device_name, FIELD_DEVICE_PLACEHOLDERS)
    if "{field_device}" not in v:
        raise ConfigError(
            s.at("field_device_name"),
            f"{v!r} has no {{field_device}}: every field device would get one name",
            'include it, e.g. "{gateway}-{field_device}"',
        )
    return v
