"""paho's socket on the asyncio loop (gatewayd/uplink/paho_socket.py), against a real TCP peer
that stops reading: a message the socket cannot take at once is still sent in full."""

from __future__ import annotations

import asyncio
import socket

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.uplink.paho_socket import SocketAdapter

PAYLOAD = 4 << 20  # far more than a loopback socket's send buffer


async def _read_packet_size(reader: asyncio.StreamReader) -> int:
    """One MQTT packet's whole size: fixed header byte, remaining length, body."""
    await reader.readexactly(1)
    length, shift, header = 0, 0, 1
    while True:
        b = (await reader.readexactly(1))[0]
        header += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    await reader.readexactly(length)
    return header + length


def test_a_message_the_socket_cannot_take_at_once_is_sent_in_full() -> None:
    async def main() -> tuple[int, int]:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_packet_size(reader)  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
            await writer.drain()
            await asyncio.sleep(0.5)  # not reading: the client's socket fills up
            got.set_result(await _read_packet_size(reader))
            writer.close()

        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")
        connected = asyncio.Event()
        client.on_connect = lambda *a: connected.set()
        sockets = SocketAdapter(asyncio.get_running_loop(), keepalive_s=60)
        sockets.attach(client)
        client.connect("127.0.0.1", port)
        client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        await asyncio.wait_for(connected.wait(), 5)
        info = client.publish("t", b"x" * PAYLOAD, qos=0)
        client.loop_write()  # as the window does: what the socket takes now, the rest later
        size = await asyncio.wait_for(got, 10)
        sockets.close(client)
        server.close()
        return info.rc, size

    rc, size = asyncio.run(main())
    assert rc == 0
    assert size == 1 + 4 + 2 + 1 + PAYLOAD  # header, 4-byte length, topic length, "t", payload
