"""`python -m gatewayd_sim`: run simulators from the command line, for users without hardware.

    python -m gatewayd_sim modbus --map plc.toml --port 5020      # Modbus TCP slave
    python -m gatewayd_sim rtu --map plc.toml --baud 19200        # RTU slave on a new pty
    python -m gatewayd_sim rtu --map plc.toml --port 4001         # RTU over TCP (serial gateway)
    python -m gatewayd_sim hostile --transport tcp --port 5020 --log h.jsonl  # faults galore
    python -m gatewayd_sim hostile --transport rtu --pacing line  # RTU on a new pty (or rtu-tcp)
    python -m gatewayd_sim gps --rate 1 --baud 4800               # NMEA GPS on a new pty
    python -m gatewayd_sim sensor --rate 2                        # key=value sensor on a new pty
    python -m gatewayd_sim cloud --port 1883 --device gw1=public.pem   # the cloud stand-in
    python -m gatewayd_sim cloud push-config doc.json --to gw1 --port 1883 --admin-password PW
    python -m gatewayd_sim aws issue --thing gw1 --certs ca/        # a device certificate
    python -m gatewayd_sim aws --port 8883 --certs ca/ --thing gw1=ca/gw1.pem  # AWS IoT Core
    python -m gatewayd_sim aws update-shadow desired.json --to gw1 --port 8883 --certs ca/ \
        --admin-password PW                                          # also: create-job --job-id
    python -m gatewayd_sim thingsboard --port 1883 --gateway-token gw1=TOKEN   # ThingsBoard
    python -m gatewayd_sim thingsboard rpc setValve --params '{"open": true}' --to "Boiler A" \
        --port 1883 --admin-password PW                              # also: set-attributes FILE
    python -m gatewayd_sim opcua --port 4840 --bad Temperature=BadSensorFailure   # OPC UA server
    python -m gatewayd_sim azure --port 8883 --hub demo-hub --device gw1  # the IoT Hub stand-in

Each prints where it listens (the pty path to put in `serial_port`) and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from typing import Any


async def _serve(args: argparse.Namespace) -> None:
    from gatewayd_sim.plant import boiler

    if args.what == "modbus":
        from gatewayd_sim.modbus import ModbusTcpSlave
        from gatewayd_sim.modbus.regmap import load_map

        slave = await ModbusTcpSlave(args.host, args.port).start()
        if args.map:
            load_map(slave, args.map)
        else:
            boiler(slave)
        what = args.map or "the demo boiler"
        print(f"modbus: {what} on {args.host}:{slave.port}", flush=True)
    elif args.what == "rtu":
        from gatewayd_sim.modbus import ModbusRtuSlave
        from gatewayd_sim.modbus.regmap import load_map

        rtu = ModbusRtuSlave(baud=args.baud)
        if args.map:
            load_map(rtu, args.map)
        else:
            boiler(rtu)
        if args.port:
            rtu.start_tcp(args.host, args.port)
            print(
                f"rtu over tcp: {args.map or 'the demo boiler'} on {args.host}:{rtu.port}",
                flush=True,
            )
        else:
            rtu.start()
            print(
                f"rtu: {args.map or 'the demo boiler'} on {rtu.path} at {args.baud} baud",
                flush=True,
            )
    elif args.what == "hostile":
        from gatewayd_sim.modbus.hostile import HostileSlave

        h = HostileSlave(
            unit=args.unit,
            seed=args.seed,
            timeout_s=args.timeout,
            pacing=args.pacing,
            baud=args.baud,
            log_path=args.log,
        )
        if args.transport == "tcp":
            h.start_tcp(args.host, args.port)
            print(f"hostile: modbus tcp on {args.host}:{h.port}", flush=True)
        elif args.transport == "rtu-tcp":
            h.start_rtu_tcp(args.host, args.port)
            print(f"hostile: rtu over tcp on {args.host}:{h.port}", flush=True)
        else:
            if args.tty:
                h.start_rtu_path(args.tty)
            else:
                h.start_rtu_pty()
            print(f"hostile: rtu on {h.path} at {args.baud} baud, {args.pacing}", flush=True)
    elif args.what in ("gps", "sensor"):
        from gatewayd_sim.modbus.signals import random_walk, sine
        from gatewayd_sim.serial import LineInstrument, gps_lines, kv_lines

        lines: Any = (
            gps_lines(args.lat, args.lon, speed_kn=1.0)
            if args.what == "gps"
            else kv_lines({"temp": sine(21.0, 2.0, 60.0), "hum": random_walk(45.0, 0.5, 20, 80)})
        )
        inst = LineInstrument(lines, rate_hz=args.rate, baud=args.baud).start()
        print(f"{args.what}: lines on {inst.path} at {args.rate} Hz", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    from gatewayd_sim.cloud import cli as cloud_cli

    if sys.argv[1:2] == ["opcua"]:  # its own options (hw-sim/opcua/server.py)
        from gatewayd_sim.opcua.server import main as opcua_main

        return opcua_main(sys.argv[2:])
    if sys.argv[1:2] == ["azure"]:  # its own actions and options (cloud/azure_cli.py)
        from gatewayd_sim.cloud import azure_cli

        return azure_cli.main(sys.argv[2:])

    p = argparse.ArgumentParser(prog="python -m gatewayd_sim")
    p.add_argument(
        "what", choices=["modbus", "rtu", "hostile", "gps", "sensor", *cloud_cli.ACTIONS]
    )
    p.add_argument("--map", help="modbus, rtu: register map TOML (default: the demo boiler)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="the port to listen on (rtu: RTU over TCP)")
    p.add_argument("--baud", type=int, default=9600, help="rtu, gps, sensor: line speed")
    p.add_argument("--rate", type=float, default=1.0, help="gps, sensor: lines a second")
    h = p.add_argument_group("hostile (see gatewayd_sim/modbus/hostile.py)")
    h.add_argument("--transport", choices=["tcp", "rtu", "rtu-tcp"], default="tcp")
    h.add_argument("--pacing", choices=["fast", "line"], default="fast", help="rtu timing")
    h.add_argument("--tty", default="", help="rtu: serve this tty instead of a new pty")
    h.add_argument("--unit", type=int, default=1)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--timeout", type=float, default=0.3, help="the master's, for late replies")
    h.add_argument("--log", default=None, help="JSON lines: what each reply held")
    p.add_argument("--lat", type=float, default=48.1173)
    p.add_argument("--lon", type=float, default=11.5167)
    cloud_cli.add_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.what in cloud_cli.ACTIONS and args.action not in cloud_cli.ACTIONS[args.what]:
        p.error(
            f"{args.what} has no action {args.action}: {', '.join(cloud_cli.ACTIONS[args.what])}"
        )
    if args.what == "aws" and args.action == "issue":
        return cloud_cli.issue(args)
    if args.what in cloud_cli.ACTIONS and args.action != "serve":
        return cloud_cli.send(args)
    serves = {
        "cloud": cloud_cli.serve,
        "aws": cloud_cli.serve_aws,
        "thingsboard": cloud_cli.serve_thingsboard,
    }
    serve = serves[args.what](args) if args.what in serves else _serve(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve)
    return 0


sys.exit(main())
