"""The four Modbus tables of one simulated device, and the PDU logic that serves them.

Kept independent of the transport so the TCP and RTU servers share it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3


@dataclass
class DataModel:
    coils: bytearray = field(default_factory=lambda: bytearray(65536))
    discrete: bytearray = field(default_factory=lambda: bytearray(65536))
    input: list[int] = field(default_factory=lambda: [0] * 65536)
    holding: list[int] = field(default_factory=lambda: [0] * 65536)
    # Addresses that exist; a read touching anything else answers exception 02 (None: all exist).
    defined: set[int] | None = None
    writes: int = 0

    def set_words(self, table: str, address: int, words: list[int]) -> None:
        regs = self.holding if table == "holding" else self.input
        regs[address : address + len(words)] = [w & 0xFFFF for w in words]

    def handle(self, pdu: bytes) -> bytes:
        """Answer one request PDU (function code + data) with a response PDU."""
        if not pdu:
            return bytes([0x80, ILLEGAL_FUNCTION])
        fc = pdu[0]
        try:
            return self._dispatch(fc, pdu[1:])
        except (struct.error, IndexError):
            return bytes([fc | 0x80, ILLEGAL_VALUE])

    def _check(self, fc: int, address: int, count: int, limit: int) -> bytes | None:
        if not 1 <= count <= limit:
            return bytes([fc | 0x80, ILLEGAL_VALUE])
        if address + count > 65536:
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        if self.defined is not None and any(
            a not in self.defined for a in range(address, address + count)
        ):
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        return None

    def _dispatch(self, fc: int, data: bytes) -> bytes:
        if fc in (1, 2):
            address, count = struct.unpack(">HH", data[:4])
            if err := self._check(fc, address, count, 2000):
                return err
            bits = (self.coils if fc == 1 else self.discrete)[address : address + count]
            packed = bytearray((count + 7) // 8)
            for i, b in enumerate(bits):
                if b:
                    packed[i // 8] |= 1 << (i % 8)
            return bytes([fc, len(packed)]) + bytes(packed)
        if fc in (3, 4):
            address, count = struct.unpack(">HH", data[:4])
            if err := self._check(fc, address, count, 125):
                return err
            regs = (self.holding if fc == 3 else self.input)[address : address + count]
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
        if fc == 5:
            address, value = struct.unpack(">HH", data[:4])
            if value not in (0, 0xFF00):
                return bytes([fc | 0x80, ILLEGAL_VALUE])
            if err := self._check(fc, address, 1, 1):
                return err
            self.coils[address] = 1 if value else 0
            self.writes += 1
            return bytes([fc]) + data[:4]
        if fc == 6:
            address, value = struct.unpack(">HH", data[:4])
            if err := self._check(fc, address, 1, 1):
                return err
            self.holding[address] = value
            self.writes += 1
            return bytes([fc]) + data[:4]
        if fc == 15:
            address, count, nbytes = struct.unpack(">HHB", data[:5])
            if err := self._check(fc, address, count, 1968):
                return err
            raw = data[5 : 5 + nbytes]
            for i in range(count):
                self.coils[address + i] = (raw[i // 8] >> (i % 8)) & 1
            self.writes += 1
            return bytes([fc]) + data[:4]
        if fc == 16:
            address, count, nbytes = struct.unpack(">HHB", data[:5])
            if err := self._check(fc, address, count, 123):
                return err
            if nbytes != 2 * count:
                return bytes([fc | 0x80, ILLEGAL_VALUE])
            self.holding[address : address + count] = list(
                struct.unpack(f">{count}H", data[5 : 5 + nbytes])
            )
            self.writes += 1
            return bytes([fc]) + data[:4]
        return bytes([fc | 0x80, ILLEGAL_FUNCTION])
