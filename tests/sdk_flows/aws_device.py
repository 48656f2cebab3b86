"""AWS IoT Device SDK v2 (awsiotsdk) flow against the stand-in; run in the SDK's own venv.

    python aws_device.py mqtt3|mqtt5 PORT CA CERT KEY THING

Prints one `SDKFLOW <json>` line per event (the SDK may print lines of its own): `{"ready": STEP}`
when it waits for the test to act on the cloud side (the test answers with a line on stdin), and
at the end `{"results": {...}}`.
Each step follows the SDK's documented service-client (V2) usage.
"""

import json
import sys
import threading
import time
from concurrent.futures import Future

import awsiot
from awscrt import mqtt, mqtt5, mqtt_request_response
from awsiot import (
    V2ServiceException,
    iotjobs,
    iotshadow,
    mqtt5_client_builder,
    mqtt_connection_builder,
)

protocol, port, ca, cert, key, thing = sys.argv[1:7]
SHADOW = "config"
results: dict = {}


def say(obj: dict) -> None:
    print("SDKFLOW " + json.dumps(obj), flush=True)


def wait_test(step: str) -> None:
    say({"ready": step})
    sys.stdin.readline()


def error_of(exc: BaseException) -> dict:
    if isinstance(exc, V2ServiceException) and exc.modeled_error is not None:
        return {"code": exc.modeled_error.code, "message": exc.modeled_error.message}
    return {"error": repr(exc)}


common = {
    "endpoint": "localhost",
    "port": int(port),
    "cert_filepath": cert,
    "pri_key_filepath": key,
    "ca_filepath": ca,
    "client_id": thing,
}
if protocol == "mqtt3":
    conn = mqtt_connection_builder.mtls_from_path(**common, clean_session=True, keep_alive_secs=30)
    results["connect"] = conn.connect().result(20)
else:
    up: Future = Future()
    conn = mqtt5_client_builder.mtls_from_path(
        **common,
        on_lifecycle_connection_success=lambda data: up.set_result(
            {"session_present": data.connack_packet.session_present}
        ),
        on_lifecycle_connection_failure=lambda data: (
            up.done() or up.set_exception(RuntimeError(repr(data.exception)))
        ),
    )
    conn.start()
    results["connect"] = up.result(20)
options = mqtt_request_response.ClientOptions(
    max_request_response_subscriptions=4,
    max_streaming_subscriptions=4,
    operation_timeout_in_seconds=20,
)

# -- shadow: update reported, get, a delta from the cloud, report it back, a stale version ------
shadow = iotshadow.IotShadowClientV2(conn, options)
deltas: list = []
delta_seen = threading.Event()
subscribed = threading.Event()


def on_delta(event: iotshadow.ShadowDeltaUpdatedEvent) -> None:
    deltas.append({"state": event.state, "version": event.version})
    delta_seen.set()


def on_status(event) -> None:
    if event.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
        subscribed.set()


stream = shadow.create_named_shadow_delta_updated_stream(
    iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name=thing, shadow_name=SHADOW),
    awsiot.ServiceStreamOptions(on_delta, subscription_status_listener=on_status),
)
stream.open()
results["delta_subscribed"] = subscribed.wait(20)

try:
    shadow.get_named_shadow(
        iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name=SHADOW)
    ).result(20)
    results["get_before_any"] = "accepted"
except Exception as exc:  # the stand-in must reject: no shadow yet
    results["get_before_any"] = error_of(exc)

upd = shadow.update_named_shadow(
    iotshadow.UpdateNamedShadowRequest(
        thing_name=thing,
        shadow_name=SHADOW,
        state=iotshadow.ShadowState(reported={"interval_s": 10, "version": "1"}),
    )
).result(20)
results["update_reported"] = {"version": upd.version, "reported": upd.state.reported}

wait_test("delta")  # the test sets desired on the cloud side
results["delta_arrived"] = delta_seen.wait(20)
results["deltas"] = deltas

got = shadow.get_named_shadow(
    iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name=SHADOW)
).result(20)
results["get_with_delta"] = {
    "version": got.version,
    "desired": got.state.desired,
    "reported": got.state.reported,
    "delta": got.state.delta,
}
upd = shadow.update_named_shadow(
    iotshadow.UpdateNamedShadowRequest(
        thing_name=thing,
        shadow_name=SHADOW,
        state=iotshadow.ShadowState(reported=deltas[-1]["state"] if deltas else {}),
    )
).result(20)
got = shadow.get_named_shadow(
    iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name=SHADOW)
).result(20)
results["get_after_report"] = {"version": got.version, "delta": got.state.delta}
try:
    shadow.update_named_shadow(
        iotshadow.UpdateNamedShadowRequest(
            thing_name=thing,
            shadow_name=SHADOW,
            state=iotshadow.ShadowState(reported={"x": 1}),
            version=1,
        )
    ).result(20)
    results["stale_version"] = "accepted"
except Exception as exc:
    results["stale_version"] = error_of(exc)
try:
    shadow.update_named_shadow(
        iotshadow.UpdateNamedShadowRequest(
            thing_name=thing,
            shadow_name=SHADOW,
            state=iotshadow.ShadowState(reported={"blob": "x" * 9000}),
        )
    ).result(20)
    results["oversize"] = "accepted"
except Exception as exc:
    results["oversize"] = error_of(exc)

# -- jobs: notify-next, describe $next, IN_PROGRESS, SUCCEEDED, a second update refused ---------
jobs = iotjobs.IotJobsClientV2(conn, options)
nexts: list = []
next_seen = threading.Event()
jobs_subscribed = threading.Event()


def on_next(event: iotjobs.NextJobExecutionChangedEvent) -> None:
    ex = event.execution
    nexts.append(None if ex is None else {"job_id": ex.job_id, "status": ex.status})
    next_seen.set()


def on_jobs_status(event) -> None:
    if event.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
        jobs_subscribed.set()


jstream = jobs.create_next_job_execution_changed_stream(
    iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing),
    awsiot.ServiceStreamOptions(on_next, subscription_status_listener=on_jobs_status),
)
jstream.open()
results["jobs_subscribed"] = jobs_subscribed.wait(20)
wait_test("job")  # the test creates job j1
results["notified"] = next_seen.wait(20)
d = jobs.describe_job_execution(
    iotjobs.DescribeJobExecutionRequest(thing_name=thing, job_id="$next", include_job_document=True)
).result(20)
results["describe_next"] = {
    "job_id": d.execution.job_id,
    "status": d.execution.status,
    "document": d.execution.job_document,
    "version": d.execution.version_number,
}
u = jobs.update_job_execution(
    iotjobs.UpdateJobExecutionRequest(
        thing_name=thing,
        job_id=d.execution.job_id,
        status=iotjobs.JobStatus.IN_PROGRESS,
        expected_version=d.execution.version_number,
        include_job_execution_state=True,
    )
).result(20)
results["in_progress"] = {
    "status": u.execution_state.status,
    "version": u.execution_state.version_number,
}
next_seen.clear()
u = jobs.update_job_execution(
    iotjobs.UpdateJobExecutionRequest(
        thing_name=thing,
        job_id=d.execution.job_id,
        status=iotjobs.JobStatus.SUCCEEDED,
        status_details={"applied": "yes"},
        include_job_execution_state=True,
    )
).result(20)
results["succeeded"] = {
    "status": u.execution_state.status,
    "details": u.execution_state.status_details,
}
results["next_after_done"] = next_seen.wait(20)
try:
    jobs.update_job_execution(
        iotjobs.UpdateJobExecutionRequest(
            thing_name=thing, job_id=d.execution.job_id, status=iotjobs.JobStatus.FAILED
        )
    ).result(20)
    results["update_terminal"] = "accepted"
except Exception as exc:
    results["update_terminal"] = error_of(exc)
pending = jobs.get_pending_job_executions(
    iotjobs.GetPendingJobExecutionsRequest(thing_name=thing)
).result(20)
results["pending"] = {
    "in_progress": len(pending.in_progress_jobs or []),
    "queued": len(pending.queued_jobs or []),
}
results["nexts"] = nexts

# -- telemetry: QoS 1, acknowledged --------------------------------------------------------------
for i in range(5):
    payload = json.dumps({"id": i, "v": i}).encode()
    if protocol == "mqtt3":
        fut, _ = conn.publish(f"dt/{thing}/telemetry", payload, mqtt.QoS.AT_LEAST_ONCE)
    else:
        fut = conn.publish(
            mqtt5.PublishPacket(
                topic=f"dt/{thing}/telemetry", payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE
            )
        )
    fut.result(20)
results["telemetry_acked"] = 5

if protocol == "mqtt3":
    conn.disconnect().result(20)
else:
    conn.stop()
say({"results": results})
time.sleep(0.1)
