"""The thingsboard profile: its config, its telemetry encoder and its channel's mapping.

The encoder is checked on what the buffer really hands out (records stored in a real buffer file,
and bodies only as strict as `take` guarantees); the channel against a client that records what
it publishes. End to end through a gatewayd process: test_cloud_thingsboard_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.buffer import Entry
from gatewayd.buffer.codec import encode_body
from gatewayd.config import ConfigError, load_document
from gatewayd.config.parse import parse_bytes
from gatewayd.reading import Lane, Quality, Record
from gatewayd.uplink.channels.base import CommandIn, ConfigPush
from gatewayd.uplink.channels.thingsboard import ThingsBoardChannel
from gatewayd.uplink.payload import load_encoder
from gatewayd.uplink.payload_thingsboard import encode_thingsboard
from gatewayd_sim.cloud.thingsboard import ThingsBoard

ROOT = Path(__file__).parent.parent.parent


def _load(
    tmp: Path, uplink: str = "", auth: str = 'access_token_file = "tb.token"', tail: str = ""
) -> Any:
    text = f"""
version = 1
[gateway]
state_dir = "{tmp}"
[uplink]
profile = "thingsboard"
host = "tb.example.com"
device = "gw1"
{uplink}
[uplink.auth]
{auth}
{tail}
"""
    return load_document(parse_bytes(text.encode(), source="gw.toml"))


def test_profile_defaults_ports_and_limits_in_the_config_file(tmp_path: Path) -> None:
    up = _load(tmp_path).uplink
    assert (up.port, up.channel, up.encoder, up.auth.kind) == (
        8883,
        "thingsboard",
        "thingsboard",
        "access_token",
    )
    assert up.topics.events == "v1/gateway/telemetry" and up.batch_max_bytes == 65536
    assert up.batch_max_records == 800
    assert _load(tmp_path, "[uplink.tls]\nenabled = false").uplink.port == 1883
    assert _load(tmp_path, "port = 11883\n[uplink.tls]\nenabled = false").uplink.port == 11883
    x509 = _load(tmp_path, '[uplink.tls]\ncert_file = "c.pem"\nkey_file = "k.pem"', 'kind = "x509"')
    assert x509.uplink.auth.kind == "x509"
    with pytest.raises(ConfigError, match="exactly one of access_token and access_token_file"):
        _load(tmp_path, auth="")
    with pytest.raises(ConfigError, match=r"batch_max_bytes: 100000 is above .*ThingsBoard"):
        _load(tmp_path, "batch_max_bytes = 100000")
    with pytest.raises(ConfigError, match=r"retain_state: true \(ThingsBoard"):
        _load(tmp_path, "retain_state = true")
    with pytest.raises(ConfigError, match=r"auth.kind: 'jwt' \(ThingsBoard"):
        _load(tmp_path, auth='kind = "jwt"\naudience = "x"')


def test_a_route_subfolder_is_refused_under_thingsboard(tmp_path: Path) -> None:
    tail = """
[[devices]]
id = "plc"
driver = "modbus_tcp"
host = "127.0.0.1"
[[devices.points]]
id = "t"
table = "holding"
address = 0
type = "int16"
[[rules]]
name = "r"
points = ["plc/t"]
[[rules.steps]]
kind = "route"
subfolder = "fast"
"""
    with pytest.raises(ConfigError, match=r"rules\[0\]\.steps\[0\]\.subfolder: 'fast'"):
        _load(tmp_path, tail=tail)


def _entries(records: list[Record], first_id: int = 1) -> list[Entry]:
    return [Entry(first_id + i, int(r.lane), encode_body(r)) for i, r in enumerate(records)]


def test_records_of_one_device_and_ts_share_an_entry_and_keep_their_ids() -> None:
    recs = [
        Record("plc/temp", 1000, 21.5),
        Record("plc/pressure", 1000, 3.0),
        Record("pump/speed", 1000, 1450),
        Record("plc/temp", 1000, 21.6),  # the same point at the same ts: a new entry
        Record("plc/temp", 2000, None, Quality.BAD, "timeout"),
        Record("plc", 2500, "connection refused", Quality.BAD, "device_down", Lane.EVENT),
    ]
    doc = json.loads(encode_thingsboard(_entries(recs, 101)))
    assert doc == {
        "plc": [
            {
                "ts": 1000,
                "values": {"temp": 21.5, "pressure": 3.0, "_id": {"temp": 101, "pressure": 102}},
            },
            {"ts": 1000, "values": {"temp": 21.6, "_id": {"temp": 104}}},
            {
                "ts": 2000,
                "values": {
                    "_id": {"temp": 105},
                    "_quality": {"temp": "bad"},
                    "_reason": {"temp": "timeout"},
                },
            },
            {
                "ts": 2500,
                "values": {
                    "device_down": "connection refused",
                    "_id": {"device_down": 106},
                    "_quality": {"device_down": "bad"},
                },
            },
        ],
        "pump": [{"ts": 1000, "values": {"speed": 1450, "_id": {"speed": 103}}}],
    }
    assert load_encoder("thingsboard") is encode_thingsboard


# What `take` guarantees and no more: a JSON object, "point" first, no "id".
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=6,
)
_bodies = st.builds(
    lambda point, rest: json.dumps(
        {"point": point, **{k: v for k, v in rest.items() if k not in ("point", "id")}}
    ),
    _json,
    st.dictionaries(
        st.sampled_from(["ts", "value", "quality", "reason", "lane", "x"]), _json, max_size=5
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_bodies, min_size=1, max_size=12))
def test_anything_take_hands_out_encodes_and_every_id_survives(bodies: list[str]) -> None:
    entries = [Entry(i + 1, 2, b) for i, b in enumerate(bodies)]
    doc = json.loads(encode_thingsboard(entries))  # strict JSON: it parses
    ids = [
        rid
        for items in doc.values()
        for item in items
        for rid in (item["values"] if "values" in item and "ts" in item else item)["_id"].values()
    ]
    assert sorted(ids) == [e.id for e in entries]


def _reference(entries: list[Entry]) -> dict[str, Any]:
    """The encoding as the module docstring states it, built from decoded records."""
    out: dict[str, list[dict[str, Any]]] = {}
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    for e in entries:
        r = e.record()
        device, slash, key = r.point.partition("/")
        if not slash:
            key = r.reason or "value"
        values = open_.get((device, r.ts_ms))
        if values is None or key in values["_id"]:
            values = open_[(device, r.ts_ms)] = {"_id": {}}
            out.setdefault(device, []).append({"ts": r.ts_ms, "values": values})
        if r.value is not None:
            values[key] = r.value
        values["_id"][key] = e.id
        if r.quality is not Quality.GOOD:
            values.setdefault("_quality", {})[key] = str(r.quality)
        if r.reason is not None and slash:
            values.setdefault("_reason", {})[key] = r.reason
    return out


_records = st.builds(
    Record,
    st.sampled_from(["plc/a", "plc/b", "pump/a", "pump/x.y", "plc", "pump"]),
    st.integers(0, 3),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=6),
    ),
    st.sampled_from(list(Quality)),
    st.one_of(st.none(), st.sampled_from(["timeout", "device_down", 'q"uote'])),
    st.sampled_from(list(Lane)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, min_size=1, max_size=15))
def test_the_text_built_encoding_equals_the_decoded_reference(records: list[Record]) -> None:
    entries = _entries(records, (1 << 40) + 1)
    assert json.loads(encode_thingsboard(entries)) == _reference(entries)


class _Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> Any:
        self.sent.append((topic, json.loads(payload)))
        return type("Info", (), {"rc": 0})()


def test_shared_attribute_config_redelivered_is_the_same_bytes_and_not_handed_on_again() -> None:
    ch, c = ThingsBoardChannel(), _Client()
    ch.connected(c)  # type: ignore[arg-type]
    assert c.sent == [("v1/devices/me/attributes/request/1", {"sharedKeys": "gatewayd"})]
    doc = {"version": 2, "uplink": {"keepalive_s": 30}, "devices": []}
    answer = json.dumps({"shared": {"gatewayd": doc}}).encode()
    got = ch.incoming("v1/devices/me/attributes/response/1", answer)
    assert isinstance(got, ConfigPush) and json.loads(got.payload) == doc
    # A reconnect asks again and finds the same document: no push.
    ch.connected(c)  # type: ignore[arg-type]
    again = json.dumps({"shared": {"gatewayd": dict(reversed(list(doc.items())))}}).encode()
    assert ch.incoming("v1/devices/me/attributes/response/2", again) is None
    # An update of another attribute is no push; one of `gatewayd` is.
    assert ch.incoming("v1/devices/me/attributes", b'{"other": 1}') is None
    new = {**doc, "version": 3}
    pushed = ch.incoming("v1/devices/me/attributes", json.dumps({"gatewayd": new}).encode())
    assert isinstance(pushed, ConfigPush) and json.loads(pushed.payload)["version"] == 3
    # An answer that comes after a newer update is older than it: ignored.
    ch.connected(c)  # type: ignore[arg-type]
    newer = {**doc, "version": 4}
    assert isinstance(
        ch.incoming("v1/devices/me/attributes", json.dumps({"gatewayd": newer}).encode()),
        ConfigPush,
    )
    assert ch.incoming("v1/devices/me/attributes/response/3", answer) is None
    assert ch.incoming("v1/devices/me/attributes", b"not json") is None
    deep = b"[" * 100_000 + b"]" * 100_000
    for topic in ("v1/devices/me/attributes", "v1/gateway/rpc", "v1/devices/me/rpc/request/5"):
        assert ch.incoming(topic, deep) is None  # never raises for a peer's bytes


def test_rpc_to_the_gateway_and_to_a_field_device_become_writes_and_are_answered() -> None:
    ch, c = ThingsBoardChannel(), _Client()
    got = ch.incoming(
        "v1/devices/me/rpc/request/7",
        b'{"method": "write", "params": {"point": "plc/setpoint", "value": 55.5}}',
    )
    assert isinstance(got, CommandIn)
    cmd = json.loads(got.payload)
    assert (cmd["point"], cmd["value"]) == ("plc/setpoint", 55.5)
    assert ch.answer(c, {"id": cmd["id"], "status": "ok", "reason": "written", "ts": 1})  # type: ignore[arg-type]
    assert c.sent[-1] == (
        "v1/devices/me/rpc/response/7",
        {"id": "7", "status": "ok", "reason": "written", "ts": 1},
    )
    rpc = {
        "device": "plc",
        "data": {"id": 3, "method": "write", "params": {"point": "setpoint", "value": 40}},
    }
    got = ch.incoming("v1/gateway/rpc", json.dumps(rpc).encode())
    assert isinstance(got, CommandIn)
    cmd = json.loads(got.payload)
    assert cmd["point"] == "plc/setpoint"
    ch.answer(c, {"id": cmd["id"], "status": "refused", "reason": "above max"})  # type: ignore[arg-type]
    assert c.sent[-1] == (
        "v1/gateway/rpc",
        {"device": "plc", "id": 3, "data": {"id": 3, "status": "refused", "reason": "above max"}},
    )
    text = json.dumps({"point": "plc/setpoint", "value": 41})
    got = ch.incoming(
        "v1/devices/me/rpc/request/10", json.dumps({"method": "write", "params": text}).encode()
    )
    assert isinstance(got, CommandIn) and json.loads(got.payload)["value"] == 41
    ping = ch.incoming("v1/devices/me/rpc/request/8", b'{"method": "ping", "params": {}}')
    assert isinstance(ping, CommandIn) and json.loads(ping.payload)["command"] == "ping"
    # Unreadable: refused at the next tick, never raised.
    assert ch.incoming("v1/devices/me/rpc/request/9", b'{"method": "write", "params": NaN}') is None
    assert ch.incoming("v1/gateway/rpc", b"{}") is None
    ch.tick(c, 0.0)  # type: ignore[arg-type]
    topic, body = c.sent[-1]
    assert topic == "v1/devices/me/rpc/response/9" and body["status"] == "refused"


def test_state_goes_as_changed_client_attributes_and_devices_connect_and_disconnect() -> None:
    ch, c = ThingsBoardChannel(), _Client()
    ch.connected(c)  # type: ignore[arg-type]
    c.sent.clear()
    state = {
        "config_version": 1,
        "ts": 1,
        "devices": {"plc": {"status": "up"}, "pump": {"status": "down"}},
    }
    assert ch.report_state(c, json.dumps(state).encode())  # type: ignore[arg-type]
    assert c.sent == [
        ("v1/gateway/connect", {"device": "plc"}),
        ("v1/devices/me/attributes", state),
    ]
    c.sent.clear()
    state = {**state, "ts": 2, "devices": {"plc": {"status": "down"}, "pump": {"status": "up"}}}
    # Within the report interval: the devices follow at once, the attributes wait (False: again).
    assert not ch.report_state(c, json.dumps(state).encode())  # type: ignore[arg-type]
    assert c.sent == [
        ("v1/gateway/connect", {"device": "pump"}),
        ("v1/gateway/disconnect", {"device": "plc"}),
    ]
    ch.report_outcome(c, {"version": 2, "status": "applied"})  # type: ignore[arg-type]
    c.sent.clear()
    assert ch.report_state(c, json.dumps(state).encode())  # type: ignore[arg-type]
    assert c.sent == [("v1/devices/me/attributes", {"ts": 2, "devices": state["devices"]})]
    # A new session announces the devices that are up again, and reports everything.
    ch.connected(c)  # type: ignore[arg-type]
    c.sent.clear()
    assert ch.report_state(c, json.dumps(state).encode())  # type: ignore[arg-type]
    assert c.sent == [
        ("v1/gateway/connect", {"device": "pump"}),
        ("v1/devices/me/attributes", state),
    ]


def test_a_state_over_the_message_limit_goes_in_parts_and_a_too_big_member_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ch, c = ThingsBoardChannel(), _Client()
    state = {f"k{i}": "x" * 20_000 for i in range(5)} | {"huge": "y" * 70_000, "config_version": 1}
    assert ch.report_state(c, json.dumps(state).encode())  # type: ignore[arg-type]
    sizes = [len(json.dumps(body)) for topic, body in c.sent if topic == "v1/devices/me/attributes"]
    assert len(sizes) == 2 and max(sizes) < 64 * 1024, sizes
    got: dict[str, Any] = {}
    for _topic, body in c.sent:
        got.update(body)
    assert got == {k: v for k, v in state.items() if k != "huge"}
    assert "tb_attribute_too_big key=huge" in caplog.text


def test_the_readme_example_for_the_profile_loads() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## ThingsBoard") :]
    start = section.index("```toml") + 7
    text = section[start : section.index("```", start)]
    cfg = load_document(parse_bytes(text.encode(), source="README.md"))
    assert cfg.uplink.profile == "thingsboard" and cfg.uplink.auth.kind == "access_token"


def _tb_cfg(port: int, **auth: Any) -> Any:
    from gatewayd.config import AuthConfig, TlsConfig, UplinkConfig
    from gatewayd.config.profiles import PROFILES

    p = PROFILES["thingsboard"]
    return UplinkConfig(
        profile="thingsboard",
        channel="thingsboard",
        encoder="thingsboard",
        host="127.0.0.1",
        port=port,
        device="gw1",
        client_id="{device}",
        topics=p.topics,
        batch_max_bytes=p.batch_max_bytes,
        backoff_base_s=0.2,
        backoff_cap_s=0.5,
        tls=TlsConfig(enabled=False),
        auth=AuthConfig(kind="access_token", **auth),
    )


def test_the_token_file_is_the_username_and_a_wrong_token_names_the_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from uplink_harness import Harness, until

    async def scenario() -> None:
        cloud = await ThingsBoard().start()
        cloud.add_device("gw1", "RIGHT", gateway=True)
        (tmp_path / "tb.token").write_text("WRONG\n")
        h = await Harness.open(tmp_path, _tb_cfg(cloud.port, access_token_file="tb.token"))
        try:
            await until(lambda: h.metrics.total("uplink_connect_failures") >= 2, 20, "refusals")
        finally:
            await h.close()
        (tmp_path / "tb.token").write_text("RIGHT\n")
        h = await Harness.open(tmp_path, _tb_cfg(cloud.port, access_token_file="tb.token"))
        try:
            await h.append(30)
            await until(lambda: cloud.recorder.unique >= 30, 20, "30 records counted by _id")
        finally:
            await h.close()
            await cloud.stop()
        assert cloud.recorder.missing(set(h.sent)) == set() and cloud.recorder.malformed == 0

    with caplog.at_level("WARNING", logger="gatewayd.uplink"):
        asyncio.run(scenario())
    refusal = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert "access_token_file" in refusal and "WRONG" not in refusal, refusal
    assert "WRONG" not in caplog.text and "RIGHT" not in caplog.text


def test_an_empty_or_missing_token_file_stops_the_uplink_with_the_place(tmp_path: Path) -> None:
    from gatewayd.uplink.credentials import AccessToken

    auth = _tb_cfg(1, access_token_file="none.token").auth
    with pytest.raises(
        ConfigError, match=r"uplink.auth.access_token_file: .*none.token: cannot read"
    ):
        AccessToken(auth, tmp_path).load()
    (tmp_path / "none.token").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        AccessToken(auth, tmp_path).load()


def test_the_stand_in_closes_a_connection_on_a_message_over_64_kb() -> None:
    from helpers import BrokerThread, wait_for

    cloud = ThingsBoard()
    cloud.add_device("gw1", "T", gateway=True)
    bt = BrokerThread(cloud)
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        gone: list[bool] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="big")
        c.username_pw_set("T")
        c.on_disconnect = lambda *a: gone.append(True)
        c.connect("127.0.0.1", bt.port)
        c.loop_start()
        c.publish(
            "v1/gateway/telemetry",
            json.dumps({"d": [{"ts": 1, "values": {"v": "x" * 70_000}}]}),
            qos=1,
        )
        wait_for(lambda: gone, 10, "the connection closed")
        c.loop_stop()
        assert cloud.oversize == 1
    finally:
        bt.stop()


def test_check_reports_a_missing_or_empty_token_file_and_run_waits_only_for_a_missing_one(
    tmp_path: Path,
) -> None:
    from gatewayd.check import problems

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## ThingsBoard") :]
    start = section.index("```toml") + 7
    text = section[start : section.index("```", start)]
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        text.replace('id = "boiler-room"', f'id = "boiler-room"\nstate_dir = "{tmp_path}"')
    )
    missing = problems(cfg)
    assert [str(e) for e in missing.errors] == [
        f"uplink.auth.access_token_file: {tmp_path / 'tb.token'}: cannot read it: No such file or "
        "directory; write the device's access token into it, readable by gatewayd"
    ]
    assert missing.refusals == []  # like a key not provisioned yet: run buffers and retries
    (tmp_path / "tb.token").write_text("\n")
    empty = problems(cfg)
    assert len(empty.refusals) == 1 and "is empty" in str(empty.refusals[0])
    (tmp_path / "tb.token").write_text("T0KEN\n")
    assert problems(cfg).errors == []
