"""Modbus PDUs: build requests, and check every response against the request that caused it.

A response that does not answer the question asked (another function code, fewer registers or
bits than requested, a write echo with another address) raises `ModbusFault` with a `Reason`;
it never becomes a number. Code compares the `Reason` (and an exception's `code`), never the
reading's reason string, which `ModbusFault.reason` makes once, as a plain str. The transports
(TCP, RTU) check the envelope (transaction id, unit id, CRC) and share these checks for the PDU:
`unit_accepted` (a device's `accept_unit_ids`) and `check_shape` (function code and byte count,
which RTU needs to know the line is in step).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from enum import StrEnum

READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
# Exception codes the driver acts on (the rest only name a cause, causes.EXCEPTIONS).
ILLEGAL_DATA_ADDRESS = 2  # a merged read spans a hole the device lacks: split it
BUSY = 6  # server device busy: retried


class Reason(StrEnum):
    """Why a request got no usable answer. A value is the reading's reason code, in stored
    records, metrics and the state document; EXCEPTION's code is `exception_NN` instead, NN the
    device's exception code (`ModbusFault.reason`)."""

    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    CRC = "crc"
    SHORT_REPLY = "short_reply"
    WRONG_UNIT = "wrong_unit"
    WRONG_FUNCTION = "wrong_function"
    WRONG_TRANSACTION = "wrong_transaction"
    BAD_FRAME = "bad_frame"
    EXCEPTION = "exception"  # the device answered with an exception response


class ModbusFault(Exception):
    """A request got no usable answer: `kind`, the exception `code` when the device sent one,
    and `reason`, the bad-quality reason code readings carry (a plain str)."""

    def __init__(self, kind: Reason, detail: str = "", *, code: int | None = None) -> None:
        if (code is None) != (kind is not Reason.EXCEPTION):
            raise ValueError(f"ModbusFault: {kind!r} with code {code!r}")
        self.kind = kind
        self.code = code  # the device's exception code, for Reason.EXCEPTION only
        self.reason = f"exception_{code:02d}" if code is not None else kind.value
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail  # the cause, for the log (e.g. why a port cannot be opened)

    @classmethod
    def exception(cls, code: int) -> ModbusFault:
        """The device answered with exception response `code`."""
        return cls(Reason.EXCEPTION, code=code)

    @property
    def device_answered(self) -> bool:
        """True when the device is alive and said no (an exception), not when the link failed."""
        return self.kind is Reason.EXCEPTION


def unit_accepted(asked: int, got: int, accept: Collection[int] | str) -> bool:
    """The reply's unit id is ours, or one the device is configured to answer with."""
    return got == asked or accept == "any" or (not isinstance(accept, str) and got in accept)


def read_request(table: str, address: int, count: int) -> bytes:
    return struct.pack(">BHH", READ_FC[table], address, count)


def write_coil_request(address: int, value: bool) -> bytes:
    return struct.pack(">BHH", WRITE_COIL, address, 0xFF00 if value else 0)


def write_register_request(address: int, word: int) -> bytes:
    return struct.pack(">BHH", WRITE_REGISTER, address, word)


def write_registers_request(address: int, words: list[int]) -> bytes:
    n = len(words)
    return struct.pack(f">BHHB{n}H", WRITE_REGISTERS, address, n, 2 * n, *words)


def write_coils_request(address: int, bits: list[bool]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            packed[i // 8] |= 1 << (i % 8)
    return struct.pack(">BHHB", WRITE_COILS, address, len(bits), len(packed)) + bytes(packed)


def check_function(request: bytes, response: bytes) -> None:
    """Raise for an exception response or one for another function code."""
    if len(response) < 2:
        raise ModbusFault(Reason.SHORT_REPLY, f"{len(response)} byte PDU")
    fc = request[0]
    if response[0] == fc | 0x80:
        raise ModbusFault.exception(response[1])
    if response[0] != fc:
        raise ModbusFault(Reason.WRONG_FUNCTION, f"asked {fc}, got {response[0]}")


def parse_read(request: bytes, response: bytes) -> list[int]:
    """Registers (or bits, one int each) of a read response, exactly as many as requested."""
    check_function(request, response)
    fc, count = request[0], struct.unpack_from(">H", request, 3)[0]
    want = 2 * count if fc in (3, 4) else (count + 7) // 8
    nbytes = response[1]
    if nbytes != want or len(response) != 2 + want:
        # pymodbus accepts these silently; a short reply must never shift values between points.
        raise ModbusFault(Reason.SHORT_REPLY, f"{len(response) - 2} of {want} bytes")
    data = response[2:]
    if fc in (3, 4):
        return list(struct.unpack(f">{count}H", data))
    return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]


def check_write(request: bytes, response: bytes) -> None:
    """A write is confirmed by an echo of its address and value (or count)."""
    check_function(request, response)
    if response[:5] != request[:5] or len(response) != 5:
        raise ModbusFault(Reason.BAD_FRAME, "write echo does not match the request")


def check_shape(request: bytes, response: bytes) -> None:
    """Raise unless the response has the request's function code (or is its exception) and,
    for a read, the byte count the request asked for: what a link must see to know the line
    is still in step with its requests."""
    fc = request[0]
    if response[0] == fc | 0x80:
        return
    if response[0] != fc:
        raise ModbusFault(Reason.WRONG_FUNCTION, f"asked {fc}, got {response[0]}")
    if fc in (1, 2, 3, 4):
        count = struct.unpack_from(">H", request, 3)[0]
        want = 2 * count if fc in (3, 4) else (count + 7) // 8
        if response[1] != want:
            raise ModbusFault(Reason.SHORT_REPLY, f"byte count {response[1]}, asked for {want}")


def response_length(request: bytes, head: bytes) -> int:
    """Length of the response PDU, known from the request and its first two bytes (for RTU)."""
    if head[0] & 0x80:
        return 2
    if request[0] in (1, 2, 3, 4):
        return 2 + head[1]
    return 5
