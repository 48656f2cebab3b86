"""Baseline for the profiles: the plain script a user might write instead of a gateway.

Polls each device's registers with pymodbus (one request per device, like gatewayd's planner)
and publishes every reading as its own QoS 1 message with paho, or with `--per-poll` one QoS 1
message per device poll (a JSON array, the issue's "floor"). No buffer, no rules: nothing survives
an outage. Runs until killed.

    naive_poller.py [--per-poll] BROKER_PORT INTERVAL_S POINTS DEVICE_PORT...
"""

from __future__ import annotations

import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient


def main() -> None:
    args = sys.argv[1:]
    per_poll = args[:1] == ["--per-poll"]
    args = args[1:] if per_poll else args
    broker, interval_s, points = int(args[0]), float(args[1]), int(args[2])
    ports = [int(p) for p in args[3:]]
    mq = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive")
    mq.max_inflight_messages_set(1000)
    mq.connect("127.0.0.1", broker)
    mq.loop_start()
    clients = [ModbusTcpClient("127.0.0.1", port=p) for p in ports]
    for c in clients:
        c.connect()
    seq = 0
    next_at = time.monotonic()
    while True:
        for i, c in enumerate(clients):
            rr = c.read_holding_registers(0, count=points)
            ts = int(time.time() * 1000)
            batch = []
            for a, v in enumerate(rr.registers):
                seq += 1
                msg = {"id": seq, "point": f"dev{i}/r{a}", "ts": ts, "value": v, "quality": "good"}
                if per_poll:
                    batch.append(msg)
                else:
                    mq.publish("/naive/events", json.dumps(msg), qos=1)
            if per_poll:
                mq.publish("/naive/events", json.dumps(batch), qos=1)
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main()
