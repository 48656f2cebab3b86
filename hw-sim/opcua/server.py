"""SimServer: an asyncua server with a plant address space that changes on its own.

Address space (namespace "urn:gatewayd:sim", index 2), under Objects/2:Plant:
- Temperature (Double, ns=2;s=Plant.Temperature): a sine around 60.
- Counter (UInt32, ns=2;s=Plant.Counter): +1 per tick.
- Running (Boolean), Name (String), Setpoint (Double, writable, ns=2;s=Plant.Setpoint).
- Bulk.0 .. Bulk.{items-1} (Double, ns=2;s=Bulk.N): all change every tick (benchmarks).
Faults: `bad` maps a variable to a bad status code it reports (value kept, status bad);
expire_sessions() closes every session server-side (a session timeout); disconnects are a
stop() or a kill of the process.
Every value carries the server's SourceTimestamp, set at the tick that made it (shifted by
`ts_offset_s`, so a test can tell the server's stamps from the gateway's).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

URI = "urn:gatewayd:sim"


def _asyncua() -> tuple[Any, Any]:
    """asyncua and asyncua.ua, untyped: its stubs disagree with its own runtime types."""
    return importlib.import_module("asyncua"), importlib.import_module("asyncua.ua")


class SimServer:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        period_s: float = 0.1,
        items: int = 0,
        bad: dict[str, str] | None = None,
        security: str = "none",  # none, sign, encrypt, all (secure ones need cert/key)
        cert: Path | None = None,
        key: Path | None = None,
        trust: list[Path] | None = None,  # client certificates (files or folders) to accept
        ts_offset_s: float = 0.0,  # SourceTimestamps this far from the wall clock (tests)
    ) -> None:
        self.ts_offset_s = ts_offset_s
        self.port, self.host, self.period_s, self.items = port, host, period_s, items
        self.bad = dict(bad or {})
        self.security, self.cert, self.key, self.trust = security, cert, key, trust or []
        self.ticks = 0
        self._server: Any = None
        self._vars: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/sim"

    async def start(self) -> SimServer:
        asyncua, ua = _asyncua()
        s = asyncua.Server()
        await s.init()
        s.set_endpoint(self.endpoint)
        s.set_server_name("gatewayd sim")
        await s.set_application_uri(URI + ":server")
        policies = {
            "none": [ua.SecurityPolicyType.NoSecurity],
            "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign],
            "encrypt": [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
            "all": [
                ua.SecurityPolicyType.NoSecurity,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ],
        }[self.security]
        s.set_security_policy(policies)
        if self.security != "none":
            assert self.cert and self.key, "a secure endpoint needs cert and key"
            await s.load_certificate(str(self.cert))
            await s.load_private_key(str(self.key))
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

            # TrustStore reads folders: give it one holding only the trusted certificates.
            folder = Path(tempfile.mkdtemp(prefix="opcua-trust-"))
            for i, cert in enumerate(self.trust):
                shutil.copy(cert, folder / f"trusted{i}{cert.suffix}")
            store = TrustStore([folder], [])
            await store.load()
            opts = (
                CertificateValidatorOptions.TRUSTED
                | CertificateValidatorOptions.TIME_RANGE
                | CertificateValidatorOptions.PEER_CLIENT
            )
            s.set_certificate_validator(CertificateValidator(opts, store))
        ns = await s.register_namespace(URI)
        plant = await s.nodes.objects.add_folder(
            ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns)
        )

        async def var(name: str, value: Any, vtype: Any) -> None:
            node = await plant.add_variable(
                ua.NodeId(f"Plant.{name}", ns), ua.QualifiedName(name, ns), value, varianttype=vtype
            )
            self._vars[name] = node

        await var("Temperature", 60.0, ua.VariantType.Double)
        await var("Counter", 0, ua.VariantType.UInt32)
        await var("Running", True, ua.VariantType.Boolean)
        await var("Name", "boiler-1", ua.VariantType.String)
        await var("Setpoint", 55.0, ua.VariantType.Double)
        await self._vars["Setpoint"].set_writable()
        for i in range(self.items):
            node = await plant.add_variable(
                ua.NodeId(f"Bulk.{i}", ns),
                ua.QualifiedName(f"Bulk.{i}", ns),
                0.0,
                varianttype=ua.VariantType.Double,
            )
            self._vars[f"Bulk.{i}"] = node
        await s.start()
        self._server = s
        await self._tick()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _set(self, name: str, value: Any, vtype: Any, now: datetime) -> None:
        _, ua = _asyncua()

        code = self.bad.get(name)
        status = ua.StatusCode(getattr(ua.StatusCodes, code)) if code else ua.StatusCode()
        dv = ua.DataValue(
            ua.Variant(value, vtype), status, SourceTimestamp=now, ServerTimestamp=now
        )
        await self._server.write_attribute_value(self._vars[name].nodeid, dv)

    async def _tick(self) -> None:
        _, ua = _asyncua()

        self.ticks += 1
        now = datetime.now(UTC) + timedelta(seconds=self.ts_offset_s)
        t = time.time()
        await self._set("Temperature", 60.0 + 5.0 * math.sin(t / 10.0), ua.VariantType.Double, now)
        await self._set("Counter", self.ticks, ua.VariantType.UInt32, now)
        for i in range(self.items):
            await self._set(f"Bulk.{i}", float(self.ticks * 1000 + i), ua.VariantType.Double, now)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self._tick()

    async def expire_sessions(self) -> int:
        """The session-timeout fault: close every client session (and its subscriptions) on
        the server side, as a server does whose session timer ran out; the TCP connection
        stays. Returns how many were closed."""
        sessions = list(self._server.iserver._external_sessions.values())
        for session in sessions:
            await session.close_session(delete_subs=True)
        return len(sessions)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            await self._server.stop()
            self._server = None


async def serve(args: Any) -> None:
    bad = dict(b.split("=", 1) for b in args.bad)
    sim = await SimServer(
        args.port,
        args.host,
        period_s=args.period_ms / 1000,
        items=args.items,
        bad=bad,
        security=args.security,
        cert=args.cert,
        key=args.key,
        trust=args.trust,
        ts_offset_s=args.ts_offset_s,
    ).start()
    print(f"opcua: plant on {sim.endpoint} security={args.security}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    import argparse
    import contextlib
    import logging

    p = argparse.ArgumentParser(prog="python -m gatewayd_sim opcua")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4840)
    p.add_argument("--period-ms", type=float, default=100.0, help="how often values change")
    p.add_argument("--items", type=int, default=0, help="Bulk.N variables (benchmarks)")
    p.add_argument(
        "--bad",
        action="append",
        default=[],
        help="NAME=StatusCode, e.g. Temperature=BadSensorFailure",
    )
    p.add_argument("--security", choices=["none", "sign", "encrypt", "all"], default="none")
    p.add_argument("--cert", type=Path, help="server certificate (DER)")
    p.add_argument("--key", type=Path, help="server private key (PEM)")
    p.add_argument("--trust", type=Path, action="append", default=[], help="trusted client cert")
    p.add_argument("--ts-offset-s", type=float, default=0.0, help="shift SourceTimestamps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0
