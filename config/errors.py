from __future__ import annotations

from collections.abc import Iterable

from gatewayd.errors import PlacedError


class ConfigError(PlacedError):
    """A configuration value is missing, malformed or out of range.

    `place` is the path inside the document, e.g. `devices[2].points[5].address`.
    """


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to a mistyped `word`, for a "did you mean" in an error's fix; None
    when none is near. difflib is imported on a mistake only, not at every start."""
    from difflib import get_close_matches

    near = get_close_matches(word, list(choices), n=1)
    return near[0] if near else None
