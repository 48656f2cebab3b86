"""`python -m gatewayd_sim azure [serve|desire|invoke|twin]`: the IoT Hub stand-in, and its admin.

    python -m gatewayd_sim azure --port 8883 --hub demo-hub --device gw1      # prints gw1's key
    python -m gatewayd_sim azure desire doc.json --to gw1 --port 8883 --admin-password PW
    python -m gatewayd_sim azure invoke write '{"point": "boiler/setpoint", "value": 65}' \\
        --to gw1 --port 8883 --admin-password PW
    python -m gatewayd_sim azure twin --to gw1 --port 8883 --admin-password PW

`serve` listens with TLS on a throw-away self-signed certificate (printed: point [uplink.tls]
ca_file at it) and prints each device's key and the admin password. `desire` sets the desired
property `gatewayd` to the document in the file (what the azure channel reads as the gateway's
configuration); `invoke` calls a direct method and prints its status and answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import ssl
import sys
import tempfile
import threading
from pathlib import Path

from .azure import AzureHub, server_tls
from .broker import OBSERVER


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gatewayd_sim azure")
    p.add_argument(
        "action", nargs="?", default="serve", choices=["serve", "desire", "invoke", "twin"]
    )
    p.add_argument("arg", nargs="?", help="desire: document file; invoke: method name")
    p.add_argument("payload", nargs="?", help="invoke: the method's JSON payload")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--hub", default="demo-hub")
    p.add_argument("--device", action="append", help="serve: DEVICE or DEVICE=KEY, repeatable")
    p.add_argument("--tls-dir", help="serve: where to write the certificate (default: a temp dir)")
    p.add_argument("--admin-password", help="password of the admin client (serve: default random)")
    p.add_argument("--to", help="desire/invoke/twin: the device id")
    p.add_argument("--ca-file", help="desire/invoke/twin: the stand-in's certificate")
    return p


async def serve(args: argparse.Namespace) -> None:
    folder = Path(args.tls_dir or tempfile.mkdtemp(prefix="azure-standin-"))
    ctx, ca_file = server_tls(folder, ips=(args.host,) if args.host != "127.0.0.1" else ())
    password = args.admin_password or secrets.token_urlsafe(12)
    hub = AzureHub(args.hub, args.host, args.port, tls=ctx, admin_password=password)
    for spec in args.device or ["gw1"]:
        dev, _, key = spec.partition("=")
        print(f"azure: device {dev} key {hub.add_device(dev, key or None)}", flush=True)
    await hub.start()
    print(f"azure: IoT Hub {args.hub} (MQTT over TLS) on {args.host}:{hub.port}", flush=True)
    print(f"azure: certificate {ca_file}", flush=True)
    print(f"azure: admin password {password}", flush=True)
    await asyncio.Event().wait()


def admin(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if not args.to:
        print(f"error: {args.action} needs --to DEVICE", file=sys.stderr)
        return 2
    if args.action == "desire":
        try:
            doc = json.loads(Path(args.arg or "").read_text())
        except (OSError, ValueError) as exc:
            print(f"error: {args.arg}: {exc}", file=sys.stderr)
            return 2
        topic, payload, answer = f"$admin/{args.to}/desired", json.dumps({"gatewayd": doc}), None
    elif args.action == "invoke":
        if not args.arg:
            print("error: invoke needs a method name", file=sys.stderr)
            return 2
        topic, payload = f"$admin/{args.to}/methods/{args.arg}", args.payload or ""
        answer = f"$admin/{args.to}/methods/res"
    else:
        topic, payload, answer = f"$admin/{args.to}/twin/get", "", f"$admin/{args.to}/twin"
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"admin-{secrets.token_hex(4)}")
    c.username_pw_set(OBSERVER, args.admin_password or "")
    ctx = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a local stand-in
    c.tls_set_context(ctx)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        done.set()

    c.on_message = on_message
    try:
        c.connect(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot reach the stand-in: {exc}", file=sys.stderr)
        return 1
    c.loop_start()
    try:
        if answer is not None:
            c.subscribe(answer, qos=1)
        c.publish(topic, payload, qos=1).wait_for_publish(10)
        if answer is not None and not done.wait(40):
            print("error: no answer", file=sys.stderr)
            return 1
    finally:
        c.disconnect()
        c.loop_stop()
    print(got[0].decode() if got else f"sent {len(payload)} bytes to {topic}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action != "serve":
        return admin(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0
