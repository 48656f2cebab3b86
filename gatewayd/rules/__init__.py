"""Rules engine: a pure function of (reading, state) to zero or more records, run before the buffer.

Rules attach to points by id or glob and run their steps in order: transforms, filters, windows,
alarms and routing (config/rules.py is the schema, config/expr.py the expression language).
"""

from .engine import Rules

__all__ = ["Rules"]
