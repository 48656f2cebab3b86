"""Per-unit fault injection for the simulated slaves (TCP and RTU).

Set fields on `slave.faults(unit)`; `times` limits how many requests a fault applies to (then
it clears itself), None keeps it until `clear()`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Faults:
    delay_s: float = 0.0  # answer late (an RTU "late reply" is a delay beyond the timeout)
    exception: int | None = None  # answer every request with this exception code
    drop: bool = False  # read the request, never answer
    truncate: bool = False  # cut the reply PDU in half (TCP: with a matching MBAP length)
    cut: bool = False  # TCP: send the MBAP header of the whole reply but only half its PDU
    short: bool = False  # a well-formed read reply with one register (or 8 bits) fewer
    wrong_unit: bool = False  # answer with unit id + 1
    wrong_function: bool = False  # answer with another function code
    wrong_transaction: bool = False  # TCP: answer with another transaction id
    bad_crc: bool = False  # RTU: flip the CRC
    disconnect: bool = False  # TCP: close the connection instead of answering
    times: int | None = None

    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "times")

    def used(self) -> None:
        """Count one request against `times`; clear everything when it runs out."""
        if self.times is not None:
            self.times -= 1
            if self.times <= 0:
                self.clear()

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def mangle(self, reply: bytes) -> bytes:
        """Apply the PDU-level faults to a correct reply PDU."""
        if self.exception is not None:
            return bytes([reply[0] & 0x7F | 0x80, self.exception])
        if self.wrong_function:
            return bytes([(reply[0] % 4) + 1]) + reply[1:]
        if self.short and reply[0] in (1, 2, 3, 4) and reply[1] >= 2:
            cut = 2 if reply[0] in (3, 4) else 1
            return bytes([reply[0], reply[1] - cut]) + reply[2 : len(reply) - cut]
        if self.truncate:
            return reply[: max(1, len(reply) // 2)]
        return reply
