"""AWS IoT Core stand-in: mTLS things, a thing-name policy, the broker's limits, shadows and Jobs.

Invariants, each as AWS documents it for MQTT 3.1.1 (what we could not confirm is marked); MQTT 5
clients are served with the same rules and no reason codes beyond CONNACK's:
- A device connects over TLS with a certificate signed by the stand-in's CA and registered to a
  thing, and its client id must be that thing's name; otherwise CONNACK 5 (AWS may close without
  a CONNACK; unconfirmed). The observer (admin) connects with a password and no certificate.
- Policy: a thing may publish and subscribe only within `$aws/things/{thing}/#` and
  `+/{thing}/#`, after the optional Basic Ingest prefix `$aws/rules/<rule>/`. A publish outside
  it closes the connection; a subscription outside it gets SUBACK 0x80.
- Limits: a topic has at most 7 slashes (the Basic Ingest prefix does not count) and 256 bytes,
  a payload at most 128 KiB: a publish over either closes the connection. More than 100
  publishes in one second, or a QoS 1 publish while 100 are unacknowledged, is throttled: dropped
  with no PUBACK, the connection kept (the client's resend covers it).
- Shadows, classic and named (`$aws/things/{thing}/shadow[/name/{name}]/update|get|delete`):
  accepted/rejected answers, `update/delta` when an update with `desired` leaves desired and
  reported apart, `update/documents` with previous and current; versions (a stale `version` is
  409), `null` deletes a key, a request or a resulting state over 8 KiB is 413.
- Jobs (`$aws/things/{thing}/jobs/...`): `get`, `{jobId}/get` (and `$next`), `start-next`,
  `{jobId}/update` with IN_PROGRESS/SUCCEEDED/FAILED/REJECTED; `notify` when an execution joins
  or leaves the pending list, `notify-next` when the next pending execution becomes another one
  (or none); a terminal execution does not change again.
- Every other accepted publish of a thing (its telemetry, Basic Ingest included) is fed to the
  recorder, which counts records by id. Basic Ingest publishes reach no subscriber.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import auth
from .broker import Broker, Session
from .certs import CertificateAuthority, der_of
from .mqtt_wire import ProtocolError
from .recorder import Recorder

log = logging.getLogger("gatewayd_sim.cloud.aws")

MAX_SLASHES = 7
MAX_TOPIC_BYTES = 256
MAX_PAYLOAD = 128 * 1024
MAX_PUBLISHES_PER_S = 100
MAX_UNACKED = 100
MAX_SHADOW_STATE = 8 * 1024
POLICY = ("$aws/things/{thing}/#", "+/{thing}/#")
DEVICE_STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "REMOVED", "TIMED_OUT")
ADMIN_JOB_TOPIC = "$sim/jobs/create/"  # observer only: `$sim/jobs/create/{thing}/{jobId}`

Json = dict[str, Any]


def strip_basic_ingest(topic: str) -> str:
    """The topic without `$aws/rules/<rule>/`, which AWS does not count against its limits."""
    if topic.startswith("$aws/rules/"):
        parts = topic.split("/", 3)
        return parts[3] if len(parts) == 4 else ""
    return topic


def topic_problem(topic: str) -> str | None:
    """Why AWS would refuse this topic or filter, or None."""
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"topic is over {MAX_TOPIC_BYTES} bytes"
    rest = strip_basic_ingest(topic)
    if not rest:
        return "Basic Ingest topic without a rule name and a topic"
    if rest.count("/") > MAX_SLASHES:
        return f"topic has {rest.count('/')} slashes, AWS allows {MAX_SLASHES}"
    return None


def within(pattern: str, template: str) -> bool:
    """Is every topic the filter `pattern` can match also matched by the filter `template`?"""
    p, t = pattern.split("/"), template.split("/")
    for i, part in enumerate(t):
        if part == "#":
            return True
        if i >= len(p) or p[i] == "#" or (part != "+" and (p[i] == "+" or p[i] != part)):
            return False
    return len(p) == len(t)


def _now() -> int:
    return int(time.time())


def _merge(target: Json, patch: Json, meta: Json, ts: int) -> None:
    """Apply a shadow patch: `null` deletes, objects merge, anything else replaces."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
            meta.pop(k, None)
        elif isinstance(v, dict):
            sub = target.get(k)
            if not isinstance(sub, dict):
                sub = target[k] = {}
            sub_meta = meta.get(k)
            if not isinstance(sub_meta, dict) or "timestamp" in sub_meta:
                sub_meta = meta[k] = {}
            _merge(sub, v, sub_meta, ts)
        else:
            target[k] = copy.deepcopy(v)
            meta[k] = {"timestamp": ts}


def _meta_of(value: Any, ts: int) -> Any:
    if isinstance(value, dict):
        return {k: _meta_of(v, ts) for k, v in value.items()}
    return {"timestamp": ts}


def _delta(desired: Json, reported: Json) -> Json:
    out: Json = {}
    for k, v in desired.items():
        r = reported.get(k)
        if isinstance(v, dict) and isinstance(r, dict):
            sub = _delta(v, r)
            if sub:
                out[k] = sub
        elif k not in reported or r != v:
            out[k] = v
    return out


def _pick(meta: Json, keys: Json) -> Json:
    return {k: meta[k] for k in keys if k in meta}


@dataclass
class Shadow:
    desired: Json | None = None
    reported: Json | None = None
    meta: dict[str, Json] = field(default_factory=lambda: {"desired": {}, "reported": {}})
    version: int = 0
    exists: bool = False

    def state(self) -> Json:
        out: Json = {}
        if self.desired is not None:
            out["desired"] = self.desired
        if self.reported is not None:
            out["reported"] = self.reported
        return out

    def delta(self) -> Json:
        return _delta(self.desired or {}, self.reported or {})

    def metadata(self) -> Json:
        return {k: self.meta[k] for k in ("desired", "reported") if self.state().get(k) is not None}


@dataclass
class JobExecution:
    job_id: str
    thing: str
    document: Json
    queued_at: int
    status: str = "QUEUED"
    status_details: dict[str, str] = field(default_factory=dict)
    version: int = 1
    execution_number: int = 1
    started_at: int | None = None
    last_updated_at: int = 0

    def summary(self) -> Json:
        out: Json = {
            "jobId": self.job_id,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        return out

    def execution(self, with_document: bool = True) -> Json:
        out = self.summary() | {"thingName": self.thing, "status": self.status}
        if self.status_details:
            out["statusDetails"] = self.status_details
        if with_document:
            out["jobDocument"] = self.document
        return out

    def state(self) -> Json:
        out: Json = {"status": self.status, "versionNumber": self.version}
        if self.status_details:
            out["statusDetails"] = self.status_details
        return out


class Rejected(Exception):
    def __init__(self, code: Any, message: str, extra: Json | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra or {}


class AwsIotCore(Broker):
    """The stand-in. `folder` holds its CA (reused when present) and server certificate."""

    mqtt5 = True  # AWS IoT Core speaks both; the SDK's recommended client is MQTT 5

    def __init__(
        self,
        folder: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: Recorder | None = None,
        observer_password: str | None = None,
    ) -> None:
        self.ca = CertificateAuthority(folder)
        server_cert, server_key = self.ca.issue("server", server=True)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(server_cert, server_key)
        tls.load_verify_locations(self.ca.ca_file)
        # Optional so that the observer can connect with a password; a device without a
        # certificate is refused at CONNECT.
        tls.verify_mode = ssl.CERT_OPTIONAL
        super().__init__(None, host, port, recorder, observer_password, tls)
        self.things: dict[str, list[bytes]] = {}  # thing name -> registered certificates (DER)
        self.shadows: dict[tuple[str, str], Shadow] = {}  # (thing, name; "" = classic)
        self.jobs: dict[str, list[JobExecution]] = {}
        self.max_publishes_per_s = MAX_PUBLISHES_PER_S  # tests isolate one limit by lifting another
        self.max_unacked = MAX_UNACKED
        self.clock = time.monotonic  # of the rate window; a test may hold it still
        self.throttled = 0  # publishes dropped over the rate or the unacknowledged limit
        self.refused: list[tuple[str, str]] = []  # (client id, why) of closed connections

    # -- things and certificates ---------------------------------------------------------------

    def add_thing(self, thing: str, cert_pem: bytes | Path) -> None:
        pem = cert_pem.read_bytes() if isinstance(cert_pem, Path) else cert_pem
        self.things.setdefault(thing, []).append(der_of(pem))

    def issue_thing(self, thing: str) -> tuple[Path, Path]:
        """A device certificate for `thing`, signed by the CA and registered: (cert, key)."""
        cert, key = self.ca.issue(thing)
        self.add_thing(thing, cert)
        return cert, key

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        writer: asyncio.StreamWriter,
    ) -> auth.Outcome:
        def thing_of_certificate() -> tuple[str | None, str]:
            # The username is not a credential on AWS; the device SDKs put metrics in it.
            tls = writer.get_extra_info("ssl_object")
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            if not der:
                return None, "no client certificate"
            thing = next((t for t, certs in self.things.items() if der in certs), None)
            if thing is None:
                return None, "certificate is not registered to a thing"
            if client_id != thing:
                return None, f"client id {client_id!r} is not the thing name {thing!r}"
            return thing, "ok"

        return auth.authenticate(self, username, password, thing_of_certificate)

    # -- policy and limits ---------------------------------------------------------------------

    def allowed(self, s: Session, topic: str) -> bool:
        return self.allowed_filter(s, topic)

    def allowed_filter(self, s: Session, pattern: str) -> bool:
        if s.device is None:
            return True
        if topic_problem(pattern) is not None:
            return False
        rest = strip_basic_ingest(pattern)
        return any(within(rest, t.replace("{thing}", s.device)) for t in POLICY)

    def admit(self, s: Session, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        if s.device is None:
            return True
        problem = topic_problem(topic)
        if problem is None and len(payload) > MAX_PAYLOAD:
            problem = f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}"
        if problem is None and not self.allowed(s, topic):
            problem = f"the policy does not allow {s.device} to publish to {topic}"
        if problem is not None:
            self.refused.append((s.client_id, problem))
            raise ProtocolError(problem)
        now = self.clock()
        while s.recent and s.recent[0] <= now - 1.0:
            s.recent.popleft()
        if len(s.recent) >= self.max_publishes_per_s or (qos and s.unacked >= self.max_unacked):
            self.throttled += 1
            return False
        s.recent.append(now)
        return True

    def forward(self, s: Session, topic: str) -> bool:
        return not topic.startswith("$aws/rules/")  # Basic Ingest goes to rules, not subscribers

    # -- what an accepted publish does -----------------------------------------------------------

    def consume(self, s: Session, topic: str, payload: bytes) -> None:
        if s.device is None and topic.startswith(ADMIN_JOB_TOPIC):
            thing, _, job_id = topic[len(ADMIN_JOB_TOPIC) :].partition("/")
            self.create_job(thing, job_id, json.loads(payload))
            return
        parts = topic.split("/")
        if len(parts) >= 5 and parts[0] == "$aws" and parts[1] == "things":
            thing = parts[2]
            if parts[3] == "shadow":
                self._shadow_request(thing, parts[4:], payload)
            elif parts[3] == "jobs":
                self._jobs_request(thing, parts[4:], payload)
            return
        if s.device is not None:
            self.recorder.feed(payload)

    def _answer(self, base: str, ok: bool, body: Json) -> None:
        self.publish(f"{base}/{'accepted' if ok else 'rejected'}", json.dumps(body).encode())

    # -- shadows ---------------------------------------------------------------------------------

    def _shadow_request(self, thing: str, rest: list[str], payload: bytes) -> None:
        if rest[0] == "name" and len(rest) == 3:
            name, op = rest[1], rest[2]
        elif len(rest) == 1:
            name, op = "", rest[0]
        else:
            return  # an answer topic (accepted, delta, ...) published by someone: not a request
        if op not in ("update", "get", "delete"):
            return
        base = f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "") + f"/{op}"
        token: Any = None
        try:
            try:
                req = json.loads(payload) if payload else {}
            except ValueError as exc:
                raise Rejected(400, "Payload contains invalid json") from exc
            if not isinstance(req, dict):
                raise Rejected(400, "Payload contains invalid json")
            # Read the token first: a rejection without it never reaches a correlating client
            # (the SDK's V2 shadow client times out instead).
            token = req.get("clientToken")
            if len(payload) > MAX_SHADOW_STATE:
                raise Rejected(413, "The payload exceeds the maximum size allowed")
            body = getattr(self, f"_shadow_{op}")(thing, name, req, base)
            ok = True
        except Rejected as exc:
            body, ok = {"code": exc.code, "message": exc.message, "timestamp": _now()}, False
        if token is not None:
            body["clientToken"] = token
        log.info("shadow_%s thing=%s shadow=%s accepted=%s", op, thing, name or "-", ok)
        self._answer(base, ok, body)

    def update_shadow(self, thing: str, name: str, state: Json) -> None:
        """The cloud side's update (an application setting `desired`), answered on the topics."""
        payload = json.dumps({"state": state}).encode()
        self._shadow_request(thing, ["name", name, "update"] if name else ["update"], payload)

    def _shadow_update(self, thing: str, name: str, req: Json, base: str) -> Json:
        state = req.get("state")
        if not isinstance(state, dict):
            raise Rejected(400, "Missing required node: state")
        sections = {k: v for k, v in state.items() if k in ("desired", "reported")}
        for k, v in sections.items():
            if v is not None and not isinstance(v, dict):
                raise Rejected(400, f"State node must be an object: {k}")
        shadow = self.shadows.setdefault((thing, name), Shadow())
        version = req.get("version")
        if version is not None and shadow.exists and version != shadow.version:
            raise Rejected(409, "Version conflict")
        before = copy.deepcopy(shadow)
        ts = _now()
        new = copy.deepcopy(shadow)
        for k, v in sections.items():
            if v is None:
                setattr(new, k, None)
                new.meta[k] = {}
                continue
            target = getattr(new, k)
            if target is None:
                target = {}
                setattr(new, k, target)
            _merge(target, v, new.meta[k], ts)
        if len(json.dumps(new.state()).encode()) > MAX_SHADOW_STATE:
            raise Rejected(413, "The payload exceeds the maximum size allowed")
        new.version = shadow.version + 1
        new.exists = True
        self.shadows[(thing, name)] = new
        topic = base  # .../update
        token = {"clientToken": req["clientToken"]} if "clientToken" in req else {}
        documents: Json = {"current": self._document(new), "timestamp": ts} | token
        if before.exists:
            documents["previous"] = self._document(before)
        self.publish(f"{topic}/documents", json.dumps(documents).encode())
        delta = new.delta()
        if "desired" in sections and delta:
            body = {
                "state": delta,
                "metadata": _pick(new.meta["desired"], delta),
                "version": new.version,
                "timestamp": ts,
            } | token
            self.publish(f"{topic}/delta", json.dumps(body).encode())
        meta = {k: _meta_of(v, ts) if v is not None else None for k, v in sections.items()}
        return {"state": sections, "metadata": meta, "version": new.version, "timestamp": ts}

    @staticmethod
    def _document(sh: Shadow) -> Json:
        return {"state": sh.state(), "metadata": sh.metadata(), "version": sh.version}

    def _shadow_get(self, thing: str, name: str, req: Json, base: str) -> Json:
        sh = self.shadows.get((thing, name))
        if sh is None or not sh.exists:
            raise Rejected(404, f"No shadow exists with name: '{name or thing}'")
        state = sh.state()
        if sh.delta():
            state["delta"] = sh.delta()
        return {"state": state, "metadata": sh.metadata(), "version": sh.version} | {
            "timestamp": _now()
        }

    def _shadow_delete(self, thing: str, name: str, req: Json, base: str) -> Json:
        sh = self.shadows.pop((thing, name), None)
        if sh is None or not sh.exists:
            raise Rejected(404, f"No shadow exists with name: '{name or thing}'")
        return {"version": sh.version, "timestamp": _now()}

    # -- jobs ------------------------------------------------------------------------------------

    def create_job(self, thing: str, job_id: str, document: Json) -> JobExecution:
        """Queue a job execution for `thing` and notify it, as a job targeting it would."""
        now = _now()
        job = JobExecution(job_id, thing, document, queued_at=now, last_updated_at=now)
        before = self._next(thing)
        self.jobs.setdefault(thing, []).append(job)
        self._notify(thing, before)
        return job

    def _pending(self, thing: str) -> list[JobExecution]:
        return [j for j in self.jobs.get(thing, []) if j.status not in TERMINAL]

    def _next(self, thing: str) -> JobExecution | None:
        pending = self._pending(thing)
        running = [j for j in pending if j.status == "IN_PROGRESS"]
        first = running or pending
        return first[0] if first else None

    def _notify(self, thing: str, before: JobExecution | None, changed_list: bool = True) -> None:
        ts = _now()
        if changed_list:
            lists: dict[str, list[Json]] = {}
            for j in self._pending(thing):
                lists.setdefault(j.status, []).append(j.summary())
            body: Json = {"timestamp": ts, "jobs": lists}
            self.publish(f"$aws/things/{thing}/jobs/notify", json.dumps(body).encode())
        nxt = self._next(thing)
        if nxt is not before:
            body = {"timestamp": ts} | ({"execution": nxt.execution()} if nxt else {})
            self.publish(f"$aws/things/{thing}/jobs/notify-next", json.dumps(body).encode())

    def _find(self, thing: str, job_id: str) -> JobExecution:
        job = (
            self._next(thing)
            if job_id == "$next"
            else next((j for j in self.jobs.get(thing, []) if j.job_id == job_id), None)
        )
        if job is None:
            raise Rejected("ResourceNotFound", f"Job Execution {job_id} for {thing} not found")
        return job

    def _jobs_request(self, thing: str, rest: list[str], payload: bytes) -> None:
        if rest in (["get"], ["start-next"]):
            op, job_id, base = rest[0], None, f"$aws/things/{thing}/jobs/{rest[0]}"
        elif len(rest) == 2 and rest[1] in ("get", "update"):
            op, job_id, base = rest[1], rest[0], f"$aws/things/{thing}/jobs/{rest[0]}/{rest[1]}"
        else:
            return  # notify topics and answers
        token: Any = None
        try:
            try:
                req = json.loads(payload) if payload else {}
            except ValueError as exc:
                raise Rejected("InvalidJson", "Payload is not valid JSON") from exc
            if not isinstance(req, dict):
                raise Rejected("InvalidRequest", "Payload must be a JSON object")
            token = req.get("clientToken")
            body = self._jobs_op(thing, op, job_id, req)
            ok = True
        except Rejected as exc:
            body = {"code": exc.code, "message": exc.message, "timestamp": _now()} | exc.extra
            ok = False
        if token is not None:
            body["clientToken"] = token
        self._answer(base, ok, body)

    def _jobs_op(self, thing: str, op: str, job_id: str | None, req: Json) -> Json:
        ts = _now()
        if op == "get" and job_id is None:
            pending = self._pending(thing)
            return {
                "inProgressJobs": [j.summary() for j in pending if j.status == "IN_PROGRESS"],
                "queuedJobs": [j.summary() for j in pending if j.status == "QUEUED"],
                "timestamp": ts,
            }
        if op == "start-next":
            before = self._next(thing)
            if before is None:
                return {"timestamp": ts}
            if before.status == "QUEUED":
                # Still pending and still next: neither `notify` nor `notify-next` changes.
                self._set_status(before, "IN_PROGRESS", req.get("statusDetails"), ts)
            return {"execution": before.execution(), "timestamp": ts}
        assert job_id is not None
        if op == "get":
            try:
                job = self._find(thing, job_id)
            except Rejected:
                if job_id == "$next":
                    return {"timestamp": ts}  # no pending job: accepted, with no execution
                raise
            with_document = bool(req.get("includeJobDocument", True))
            return {"execution": job.execution(with_document), "timestamp": ts}
        # update
        status = req.get("status")
        if status not in DEVICE_STATUSES:
            raise Rejected("InvalidRequest", f"status must be one of {', '.join(DEVICE_STATUSES)}")
        job = self._find(thing, job_id)
        expected = req.get("expectedVersion")
        if expected is not None and int(expected) != job.version:
            raise Rejected(
                "VersionMismatch",
                "expectedVersion does not match the execution's version",
                {"executionState": job.state()},
            )
        if job.status in TERMINAL:
            raise Rejected(
                "InvalidStateTransition",
                f"Job execution {job_id} is already {job.status}",
                {"executionState": job.state()},
            )
        before = self._next(thing)
        self._set_status(job, status, req.get("statusDetails"), ts)
        log.info("job_update thing=%s job=%s status=%s", thing, job.job_id, status)
        # `notify` lists the pending executions: it changes only when one leaves the list.
        self._notify(thing, before, changed_list=status in TERMINAL)
        out: Json = {"timestamp": ts}
        if req.get("includeJobExecutionState"):
            out["executionState"] = job.state()
        if req.get("includeJobDocument"):
            out["jobDocument"] = job.document
        return out

    @staticmethod
    def _set_status(job: JobExecution, status: str, details: Any, ts: int) -> None:
        job.status = status
        if isinstance(details, dict):
            job.status_details = {str(k): str(v) for k, v in details.items()}
        if status == "IN_PROGRESS" and job.started_at is None:
            job.started_at = ts
        job.version += 1
        job.last_updated_at = ts
