"""The `gatewayd` command. Subcommands import what they need only when they run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from gatewayd import __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gatewayd", description="Edge gateway: field devices to a cloud MQTT broker."
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the daemon (what systemd starts)")
    r.add_argument(
        "--config", "-c", default="/etc/gatewayd/gateway.toml", help="TOML configuration file"
    )
    d = sub.add_parser("demo", help="run against simulated devices and an embedded cloud broker")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    c = sub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    k = sub.add_parser("keygen", help="create a device key pair; prints the public key to register")
    k.add_argument("--alg", choices=["ES256", "RS256"], default="ES256")
    k.add_argument("--out", default="device.key", help="private key file to create (mode 0600)")
    sub.add_parser("version", help="print the version")
    from gatewayd import buffer_cli

    buffer_cli.add_parser(sub)
    args = p.parse_args(argv)

    from gatewayd import logs

    logs.setup(args.log_level if args.cmd != "demo" or args.log_level != "INFO" else "WARNING")
    handler = {"run": _run, "demo": _demo, "check": _check, "keygen": _keygen, "version": _version}
    handler["buffer"] = buffer_cli.run
    return handler[args.cmd](args)


def _version(args: argparse.Namespace) -> int:
    print(f"gatewayd {__version__}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from gatewayd.config import ConfigError, load_file

    try:
        cfg = load_file(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    points = sum(len(d.points) for d in cfg.devices)
    print(f"ok: version {cfg.version}, {len(cfg.devices)} devices, {points} points")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from gatewayd.uplink.device_jwt import generate_key

    try:
        pub = generate_key(Path(args.out), args.alg)
    except FileExistsError:
        print(
            f"error: {args.out}: exists; remove it first or choose another --out", file=sys.stderr
        )
        return 2
    sys.stdout.write(pub.decode())
    return 0


def _run(args: argparse.Namespace) -> int:
    from gatewayd.config import load_file
    from gatewayd.daemon import Gateway
    from gatewayd.errors import GatewaydError

    async def go() -> None:
        cfg = load_file(args.config)
        gw = Gateway(cfg, config_dir=Path(args.config).resolve().parent)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await gw.run(stop)

    try:
        asyncio.run(go())
    except GatewaydError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gatewayd.demo import run_demo

    return asyncio.run(run_demo(args.duration, sys.stdout))


if __name__ == "__main__":
    raise SystemExit(main())
