"""`python -m gatewayd_sim cloud|aws|thingsboard [ACTION]`: run a stand-in, talk to it.

`serve` (every stand-in's default) prints an admin password; the other actions use it to publish
through the stand-in as the cloud would:
- cloud: `push-config FILE` (retained per device), `command PAYLOAD`;
- aws: `issue` (a device certificate from the stand-in's CA in --certs), `update-shadow FILE`
  (the named shadow's desired state), `create-job FILE` (a job document);
- thingsboard: `set-attributes FILE` (shared attributes), `rpc METHOD` (--params JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import sys
from pathlib import Path

from .broker import OBSERVER, Broker
from .registry import Registry

ACTIONS = {
    "cloud": ("serve", "push-config", "command"),
    "aws": ("serve", "issue", "update-shadow", "create-job"),
    "thingsboard": ("serve", "set-attributes", "rpc"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        default="serve",
        choices=sorted({a for actions in ACTIONS.values() for a in actions}),
        help="; ".join(f"{w}: {', '.join(a)}" for w, a in ACTIONS.items()),
    )
    p.add_argument(
        "arg",
        nargs="?",
        help="a document file (push-config, update-shadow, create-job, "
        "set-attributes), the payload text (command) or the method (rpc)",
    )
    p.add_argument("--project", default="demo-project")
    p.add_argument("--region", default="local")
    p.add_argument("--registry", default="gateways")
    p.add_argument("--device", action="append", help="serve: DEVICE=public_key.pem, repeatable")
    p.add_argument("--admin-password", help="serve: password of the admin client (default random)")
    p.add_argument("--to", help="push-config/command: the device id")
    p.add_argument("--subfolder", help="command: subfolder of the commands topic")
    p.add_argument("--certs", type=Path, default=Path("aws-standin"), help="aws: CA folder")
    p.add_argument("--thing", action="append", help="aws serve: THING=cert.pem; issue: THING")
    p.add_argument("--shadow", default="config", help="aws update-shadow: the shadow's name")
    p.add_argument("--job-id", help="aws create-job: the job id")
    p.add_argument("--token", action="append", help="thingsboard serve: DEVICE=TOKEN")
    p.add_argument("--gateway-token", action="append", help="thingsboard serve: GATEWAY=TOKEN")
    p.add_argument("--params", default="null", help="thingsboard rpc: the params, as JSON")


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


async def serve_aws(args: argparse.Namespace) -> None:
    from .aws import AwsIotCore

    password = args.admin_password or secrets.token_urlsafe(12)
    cloud = AwsIotCore(args.certs, args.host, args.port, observer_password=password)
    for spec in args.thing or ():
        thing, _, cert = spec.partition("=")
        cloud.add_thing(thing, Path(cert))
    await cloud.start()
    things = ", ".join(cloud.things) or "none"
    print(f"aws: MQTT over mTLS on {args.host}:{cloud.port}, things {things}", flush=True)
    print(f"aws: CA {cloud.ca.ca_file}", flush=True)
    print(f"aws: admin password {password}", flush=True)
    await asyncio.Event().wait()


async def serve_thingsboard(args: argparse.Namespace) -> None:
    from .thingsboard import ThingsBoard

    password = args.admin_password or secrets.token_urlsafe(12)
    cloud = ThingsBoard(args.host, args.port, observer_password=password)
    for spec, gateway in [(t, False) for t in args.token or ()] + [
        (t, True) for t in args.gateway_token or ()
    ]:
        name, _, token = spec.partition("=")
        cloud.add_device(name, token, gateway)
    await cloud.start()
    names = ", ".join(cloud.devices) or "none"
    print(f"thingsboard: MQTT on {args.host}:{cloud.port}, devices {names}", flush=True)
    print(f"thingsboard: admin password {password}", flush=True)
    await asyncio.Event().wait()


def issue(args: argparse.Namespace) -> int:
    """aws issue: a device certificate signed by the stand-in's CA (register it with --thing)."""
    from .certs import CertificateAuthority

    if not args.thing:
        print("error: issue needs --thing THING", file=sys.stderr)
        return 2
    ca = CertificateAuthority(args.certs)
    for thing in args.thing:
        cert, key = ca.issue(thing)
        print(f"{thing}: certificate {cert}, key {key}; serve with --thing {thing}={cert}")
    return 0


def send(args: argparse.Namespace) -> int:
    """Every action but serve and issue: one QoS 1 publish as the admin client."""
    if not args.to or args.arg is None:
        print(f"error: {args.action} needs --to DEVICE and an argument", file=sys.stderr)
        return 2
    payload = args.arg.encode()
    if args.action in ("push-config", "update-shadow", "create-job", "set-attributes"):
        try:
            payload = Path(args.arg).read_bytes()
            doc = json.loads(payload) if args.action != "push-config" else None
        except OSError as exc:
            print(f"error: {args.arg}: {exc.strerror}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"error: {args.arg}: not JSON ({exc}); {args.action} sends JSON", file=sys.stderr)
            return 2
    retain, tls = False, None
    if args.action == "push-config":
        topic, retain = f"/devices/{args.to}/config", True
    elif args.action == "command":
        topic = f"/devices/{args.to}/commands" + (f"/{args.subfolder}" if args.subfolder else "")
    elif args.action == "update-shadow":
        topic = f"$aws/things/{args.to}/shadow/name/{args.shadow}/update"
        payload = json.dumps({"state": {"desired": doc}}).encode()
    elif args.action == "create-job":
        if not args.job_id:
            print("error: create-job needs --job-id ID", file=sys.stderr)
            return 2
        topic = f"$sim/jobs/create/{args.to}/{args.job_id}"
    elif args.action == "set-attributes":
        topic = f"$sim/attributes/{args.to}"
    else:  # rpc
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            print(f"error: --params is not JSON ({exc})", file=sys.stderr)
            return 2
        topic = f"$sim/rpc/{args.to}"
        payload = json.dumps({"method": args.arg, "params": params}).encode()
    if args.what == "aws":
        tls = ssl.create_default_context(cafile=str(args.certs / "ca.pem"))
    return admin_publish(args, topic, payload, retain, tls)


def admin_publish(
    args: argparse.Namespace, topic: str, payload: bytes, retain: bool, tls: ssl.SSLContext | None
) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"admin-{secrets.token_hex(4)}")
    c.username_pw_set(OBSERVER, args.admin_password or "")
    if tls is not None:
        c.tls_set_context(tls)
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
