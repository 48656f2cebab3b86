"""Hostile configuration pushes against a real daemon, through the cloud stand-in (issue 14).

A gateway process polls a simulated PLC and talks to `python -m gatewayd_sim cloud`; every push
goes out through `python -m gatewayd_sim cloud push-config`, like an operator's. The pushes are
drawn from a seeded mix: garbage bytes, deep nesting, duplicate keys, NaN/Infinity in number
settings, huge and stale versions, identity and start-only settings, unreachable devices, a
broker that is not there, random mutations, sound changes, and bursts that arrive while a
candidate is being judged. It checks, and prints:

- the daemon stays alive;
- every push gets exactly one outcome (the daemon's config_outcomes_total grows by one per push;
  a push is sent only while the uplink is connected, since the broker keeps only the newest
  retained document for a gateway that is away);
- the last good configuration is kept: the daemon's config_version is the version of the last
  applied push, records keep flowing, and a final sound push is applied.

The baseline beside the figures is a sound push's outcome latency measured first, in this run.

    nice .venv/bin/python bench/fuzz_config.py [--pushes 150] [--seed 14]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from gatewayd.status import Samples, fetch, parse
from gatewayd_sim.procs import free_port, wait_for, wait_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEVICE = "gw-fuzz"
PASSWORD = "fuzz-admin"


def _config(state: Path, broker: int, plc: int, metrics: int) -> str:
    points = (FIXTURES / "plc_points.toml").read_text()
    return f"""
version = 1
[gateway]
id = "{DEVICE}"
state_dir = "{state}"
[metrics]
listen = "127.0.0.1:{metrics}"
[uplink]
host = "127.0.0.1"
port = {broker}
project = "p1"
region = "r1"
registry = "reg1"
device = "{DEVICE}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
[remote_config]
health_deadline_s = 2.0
[[devices]]
id = "plc"
driver = "modbus_tcp"
port = {plc}
interval_ms = 100
timeout_s = 0.3
{points}
"""


class Pushes:
    """Seeded hostile pushes; versions rise so that stale ones are a choice, not an accident."""

    def __init__(self, base: dict[str, Any], rng: random.Random) -> None:
        self.base = base
        self.rng = rng
        self.version = 1

    def doc(self, version: int | None = None) -> dict[str, Any]:
        d = json.loads(json.dumps(self.base))
        if version is None:
            self.version += 1
            version = self.version
        d["version"] = version
        d["devices"][0]["interval_ms"] = 100 + version % 50  # each push differs
        return d

    def draw(self) -> tuple[str, list[bytes]]:
        r = self.rng
        kind = r.choice(
            [
                "garbage", "deep", "duplicate_key", "nan", "infinity", "huge_version",
                "stale", "identity", "start_only", "unreachable_device", "no_broker",
                "mutated", "mutated", "sound", "sound", "burst",
            ]
        )  # fmt: skip
        if kind == "garbage":
            return kind, [r.randbytes(r.randint(0, 300))]
        if kind == "deep":
            n = r.randint(20, 3000)
            return kind, [b'{"a":' * n + b"1" + b"}" * n]
        if kind == "duplicate_key":
            d = self.doc()
            text = json.dumps(d)
            return kind, [text.replace('"version":', '"version": 1, "version":', 1).encode()]
        if kind in ("nan", "infinity"):
            d = self.doc()
            value = float("nan") if kind == "nan" else r.choice([float("inf"), -float("inf")])
            target = r.choice(
                [
                    (d["remote_config"], "health_deadline_s"),
                    (d["uplink"], "puback_timeout_s"),
                    (d["uplink"], "connect_timeout_s"),
                    (d["devices"][0], "timeout_s"),
                    (d["devices"][0]["points"][0], "scale"),
                ]
            )
            target[0][target[1]] = value
            if r.random() < 0.5:
                d["uplink"]["port"] = free_port()  # the NaN deadline once kept this forever
            return kind, [json.dumps(d).encode()]  # NaN/Infinity literals, as Python writes
        if kind == "huge_version":
            d = self.doc()
            d["version"] = r.choice([10**400, 2**53, 2**63, -1])
            return kind, [json.dumps(d).encode()]
        if kind == "stale":
            d = self.doc(version=r.randint(0, self.version))
            d["devices"][0]["timeout_s"] = 0.29  # never identical to what runs (that is silent)
            return kind, [json.dumps(d).encode()]
        if kind == "identity":
            d = self.doc()
            key, value = r.choice(
                [("device", "gw-other"), ("client_id", "x-{device}"), ("registry", "reg2")]
            )
            d["uplink"][key] = value
            return kind, [json.dumps(d).encode()]
        if kind == "start_only":
            d = self.doc()
            if r.random() < 0.5:
                d["metrics"]["listen"] = "0.0.0.0:9108"
            else:
                d["buffer"] = {"max_bytes": 1 << 20}
            return kind, [json.dumps(d).encode()]
        if kind == "unreachable_device":
            d = self.doc()
            key, value = r.choice([("port", free_port()), ("unit", 77), ("host", "192.0.2.1")])
            d["devices"][0][key] = value
            return kind, [json.dumps(d).encode()]
        if kind == "no_broker":
            d = self.doc()
            d["uplink"]["port"] = free_port()
            return kind, [json.dumps(d).encode()]
        if kind == "mutated":
            d = self.doc()
            section = r.choice(
                [d, d["uplink"], d["devices"][0], r.choice(d["devices"][0]["points"])]
            )
            key = r.choice([k for k in section if k != "version"] or ["x"])
            section[key] = r.choice(
                [None, True, -1, 0, 70000, 1e308, "", "a\n", "{x}", [], {}, float("nan")]
            )
            return kind, [json.dumps(d).encode()]
        if kind == "burst":  # the later ones arrive while the first is judged (for 2 s)
            slow = self.doc()
            slow["devices"][0]["port"] = free_port()
            return kind, [json.dumps(d).encode() for d in (slow, self.doc(), self.doc())]
        return kind, [json.dumps(self.doc()).encode()]


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.broker = free_port()
        self.metrics = free_port()
        plc = free_port()
        self._spawn(["modbus", "--map", str(FIXTURES / "plc_map.toml"), "--port", str(plc)])
        self._spawn(["cloud", "--port", str(self.broker), "--admin-password", PASSWORD])
        wait_port(plc)
        wait_port(self.broker)
        self.config = tmp / "gw.toml"
        self.config.write_text(_config(tmp, self.broker, plc, self.metrics))
        self.log = tmp / "gw.log"
        with open(self.log, "ab") as out:
            self.gw = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(self.gw)
        wait_for(lambda: self.connected() or None, 30, "the gateway connected")

    def _spawn(self, args: list[str]) -> None:
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gatewayd_sim", *args], stdout=subprocess.DEVNULL
            )
        )

    def scrape(self) -> Samples | None:
        try:
            return parse(fetch("127.0.0.1", self.metrics))
        except OSError:
            return None

    def connected(self) -> bool:
        s = self.scrape()
        return s is not None and s.get("gatewayd_uplink_connected") == 1

    def outcomes(self) -> Counter[str]:
        s = self.scrape()
        if s is None:
            return Counter()
        return Counter(
            {lab["status"]: int(v) for lab, v in s.series("gatewayd_config_outcomes_total")}
        )

    def push(self, payloads: list[bytes]) -> None:
        """Through the stand-in's own CLI; a burst's pushes go out at once."""
        running = []
        for i, payload in enumerate(payloads):
            f = self.tmp / f"push-{time.monotonic_ns()}-{i}.json"
            f.write_bytes(payload)
            running.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "gatewayd_sim", "cloud", "push-config", str(f),
                        "--to", DEVICE, "--port", str(self.broker), "--admin-password", PASSWORD,
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )  # fmt: skip
            if len(payloads) > 1:
                time.sleep(0.3)  # in order, but well inside the candidate's 2 s deadline
        for p in running:
            p.wait(30)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _total(c: Counter[str]) -> int:
    return sum(c.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pushes", type=int, default=150, help="push rounds (a burst is one)")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as d:
        rig = Rig(Path(d))
        try:
            base = tomllib.loads(rig.config.read_text())
            gen = Pushes(base, rng)
            # Baseline: one sound push, from send to outcome.
            t0 = time.monotonic()
            before = _total(rig.outcomes())
            rig.push([json.dumps(gen.doc()).encode()])
            wait_for(lambda: _total(rig.outcomes()) > before or None, 60, "the first outcome")
            baseline_s = time.monotonic() - t0
            kinds: Counter[str] = Counter()
            sent = 1
            latencies: list[float] = []
            t_start = time.monotonic()
            for i in range(args.pushes):
                if rig.gw.poll() is not None:
                    failures.append(f"the daemon exited with {rig.gw.returncode} at push {i}")
                    break
                try:
                    wait_for(lambda: rig.connected() or None, 60, "the uplink")
                except AssertionError:
                    failures.append(f"uplink not back within 60 s before push {i}")
                    break
                kind, payloads = gen.draw()
                kinds[kind] += len(payloads)
                before = _total(rig.outcomes())
                t0 = time.monotonic()
                rig.push(payloads)
                sent += len(payloads)
                want = before + len(payloads)
                try:
                    wait_for(lambda w=want: _total(rig.outcomes()) >= w or None, 60, kind)
                    latencies.append(time.monotonic() - t0)
                except AssertionError:
                    failures.append(f"push {i} ({kind}): no outcome within 60 s")
            elapsed = time.monotonic() - t_start
            # The last good configuration is kept: a final sound push is applied on top of it.
            s = rig.scrape()
            running_version = int(s.get("gatewayd_config_version")) if s else -1
            wait_for(lambda: rig.connected() or None, 60, "the uplink")
            final = gen.doc()
            before = rig.outcomes()
            rig.push([json.dumps(final).encode()])
            wait_for(lambda: rig.outcomes()["applied"] > before["applied"] or None, 60, "final")
            s = rig.scrape()
            if s is None or int(s.get("gatewayd_config_version")) != final["version"]:
                failures.append("the final sound push did not become the running version")
            acked = s.get("gatewayd_acked_records_total") if s else 0
            time.sleep(2)
            s2 = rig.scrape()
            if s2 is None or s2.get("gatewayd_acked_records_total") <= acked:
                failures.append("records stopped flowing")
            outcomes = rig.outcomes()
            alive = rig.gw.poll() is None
            if not alive:
                failures.append("the daemon died")
            sent += 1
            if _total(outcomes) != sent:
                failures.append(f"{sent} pushes sent, {_total(outcomes)} outcomes")
        finally:
            rig.close()
    lat = sorted(latencies) or [0.0]
    print(f"seed {args.seed}: {sent} pushes in {elapsed:.0f} s, daemon alive: {alive}")
    print("pushes by kind:   " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print("outcomes:         " + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())))
    print(
        f"outcome latency:  median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s "
        f"(baseline, one sound push: {baseline_s:.2f} s)"
    )
    print(f"version before the final push: {running_version}; final: {final['version']}")
    for f in failures:
        print(f"FAIL: {f}")
    print("ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
