"""`gatewayd fleet status|rollout|update`: argument parsing and the commands' flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
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
    g.add_argument("--commands-topic", help="default /devices/{gateway}/commands")
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
    _wave_args(ro, 120.0, "above its [remote_config] health_deadline_s", "DOC.rollout.json")
    up = fs.add_parser("update", parents=[conn], help="install a signed release in waves")
    up.add_argument("version", help="the release, e.g. 0.2.0")
    src = up.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--command",
        metavar="FILE",
        help="the signed update command (what python -m gatewayd.lifecycle.release prints)",
    )
    src.add_argument("--key", help="sign here: the release key (private PEM); with the wheels")
    up.add_argument("--url", help="with --key: where the gateways fetch the files (the folder)")
    up.add_argument("--mqtt", action="store_true", help="with --key: send the files as chunks")
    up.add_argument(
        "--wheels",
        nargs="+",
        type=Path,
        default=[],
        metavar="WHL",
        help="the release's wheels (with --key; with a --command whose source is mqtt)",
    )
    _wave_args(
        up,
        600.0,
        "above fetch + build + restart + [update] health_deadline_s",
        "update-VERSION.rollout.json",
    )
    args = f.parse_args(argv)
    from .broker import WINDOW_MAX, FleetError

    if getattr(args, "parallel", None) is not None and not 1 <= args.parallel <= WINDOW_MAX:
        print(f"error: --parallel {args.parallel}: give 1 to {WINDOW_MAX}", file=sys.stderr)
        return 2

    try:
        if args.fleet_cmd == "status":
            return _status(args)
        return _rollout(args) if args.fleet_cmd == "rollout" else _update(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _wave_args(p: argparse.ArgumentParser, timeout: float, why: str, state: str) -> None:
    p.add_argument("--waves", default="1,5%,25%,100%", help="sizes: N or P%% (default %(default)s)")
    p.add_argument("--max-failures", type=int, default=0, help="halt when more fail (default 0)")
    p.add_argument(
        "--health-timeout",
        type=float,
        default=timeout,
        metavar="S",
        help=f"seconds a gateway has to answer ({why}; default %(default)g)",
    )
    p.add_argument("--require", help='also demand this of the state, e.g. "devices_bad == 0"')
    p.add_argument("--state-file", help=f"the plan and results (default {state}); resumes")
    p.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="sends awaiting their acknowledgement at once, 1-256 (default: 64; 2 with chunks)",
    )


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
        commands_topic=args.commands_topic,
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
    from .rollout import ConfigJob
    from .waves import compile_require

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
    broker = _connect(args)
    try:
        plan = _resume(state_path, "config", plans.digest(doc))
        if plan is None:
            views = _fresh(args, broker)
            for v in views:
                held = broker.configs.get(v.id)
                current = max(v.config_version or 0, (held.doc.get("version") or 0) if held else 0)
                if version <= current:
                    raise FleetError(
                        f"version {version} is not newer than {v.id}'s {current}; raise the "
                        "document's version (gateways refuse what is not newer)"
                    )
            _validate(doc, views[0])
            plan = _new_plan(
                args,
                views,
                plans.digest(doc),
                version,
                lambda v: (v.config_version, _held(broker, v.id)),
            )
            plans.save(plan, state_path)
        return _run(args, broker, plan, ConfigJob(broker, plan, doc), state_path)
    finally:
        broker.close()


def _update(args: argparse.Namespace) -> int:
    import time

    from . import plan as plans
    from .update import UpdateJob, check_command, command_digest
    from .waves import compile_require

    command = _update_command(args)
    files = check_command(command, args.version, args.wheels)
    compile_require(args.require)
    state_path = Path(args.state_file or f"update-{args.version}.rollout.json")
    digest = command_digest(command)
    broker = _connect(args)
    try:
        plan = _resume(state_path, "update", digest)
        if plan is None:
            views = _fresh(args, broker)
            on = [v.id for v in views if v.software_version == args.version]
            if on:
                print(f"left out, running {args.version} already: {', '.join(on)}")
            views = [v for v in views if v.software_version != args.version]
            if not views:
                print(f"nothing to do: every selected gateway runs {args.version}")
                return 0
            plan = _new_plan(
                args, views, digest, args.version, lambda v: (v.software_version, None)
            )
            plan.kind, plan.run_id = "update", f"fleet-{args.version}-{int(time.time())}"
            plans.save(plan, state_path)
        return _run(args, broker, plan, UpdateJob(broker, plan, command, files), state_path)
    finally:
        broker.close()


def _update_command(args: argparse.Namespace) -> dict[str, Any]:
    from gatewayd.lifecycle.verify import make_manifest, sign

    from .broker import FleetError

    if args.command:
        try:
            doc = json.loads(Path(args.command).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FleetError(f"{args.command}: not a readable JSON command ({exc})") from exc
        if not isinstance(doc, dict):
            raise FleetError(f"{args.command}: not a JSON object")
        return doc
    if not args.wheels or bool(args.url) == bool(args.mqtt):
        raise FleetError("--key: give the release's wheels and one of --url URL or --mqtt")
    manifest = make_manifest(args.version, args.wheels)
    try:
        signature = sign(Path(args.key).read_bytes(), manifest)
    except (OSError, ValueError) as exc:
        raise FleetError(f"--key {args.key}: {exc}") from exc
    source: dict[str, Any] = {"source": "mqtt"} if args.mqtt else {"url": args.url}
    return {"command": "update", "version": args.version, "manifest": manifest,
            "signature": signature, **source}  # fmt: skip


def _resume(state_path: Path, kind: str, digest: str) -> Any:
    from . import plan as plans
    from .broker import FleetError

    plan = plans.load(state_path)
    if plan is None:
        return None
    if plan.kind != kind or plan.doc_digest != digest:
        raise FleetError(
            f"{state_path}: the state of another {'rollout' if kind == 'config' else 'update'}; "
            "move it away or pass --state-file"
        )
    what = f"rollout of version {plan.version}" if kind == "config" else f"update to {plan.version}"
    print(f"resuming the {what} from {state_path}")
    return plan


def _run(args: argparse.Namespace, broker: Any, plan: Any, job: Any, state_path: Path) -> int:
    from .waves import Waves

    if args.parallel is not None:
        job.window = args.parallel
    tty = sys.stderr if sys.stderr.isatty() else None
    return Waves(broker, plan, job, state_path, sys.stdout, tty).run()


def _held(broker: Any, gw: str) -> dict[str, Any] | None:
    held = broker.configs.get(gw)
    return held.doc if held is not None else None


def _fresh(args: argparse.Namespace, broker: Any) -> list[Any]:
    """The selected gateways with a fresh state document (stale ones named and left out)."""
    from .broker import FleetError

    views = _views(broker, _select(args.select))
    stale = [v.id for v in views if v.stale(args.stale_after)]
    views = [v for v in views if not v.stale(args.stale_after)]
    if stale:
        print(f"left out, stale (no state for {args.stale_after:g} s): {', '.join(stale)}")
    if not views:
        raise FleetError(
            f"no gateway matches --select {' '.join(args.select) or '(all)'} with a fresh state "
            "document; check `gatewayd fleet status` (and [uplink] retain_state = true)"
        )
    return views


def _validate(doc: dict[str, Any], first: Any) -> None:
    from gatewayd.config import ConfigError, load_document

    from . import plan as plans
    from .broker import FleetError

    try:
        load_document(plans.for_gateway(doc, first.id, first.labels))
    except ConfigError as exc:
        raise FleetError(f"the document does not validate for {first.id}: {exc}") from exc


def _new_plan(
    args: argparse.Namespace,
    views: list[Any],
    digest: str,
    version: int | str,
    previous: Callable[[Any], tuple[int | str | None, dict[str, Any] | None]],
) -> Any:
    """Waves over `views` in order; `previous(view)`: what each had before (version, document)."""
    from . import plan as plans

    sizes = plans.parse_waves(args.waves, len(views))
    waves, at = [], 0
    for n in sizes:
        waves.append([v.id for v in views[at : at + n]])
        at += n
    by_id = {v.id: v for v in views}
    gateways = {}
    for w, ids in enumerate(waves, 1):
        for gw in ids:
            before, doc = previous(by_id[gw])
            gateways[gw] = plans.GatewayPlan(
                id=gw,
                wave=w,
                labels=by_id[gw].labels,
                previous_version=before,
                previous_doc=doc,
            )
    return plans.Plan(
        doc_digest=digest,
        version=version,
        select=_select(args.select),
        waves=waves,
        max_failures=args.max_failures,
        health_timeout_s=args.health_timeout,
        require=args.require,
        gateways=gateways,
    )
