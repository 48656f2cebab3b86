"""MQTT 3.1.1 packet framing, and MQTT 5's properties to skip: just what the stand-ins need."""

from __future__ import annotations

import asyncio
import struct

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

MAX_PACKET = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(type, flags, body) of the next packet; raises IncompleteReadError on EOF."""
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift in range(0, 28, 7):
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
    else:
        raise ProtocolError("malformed remaining length")
    if length > MAX_PACKET:
        raise ProtocolError(f"packet of {length} bytes is too large")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + encode_length(len(body)) + body


def mqtt_str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(raw)) + raw


class Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u8(self) -> int:
        if self.at + 1 > len(self.data):
            raise ProtocolError("truncated packet")
        v = self.data[self.at]
        self.at += 1
        return v

    def u16(self) -> int:
        if self.at + 2 > len(self.data):
            raise ProtocolError("truncated packet")
        (v,) = struct.unpack_from(">H", self.data, self.at)
        self.at += 2
        return int(v)

    def blob(self) -> bytes:
        n = self.u16()
        if self.at + n > len(self.data):
            raise ProtocolError("truncated string")
        v = self.data[self.at : self.at + n]
        self.at += n
        return v

    def text(self) -> str:
        try:
            return self.blob().decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not UTF-8") from exc

    def properties(self) -> bytes:
        """MQTT 5: a property block (variable-length size, then the properties), unparsed."""
        n = 0
        for shift in range(0, 28, 7):
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
        else:
            raise ProtocolError("malformed property length")
        if self.at + n > len(self.data):
            raise ProtocolError("truncated properties")
        v = self.data[self.at : self.at + n]
        self.at += n
        return v

    def rest(self) -> bytes:
        v = self.data[self.at :]
        self.at = len(self.data)
        return v

    @property
    def more(self) -> bool:
        return self.at < len(self.data)


def topic_matches(pattern: str, topic: str) -> bool:
    p = pattern.split("/")
    t = topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)
