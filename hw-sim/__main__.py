"""`python -m gatewayd_sim`: run simulators from the command line, for users without hardware."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys


async def _serve_modbus(args: argparse.Namespace) -> None:
    from gatewayd_sim.modbus import ModbusTcpSlave
    from gatewayd_sim.plant import boiler

    slave = await ModbusTcpSlave(args.host, args.port).start()
    if args.map:
        from gatewayd_sim.modbus.regmap import load_map

        load_map(slave, args.map)
    else:
        boiler(slave)
    what = args.map or "the demo boiler"
    print(f"modbus: {what} on {args.host}:{slave.port}", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    from gatewayd_sim.cloud import cli as cloud_cli

    p = argparse.ArgumentParser(prog="python -m gatewayd_sim")
    p.add_argument("what", choices=["modbus", "cloud"])
    p.add_argument("--map", help="modbus: register map TOML (default: the demo boiler)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    cloud_cli.add_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.what == "cloud" and args.action != "serve":
        return cloud_cli.send(args)
    serve = _serve_modbus(args) if args.what == "modbus" else cloud_cli.serve(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve)
    return 0


sys.exit(main())
