"""`python -m gatewayd_sim`: run simulators from the command line, for users without hardware."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path


async def _serve(args: argparse.Namespace) -> None:
    from gatewayd_sim.cloud import Broker, Registry
    from gatewayd_sim.modbus import ModbusTcpSlave
    from gatewayd_sim.plant import boiler

    if args.what == "modbus":
        from gatewayd_sim.modbus.regmap import load_map

        slave = await ModbusTcpSlave(args.host, args.port).start()
        if args.map:
            load_map(slave, args.map)
        else:
            boiler(slave)
        what = args.map or "the demo boiler"
        print(f"modbus: {what} on {args.host}:{slave.port}", flush=True)
    else:
        registry = Registry(args.project, args.region, args.registry)
        for spec in args.device or ():
            dev, _, key = spec.partition("=")
            registry.add(dev, Path(key))
        broker = await Broker(registry if args.device else None, args.host, args.port).start()
        print(
            f"cloud: MQTT on {args.host}:{broker.port}, "
            f"{'devices ' + ', '.join(registry.devices) if args.device else 'open (no auth)'}",
            flush=True,
        )
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m gatewayd_sim")
    p.add_argument("what", choices=["modbus", "cloud"])
    p.add_argument("--map", help="modbus: register map TOML (default: the demo boiler)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--project", default="demo-project")
    p.add_argument("--region", default="local")
    p.add_argument("--registry", default="gateways")
    p.add_argument("--device", action="append", help="DEVICE=public_key.pem, repeatable")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


main()
