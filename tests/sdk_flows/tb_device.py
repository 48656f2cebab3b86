"""ThingsBoard's Python SDK (tb-mqtt-client) flows against the stand-in; run in the SDK's venv.

    python tb_device.py device PORT TOKEN
    python tb_device.py gateway PORT TOKEN DEVICE

Prints one `SDKFLOW <json>` line per event (the SDK may print lines of its own): `{"ready": STEP}`
when it waits for the test to act on the cloud side (the test answers with a line on stdin), and
at the end `{"results": {...}}`.
Each step is the SDK's documented usage (its README and the ThingsBoard Python SDK pages).
"""

import json
import sys
import threading
import time

from tb_device_mqtt import TBDeviceMqttClient
from tb_gateway_mqtt import TBGatewayMqttClient

results: dict = {}


def say(obj: dict) -> None:
    print("SDKFLOW " + json.dumps(obj), flush=True)


def wait_test(step: str) -> None:
    say({"ready": step})
    sys.stdin.readline()


def wait_until(pred, timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def device_flow(port: int, token: str) -> None:
    client = TBDeviceMqttClient("127.0.0.1", port=port, username=token)
    client.connect()
    results["connected"] = wait_until(client.is_connected)
    results["service_configuration"] = wait_until(lambda: client.rate_limits_received)
    rc1 = client.send_telemetry({"id": 1, "temperature": 21.5}).get()
    ts = int(time.time() * 1000)
    rc2 = client.send_telemetry([{"ts": ts, "values": {"id": 2, "temperature": 22.0}}]).get()
    rc3 = client.send_attributes({"firmware": "1.4.2"}).get()
    results["publish_rcs"] = [rc1, rc2, rc3]

    updates: list = []
    client.subscribe_to_all_attributes(lambda content, exc: updates.append(content))
    wait_test("shared")  # the test sets shared attribute interval_s = 5
    results["shared_update"] = updates[0] if wait_until(lambda: updates) else None

    answers: list = []
    client.request_attributes(
        client_keys=["firmware"],
        shared_keys=["interval_s"],
        callback=lambda content, exc: answers.append([content, repr(exc) if exc else None]),
    )
    results["attribute_response"] = answers[0] if wait_until(lambda: answers) else None

    calls: list = []

    def on_rpc(request_id, request_body):
        calls.append([request_id, request_body])
        client.send_rpc_reply(request_id, {"ok": True, "echo": request_body.get("params")})

    client.set_server_side_rpc_request_handler(on_rpc)
    wait_test("rpc")  # the test sends a server-side RPC
    results["rpc_request"] = calls[0] if wait_until(lambda: calls) else None
    wait_test("rpc-answered")
    client.disconnect()


def gateway_flow(port: int, token: str, device: str) -> None:
    gw = TBGatewayMqttClient("127.0.0.1", port=port, username=token)
    gw.connect()
    results["connected"] = wait_until(gw.is_connected)
    results["service_configuration"] = wait_until(lambda: gw.rate_limits_received)
    gw.gw_connect_device(device).get()
    ts = int(time.time() * 1000)
    rc1 = gw.gw_send_telemetry(device, {"ts": ts, "values": {"id": 10, "flow": 3.5}}).get()
    rc2 = gw.gw_send_telemetry(
        device,
        [{"ts": ts + 1, "values": {"id": 11, "flow": 3.6}}, {"ts": ts + 2, "values": {"id": 12}}],
    ).get()
    rc3 = gw.gw_send_attributes(device, {"model": "B-200"}).get()
    results["publish_rcs"] = [rc1, rc2, rc3]

    updates: list = []
    gw.gw_subscribe_to_all_attributes(lambda content: updates.append(content))
    wait_test("shared")  # the test sets the device's shared attribute setpoint = 60
    results["shared_update"] = updates[0] if wait_until(lambda: updates) else None

    answers: list = []
    gw.gw_request_shared_attributes(
        device,
        ["setpoint"],
        lambda content, exc: answers.append([content, repr(exc) if exc else None]),
    )
    results["attribute_response"] = answers[0] if wait_until(lambda: answers) else None

    calls: list = []
    done = threading.Event()

    def on_rpc(client, content):
        calls.append(content)
        client.gw_send_rpc_reply(content["device"], content["data"]["id"], {"done": True})
        done.set()

    gw.gw_set_server_side_rpc_request_handler(on_rpc)
    wait_test("rpc")  # the test sends a server-side RPC to the device behind the gateway
    results["rpc_request"] = calls[0] if done.wait(20) else None
    wait_test("rpc-answered")
    gw.gw_disconnect_device(device).get()
    time.sleep(0.5)  # let the QoS 1 disconnect notice go out before the socket closes
    gw.disconnect()


if sys.argv[1] == "device":
    device_flow(int(sys.argv[2]), sys.argv[3])
else:
    gateway_flow(int(sys.argv[2]), sys.argv[3], sys.argv[4])
say({"results": results})
