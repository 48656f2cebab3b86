"""What a ModbusFault means, in words: for logs, device_down events, status and write results.

A reading keeps the short reason code (`exception_02`, `disconnected`); people get the cause
(`exception 02 illegal data address`, `connection refused`). The cause of a lost connection is
found in the exception chain the link raised from.
"""

from __future__ import annotations

import asyncio

from .pdu import ModbusFault, Reason
from .rtu import OPEN_FAILURE

# The Modbus application protocol's exception codes (V1.1b3, section 7).
EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def _root(fault: BaseException) -> BaseException | None:
    seen = fault.__cause__ or fault.__context__
    for _ in range(5):  # the chain is short; bounded in case of a cycle
        if seen is None or not isinstance(seen, ModbusFault):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def refused(fault: ModbusFault) -> bool:
    """The connection was refused: the request cannot have reached the device."""
    return isinstance(_root(fault), ConnectionRefusedError)


def cause(fault: ModbusFault) -> str:
    if fault.code is not None:
        return f"exception {fault.code:02d} {EXCEPTIONS.get(fault.code, 'unknown exception')}"
    if fault.kind is not Reason.DISCONNECTED:
        return fault.kind.value.replace("_", " ")  # timeout, short reply, wrong unit, crc, ...
    if fault.detail.startswith(OPEN_FAILURE):
        return fault.detail  # rtu.open_failure: the port, why it will not open, and the fix
    err = _root(fault)
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, asyncio.IncompleteReadError):
        return "connection closed by the device"
    if isinstance(err, TimeoutError):
        return "connect timed out"
    if isinstance(err, OSError) and err.strerror:
        text = str(err.strerror)
        return text[:1].lower() + text[1:]
    return fault.reason  # "disconnected": nothing more is known
