"""One base error; each layer has its own subclass, translated once at the layer's boundary."""

from __future__ import annotations


class GatewaydError(Exception):
    """Base of every error gatewayd raises on purpose."""


class PlacedError(GatewaydError):
    """An error that names the place, the problem and the fix."""

    def __init__(self, place: str, problem: str, fix: str | None = None) -> None:
        self.place = place
        self.problem = problem
        self.fix = fix
        text = f"{place}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)
