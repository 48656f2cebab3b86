from __future__ import annotations

from gatewayd.errors import PlacedError


class ConfigError(PlacedError):
    """A configuration value is missing, malformed or out of range.

    `place` is the path inside the document, e.g. `devices[2].points[5].address`.
    """
