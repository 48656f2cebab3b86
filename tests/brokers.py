"""Real brokers started by the tests: NATS (MQTT + JetStream) and RabbitMQ (MQTT + OAuth 2).

Each runs as a child of the test, on 127.0.0.1 and free ports, with all its state under the
test's temporary directory, and is stopped by the PID it was started with (never by name).
A missing binary skips on a laptop and fails under CI=true (`require_binary`).

Invariants: `kill()` is SIGKILL (no clean shutdown), and `start()` after it comes back on the
same ports with the same state directory, so a test can restart a broker under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import require_binary
from paho.mqtt.enums import CallbackAPIVersion
from uplink_harness import NatsServer

from gatewayd_sim.procs import free_port, port_open, wait_port

RABBITMQ_HOME = Path("/usr/lib/rabbitmq/bin")
RESOURCE = "rabbitmq"  # RabbitMQ's OAuth 2 resource_server_id: the token's audience


class Nats(NatsServer):
    """The NATS server of tests/uplink_harness.py, which can also be SIGKILLed and restarted."""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> float:
        """Start again on the same port and store; returns the monotonic time it listens."""
        self.start()
        return time.monotonic()


class RabbitMq:
    """rabbitmq-server 3.10 with rabbitmq_mqtt and the OAuth 2 backend verifying device JWTs.

    `signing_keys` maps a key id (the JWT's `kid`) to a public key PEM; the first is also the
    default key for tokens without `kid`. Tokens must carry aud = RESOURCE and `scope` claims
    `RESOURCE.read|write|configure:<vhost>/<exchange>/<routing key>`. Its own epmd runs on a
    free port, so parallel tests and other users of port 4369 do not meet.
    """

    def __init__(self, folder: Path, signing_keys: dict[str, bytes]) -> None:
        require_binary("rabbitmq-server")
        self.folder = folder
        self.signing_keys = signing_keys
        self.port = free_port()  # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"gw-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def _write_config(self) -> Path:
        f = self.folder
        keys = []
        for kid, pem in self.signing_keys.items():
            (f / f"{kid}.pem").write_bytes(pem)
            keys.append(f"auth_oauth2.signing_keys.{kid} = {f / f'{kid}.pem'}")
        conf = f / "rabbitmq.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
                    f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
                    "mqtt.allow_anonymous = false",
                    "loopback_users = none",
                    # The full module name: the short "oauth2" alias does not exist in 3.10.
                    "auth_backends.1 = rabbit_auth_backend_oauth2",
                    f"auth_oauth2.resource_server_id = {RESOURCE}",
                    f"auth_oauth2.default_key = {next(iter(self.signing_keys))}",
                    *keys,
                    "log.console = false",
                    "log.file.level = info",
                    "",
                ]
            )
        )
        (f / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_auth_backend_oauth2].\n")
        return conf

    def start(self, timeout: float = 90.0) -> RabbitMq:
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self.env = env = {
            **os.environ,
            "HOME": str(f),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(f / "rabbit.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(f / "rabbitmq-env.conf"),  # none: not /etc's
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(f / "advanced.config"),
            # Makes the script exec the Erlang VM: the PID started is the broker's own, so a
            # SIGKILL kills the broker (not a shell that would leave it running).
            "RUNNING_UNDER_SYSTEMD": "true",
        }
        out = open(f / "stdout.log", "ab")  # noqa: SIM115
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=out,
                stderr=out,
                env=env,
            )
        # Not /usr/sbin/rabbitmq-server: as root that wrapper switches to the rabbitmq user.
        self.proc = subprocess.Popen(
            [str(RABBITMQ_HOME / "rabbitmq-server")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"rabbitmq-server exited at start:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"rabbitmq-server not listening after {timeout} s")
            time.sleep(0.2)
        wait_port(self.port)
        return self

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node (stdout and stderr)."""
        out = subprocess.run(
            [str(RABBITMQ_HOME / "rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def log(self) -> str:
        logs = sorted((self.folder / "log").glob("*.log"))
        parts = [p.read_text(errors="replace") for p in logs]
        out = self.folder / "stdout.log"
        if out.exists():
            parts.append(out.read_text(errors="replace"))
        return "\n".join(parts)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        for p in (self.proc, self.epmd):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)


def scopes(device: str = "{device}") -> str:
    """The scopes one gateway needs: its own topics (without the leading '/') in each of
    read (subscribe), write (publish) and configure (its subscription queues)."""
    return " ".join(
        [
            f"{RESOURCE}.configure:*/*",
            f"{RESOURCE}.write:*/*/devices.{device}.*",
            f"{RESOURCE}.read:*/*/devices.{device}.*",
        ]
    )


class Subscriber:
    """A paho subscriber with a persistent session (clean_session = False, QoS 1): a broker that
    keeps sessions queues for it while it reconnects, so it can count records across a broker
    restart. Counts event records by id and keeps every other message by topic."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "gw-test-subscriber",
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.counts: dict[int, int] = {}
        self.messages: list[tuple[str, bytes, bool]] = []  # topic, payload, retained
        self.subscribed = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_subscribe(self, *a: Any) -> None:
        with self.lock:
            self.subscribed += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            if "/events" in msg.topic and not msg.topic.endswith("command-results"):
                for r in json.loads(msg.payload):
                    self.counts[r["id"]] = self.counts.get(r["id"], 0) + 1
            else:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def missing(self, ids: list[int]) -> set[int]:
        with self.lock:
            return set(ids) - self.counts.keys()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
