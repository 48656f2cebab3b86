"""Rules engine: a pure function of (reading, state) to zero or more records, run before the buffer.

The skeleton passes every reading through unchanged; filters, transforms, windows and alarms
grow here.
"""

from .engine import Rules

__all__ = ["Rules"]
