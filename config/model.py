"""Typed, frozen configuration objects. Defaults here are the documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RegisterTable = Literal["coil", "discrete", "input", "holding"]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


@dataclass(frozen=True, slots=True)
class PointConfig:
    id: str
    table: RegisterTable
    address: int
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

    @property
    def register_count(self) -> int:
        """How many 16-bit registers (or bits, for coil/discrete) the point spans."""
        if self.table in ("coil", "discrete"):
            return 1
        return {
            "bool": 1,
            "int16": 1,
            "uint16": 1,
            "int32": 2,
            "uint32": 2,
            "float32": 2,
            "int64": 4,
            "uint64": 4,
            "float64": 4,
            "string": self.length,
        }[self.type]


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    driver: str
    interval_ms: int = 1000
    host: str = "127.0.0.1"
    port: int = 502
    unit: int = 1
    timeout_s: float = 1.0
    points: tuple[PointConfig, ...] = ()


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


@dataclass(frozen=True, slots=True)
class AuthConfig:
    kind: Literal["jwt", "password", "none"] = "jwt"
    algorithm: Literal["ES256", "RS256"] = "ES256"
    private_key: str = "device.key"  # relative paths are inside the config directory
    audience: str = ""
    lifetime_s: int = 3600
    key_id: str | None = None
    username: str = "unused"
    password: str | None = None


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    events: str = "/devices/{device}/events"
    state: str = "/devices/{device}/state"
    config: str = "/devices/{device}/config"
    commands: str = "/devices/{device}/commands/#"


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    host: str = "mqtt.googleapis.com"
    port: int = 8883
    project: str = ""
    region: str = ""
    registry: str = ""
    device: str = ""
    client_id: str = "projects/{project}/locations/{region}/registries/{registry}/devices/{device}"
    keepalive_s: int = 60
    batch_max_records: int = 500
    batch_max_bytes: int = 256 * 1024
    inflight_window: int = 20
    puback_timeout_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)

    def template_values(self) -> dict[str, str]:
        return {
            "project": self.project,
            "region": self.region,
            "registry": self.registry,
            "device": self.device,
            "device_id": self.device,
        }


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    version: int = 0
    gateway_id: str = "gateway"
    state_dir: str = "/var/lib/gatewayd"
    buffer: BufferConfig = field(default_factory=BufferConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    devices: tuple[DeviceConfig, ...] = ()
