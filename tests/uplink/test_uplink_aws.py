"""`profile = "aws-iot-core"`: its defaults, the limits `check` refuses, and the uplink within them.

The uplink runs against the AWS IoT Core stand-in (hw-sim/cloud/aws.py) over mTLS with the
thing's certificate: a backlog drained at the profile's pace with the state document beside it
never meets the stand-in's 100 publishes/s (nothing throttled).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from uplink_harness import Harness, until

from gatewayd.config import ConfigError, load
from gatewayd.uplink.channels.aws import diff_patch
from gatewayd_sim.cloud.aws import MAX_PUBLISHES_PER_S, AwsIotCore

AWS = """
[uplink]
profile = "aws-iot-core"
account_prefix = "a1b2c3d4e5f6g7"
region = "eu-west-1"
device = "gw-1"
[uplink.tls]
cert_file = "{cert}"
key_file = "{key}"
"""


def _aws(cert: str = "gw-1.pem", key: str = "gw-1.key", **settings: str) -> str:
    text = AWS.format(cert=cert, key=key)
    for key_, value in settings.items():
        table, _, name = key_.rpartition("__")
        text = re.sub(rf"^{name} = .*\n", "", text, flags=re.M)  # names are unique here
        header = "[uplink" + (f".{table}]" if table else "]")
        if header not in text:
            text += header + "\n"
        text = text.replace(header + "\n", f"{header}\n{name} = {value}\n", 1)
    return text


def test_aws_defaults_thing_name_mtls_ats_endpoint_and_paced_under_the_cap() -> None:
    up = load(_aws()).uplink
    assert (up.host, up.port, up.channel) == (
        "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
        8883,
        "aws",
    )
    assert up.client_id.format(**up.template_values()) == "gw-1"
    assert up.auth.kind == "x509" and up.tls.enabled
    assert (up.batch_max_bytes, up.max_messages_per_s) == (128 * 1024, 90.0)
    assert up.topics.events == "gatewayd/{device}/events"
    assert load(_aws(host='"127.0.0.1"')).uplink.host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"^uplink.account_prefix: missing, demanded by profile"):
        load(_aws().replace('account_prefix = "a1b2c3d4e5f6g7"\n', ""))
    with pytest.raises(ConfigError, match=r"^uplink.tls.cert_file: missing, demanded by \[uplink"):
        load(_aws().replace('cert_file = "gw-1.pem"\n', ""))


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"max_messages_per_s": "100"},
            "uplink.max_messages_per_s: 100 leaves no room under 100 publishes/s for the shadow, "
            "jobs and command results (AWS IoT Core does not allow it); use at most 90",
        ),
        (
            {"inflight_window": "101"},
            "uplink.inflight_window: 101 is above 100 unacknowledged publishes (AWS IoT Core",
        ),
        (
            {"batch_max_bytes": "131073"},
            "uplink.batch_max_bytes: 131073 is above the message limit of 131072 (AWS IoT Core",
        ),
        (
            {"device": '"gw.1"'},
            "uplink.device: client id 'gw.1' is not a thing name (AWS IoT Core does not allow "
            "it); use the thing's name",
        ),
        (
            {"topics__events": '"a/b/c/d/e/f/{device}/x"'},
            "uplink.topics.events: 'a/b/c/d/e/f/gw-1/x' has 8 slashes (one kept for a rule's "
            "subfolder), more than 7 (AWS IoT Core",
        ),
        (
            {"topics__command_results": '"a/b/c/d/e/f/g/{device}/r"'},
            "uplink.topics.command_results: 'a/b/c/d/e/f/g/gw-1/r' has 8 slashes, more than 7",
        ),
        (
            {"topics__events": '"$aws/rules/r1/a/b/c/d/e/f/{device}/x"'},
            "uplink.topics.events: '$aws/rules/r1/a/b/c/d/e/f/gw-1/x' has 8 slashes",
        ),
        (
            {"topics__command_results": '"$aws/rules/r1/{device}/r"'},
            "uplink.topics.command_results: '$aws/rules/r1/gw-1/r' is not a Basic Ingest topic "
            "for events",
        ),
        (
            {"presence__enabled": "true", "presence__topic": '"/a/b/c/d/e/f/{device}/p"'},
            "uplink.presence.topic: '/a/b/c/d/e/f/gw-1/p' has 8 slashes, more than 7",
        ),
        ({"auth__kind": '"jwt"', "auth__audience": '"x"'}, "uplink.auth.kind: 'jwt' (AWS"),
        ({"tls__enabled": "false"}, "uplink.tls.enabled: false (AWS IoT Core"),
    ],
)
def test_aws_limits_are_refused_with_place_and_fix(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_aws(**settings))
    assert str(exc.value).startswith(error), str(exc.value)


def test_basic_ingest_events_do_not_count_the_rule_prefix() -> None:
    events = '"$aws/rules/gatewayd_events/a/b/c/d/e/{device}"'  # 6 after the prefix, 1 kept
    assert load(_aws(topics__events=events)).uplink.topics.events.startswith("$aws/rules/")


def test_gatewayd_check_refuses_a_client_key_others_can_read(tmp_path: Path) -> None:
    cloud = AwsIotCore(tmp_path / "ca")
    cert, key = cloud.issue_thing("gw-1")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_aws(str(cert), str(key)))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatewayd", "check", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert check().returncode == 0, check().stderr
    key.chmod(0o644)
    p = check()
    assert p.returncode == 2, p.stdout
    assert f"uplink.tls.key_file: {key}: readable by group or others (mode 0644)" in p.stderr
    assert f"run `chmod 600 {key}`" in p.stderr


def test_shadow_patch_turns_the_reported_state_into_the_new_one() -> None:
    old = {"a": 1, "gone": 2, "n": {"x": 1, "y": 2}, "l": [1]}
    new = {"a": 1, "n": {"x": 1, "y": 3, "z": {}}, "l": [1, 2], "b": None}
    assert diff_patch(old, new) == {"gone": None, "n": {"y": 3, "z": {}}, "l": [1, 2], "b": None}
    assert diff_patch(new, new) == {}
    assert diff_patch(None, new) == new


def test_a_backlog_with_the_state_beside_it_stays_under_aws_rate_and_inflight(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cloud = AwsIotCore(tmp_path / "ca")
        cert, key = cloud.issue_thing("gw-1")
        times: deque[float] = deque()
        peak = 0

        def seen(topic: str, payload: bytes) -> None:
            nonlocal peak
            now = time.monotonic()
            times.append(now)
            while times[0] <= now - 1.0:
                times.popleft()
            peak = max(peak, len(times))

        cloud.on_message = seen
        await cloud.start()
        text = _aws(str(cert), str(key), host='"127.0.0.1"', port=str(cloud.port))
        text += f'ca_file = "{cloud.ca.ca_file}"\n'  # [uplink.tls] is the last table
        cfg = load(text.replace("[uplink]\n", "[uplink]\nbatch_max_records = 10\n")).uplink

        async def state() -> dict[str, Any]:
            return {"ts": time.time()}  # new at every call: reported every second

        h = await Harness.open(tmp_path, cfg, state=state)
        try:
            await h.halt()
            ids = await h.append(4000)  # 400 messages: more than 4 s at the cap
            await h.drained(60)
            await until(lambda: sorted(cloud.recorder.counts) == ids, 10, "every record")
            assert h.metrics.total("uplink_state_published") >= 3
            assert cloud.throttled == 0, f"{cloud.throttled} publishes over AWS's limits"
            assert cloud.refused == []
            assert peak <= MAX_PUBLISHES_PER_S, peak
            assert h.uplink.window.limit <= 100
        finally:
            await h.close()
            await cloud.stop()

    asyncio.run(scenario())


def test_the_readme_example_for_the_profile_loads() -> None:
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    section = readme[readme.index("## AWS IoT Core") :]
    start = section.index("```toml") + 7
    cfg = load(section[start : section.index("```", start)])
    assert cfg.uplink.profile == "aws-iot-core" and cfg.uplink.host == (
        "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
    )
    assert cfg.uplink.client_id.format(**cfg.uplink.template_values()) == "gw1"


def test_jobs_found_in_progress_after_a_restart_are_answered_not_run_again(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cloud = AwsIotCore(tmp_path / "ca")
        cert, key = cloud.issue_thing("gw-1")
        await cloud.start()
        # What a gateway killed mid-job leaves: a write it had started, and a configuration
        # whose outcome it had decided (the store keeps it) but not reported on the job.
        cmd = cloud.create_job("gw-1", "write-1", {"operation": "command", "command": {}})
        cfg_job = cloud.create_job(
            "gw-1", "config-3", {"operation": "config", "document": {"version": 3}}
        )
        for job in (cmd, cfg_job):
            job.status = "IN_PROGRESS"
        text = _aws(str(cert), str(key), host='"127.0.0.1"', port=str(cloud.port))
        cfg = load(text + f'ca_file = "{cloud.ca.ca_file}"\n').uplink
        pushed: list[bytes] = []
        commands: list[bytes] = []
        decided = {"version": 3, "status": "applied", "reason": "healthy after 1.0 s", "ts": 1}

        async def state() -> dict[str, Any]:
            return {"config": decided, "config_version": 3}

        h = await Harness.open(
            tmp_path, cfg, state=state, on_config=pushed.append, on_command=commands.append
        )
        try:
            await until(
                lambda: all(j.status not in ("QUEUED", "IN_PROGRESS") for j in (cmd, cfg_job)),
                20,
                "both executions ended",
            )
        finally:
            await h.close()
            await cloud.stop()
        assert (cmd.status, cmd.status_details["status"]) == ("FAILED", "unknown")
        assert "restarted while it ran" in cmd.status_details["reason"]
        assert (cfg_job.status, cfg_job.status_details["status"]) == ("SUCCEEDED", "applied")
        assert cfg_job.status_details["reason"].startswith("version 3 was decided before")
        assert pushed == [] and commands == []

    asyncio.run(scenario())


def test_a_state_the_full_shadow_refuses_is_warned_once_and_retried_ever_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cloud = AwsIotCore(tmp_path / "ca")
        cert, key = cloud.issue_thing("gw-1")
        updates: list[float] = []
        shadow_update = "$aws/things/gw-1/shadow/name/gatewayd/update"
        cloud.on_message = lambda t, p: (
            updates.append(time.monotonic()) if t == shadow_update else None
        )
        await cloud.start()
        # Desired takes most of the shadow's 8 KB: the state fits in no update (413).
        cloud.update_shadow("gw-1", "gatewayd", {"desired": {"pad": "x" * 7000}})
        text = _aws(str(cert), str(key), host='"127.0.0.1"', port=str(cloud.port))
        cfg = load(text + f'ca_file = "{cloud.ca.ca_file}"\n').uplink

        async def state() -> dict[str, Any]:
            return {"ts": time.time(), "pad": "y" * 1500}  # new at every call

        h = await Harness.open(tmp_path, cfg, state=state)
        try:
            await until(lambda: len(updates) >= 1, 20, "the first shadow update")
            await asyncio.sleep(8)
        finally:
            await h.close()
            await cloud.stop()
        # Paused 1, 2, 4 s after each refusal, not sent at every state change (1/s).
        assert 2 <= len(updates) <= 5, len(updates)

    with caplog.at_level("DEBUG", logger="gatewayd.uplink"):
        asyncio.run(scenario())
    refused = [r for r in caplog.records if "shadow_update_rejected" in r.getMessage()]
    assert [r.levelname for r in refused][:2] == ["WARNING", "DEBUG"], refused
    assert "code=413" in refused[0].getMessage()


def test_the_uplink_refuses_a_client_key_others_can_read_naming_the_fix(tmp_path: Path) -> None:
    async def scenario() -> None:
        cloud = AwsIotCore(tmp_path / "ca")
        cert, key = cloud.issue_thing("gw-1")
        key.chmod(0o640)
        await cloud.start()
        text = _aws(str(cert), str(key), host='"127.0.0.1"', port=str(cloud.port))
        cfg = load(text + f'ca_file = "{cloud.ca.ca_file}"\n').uplink
        h = await Harness.open(tmp_path, cfg)
        try:
            await until(lambda: h.metrics.total("uplink_connect_failures") >= 1, 20, "refusal")
            assert h.uplink.last_error == (
                f"[uplink.tls] key_file {key}: readable by group or others (mode 0640)"
            )
            assert not cloud.sessions, "no connection with a key others can read"
        finally:
            await h.close()
            await cloud.stop()

    asyncio.run(scenario())
