"""Self-update with real processes: signed wheels of this project at other versions, real venvs
built by the gateway under a releases directory, a supervisor loop restarting the daemon as
systemd would, mosquitto for commands and state, an HTTP server for the files.

Every test starts from a fresh install of 0.1.0 (the venv is built once per session and reused).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, start_modbus_sim, wait_for
from update_harness import (
    FileServer,
    Operator,
    ReleaseKey,
    Supervisor,
    Wheels,
    install_first_release,
    publish_folder,
    site_config,
    update_command,
)

from gatewayd.lifecycle.verify import make_manifest, sign

FIXTURES = Path(__file__).parent.parent / "fixtures"
OLD = "0.1.0"


@dataclass
class Lab:
    wheels: Wheels
    releases: Path
    key: ReleaseKey


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    root = tmp_path_factory.mktemp("update-lab")
    wheels = Wheels(root / "wheels")
    releases = root / "releases"
    releases.mkdir()
    install_first_release(releases, OLD, wheels.files(OLD))
    return Lab(wheels, releases, ReleaseKey(root))


@dataclass
class Site:
    lab: Lab
    config: Path
    state: Path
    log: Path
    operator: Operator
    http: FileServer
    files_dir: Path

    def supervise(self, **env: str) -> Supervisor:
        return Supervisor(self.lab.releases, self.config, self.log, env)

    def publish(self, files: list[Path]) -> str:
        publish_folder(self.files_dir, files)
        return self.http.url

    def link(self, name: str) -> str | None:
        p = self.lab.releases / name
        return p.readlink().name if p.is_symlink() else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def site(
    lab: Lab, mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> Iterator[Site]:
    install_first_release(lab.releases, OLD, lab.wheels.files(OLD))  # resets to a fresh 0.1.0
    device_port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "gateway.toml"
    config.write_text(
        site_config(state, mosquitto.port, device_port, lab.key.public_path, lab.releases)
    )
    files_dir = tmp_path / "www"
    files_dir.mkdir()
    operator = Operator(mosquitto.port)
    http = FileServer(files_dir)
    try:
        yield Site(lab, config, state, tmp_path / "daemon.log", operator, http, files_dir)
    finally:
        operator.close()
        http.close()


def _up_on(site: Site, version: str, since: float = 0, timeout: float = 60) -> dict[str, object]:
    return site.operator.software(
        lambda sw: sw.get("version") == version, timeout, f"a state from {version}", since
    )


def _rolled_back(site: Site, uid: str, version: str, variant: str, waiting: str) -> dict[str, Any]:
    """Update `uid` to `version` (its wheels built as `variant`) over HTTP, accepted; the
    software state once the gateway is back on OLD reporting the update rolled back."""
    files = site.lab.wheels.files(version, variant)
    url = site.publish(files)
    site.operator.send(update_command(uid, version, files, site.lab.key, url=url))
    assert site.operator.result(uid)["status"] == "ok"
    return site.operator.software(
        lambda sw: (
            sw.get("version") == OLD and (sw.get("update") or {}).get("status") == "rolled_back"
        ),
        120,
        waiting,
    )


def test_update_by_mqtt_chunks_runs_the_new_version_and_reports_applied(site: Site) -> None:
    sup = site.supervise()
    try:
        _up_on(site, OLD)
        files = site.lab.wheels.files("0.2.0")
        site.operator.send(update_command("u1", "0.2.0", files, site.lab.key, source="mqtt"))
        site.operator.send_chunks("0.2.0", files)
        result = site.operator.result("u1")
        assert result["status"] == "ok", result
        sw = site.operator.software(
            lambda sw: (
                sw.get("version") == "0.2.0" and (sw.get("update") or {}).get("status") == "applied"
            ),
            90,
            "0.2.0 confirmed healthy",
        )
        assert sw["update"]["id"] == "u1" and sw["update"]["previous"] == OLD, sw
        assert sw["release"] == "0.2.0"
        assert site.link("current") == "0.2.0" and site.link("previous") == OLD
        assert not (site.state / "update" / "pending.json").exists()
        assert sup.exits[0] == 75, sup.exits  # asked the supervisor to start `current`
    finally:
        sup.stop()


def test_update_to_a_version_that_cannot_connect_is_rolled_back_and_reported(site: Site) -> None:
    site.config.write_text(
        site.config.read_text().replace("health_deadline_s = 20", "health_deadline_s = 8")
    )
    sup = site.supervise()
    try:
        _up_on(site, OLD)
        sw = _rolled_back(site, "u2", "0.3.0", "no_uplink", "back on 0.1.0, reporting the rollback")
        reason = sw["update"]["reason"]
        assert "0.3.0 not healthy: uplink not connected within 8 s" in reason, reason
        assert sw["update"]["id"] == "u2"
        assert site.link("current") == OLD
        assert sup.exits[:2] == [75, 75], sup.exits  # the update's restart, then the rollback's
    finally:
        sup.stop()


def test_update_whose_process_dies_at_start_is_rolled_back(site: Site) -> None:
    sup = site.supervise()
    try:
        _up_on(site, OLD)
        sw = _rolled_back(site, "u3", "0.4.0", "dies", "back on 0.1.0 after the crash loop")
        assert "0.4.0 did not report healthy in 2 starts" in sw["update"]["reason"], sw
        assert site.link("current") == OLD
        assert sup.exits[:3] == [75, 1, 1], sup.exits  # update, two crashed starts of 0.4.0
    finally:
        sup.stop()


def test_tampered_wheel_bad_signature_and_unreadable_buffer_format_are_refused(
    site: Site, tmp_path: Path
) -> None:
    sup = site.supervise()
    try:
        _up_on(site, OLD)
        files = site.lab.wheels.files("0.2.0")
        url = site.publish(files)
        # Signed by someone else.
        other = ReleaseKey(tmp_path)
        site.operator.send(update_command("bad-sig", "0.2.0", files, other, url=url))
        r = site.operator.result("bad-sig")
        assert r["status"] == "refused" and "signature" in r["reason"], r
        # A wheel changed after signing: the manifest's sha256 no longer matches.
        cmd = update_command("tampered", "0.2.0", files, site.lab.key, url=url)
        wheel = site.files_dir / files[0].name
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0xFF
        wheel.write_bytes(bytes(data))
        site.operator.send(cmd)
        r = site.operator.result("tampered")
        assert r["status"] == "refused" and "sha256" in r["reason"], r
        assert "nothing was installed" in r["reason"]
        # A release whose buffer this one could not read after a rollback.
        manifest = make_manifest("0.2.0", files, buffer_format=2)
        site.operator.send(
            {"id": "fmt", "command": "update", "version": "0.2.0", "manifest": manifest,
             "signature": sign(site.lab.key.pem(), manifest), "url": url}
        )  # fmt: skip
        r = site.operator.result("fmt")
        assert r["status"] == "refused" and "buffer_format" in r["reason"], r
        sw = site.operator.software(
            lambda sw: (sw.get("update") or {}).get("id") == "fmt", 30, "the last refusal"
        )
        assert sw["update"]["status"] == "refused"
        # Nothing installed, nothing restarted.
        assert sorted(p.name for p in site.lab.releases.iterdir()) == [OLD, "current"]
        assert sup.starts == 1 and sup.proc is not None and sup.proc.poll() is None
    finally:
        sup.stop()


@pytest.mark.parametrize("step", ["download", "build", "switch"])
def test_sigkill_at_each_step_comes_back_on_a_working_version(site: Site, step: str) -> None:
    sup = site.supervise(GATEWAYD_UPDATE_HOLD=step)
    try:
        _up_on(site, OLD)
        files = site.lab.wheels.files("0.2.0")
        url = site.publish(files)
        site.operator.send(update_command("k", "0.2.0", files, site.lab.key, url=url))
        wait_for(
            lambda: f"update_held step={step}" in site.log_text(), 90, f"the update held at {step}"
        )
        if step == "build":  # one update at a time: a second one is refused, the first goes on
            site.operator.send(update_command("k2", "0.2.0", files, site.lab.key, url=url))
            r = site.operator.result("k2")
            assert r["status"] == "refused" and "under way" in r["reason"], r
            sw = site.operator.software(
                lambda sw: (sw.get("update") or {}).get("id") == "k2", 20, "the refusal in state"
            )
            assert sw["update_step"] == {"version": "0.2.0", "step": "build"}, sw
        killed_at = time.monotonic()
        sup.kill()
        wait_for(lambda: sup.starts >= 2, 30, "the supervisor's restart")
        sw = _up_on(site, OLD, since=killed_at)
        assert site.link("current") == OLD
        # Whatever was half made is gone: no partial download, no incomplete release.
        wait_for(
            lambda: not (site.state / "update" / "downloads").exists(), 10, "downloads cleaned"
        )
        if step in ("download", "build"):
            assert sorted(p.name for p in site.lab.releases.iterdir()) == [OLD, "current"]
        else:  # the marker was written: the outcome says the switch never happened
            assert sw["update"]["status"] == "failed", sw
            assert "interrupted before the switch to 0.2.0" in sw["update"]["reason"]
            assert not (site.state / "update" / "pending.json").exists()
    finally:
        sup.stop()
