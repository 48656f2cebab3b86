"""A wave's pushes go out together, not one PUBACK at a time (issue 17: ~0.25 s per gateway in
a wave, minutes for a wave of 1,000).

Between `fleet rollout` and a real mosquitto sits a proxy that passes everything except the
broker's PUBACKs. Sent one at a time, fleet publishes one push and waits; pipelined, the whole
wave reaches the broker before the first acknowledgement is due. A subscriber on the broker
itself counts the pushes that arrived: no clock is asserted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from helpers import wait_for
from nats_cluster import gateway_doc
from paho.mqtt.enums import CallbackAPIVersion

GATEWAYS = [f"gw-{i:02d}" for i in range(10)]
PUBACK = 0x40


class NoPubackProxy:
    """TCP proxy; from the broker to the client it drops PUBACK packets (MQTT framing read)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.dropped = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                broker = socket.create_connection(("127.0.0.1", self.upstream))
                self.conns += [client, broker]
                threading.Thread(target=self._raw, args=(client, broker), daemon=True).start()
                threading.Thread(target=self._filter, args=(broker, client), daemon=True).start()

    def _raw(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def _filter(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                buf += data
                while (packet := _packet(buf)) is not None:
                    head, buf = buf[:packet], buf[packet:]
                    if head[0] & 0xF0 == PUBACK:
                        self.dropped += 1
                    else:
                        dst.sendall(head)

    def close(self) -> None:
        self.server.close()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.close()


def _packet(buf: bytes) -> int | None:
    """Length of the first whole MQTT packet in buf, or None."""
    length, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        length += (byte & 0x7F) * mult
        mult *= 128
        i += 1
        if not byte & 0x80:
            break
    return i + length if len(buf) >= i + length else None


def test_a_wave_is_sent_before_its_first_puback(mosquitto: Any, tmp_path: Path) -> None:
    pushed: set[str] = set()
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.payload and json.loads(msg.payload).get("version") == 2:
            with lock:
                pushed.add(msg.topic.split("/")[2])

    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="counter")
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.on_connect = lambda cl, *a: cl.subscribe("/devices/+/config", 1)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    assert ready.wait(10)
    for gw in GATEWAYS:  # fresh retained state documents: fleet's view of a fleet at version 1
        state = {"ts": int(time.time() * 1000), "config_version": 1, "health": "ok"}
        c.publish(f"/devices/{gw}/state", json.dumps(state), qos=1, retain=True).wait_for_publish(5)
    doc_path = tmp_path / "doc.json"
    doc = gateway_doc(2, [f"127.0.0.1:{mosquitto.port}"], device_port=1502, unit=1)
    doc_path.write_text(json.dumps(doc))
    proxy = NoPubackProxy(mosquitto.port)
    args = [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(doc_path)]
    args += ["--host", f"127.0.0.1:{proxy.port}", "--listen", "1", "--waves", "100%"]
    args += ["--health-timeout", "60"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: proxy.dropped >= 1, 30, "the broker acknowledging a push", 0.05)
        time.sleep(3.0)  # fleet holds what it has not sent until a PUBACK that never comes
        with lock:
            arrived = sorted(pushed)
        assert p.poll() is None, p.communicate()[0]
        assert arrived == GATEWAYS, f"only {arrived} reached the broker before a PUBACK"
    finally:
        p.kill()
        p.wait(10)
        proxy.close()
        c.loop_stop()
        c.disconnect()
