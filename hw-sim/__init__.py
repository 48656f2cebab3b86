"""gatewayd_sim: simulators of everything outside the gateway.

Field devices (Modbus slaves) and a cloud stand-in (an MQTT broker that checks device JWTs).
Used by tests, benchmarks and `gatewayd demo`; never imported by the daemon's run path.
"""
