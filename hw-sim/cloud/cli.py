"""`python -m gatewayd_sim cloud [serve|push-config|command]`: run the stand-in, talk to it.

`serve` prints an admin password; `push-config` and `command` use it to publish through the
stand-in as the cloud would (config retained per device, commands not).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from .broker import OBSERVER, Broker
from .registry import Registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        default="serve",
        choices=["serve", "push-config", "command"],
        help="cloud: serve (default), push-config FILE, command PAYLOAD",
    )
    p.add_argument("arg", nargs="?", help="push-config: document file; command: payload text")
    p.add_argument("--project", default="demo-project")
    p.add_argument("--region", default="local")
    p.add_argument("--registry", default="gateways")
    p.add_argument("--device", action="append", help="serve: DEVICE=public_key.pem, repeatable")
    p.add_argument("--admin-password", help="serve: password of the admin client (default random)")
    p.add_argument("--to", help="push-config/command: the device id")
    p.add_argument("--subfolder", help="command: subfolder of the commands topic")


async def serve(args: argparse.Namespace) -> None:
    registry = Registry(args.project, args.region, args.registry)
    for spec in args.device or ():
        dev, _, key = spec.partition("=")
        registry.add(dev, Path(key))
    password = args.admin_password or secrets.token_urlsafe(12)
    broker = Broker(
        registry if args.device else None, args.host, args.port, observer_password=password
    )
    await broker.start()
    who = "devices " + ", ".join(registry.devices) if args.device else "open (no auth)"
    print(f"cloud: MQTT on {args.host}:{broker.port}, {who}", flush=True)
    print(f"cloud: admin password {password}", flush=True)
    await asyncio.Event().wait()


def send(args: argparse.Namespace) -> int:
    """push-config / command: one QoS 1 publish as the admin client."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if not args.to or args.arg is None:
        print(f"error: {args.action} needs --to DEVICE and an argument", file=sys.stderr)
        return 2
    if args.action == "push-config":
        try:
            payload = Path(args.arg).read_bytes()
        except OSError as exc:
            print(f"error: {args.arg}: {exc.strerror}", file=sys.stderr)
            return 2
        topic, retain = f"/devices/{args.to}/config", True
    else:
        payload = args.arg.encode()
        topic = f"/devices/{args.to}/commands" + (f"/{args.subfolder}" if args.subfolder else "")
        retain = False
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"admin-{secrets.token_hex(4)}")
    c.username_pw_set(OBSERVER, args.admin_password or "")
    try:
        c.connect(args.host, args.port or 1883)
    except OSError as exc:
        print(f"error: cannot reach the stand-in: {exc}", file=sys.stderr)
        return 1
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
    except (RuntimeError, ValueError) as exc:
        print(f"error: not published: {exc}", file=sys.stderr)
        return 1
    finally:
        c.disconnect()
        c.loop_stop()
    print(f"sent {len(payload)} bytes to {topic}")
    return 0
