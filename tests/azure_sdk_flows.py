"""Run under the vendor's SDK (azure-iot-device, in its own venv): its documented device flows.

Usage: python azure_sdk_flows.py CONNECTION_STRING CA_FILE. Prints one JSON line per step;
waits for the test to send a desired-properties patch and to invoke the method `reboot`.
"""

import json
import sys
import threading

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def main() -> None:
    conn, ca_file = sys.argv[1], sys.argv[2]
    with open(ca_file) as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(conn, server_verification_cert=ca)
    patched = threading.Event()
    called = threading.Event()

    def on_patch(patch: dict) -> None:
        say(step="desired_patch", patch=patch)
        patched.set()

    def on_method(req) -> None:  # type: ignore[no-untyped-def]
        say(step="method", name=req.name, payload=req.payload)
        resp = MethodResponse.create_from_method_request(req, 200, {"done": req.payload})
        client.send_method_response(resp)
        called.set()

    client.on_twin_desired_properties_patch_received = on_patch
    client.on_method_request_received = on_method
    client.connect()
    say(step="connected")
    for i in range(10):
        msg = Message(json.dumps([{"id": 1000 + i, "point": "sdk/x", "value": i}]))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        client.send_message(msg)
    say(step="sent", n=10)
    twin = client.get_twin()
    say(step="twin", twin=twin)
    client.patch_twin_reported_properties({"sdk": {"firmware": "1.2.3"}})
    say(step="reported")
    say(step="ready")
    ok = patched.wait(30) and called.wait(30)
    client.shutdown()
    say(step="done", ok=bool(ok))


main()
