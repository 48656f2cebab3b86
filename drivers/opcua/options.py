"""The options of the OPC UA client driver and its point schema (the plugin contract only).

Invariants:
- Security is Basic256Sha256 (SignAndEncrypt by default) with a client certificate and a trust
  list of server certificates; `security_policy = "None"` is the only way to an unsecured
  session, and it is never a default.
- A point names exactly one of `node` (a NodeId string: `ns=2;s=Plant.Temp`, `i=2258`,
  `ns=3;g=...`) or `browse_path` (`0:Objects/2:Plant/2:Temperature`, resolved at connect).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from gatewayd.config import ConfigError, DeviceConfig, PointConfig
from gatewayd.drivers.options import At, OptionSet, option

# A NodeId string as OPC UA Part 6 writes it: optional ns= (or nsu=), then i= s= g= or b=.
NODE_ID = re.compile(r"(?:(?:ns=\d+|nsu=[^;]+);)?(?:i=\d+|s=.+|g=[0-9A-Fa-f-]{36}|b=.+)")
BROWSE_STEP = re.compile(r"\d+:[^/]+")
WriteType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]


@dataclass(frozen=True, slots=True)
class OpcUaOptions:
    endpoint: str = option(doc='the server, e.g. "opc.tcp://plc.local:4840"')
    security_policy: Literal["Basic256Sha256", "None"] = option(
        "Basic256Sha256", doc='"None" only for a server on a trusted network'
    )
    security_mode: Literal["SignAndEncrypt", "Sign"] = option("SignAndEncrypt")
    certificate: str = option("", doc="the client's certificate (DER or PEM)")
    private_key: str = option("", doc="the client certificate's private key (PEM)")
    # Server certificates this client trusts; the server's must be one of them.
    trust: tuple[str, ...] = option((), doc="trusted server certificates (DER or PEM files)")
    application_uri: str = option(
        "urn:gatewayd:client", doc="must match the URI in the client certificate"
    )
    username: str | None = option(None)
    password: str | None = option(None)
    publishing_interval_ms: int = option(
        500, lo=10, hi=3_600_000, doc="how often the server sends a subscription's changes"
    )
    session_timeout_s: float = option(60.0, lo=1.0, hi=3600.0)
    request_timeout_s: float = option(4.0, lo=0.1, hi=300.0)
    queue_max: int = option(
        10_000, lo=1, hi=10_000_000, doc="notifications held between polls; the oldest drop"
    )
    backoff_base_s: float = option(1.0, lo=0.01, hi=3600.0, doc="reconnect delay, doubling")
    backoff_cap_s: float = option(30.0, lo=0.01, hi=3600.0)
    fail_threshold: int = option(3, lo=1, hi=100, doc="failed polls in a row before down")


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    node: str = option("", doc='a NodeId, e.g. "ns=2;s=Plant.Temperature" or "i=2258"')
    browse_path: str = option("", doc='from the root, e.g. "0:Objects/2:Plant/2:Temperature"')
    mode: Literal["subscribe", "poll"] = option(
        "subscribe", doc="subscribe: a monitored item; poll: read at every poll"
    )
    sampling_interval_ms: float = option(
        -1.0,
        lo=-1.0,
        hi=3_600_000.0,
        doc="the server samples this often; -1: the publishing interval",
    )
    queue_size: int = option(1, lo=1, hi=10_000, doc="the server's queue of this item")
    deadband: float = option(0.0, lo=0.0, hi=1e12, doc="changes smaller than this are not sent")
    deadband_type: Literal["absolute", "percent"] = option("absolute")
    type: WriteType = option("float64", doc="the variant type a write sends")
    scale: float = option(1.0)
    offset: float = option(0.0)
    unit: str = option("")
    writable: bool = option(False)
    min: float | None = option(None)
    max: float | None = option(None)


def make_point(v: OpcUaPoint, base: PointConfig, at: At) -> PointConfig:
    if bool(v.node) == bool(v.browse_path):
        raise ConfigError(
            at("node"),
            "give exactly one of node and browse_path",
            'e.g. node = "ns=2;s=Plant.Temperature" or '
            'browse_path = "0:Objects/2:Plant/2:Temperature"',
        )
    if v.node and not NODE_ID.fullmatch(v.node):
        raise ConfigError(
            at("node"),
            f"{v.node!r} is not a NodeId",
            "write ns=<index>;s=<name>, ns=<index>;i=<number> or i=<number>",
        )
    if v.browse_path and not all(BROWSE_STEP.fullmatch(p) for p in v.browse_path.split("/")):
        raise ConfigError(
            at("browse_path"),
            f"{v.browse_path!r} is not a browse path",
            'write <ns>:<name> steps from the root, e.g. "0:Objects/2:Plant/2:Temperature"',
        )
    if v.min is not None and v.max is not None and v.min > v.max:
        raise ConfigError(at("min"), f"{v.min} is above max = {v.max}", "swap them")
    if v.deadband_type == "percent" and v.deadband > 100:
        raise ConfigError(at("deadband"), f"{v.deadband} is above 100 %", "use 0..100")
    # table "holding" puts numeric writes through check_write's range check.
    return replace(
        base,
        table="holding" if v.type not in ("bool", "string") else "coil",
        type=v.type,
        scale=v.scale,
        offset=v.offset,
        unit=v.unit,
        writable=v.writable,
        min=v.min,
        max=v.max,
        length=64 if v.type == "string" else 0,
        options=v,
    )


def check(device: DeviceConfig, at: At) -> None:
    o: OpcUaOptions = device.options
    if not o.endpoint.startswith("opc.tcp://"):
        raise ConfigError(
            at("endpoint"), f"{o.endpoint!r} is not an opc.tcp:// URL", 'e.g. "opc.tcp://plc:4840"'
        )
    if o.security_policy != "None":
        for key in ("certificate", "private_key"):
            if not getattr(o, key):
                raise ConfigError(
                    at(key),
                    f'missing, demanded by security_policy = "{o.security_policy}"',
                    'give the client certificate files, or security_policy = "None" on a '
                    "trusted network only",
                )
        if not o.trust:
            raise ConfigError(
                at("trust"),
                f'empty, demanded by security_policy = "{o.security_policy}"',
                'list the server\'s certificate (its trust list), e.g. trust = ["server.der"]',
            )
    if o.backoff_cap_s < o.backoff_base_s:
        raise ConfigError(at("backoff_cap_s"), "is below backoff_base_s", "raise the cap")


OPTIONS = OptionSet(device=OpcUaOptions, point=OpcUaPoint, make_point=make_point, check=check)
