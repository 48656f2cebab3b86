"""Typed, frozen configuration objects: every one the parser builds, rules' steps included.

Invariants:
- defaults and `Literal` choice lists here are the documented ones; the readers (config/
  tables.py, uplink.py, devices.py, rules.py) and `gatewayd schema` take theirs from these
  dataclasses instead of writing them again;
- this module imports no reader and no parser: the readers import the model, never the reverse.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from .expr import Expr
from .units import UNITS

RegisterTable = Literal["coil", "discrete", "input", "holding"]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


@dataclass(frozen=True, slots=True)
class PointConfig:
    id: str
    table: RegisterTable = "input"
    address: int = 0
    type: DataType = "uint16"
    order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    length: int = 0  # registers, for strings
    bit: int | None = None  # bit-in-register, 0 = least significant
    writable: bool = False
    min: float | None = None
    max: float | None = None
    interval_ms: int | None = None  # overrides the device's interval
    field: str = ""  # serial_line: the field of a line that holds the value (NMEA: "GGA.lat")
    # The driver's own point keys beyond these (its OptionSet.point instance), e.g. an OPC UA
    # node id; None for the built-in drivers, whose keys are the fields above.
    options: Any = None


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A device: the keys every driver shares; the rest is the driver's own `options`.

    `options` is an instance of the dataclass its driver declares (OptionSet.device, see
    config/options.py), or None for a driver that declares none.
    """

    id: str
    driver: str
    interval_ms: int = 1000
    timeout_s: float = 1.0  # per request; the poll deadline grows with it (polling.py)
    points: tuple[PointConfig, ...] = ()
    options: Any = None


@dataclass(frozen=True, slots=True)
class BufferConfig:
    path: str = "buffer.sqlite"  # relative paths are inside the state directory
    sync: Literal["full", "normal"] = "normal"
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: int | None = None  # telemetry older than this (by its timestamp) is dropped, counted


@dataclass(frozen=True, slots=True)
class TlsConfig:
    enabled: bool = True
    ca_file: str | None = None  # None: the system trust store
    verify: bool = True
    cert_file: str | None = None  # client certificate, for mTLS
    key_file: str | None = None
    # The name the broker's certificate must carry (and SNI), when host is an IP or an alias.
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # sas: an Azure IoT Hub SAS token signed with the device key; x509: the TLS client
    # certificate alone (the username is still sent, no password); access_token: ThingsBoard's
    # device access token as the username, no password.
    kind: Literal["jwt", "password", "sas", "x509", "access_token", "none"] = "jwt"
    algorithm: Literal["ES256", "RS256"] = "ES256"
    private_key: str = "device.key"  # relative paths are inside the config directory
    audience: str = ""
    lifetime_s: int = 3600
    key_id: str | None = None
    username: str = "unused"
    password: str | None = None
    # Extra JWT claims, e.g. (("scope", "mqtt:publish"),) for brokers that check a scope.
    claims: tuple[tuple[str, str | int | float | bool], ...] = ()
    # kind = "sas": the device's shared access key (base64), inline or in a file.
    device_key: str | None = None
    device_key_file: str | None = None  # relative paths are inside the config directory
    # kind = "access_token": the token, inline or in a file (relative: in the config directory).
    access_token: str | None = None
    access_token_file: str | None = None


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    events: str = "/devices/{device}/events"
    state: str = "/devices/{device}/state"
    config: str = "/devices/{device}/config"
    commands: str = "/devices/{device}/commands/#"
    command_results: str = "/devices/{device}/events/command-results"


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    """A retained online/offline message; the offline one is also the connection's last will."""

    enabled: bool = False
    topic: str = "/devices/{device}/presence"
    online: str = "online"
    offline: str = "offline"


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    # A cloud's defaults and hard limits (config/profiles.py); "" = Cloud IoT Core's defaults,
    # nothing enforced. `broker` names a self-hosted broker's limits under profile = "mqtt".
    profile: str = ""
    broker: str = ""
    host: str = "mqtt.googleapis.com"
    port: int = 8883
    # [uplink] hosts: brokers of one cluster, tried in order (the next after a failed connect or
    # a dead session); () = just host:port. When set, host and port are its first entry.
    hosts: tuple[tuple[str, int], ...] = ()
    project: str = ""
    region: str = ""
    registry: str = ""
    device: str = ""
    hub: str = ""  # Azure IoT Hub: the hub's name ({hub}.azure-devices.net)
    # AWS IoT Core: the account's endpoint prefix ({account_prefix}-ats.iot.{region}.amazonaws.com)
    account_prefix: str = ""
    # How config, commands and state travel (gatewayd/uplink/channels): "topic" (retained
    # config topic, commands topic), "azure" (device twin, direct methods), "aws" (named
    # shadow, jobs) or "thingsboard" (attributes, RPC); set by the profile.
    channel: Literal["topic", "azure", "aws", "thingsboard"] = "topic"
    client_id: str = "projects/{project}/locations/{region}/registries/{registry}/devices/{device}"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0  # TCP + TLS + CONNACK
    batch_max_records: int = 2000  # ~170 KB of typical readings, under batch_max_bytes
    batch_max_bytes: int = 256 * 1024
    inflight_window: int = 20
    max_messages_per_s: float = 100.0
    puback_timeout_s: float = 30.0
    # Full jitter, random(0, min(cap, base * 2^n)): a cap of 10 s brings a gateway back within
    # about 3 s (median) of a broker's return, while a fleet's attempts spread over 10 s.
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 10.0
    encoder: str = "json"  # "json" or a name registered under entry points "gatewayd.encoders"
    # False: the broker keeps the session while the gateway is offline, so QoS 1 commands sent
    # meanwhile are delivered after the reconnect (MQTT 5: for session_expiry_s).
    clean_session: bool = True
    session_expiry_s: int = 3600
    retain_state: bool = False  # publish the state document retained
    # ThingsBoard: the name a field device gets in the tenant ({gateway}: [uplink] device,
    # {field_device}: the device's id). Names are per tenant: gateways that each have a "plc"
    # share one ThingsBoard device unless the name tells them apart ("{gateway}-{field_device}").
    field_device_name: str = "{field_device}"
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)

    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The brokers to connect to, in failover order."""
        return self.hosts or ((self.host, self.port),)

    def field_device_name_of(self, field_device: str) -> str:
        """A field device's ThingsBoard name: `field_device_name` filled in."""
        return self.field_device_name.format(gateway=self.device, field_device=field_device)

    def template_values(self) -> dict[str, str]:
        return {
            "project": self.project,
            "region": self.region,
            "registry": self.registry,
            "device": self.device,
            "device_id": self.device,
            "hub": self.hub,
        }


@dataclass(frozen=True, slots=True)
class RemoteConfigConfig:
    """How pushed configurations and commands are accepted."""

    enabled: bool = True
    health_deadline_s: float = 60.0  # keep a candidate only if healthy within this time
    require_signed: bool = False
    signing_key: str | None = None  # PEM public key; relative paths are in the config folder
    max_document_bytes: int = 256 * 1024
    commands_per_minute: int = 60


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Self-update (gatewayd/lifecycle). Read from the local file only: a push cannot change it."""

    release_key: str | None = None  # PEM public key of the operator's release key; None: off
    releases_dir: str = "/opt/gatewayd/releases"
    health_deadline_s: float = 120.0  # the new version must be healthy within this, or roll back
    max_starts: int = 3  # starts of an unconfirmed release before going back to the previous one
    max_bytes: int = 128 * 1024 * 1024  # all of a release's files together
    chunk_timeout_s: float = 300.0  # an MQTT transfer with no chunk for this long is abandoned


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Prometheus text endpoint; loopback only by default, "" turns it off. `gatewayd status`
    # reads it too.
    listen: str = "127.0.0.1:9108"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    # logfmt (key=value) or one JSON object per line; `gatewayd --log-level` overrides `level`.
    format: Literal["logfmt", "json"] = "logfmt"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# [[rules]]: a rule names points and the steps their readings go through (config/rules.py).
LaneName = Literal["alarm", "event", "telemetry"]
Severity = Literal["info", "warning", "minor", "major", "critical"]
Aggregate = Literal["min", "max", "mean", "count", "last"]
AGGREGATES: tuple[Aggregate, ...] = get_args(Aggregate)
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
LANES: tuple[LaneName, ...] = get_args(LaneName)


@dataclass(frozen=True, slots=True)
class ScaleStep:
    """value * factor + offset (also what a unit conversion compiles to)."""

    factor: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class ConvertStep:
    source: str
    target: str

    @property
    def affine(self) -> tuple[float, float]:
        _, a1, b1 = UNITS[self.source]
        _, a2, b2 = UNITS[self.target]
        return a1 / a2, (b1 - b2) / a2


@dataclass(frozen=True, slots=True)
class ClampStep:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class RoundStep:
    digits: int = 0  # 0 gives an integer


@dataclass(frozen=True, slots=True)
class ExprStep:
    expr: Expr


@dataclass(frozen=True, slots=True)
class DeadbandStep:
    """Report by exception: pass a value only when it moved at least the band since the last
    one passed, or when `heartbeat_s` has gone by. absolute = 0 passes every change."""

    absolute: float | None = None
    percent: float | None = None  # of the last value passed
    heartbeat_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitStep:
    min_interval_s: float


@dataclass(frozen=True, slots=True)
class ConditionStep:
    keep: bool  # True: keep when `when` holds; False: drop when it holds
    when: Expr


@dataclass(frozen=True, slots=True)
class QualityStep:
    bad: Literal["drop", "pass"] = "drop"
    uncertain: Literal["drop", "pass"] = "pass"


@dataclass(frozen=True, slots=True)
class WindowStep:
    seconds: int
    emit: tuple[Aggregate, ...] = ("mean",)
    grace_s: float = 1.0  # a window closes by the clock this long after its end


@dataclass(frozen=True, slots=True)
class AlarmStep:
    name: str
    high: float | None = None
    low: float | None = None
    hysteresis: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    severity: Severity = "warning"


@dataclass(frozen=True, slots=True)
class RouteStep:
    subfolder: str | None = None
    lane: LaneName | None = None
    drop: bool = False


StepConfig = (
    ScaleStep
    | ConvertStep
    | ClampStep
    | RoundStep
    | ExprStep
    | DeadbandStep
    | RateLimitStep
    | ConditionStep
    | QualityStep
    | WindowStep
    | AlarmStep
    | RouteStep
)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    points: tuple[str, ...]  # point ids or globs: "boiler/pressure", "pump-*/pressure"
    steps: tuple[StepConfig, ...]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    version: int = 0
    gateway_id: str = "gateway"
    state_dir: str = "/var/lib/gatewayd"
    # [gateway] labels: published in the state document, so `gatewayd fleet --select` works
    # without an inventory. Sorted (key, value) pairs of safe strings (see tables.read_labels).
    labels: tuple[tuple[str, str], ...] = ()
    # Resident memory the daemon keeps under: near it, polls wait for each other (polling.py).
    # 256 MB leaves a 1 GB Pi most of its memory.
    memory_limit_mb: int = 256
    buffer: BufferConfig = field(default_factory=BufferConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    devices: tuple[DeviceConfig, ...] = ()
    remote_config: RemoteConfigConfig = field(default_factory=RemoteConfigConfig)
    rules: tuple[RuleConfig, ...] = ()  # [[rules]], applied in order
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@functools.cache
def choices_of(cls: type[Any], name: str) -> tuple[str, ...]:
    """The strings field `name` of `cls` allows: its `Literal`'s, in the order written (through
    `X | None`). The readers pass these to Section.choice, so a choice list is written once."""
    tp = typing.get_type_hints(cls)[name]
    if get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is not Literal:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal of strings")
    return get_args(tp)


def default_of(cls: type[Any], name: str) -> Any:
    """The default of field `name` of `cls`, for a class with required fields (no `cls()`)."""
    for f in dataclasses.fields(cls):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
        if f.name == name and f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
    raise TypeError(f"{cls.__name__}.{name} has no default")
