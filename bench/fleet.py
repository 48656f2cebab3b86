"""A fleet of real gateways on a 3-node NATS cluster: `fleet status`, rollouts, idle cost.

    nice .venv/bin/python bench/fleet.py [--quick] [--gateways N]
    nice .venv/bin/python bench/fleet.py --sends 1000    # sending one wave of 1,000, timed

50 `gatewayd run` processes (--quick: 10), each its own state dir and Modbus unit of one
simulator, polling one point a second, on a 3-node NATS cluster (JetStream + MQTT):
1. `fleet status` as a user sees it;
2. idle cost per gateway: CPU % and RSS over a window, beside an idle Python interpreter with
   asyncio and paho imported (the floor any Python gateway pays), measured in the same run;
3. a good config in waves 1, 5, 20, 24 (--quick: 1, 2, 3, rest): time per wave and in total,
   beside one gateway's push-to-applied (wave 1) as the baseline;
4. an unhealthy config (its device does not answer): halts after wave 1, the rest never get it;
4. the rollout process SIGKILLed mid-wave and run again: resumes, nothing pushed twice;
5. a cluster node SIGKILLed after the first wave: the gateways fail over, the rollout
   completes, readings lost counted by record id at a subscriber on a surviving node.
Also: messages/s and bytes per idle gateway on the broker (events, state), the figures the
README's 10,000-gateway estimate scales from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from harness import cpu_seconds, rss_mb
from nats_cluster import (
    USERS,
    EventCounter,
    NatsCluster,
    Observer,
    gateway_doc,
    start_gateways,
)

from gatewayd_sim.procs import free_port, wait_for


def fleet_cmd(
    work: Path, cluster: NatsCluster, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    conn = ["--host", ",".join(cluster.mqtt_hosts), "--username", "fleet"]
    conn += ["--password", USERS["fleet"]]
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "fleet", *args, *conn],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
    )


def status_json(work: Path, cluster: NatsCluster) -> dict[str, Any]:
    r = fleet_cmd(work, cluster, "status", "--json")
    doc: dict[str, Any] = json.loads(r.stdout) if r.returncode == 0 else {"gateways": []}
    return doc


def idle_cost(pids: list[int], window_s: float) -> tuple[float, float, float, float]:
    """Mean CPU % and RSS MB of `pids` over the window, and the same for an idle interpreter."""
    base = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, paho.mqtt.client, sqlite3; asyncio.run(asyncio.sleep(3600))",
        ]
    )
    time.sleep(2.0)
    try:
        c0 = {p: cpu_seconds(p) for p in [*pids, base.pid]}
        t0 = time.monotonic()
        time.sleep(window_s)
        dt = time.monotonic() - t0
        c1 = {p: cpu_seconds(p) for p in [*pids, base.pid]}
        cpu = sum(c1[p] - c0[p] for p in pids) / len(pids) / dt * 100
        rss = sum(rss_mb(p) for p in pids) / len(pids)
        return cpu, rss, (c1[base.pid] - c0[base.pid]) / dt * 100, rss_mb(base.pid)
    finally:
        base.kill()
        base.wait()


def broker_traffic(port: int, seconds: float) -> dict[str, int]:
    """Messages and bytes on the events and state topics of every gateway, over `seconds`."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counts = {"events": 0, "events_bytes": 0, "state": 0, "state_bytes": 0}

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:
            return
        kind = "state" if msg.topic.endswith("/state") else "events"
        counts[kind] += 1
        counts[kind + "_bytes"] += len(msg.payload)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"traffic-{time.time_ns()}")
    c.username_pw_set("observer", USERS["observer"])
    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe([("/devices/+/events", 0), ("/devices/+/state", 0)])
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(2.0)
    for k in counts:
        counts[k] = 0
    time.sleep(seconds)
    snapshot = dict(counts)
    c.loop_stop()
    c.disconnect()
    return snapshot


def complaints(log: Path, offset: int, top: int = 6) -> list[str]:
    """The most frequent warnings and errors a log got after `offset`, digits masked."""
    import re
    from collections import Counter

    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    c: Counter[str] = Counter()
    for line in text.splitlines():
        low = line.lower()
        if "[err]" in low or "[wrn]" in low or "level=warn" in low or "level=error" in low:
            body = line.split("]", 2)[-1] if line.startswith("[") else line
            c[re.sub(r"\d+", "N", body.strip())[:150]] += 1
    return [f"{n:5d} x {m}" for m, n in c.most_common(top)]


def timeouts(plan: dict[str, Any], observer: Observer) -> str:
    """The gateways that timed out, and whether the push reached a subscriber on another node."""
    out = [
        f"{gw} (the observer saw {observer.count(gw, plan['version'])} push): {g['reason']}"
        for gw, g in sorted(plan["gateways"].items())
        if g["result"] == "timeout"
    ]
    return "; ".join(out) or "none"


def send_line(plan: dict[str, Any]) -> str:
    return ", ".join(
        f"wave {k} ({len(plan['waves'][int(k) - 1])}) {v:.2f} s"
        for k, v in sorted(plan.get("wave_send_s", {}).items())
    )


def write_doc(work: Path, name: str, version: int, cluster: NatsCluster, **kw: Any) -> Path:
    path = work / f"{name}.json"
    path.write_text(json.dumps(gateway_doc(version, cluster.mqtt_hosts, **kw)))
    return path


def sends(cluster: NatsCluster, work: Path, n: int) -> None:
    """One wave of `n` gateways, sent as `fleet rollout` sends it (retained QoS 1 pushes, the
    state file saved per window) with --parallel 1, the way before, and the default 64. No
    gateway listens: only sending is measured; the retained documents are cleared after."""
    from gatewayd.fleet.broker import FleetBroker, load_settings
    from gatewayd.fleet.plan import GatewayPlan, Plan
    from gatewayd.fleet.rollout import ConfigJob
    from gatewayd.fleet.waves import Waves

    settings = load_settings(
        None, host=",".join(cluster.mqtt_hosts), username="fleet", password=USERS["fleet"]
    )
    broker = FleetBroker(settings)
    broker.connect()
    broker.settle()
    ids = [f"synthetic-{i:05d}" for i in range(n)]
    doc = gateway_doc(2, cluster.mqtt_hosts, device_port=1502, unit=1)
    try:
        for window in (1, 64):
            gws = {g: GatewayPlan(g, 1, {}, 1, None) for g in ids}
            plan = Plan("bench", 2 + window, {}, [ids], 0, 300.0, None, gws)
            job = ConfigJob(broker, plan, dict(doc, version=2 + window))
            job.window = window
            run = Waves(broker, plan, job, work / f"sends-{window}.rollout.json")
            t0 = time.monotonic()
            missed = run.send_all(list(gws.values()), job)
            dt = time.monotonic() - t0
            print(
                f"sending one wave of {n}, --parallel {window}: {dt:.1f} s "
                f"({dt / n * 1000:.1f} ms per gateway), {n - len(missed)} acknowledged"
            )
    finally:
        for g in ids:  # clear the retained documents
            broker.publish(settings.config_topic.format(gateway=g), b"", retain=True)
        time.sleep(2.0)
        broker.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gateways", type=int)
    ap.add_argument("--keep", action="store_true", help="leave the work directory")
    ap.add_argument(
        "--sends", type=int, metavar="N", help="only time sending a wave of N (no gateways)"
    )
    a = ap.parse_args()
    n = a.gateways or (10 if a.quick else 50)
    waves = "1,2,3,100%" if a.quick else "1,5,20,24"
    window = 20.0 if a.quick else 60.0
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    cluster = NatsCluster(work / "nats", binary)
    t0 = time.monotonic()
    cluster.start()
    print(f"cluster: 3 NATS nodes with JetStream and MQTT up in {time.monotonic() - t0:.1f} s")
    if a.sends:
        try:
            sends(cluster, work, a.sends)
        finally:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
        return 0
    t0 = time.monotonic()
    # All on node 1 first, as the pushed documents list the nodes: a rollout then does not move
    # 50 sessions at once (NATS 2.9 takes that badly: see the README), and node 1 is the one killed.
    gws = start_gateways(work, cluster, n, hosts_per_gateway=3, spread=False)
    observer = Observer(cluster.nodes[2].mqtt_port)  # the node never killed
    events = EventCounter(cluster.nodes[2].mqtt_port)
    running: list[subprocess.Popen[str]] = []
    try:
        wait_for(
            lambda: (
                sum(1 for g in status_json(work, cluster)["gateways"] if g["devices_good"]) == n
            ),
            300,
            "every gateway polling and publishing state",
            interval=2.0,
        )
        print(f"fleet: {n} gateways polling and on the broker in {time.monotonic() - t0:.1f} s")
        time.sleep(5.0)
        r = fleet_cmd(work, cluster, "status")
        print("\n$ gatewayd fleet status --host ... --username fleet")
        print(r.stdout)

        pids = [p.pid for p in gws.procs.values()]
        cpu, rss, base_cpu, base_rss = idle_cost(pids, window)
        nats = [nd.proc.pid for nd in cluster.nodes if nd.proc is not None]
        ncpu = sum(cpu_seconds(p) for p in nats)
        time.sleep(5.0)
        ncpu = (sum(cpu_seconds(p) for p in nats) - ncpu) / 5.0 * 100
        print(
            f"idle cost per gateway over {window:g} s (1 point/s, state on change): "
            f"CPU {cpu:.2f} %, RSS {rss:.1f} MB; baseline idle interpreter (asyncio+paho): "
            f"CPU {base_cpu:.2f} %, RSS {base_rss:.1f} MB"
        )
        print(
            f"broker: 3 NATS nodes together CPU {ncpu:.1f} % for {n} gateways, RSS "
            + ", ".join(f"{rss_mb(p):.0f}" for p in nats)
            + " MB"
        )

        secs = 10.0
        t = broker_traffic(cluster.nodes[2].mqtt_port, secs)
        ev, st = t["events"], t["state"]
        print(
            f"broker traffic per idle gateway: events {ev / secs / n:.2f} msg/s "
            f"({t['events_bytes'] / max(1, ev):.0f} B each), state {st / secs / n:.2f} msg/s "
            f"({t['state_bytes'] / max(1, st):.0f} B each, retained)"
        )

        version = 2
        doc = write_doc(work, "good", version, cluster, device_port=gws.sim_port)
        t0 = time.monotonic()
        r = fleet_cmd(
            work, cluster, "rollout", str(doc), "--waves", waves, "--health-timeout", "120",
            "--require", "devices_bad == 0",
        )  # fmt: skip
        total = time.monotonic() - t0
        plan = json.loads((work / "good.json.rollout.json").read_text())
        print(f"\n1. good config, waves {waves}: {r.stdout.splitlines()[-2]}")
        answers = sorted(g["answered_s"] for g in plan["gateways"].values() if g["answered_s"])
        print(
            "   per wave: "
            + ", ".join(f"wave {k} {v:.1f} s" for k, v in sorted(plan["wave_times_s"].items()))
            + f"; command total {total:.1f} s (with connect and gathering state)"
        )
        print(
            f"   baseline, one gateway push to applied: {plan['wave_times_s']['1']:.1f} s; "
            f"answers median {answers[len(answers) // 2]:.1f} s, max {answers[-1]:.1f} s"
        )
        pushed_once = all(observer.count(gw, version) == 1 for gw in gws.ids)
        print(f"   every gateway pushed exactly once: {pushed_once}")
        print(f"   sending (publish to last PUBACK, state saved), pipelined: {send_line(plan)}")

        version += 1  # the same, one push at a time: what fleet did before --parallel
        doc = write_doc(work, "sequential", version, cluster, device_port=gws.sim_port)
        r = fleet_cmd(
            work, cluster, "rollout", str(doc), "--waves", waves, "--health-timeout", "120",
            "--parallel", "1",
        )  # fmt: skip
        seq = json.loads((work / "sequential.json.rollout.json").read_text())
        if seq["status"] == "halted":
            version += 1  # its put-back took version + 1
            print(f"   timed out: {timeouts(seq, observer)}")
        print(f"   baseline, --parallel 1 (one push at a time): {r.stdout.splitlines()[-2]}")
        print(
            "   per wave: "
            + ", ".join(f"wave {k} {v:.1f} s" for k, v in sorted(seq["wave_times_s"].items()))
            + f"; sending: {send_line(seq)}"
        )

        version += 1
        doc = write_doc(work, "unhealthy", version, cluster, device_port=free_port())
        t0 = time.monotonic()
        r = fleet_cmd(
            work, cluster, "rollout", str(doc), "--waves", waves, "--health-timeout", "120",
            "--require", "devices_bad == 0",
        )  # fmt: skip
        plan = json.loads((work / "unhealthy.json.rollout.json").read_text())
        first = plan["waves"][0][0]
        others = sum(observer.count(gw, version) for gw in gws.ids if gw != first)
        print(f"\n2. unhealthy config: exit {r.returncode}, {time.monotonic() - t0:.1f} s")
        print(f"   {r.stdout.splitlines()[-2]}")
        print(
            f"   {first}: {plan['gateways'][first]['result']}, put back: "
            f"{plan['gateways'][first]['reverted']}; pushes to the other {n - 1}: {others}"
        )
        version += 2  # the put-back took version + 1

        doc = write_doc(work, "resume", version, cluster, device_port=gws.sim_port)
        state = work / "resume.json.rollout.json"
        conn = ["--host", ",".join(cluster.mqtt_hosts), "--username", "fleet"]
        conn += ["--password", USERS["fleet"]]
        args = [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(doc), *conn]
        # --parallel 4: a wave is sent 4 at a time, so the kill can fall between two windows.
        args += ["--waves", waves, "--health-timeout", "120", "--parallel", "4"]
        t0 = time.monotonic()
        p = subprocess.Popen(args, cwd=work, stdout=subprocess.DEVNULL)

        def mid_wave() -> bool:
            try:
                pl = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            w = [pl["gateways"][g] for g in pl["waves"][-1]]
            return any(g["pushed"] for g in w) and not all(g["pushed"] for g in w)

        wait_for(mid_wave, 300, "the last wave half pushed", 0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        pl = json.loads(state.read_text())
        done = sum(1 for g in pl["gateways"].values() if g["pushed"])
        r = fleet_cmd(work, cluster, "rollout", str(doc), "--waves", waves, "--parallel", "4")
        twice = [gw for gw in gws.ids if observer.count(gw, version) != 1]
        print(
            f"\n4. rollout SIGKILLed with {done}/{n} pushed, run again: "
            f"{r.stdout.splitlines()[-2]}; {time.monotonic() - t0:.1f} s in all; "
            f"gateways not pushed exactly once: {twice or 'none'}"
        )

        version += 1
        doc = write_doc(work, "failover", version, cluster, device_port=gws.sim_port)
        state = work / "failover.json.rollout.json"
        args = [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(doc), *conn]
        args += ["--waves", waves, "--health-timeout", "120"]
        t0 = time.monotonic()
        p = subprocess.Popen(args, cwd=work, stdout=subprocess.PIPE, text=True)
        running.append(p)

        def first_wave() -> bool:
            try:
                pl = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            return bool(pl["gateways"][pl["waves"][0][0]]["result"])

        wait_for(first_wave, 300, "the first wave's answer", 0.05)
        logs = [cluster.workdir / f"{nd.name}.log" for nd in cluster.nodes[1:]]
        offsets = [lg.stat().st_size for lg in logs]
        gw_offsets = {gw: (work / gw / "gateway.log").stat().st_size for gw in gws.ids}
        killed_at = time.monotonic()
        cluster.kill(cluster.nodes[0])
        out, _ = p.communicate(timeout=900)
        took = time.monotonic() - t0
        print(f"\n5. fleet's output after the kill ({time.monotonic() - killed_at:.1f} s):")
        print("   " + "\n   ".join(out.splitlines()[-8:]))
        for lg, off in zip(logs, offsets, strict=True):
            print(f"   {lg.name} after the kill, most frequent warnings/errors:")
            print("     " + "\n     ".join(complaints(lg, off) or ["none"]))
        from collections import Counter

        gw_c: Counter[str] = Counter()
        for gw, off in gw_offsets.items():
            for line in complaints(work / gw / "gateway.log", off, top=20):
                count, _, m = line.partition(" x ")
                gw_c[m] += int(count)
        print("   the gateways' logs after the kill, most frequent warnings/errors (all 50):")
        print("     " + "\n     ".join(f"{k:5d} x {m}" for m, k in gw_c.most_common(6)))
        dead = f"127.0.0.1:{cluster.nodes[0].mqtt_port}"

        def settled() -> bool:
            gs = status_json(work, cluster)["gateways"]
            return len(gs) == n and all(
                g["uplink_host"] not in (None, dead) and g["buffer_oldest_age_s"] < 5 for g in gs
            )

        t1 = time.monotonic()
        state_of_fleet = f"all {n} on live nodes, nothing old buffered"
        try:
            wait_for(settled, 300, "every gateway on a live node, nothing old in its buffer", 5.0)
        except AssertionError as exc:
            state_of_fleet = f"NOT SETTLED ({exc})"
        time.sleep(3.0)
        lost = sum(len(events.lost(gw, work / gw / "state")) for gw in gws.ids)
        seen = sum(len(v) for v in events.ids.values())
        pl = json.loads(state.read_text())
        print(f"   timed out: {timeouts(pl, observer)}")
        print(
            f"   node SIGKILLed after wave 1: {out.splitlines()[-2]}; {took:.1f} s; per wave "
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(pl["wave_times_s"].items()))
        )
        print(
            f"   {state_of_fleet}, {time.monotonic() - t1:.1f} s after "
            f"the rollout; readings lost by record id: {lost} of {seen} seen"
        )
    finally:
        for proc in running:  # a rollout left behind by an interrupted run
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        events.close()
        observer.close()
        gws.stop()
        cluster.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
