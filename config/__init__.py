"""Configuration: the one place where TOML text and pushed documents become typed, frozen objects.

`load(text)` validates a local TOML file and `load_document(dict)` a remote push with the same
code; every error names the path (`devices[2].points[5].address`), the problem and the fix.
"""

from .errors import ConfigError
from .model import (
    AuthConfig,
    BufferConfig,
    DeviceConfig,
    GatewayConfig,
    MetricsConfig,
    PointConfig,
    PresenceConfig,
    RemoteConfigConfig,
    TlsConfig,
    TopicsConfig,
    UplinkConfig,
)
from .parse import example_path, load, load_document, load_file, parse_bytes, read_document
from .rules import RuleConfig

__all__ = [
    "AuthConfig",
    "BufferConfig",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "MetricsConfig",
    "PointConfig",
    "PresenceConfig",
    "RemoteConfigConfig",
    "RuleConfig",
    "TlsConfig",
    "TopicsConfig",
    "UplinkConfig",
    "example_path",
    "load",
    "load_document",
    "load_file",
    "parse_bytes",
    "read_document",
]
