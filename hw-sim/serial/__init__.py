"""Simulated serial lines: pseudo-terminals with true wire timing, and line instruments."""

from .pty import Pty, wire_time_s

__all__ = ["Pty", "wire_time_s"]
