"""In-process uplink under test: a real Buffer file, the real Uplink, a producer of records.

The uplink runs on the test's own event loop (asyncio.run in the test), against a real broker:
mosquitto on a free port or the cloud stand-in. Records are counted by their buffer ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import require_binary
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.buffer import Buffer
from gatewayd.config import AuthConfig, BufferConfig, TlsConfig, UplinkConfig
from gatewayd.metrics import Metrics
from gatewayd.reading import Lane, Record
from gatewayd.uplink import Uplink
from gatewayd_sim.cloud.certs import CertificateAuthority
from gatewayd_sim.procs import Mosquitto

CLIENT_ID = "projects/p1/locations/r1/registries/reg1/devices/gw-test"
EVENTS = "/devices/gw-test/events"


def uplink_cfg(port: int, **changes: Any) -> UplinkConfig:
    base = UplinkConfig(
        host="127.0.0.1",
        port=port,
        project="p1",
        region="r1",
        registry="reg1",
        device="gw-test",
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
        tls=TlsConfig(enabled=False),
        auth=AuthConfig(kind="none"),
    )
    return dataclasses.replace(base, **changes)


def jwt_auth(key: str = "device.key", **changes: Any) -> AuthConfig:
    return dataclasses.replace(
        AuthConfig(kind="jwt", algorithm="ES256", private_key=key, audience="p1"), **changes
    )


async def until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Harness:
    def __init__(self, buffer: Buffer, uplink: Uplink) -> None:
        self.buffer = buffer
        self.uplink = uplink
        self.sent: list[int] = []
        self._task = asyncio.get_running_loop().create_task(uplink.run())
        self._producer: asyncio.Task[None] | None = None
        self._appending: set[asyncio.Future[list[int]]] = set()

    @classmethod
    async def open(cls, tmp: Path, cfg: UplinkConfig, **kw: Any) -> Harness:
        buffer = await Buffer.open(tmp / "buffer.sqlite", BufferConfig())
        return cls(buffer, Uplink(cfg, buffer, Metrics(), key_dir=tmp, **kw))

    @property
    def metrics(self) -> Metrics:
        return self.uplink.metrics

    async def append(self, n: int, lane: Lane = Lane.TELEMETRY, point: str = "plc/x") -> list[int]:
        now = int(time.time() * 1000)
        records = [Record(point, now, float(i), lane=lane) for i in range(n)]
        # Shielded and counted when done: a producer cancelled by `halt` while its append is in
        # the buffer's thread must still count the records, which are durable and will be sent.
        task = asyncio.ensure_future(self.buffer.append(records))
        self._appending.add(task)
        task.add_done_callback(self._appended)
        return await asyncio.shield(task)

    def _appended(self, task: asyncio.Future[list[int]]) -> None:
        self._appending.discard(task)
        if not task.cancelled() and task.exception() is None:
            self.sent.extend(task.result())

    def produce(self, per_tick: int = 20, tick_s: float = 0.02) -> None:
        """Append records steadily in the background (1,000/s by default) until `halt`."""

        async def run() -> None:
            while True:
                await self.append(per_tick)
                await asyncio.sleep(tick_s)

        self._producer = asyncio.get_running_loop().create_task(run())

    async def halt(self) -> None:
        """Stop the producer; returns once every append it started is in the buffer and counted."""
        if self._producer is not None:
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
            self._producer = None
        await asyncio.gather(*self._appending, return_exceptions=True)

    async def depth(self) -> int:
        return (await self.buffer.stats()).depth

    async def drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while await self.depth():
            if time.monotonic() > deadline:
                raise AssertionError(f"buffer not drained after {timeout} s: {await self.depth()}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.halt()
        await self.uplink.stop(drain_s=1.0)
        try:
            await asyncio.wait_for(self._task, 5)
        except TimeoutError:
            self._task.cancel()
        await self.buffer.close()


class Collector:
    """A paho subscriber on its own thread that counts records by id and re-subscribes."""

    def __init__(self, port: int, topic: str = EVENTS + "/#", **auth: str) -> None:
        self.counts: dict[int, int] = {}
        self.order: list[int] = []
        self.subscribed = 0  # SUBACKs seen; grows after each reconnect
        self.lock = threading.Lock()
        self.topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"collector-{id(self)}", clean_session=True
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *a: c.subscribe([(topic, 1), (EVENTS, 1)])
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_subscribe(self, *a: Any) -> None:
        with self.lock:
            self.subscribed += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        recs = json.loads(msg.payload)
        with self.lock:
            for r in recs:
                self.counts[r["id"]] = self.counts.get(r["id"], 0) + 1
                self.order.append(r["id"])

    def missing(self, ids: list[int]) -> set[int]:
        with self.lock:
            return set(ids) - self.counts.keys()

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.counts.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SecureMosquitto(Mosquitto):
    """mosquitto with a TLS listener (test CA), a password file and an optional ACL."""

    def __init__(
        self,
        folder: Path,
        mtls: bool = False,
        acl: str | None = None,
        dns_names: tuple[str, ...] | None = None,
    ) -> None:
        self.ca = CertificateAuthority(folder / "ca")
        cert, key = self.ca.issue("broker", server=True, dns_names=dns_names)
        passwd = folder / "passwd"
        subprocess.run(
            [require_binary("mosquitto_passwd"), "-c", "-b", str(passwd), "gw", "s3cret"],
            check=True,
            capture_output=True,
        )
        lines = [
            f"cafile {self.ca.ca_file}",
            f"certfile {cert}",
            f"keyfile {key}",
            f"password_file {passwd}",
        ]
        if mtls:
            lines += ["require_certificate true", "use_identity_as_username true"]
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        super().__init__(folder, binary=require_binary("mosquitto"), extra=lines, anonymous=False)
        self.start()


def dynsec_plugin() -> str:
    """mosquitto's dynamic-security plugin (Debian's mosquitto package ships it)."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += sorted(glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if found:
        return found[0]
    require_binary("mosquitto_dynamic_security.so")  # skips, or fails under CI
    raise AssertionError("unreachable")


class DynsecMosquitto(Mosquitto):
    """mosquitto whose dynamic-security plugin checks subscriptions (its acl_file does not).

    One client, gw / s3cret, allowed exactly `acls`: (acltype, topic) pairs such as
    ("subscribePattern", "/devices/gw-test/commands/#"); everything else is denied.
    """

    def __init__(self, folder: Path, acls: list[tuple[str, str]]) -> None:
        import base64
        import hashlib
        import os

        folder.mkdir(parents=True, exist_ok=True)
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
        doc = {
            "clients": [
                {
                    "username": "gw",
                    "password": base64.b64encode(digest).decode(),
                    "salt": base64.b64encode(salt).decode(),
                    "iterations": 101,
                    "roles": [{"rolename": "device"}],
                }
            ],
            "roles": [
                {
                    "rolename": "device",
                    "acls": [{"acltype": k, "topic": t, "allow": True} for k, t in acls],
                }
            ],
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
        }
        (folder / "dynsec.json").write_text(json.dumps(doc))
        lines = [f"plugin {dynsec_plugin()}", f"plugin_opt_config_file {folder / 'dynsec.json'}"]
        super().__init__(folder, binary=require_binary("mosquitto"), extra=lines, anonymous=False)
        self.start()


class NatsServer:
    """nats-server (Debian's) with its MQTT listener on 127.0.0.1: MQTT 3.1.1 only, QoS 0/1.

    MQTT there needs a server name and JetStream, whose store lives in `folder`.
    """

    def __init__(self, folder: Path) -> None:
        from gatewayd_sim.procs import free_port

        self.folder = folder
        self.port = free_port()
        self.client_port = free_port()
        self.binary = require_binary("nats-server")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NatsServer:
        from gatewayd_sim.procs import wait_port

        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats.conf"
        conf.write_text(
            "server_name: gw_test\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.folder / "js"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
        )
        log = open(self.folder / "nats.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port, timeout=20)
        return self

    def log(self) -> str:
        return (self.folder / "nats.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
