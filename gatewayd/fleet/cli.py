"""`gatewayd fleet status|rollout`: argument parsing and the two commands' flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """`gatewayd fleet ARGS`: gatewayd/cli.py hands the arguments over unparsed, so the
    daemon's own start never imports this package."""
    f = argparse.ArgumentParser(
        prog="gatewayd fleet",
        description="Many gateways through their broker: status, staged config rollouts.",
    )
    conn = argparse.ArgumentParser(add_help=False)
    g = conn.add_argument_group("broker (fleet's own credentials)")
    g.add_argument("--broker-file", help="TOML file with a [broker] table (flags override it)")
    g.add_argument("--host", help="host[:port][,host[:port]...]; the next one when one fails")
    g.add_argument("--port", type=int, help="default port for --host entries without one")
    g.add_argument("--username")
    g.add_argument("--password", help="or $GATEWAYD_FLEET_PASSWORD")
    g.add_argument("--client-id")
    g.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    g.add_argument("--ca-file")
    g.add_argument("--cert-file")
    g.add_argument("--key-file")
    g.add_argument("--insecure", action="store_true", default=None, help="TLS without checks")
    g.add_argument("--state-topic", help="default /devices/{gateway}/state")
    g.add_argument("--config-topic", help="default /devices/{gateway}/config")
    g.add_argument(
        "--listen", type=float, default=3.0, help="seconds to gather state documents (default 3)"
    )
    g.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="only gateways with this label (repeat: all must match; id=... names one)",
    )
    g.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        metavar="S",
        help="a gateway with no state for S seconds is stale (default 300)",
    )
    fs = f.add_subparsers(dest="fleet_cmd", required=True)
    st = fs.add_parser("status", parents=[conn], help="one line per gateway and a roll-up")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    ro = fs.add_parser("rollout", parents=[conn], help="push a config document in waves")
    ro.add_argument("doc", help="the JSON config document ({gateway}, {label.NAME} filled in)")
    ro.add_argument(
        "--waves", default="1,5%,25%,100%", help="sizes: N or P%% (default %(default)s)"
    )
    ro.add_argument("--max-failures", type=int, default=0, help="halt when more fail (default 0)")
    ro.add_argument(
        "--health-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a gateway has to answer (above its health_deadline_s; default 120)",
    )
    ro.add_argument("--require", help='also demand this of the state, e.g. "devices_bad == 0"')
    ro.add_argument(
        "--state-file", help="the rollout's plan and results (default DOC.rollout.json); resumes"
    )
    args = f.parse_args(argv)
    from .broker import FleetError

    try:
        return _status(args) if args.fleet_cmd == "status" else _rollout(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _select(items: list[str]) -> dict[str, str]:
    from .broker import FleetError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise FleetError(f"--select {item!r}: write LABEL=VALUE, e.g. --select site=plant-3")
        out[key] = value
    return out


def _connect(args: argparse.Namespace) -> Any:
    from .broker import FleetBroker, load_settings

    settings = load_settings(
        args.broker_file,
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password or os.environ.get("GATEWAYD_FLEET_PASSWORD"),
        client_id=args.client_id,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        insecure=args.insecure,
        state_topic=args.state_topic,
        config_topic=args.config_topic,
    )
    broker = FleetBroker(settings)
    broker.connect()
    broker.settle(quiet_s=min(1.0, args.listen), max_s=args.listen)
    return broker


def _views(broker: Any, select: dict[str, str]) -> list[Any]:
    from .state import read

    with broker.lock:
        seen = dict(broker.states)
    views = [read(gw, s) for gw, s in sorted(seen.items())]
    return [v for v in views if v.matches(select)]


def _status(args: argparse.Namespace) -> int:
    from . import table

    select = _select(args.select)
    broker = _connect(args)
    try:
        views = _views(broker, select)
    finally:
        broker.close()
    if args.json:
        sys.stdout.write(table.render_json(views, args.stale_after))
    else:
        sys.stdout.write(table.render_text(views, args.stale_after))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from . import plan as plans
    from .broker import FleetError
    from .rollout import Rollout, compile_require

    doc_path = Path(args.doc)
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FleetError(f"{doc_path}: not a readable JSON document ({exc})") from exc
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FleetError(f"{doc_path}: needs an integer version of 1 or more at the top")
    compile_require(args.require)  # refuse a bad expression before connecting
    state_path = Path(args.state_file or f"{args.doc}.rollout.json")
    select = _select(args.select)
    broker = _connect(args)
    try:
        plan = plans.load(state_path)
        if plan is not None:
            if plan.doc_digest != plans.digest(doc):
                raise FleetError(
                    f"{state_path}: a rollout of another document; move it away or pass "
                    "--state-file"
                )
            print(f"resuming the rollout of version {plan.version} from {state_path}")
        else:
            plan = _new_plan(args, broker, doc, version, select)
            plans.save(plan, state_path)
        tty = sys.stderr if sys.stderr.isatty() else None
        return Rollout(broker, plan, doc, state_path, sys.stdout, tty).run()
    finally:
        broker.close()


def _new_plan(
    args: argparse.Namespace, broker: Any, doc: dict[str, Any], version: int, select: dict[str, str]
) -> Any:
    from gatewayd.config import ConfigError, load_document

    from . import plan as plans
    from .broker import FleetError

    views = _views(broker, select)
    stale = [v.id for v in views if v.stale(args.stale_after)]
    views = [v for v in views if not v.stale(args.stale_after)]
    if stale:
        print(f"left out, stale (no state for {args.stale_after:g} s): {', '.join(stale)}")
    if not views:
        raise FleetError(
            f"no gateway matches --select {' '.join(args.select) or '(all)'} with a fresh state "
            "document; check `gatewayd fleet status` (and [uplink] retain_state = true)"
        )
    for v in views:
        held = broker.configs.get(v.id)
        current = max(
            v.config_version or 0, (held.doc.get("version") or 0) if held is not None else 0
        )
        if version <= current:
            raise FleetError(
                f"version {version} is not newer than {v.id}'s {current}; raise the document's "
                "version (gateways refuse what is not newer)"
            )
    first = views[0]
    try:
        load_document(plans.for_gateway(doc, first.id, first.labels))
    except ConfigError as exc:
        raise FleetError(f"the document does not validate for {first.id}: {exc}") from exc
    sizes = plans.parse_waves(args.waves, len(views))
    waves, at = [], 0
    for n in sizes:
        waves.append([v.id for v in views[at : at + n]])
        at += n
    gateways = {}
    for w, ids in enumerate(waves, 1):
        for gw in ids:
            v = next(x for x in views if x.id == gw)
            held = broker.configs.get(gw)
            gateways[gw] = plans.GatewayPlan(
                id=gw,
                wave=w,
                labels=v.labels,
                previous_version=v.config_version,
                previous_doc=held.doc if held is not None else None,
            )
    return plans.Plan(
        doc_digest=plans.digest(doc),
        version=version,
        select=select,
        waves=waves,
        max_failures=args.max_failures,
        health_timeout_s=args.health_timeout,
        require=args.require,
        gateways=gateways,
    )
