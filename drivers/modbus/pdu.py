"""Modbus PDUs: build requests, and check every response against the request that caused it.

A response that does not answer the question asked (another function code, fewer registers or
bits than requested, a write echo with another address) raises `ModbusFault` with a reason code;
it never becomes a number. The transports (TCP, RTU) check the envelope (transaction id, unit id,
CRC) and share these checks for the PDU: `unit_accepted` (a device's `accept_unit_ids`) and
`check_shape` (function code and byte count, which RTU needs to know the line is in step).
"""

from __future__ import annotations

import struct
from collections.abc import Collection

READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
BUSY = 6  # exception code: slave device busy


class ModbusFault(Exception):
    """A request got no usable answer; `reason` becomes the bad-quality reason code.

    Reasons: timeout, disconnected, exception_NN, crc, short_reply, wrong_unit, wrong_function,
    wrong_transaction, bad_frame.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail  # the cause, for the log (e.g. why a port cannot be opened)

    @property
    def device_answered(self) -> bool:
        """True when the device is alive and said no (an exception), not when the link failed."""
        return self.reason.startswith("exception_")


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
        raise ModbusFault("short_reply", f"{len(response)} byte PDU")
    fc = request[0]
    if response[0] == fc | 0x80:
        raise ModbusFault(f"exception_{response[1]:02d}")
    if response[0] != fc:
        raise ModbusFault("wrong_function", f"asked {fc}, got {response[0]}")


def parse_read(request: bytes, response: bytes) -> list[int]:
    """Registers (or bits, one int each) of a read response, exactly as many as requested."""
    check_function(request, response)
    fc, count = request[0], struct.unpack_from(">H", request, 3)[0]
    want = 2 * count if fc in (3, 4) else (count + 7) // 8
    nbytes = response[1]
    if nbytes != want or len(response) != 2 + want:
        # pymodbus accepts these silently; a short reply must never shift values between points.
        raise ModbusFault("short_reply", f"{len(response) - 2} of {want} bytes")
    data = response[2:]
    if fc in (3, 4):
        return list(struct.unpack(f">{count}H", data))
    return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]


def check_write(request: bytes, response: bytes) -> None:
    """A write is confirmed by an echo of its address and value (or count)."""
    check_function(request, response)
    if response[:5] != request[:5] or len(response) != 5:
        raise ModbusFault("bad_frame", "write echo does not match the request")


def check_shape(request: bytes, response: bytes) -> None:
    """Raise unless the response has the request's function code (or is its exception) and,
    for a read, the byte count the request asked for: what a link must see to know the line
    is still in step with its requests."""
    fc = request[0]
    if response[0] == fc | 0x80:
        return
    if response[0] != fc:
        raise ModbusFault("wrong_function", f"asked {fc}, got {response[0]}")
    if fc in (1, 2, 3, 4):
        count = struct.unpack_from(">H", request, 3)[0]
        want = 2 * count if fc in (3, 4) else (count + 7) // 8
        if response[1] != want:
            raise ModbusFault("short_reply", f"byte count {response[1]}, asked for {want}")


def response_length(request: bytes, head: bytes) -> int:
    """Length of the response PDU, known from the request and its first two bytes (for RTU)."""
    if head[0] & 0x80:
        return 2
    if request[0] in (1, 2, 3, 4):
        return 2 + head[1]
    return 5
