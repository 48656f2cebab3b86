"""The `gatewayd` command. Subcommands import what they need only when they run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gatewayd import __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gatewayd", description="Edge gateway: field devices to a cloud MQTT broker."
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="overrides [logging] level (default INFO; the demo: WARNING)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the daemon (what systemd starts)")
    r.add_argument(
        "--config", "-c", default="/etc/gatewayd/gateway.toml", help="TOML configuration file"
    )
    d = sub.add_parser("demo", help="run against simulated devices and an embedded cloud broker")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.add_argument(
        "--cloud",
        choices=["cloud-iot-core", "clearblade", "azure", "aws", "thingsboard"],
        default="cloud-iot-core",
        help="the cloud stand-in to run against (azure: IoT Hub with SAS, twin, direct methods; "
        "aws: AWS IoT Core with mTLS, shadow, jobs; "
        "thingsboard: gateway API with an access token, attributes, RPC; "
        "clearblade: the cloud stand-in behind TLS 1.2+ under the clearblade profile)",
    )
    c = sub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    k = sub.add_parser("keygen", help="create a device key pair; prints the public key to register")
    k.add_argument("--alg", choices=["ES256", "RS256"], default="ES256")
    k.add_argument("--out", default="device.key", help="private key file to create (mode 0600)")
    k.add_argument(
        "--reuse", action="store_true", help="if --out exists, print its public key instead"
    )
    st = sub.add_parser("status", help="one screen about the running daemon (from its metrics)")
    st.add_argument(
        "--config", "-c", default="/etc/gatewayd/gateway.toml", help="where [metrics] listen is"
    )
    st.add_argument("--listen", help="host:port of the metrics endpoint (overrides --config)")
    sub.add_parser(
        "schema", help="print the JSON Schema of the configuration, installed drivers included"
    )
    sub.add_parser("version", help="print the version")
    # Its own parser, in gatewayd.fleet.cli: nothing of the fleet tool loads for `run`.
    fl = sub.add_parser(
        "fleet", help="many gateways through their broker: status, rollouts", add_help=False
    )
    fl.add_argument("fleet_args", nargs=argparse.REMAINDER)
    from gatewayd import buffer_cli

    buffer_cli.add_parser(sub)
    args, extra = p.parse_known_args(argv)
    if args.cmd == "fleet":  # `fleet --help`: argparse leaves a leading option out of REMAINDER
        args.fleet_args = extra + args.fleet_args
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")

    from gatewayd import logs

    logs.force_level(args.log_level)
    logs.setup("WARNING" if args.cmd == "demo" else "INFO")
    handler = {
        "run": _run,
        "demo": _demo,
        "check": _check,
        "keygen": _keygen,
        "status": _status,
        "version": _version,
        "schema": _schema,
        "buffer": buffer_cli.run,
        "fleet": _fleet,
    }
    return handler[args.cmd](args)


def _schema(args: argparse.Namespace) -> int:
    import json

    from gatewayd.config import ConfigError
    from gatewayd.config.schema import config_schema
    from gatewayd.drivers.registry import declared_options

    try:
        drivers = declared_options()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config_schema(drivers), indent=2))
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from gatewayd.fleet.cli import main as fleet_main

    return fleet_main(args.fleet_args)


def _version(args: argparse.Namespace) -> int:
    print(f"gatewayd {__version__} (Python {sys.version.split()[0]})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from gatewayd import status
    from gatewayd.config import ConfigError, MetricsConfig, load_document, read_document
    from gatewayd.metrics_http import parse_listen

    listen = args.listen
    if listen is None:
        try:
            # Only [metrics] matters here: devices (whose drivers this process may not have
            # installed, config/options.py) and the rules naming their points are left out.
            doc = read_document(args.config)
            rest = {k: v for k, v in doc.items() if k not in ("devices", "rules")}
            listen = load_document(rest).metrics.listen
        except ConfigError as exc:
            listen = MetricsConfig().listen
            print(f"note: {exc}; trying {listen}", file=sys.stderr)
    if not listen:
        print(
            "error: [metrics] listen is off in the configuration; status reads it", file=sys.stderr
        )
        return 2
    host, port = parse_listen(listen)
    try:
        text = status.fetch(host, port)
    except OSError as exc:
        print(
            f"error: no gatewayd answers on {listen} ({exc}); is it running "
            "(systemctl status gatewayd)?",
            file=sys.stderr,
        )
        return 1
    try:
        samples = status.parse(text)
    except status.ParseError as exc:
        print(f"error: {listen} does not speak gatewayd metrics: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(status.render(samples))
    return 0


def _check(args: argparse.Namespace) -> int:
    from gatewayd.check import problems

    report = problems(Path(args.file))
    for note in report.notes:
        print(f"note: {note}")
    if _refused(report.errors, args.file):
        return 2
    cfg = report.cfg
    assert cfg is not None
    points = sum(len(d.points) for d in cfg.devices)
    print(f"ok: version {cfg.version}, {len(cfg.devices)} devices, {points} points")
    return 0


def _refused(errors: Sequence[Exception], file: str) -> bool:
    """Print every error (check and run say the same); True if there was one."""
    for exc in errors:
        print(f"error: {exc}", file=sys.stderr)
    if len(errors) > 1:
        print(f"{len(errors)} errors in {file}", file=sys.stderr)
    return bool(errors)


def _keygen(args: argparse.Namespace) -> int:
    from gatewayd.uplink.device_jwt import generate_key

    out = Path(args.out)
    if args.reuse and out.exists():
        return _print_public_key(out, args.alg)
    try:
        pub = generate_key(out, args.alg)
    except FileExistsError:
        print(
            f"error: {args.out}: exists; remove it first or choose another --out", file=sys.stderr
        )
        return 2
    sys.stdout.write(pub.decode())
    return 0


def _print_public_key(path: Path, alg: str) -> int:
    """The public half of an existing device key (install.sh re-runs print it again)."""
    from cryptography.hazmat.primitives import serialization

    from gatewayd.uplink.device_jwt import DeviceKeyError, load_private_key

    try:
        key = load_private_key(path, alg)
    except DeviceKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pub: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sys.stdout.write(pub.decode())
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging
    import os
    import signal
    import threading

    from gatewayd import logs
    from gatewayd.check import problems
    from gatewayd.config import load_document, read_document
    from gatewayd.daemon import Gateway
    from gatewayd.errors import GatewaydError

    path = Path(args.config).resolve()
    # What `check` reports stops the start, all of it at once: never a retry loop on a typo.
    report = problems(path)
    if _refused(report.refusals, args.config):
        return 2
    for exc in report.errors:  # a device key not provisioned yet: buffered until it is
        print(f"warning: {exc}", file=sys.stderr)
    # This frame lives as long as the daemon: keep no second parsed copy of the configuration
    # (the check's, ~280 KiB at 1,000 points).
    del report

    async def go() -> int:
        doc = read_document(path)  # a ConfigError (exit 2) names the place and the fix
        cfg = load_document(doc)
        logs.setup(cfg.logging.level, cfg.logging.format)
        gw = Gateway(cfg, config_dir=path.parent, config_path=path, local_doc=doc)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, gw.request_reload)
        await gw.run(stop)
        return gw.exit_code  # EXIT_RESTART: an update moved the `current` release

    loop = asyncio.new_event_loop()
    rc = 0
    try:
        rc = loop.run_until_complete(go())
    except GatewaydError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 2
    except Exception:
        logging.getLogger("gatewayd").exception("daemon_crashed")
        rc = 1
    finally:
        leftovers = asyncio.all_tasks(loop)
        for t in leftovers:
            t.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=1.0))
        loop.close()  # does not wait for the default executor
    # A connect() to an unreachable broker (DNS, SYN) may still block an executor thread for
    # many seconds; everything that matters is closed, so do not let the interpreter wait for it.
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from gatewayd.demo import run_demo

    return asyncio.run(run_demo(args.duration, sys.stdout, args.cloud))


if __name__ == "__main__":
    raise SystemExit(main())
