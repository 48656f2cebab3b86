"""AWS IoT Core's channel: a named shadow for configuration and state, Jobs, a commands topic.

Everything lives under the thing's own topics (`$aws/things/{thing}/...`, thing = client id):

- the named shadow `gatewayd` (SHADOW): its desired `document` (DESIRED_KEY) is the whole
  configuration document, an object in the form of the TOML file (with its `version`), or a
  string holding a compact JWS when [remote_config] require_signed. At every connect, once
  the session has reported its state (so the running version is known), the channel GETs the
  shadow and hands the document on; an `update/delta` (the cloud changed desired) makes it GET
  the shadow again, so what is handed on is always the whole desired document, never a
  delta's fragment. A document read at a connect whose version is older than the running one
  (a Job brought a newer one) is a redelivery, not handed on; one read after a delta is (the
  manager judges and answers it). The shadow is limited to 8 KB (desired and reported
  together, SHADOW_MAX_BYTES): a larger document goes through a Job;
- the state document (with the config outcomes in `config` and `config_recent`) is the
  shadow's reported state. Shadow updates merge, so the channel sends what changed since the
  reported state it knows (from the GET, then from its own accepted updates), with `null` for
  keys that went away; one update at a time (the next waits for its answer, the newest state
  superseding older ones); a rejected update makes it GET the shadow and pause (Throttle)
  before reporting again;
- a Job execution (`jobs/notify-next`, and `jobs/$next/get` at every connect) carries one job
  document: `{"operation": "config", "document": {...} or "<JWS>"}` is handed on as a
  configuration, and its outcome (report_outcome) ends the execution: SUCCEEDED for applied,
  FAILED for rejected, rolled back or superseded, with `status`, `reason` and `version` in its
  statusDetails; `{"operation": "command", "command": {...}}` (the commands.py form) is a
  command whose result ends it (SUCCEEDED ok, REJECTED refused, FAILED failed or unknown).
  Any other document is REJECTED with the reason. Each execution is set IN_PROGRESS when it
  is handed on. A configuration of a version already applied or rolled back (known from
  report_outcome or the state document, e.g. a restart between the outcome and the job
  update) is not handed on, since the manager would not decide it again: that outcome ends
  the execution. A command found IN_PROGRESS
  that this process did not start (a restart while it ran) is FAILED as "unknown";
- every message on the commands topic is a command (as the topic channel), answered on the
  command_results topic.

Invariants:
- the same desired document handed on twice in a row is one push: canonical bytes (sorted
  keys), and not handed on again while unchanged (a reconnect's GET);
- one Job execution at a time, the one AWS names next; a notification for the execution
  being handled is no new push or command;
- a request left unanswered for REQUEST_TIMEOUT_S is sent again (a shadow GET, the next job);
  a failed shadow GET or a rejected update is tried again after the Throttle pause (1 s
  doubling to 60 s), never at once;
- every publish is QoS 1 and counts against AWS's 100 publishes/s with the telemetry: the
  profile paces telemetry at 90/s, and the channel sends at most a few a second.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from paho.mqtt.client import topic_matches_sub

from gatewayd.remote_config.store import OUTCOME_DIGEST_CHARS, digest

from .base import CommandIn, ConfigPush, Incoming, Throttle

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")

SHADOW = "gatewayd"
DESIRED_KEY = "document"
SHADOW_MAX_BYTES = 8 * 1024
REQUEST_TIMEOUT_S = 10.0
STATE_WAIT_S = 2.0  # at a connect: the shadow and the next job are read after the state
JOB_STATUS = {"ok": "SUCCEEDED", "refused": "REJECTED", "failed": "FAILED", "unknown": "FAILED"}
MAX_DECIDED = 64
JOB_DETAIL_MAX = 1000  # AWS: a statusDetails value is at most 1024 characters


def diff_patch(old: Any, new: Any) -> Any:
    """What turns `old` into `new` under a shadow's merge (objects merge, null deletes)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    out: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = diff_patch(old[key], value)
            if sub:
                out[key] = sub
        elif old[key] != value:
            out[key] = value
    return out


def _canonical(value: Any) -> bytes:
    if isinstance(value, str):  # a signed document (JWS)
        return value.encode()
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _short(text: Any) -> str:
    s = str(text)
    return s if len(s) <= JOB_DETAIL_MAX else s[: JOB_DETAIL_MAX - 3] + "..."


class AwsChannel:
    name = "aws"

    def __init__(self, thing: str, commands: str, command_results: str) -> None:
        self.thing = thing
        self.commands = commands
        self.command_results = command_results
        self.shadow = f"$aws/things/{thing}/shadow/name/{SHADOW}"
        self.jobs = f"$aws/things/{thing}/jobs"
        self.throttle = Throttle()  # shadow GETs
        self.update_throttle = Throttle()  # reported updates (a GET's success does not reset it)
        self._token = 0
        self._get_token: str | None = None  # the shadow GET waiting for its answer
        self._get_sent = 0.0
        self._get_wanted = False
        self._connected_at = 0.0  # monotonic, of this session
        self._next_wanted = False  # the `$next` job GET is due
        self._get_delta = False  # the GET was asked by a delta: the cloud changed desired
        self._delivered: bytes | None = None  # the desired document last handed on
        self._running: int | None = None  # config_version of the newest state document
        self._reported: Any = None  # the shadow's reported state as we know it; None: unknown
        self._updates: dict[str, tuple[float, Any]] = {}  # token -> (sent at, reported after)
        self._state: bytes | None = None  # the newest state document, to report once known
        self._too_big_warned = False
        self._rejections: set[str] = set()  # codes of rejected updates already warned about
        self._next_asked = 0.0  # monotonic: the `$next` job GET sent at; 0: none outstanding
        self._job: str | None = None  # the execution being handled
        self._job_version: int | None = None  # its configuration's version
        self._started: set[str] = set()  # executions this process set IN_PROGRESS
        self._job_updates: list[tuple[str, str, dict[str, str]]] = []  # for tick
        # Outcomes by version, from report_outcome and the state documents (after a restart,
        # the outcome the store kept): a config job of a decided version is answered from them.
        self._decided: dict[int, dict[str, Any]] = {}

    def _next_token(self, kind: str) -> str:
        self._token += 1
        return f"{kind}-{self._token}"

    def events_topic(self, events: str, subfolder: str) -> str:
        # A topic level, as a rule's topic filter sees it (check keeps one slash for it).
        return f"{events}/{subfolder}"

    def subscriptions(self) -> list[str]:
        return [
            f"{self.shadow}/get/+",
            f"{self.shadow}/update/delta",
            f"{self.shadow}/update/accepted",
            f"{self.shadow}/update/rejected",
            f"{self.jobs}/notify-next",
            f"{self.jobs}/+/get/+",
            f"{self.jobs}/+/update/+",
            self.commands,
        ]

    def connected(self, client: mqtt.Client) -> None:
        self._get_token = None
        self._updates.clear()
        self._reported = None  # another session may have reported meanwhile: ask
        self._get_wanted = True
        self._job = None  # asked again: `$next` names it
        self._job_version = None
        # Both asked once the state document tells the running version and outcomes (the
        # session reports it right after connecting), or after STATE_WAIT_S without one.
        self._connected_at = time.monotonic()
        self._next_wanted = True

    def _ask(self, client: mqtt.Client, now: float) -> None:
        if self._running is None and now - self._connected_at < STATE_WAIT_S:
            return
        if self._get_wanted and self._get_token is None:
            self._send_get(client, now)
        if self._next_wanted:
            self._next_wanted = False
            self._ask_next(client, now)

    def _send_get(self, client: mqtt.Client, now: float) -> None:
        if self.throttle.blocked(now):
            return
        token = self._next_token("get")
        body = json.dumps({"clientToken": token})
        if client.publish(f"{self.shadow}/get", body, qos=1).rc == 0:
            self._get_token, self._get_sent, self._get_wanted = token, now, False

    def _ask_next(self, client: mqtt.Client, now: float) -> None:
        body = json.dumps({"clientToken": "next", "includeJobDocument": True})
        if client.publish(f"{self.jobs}/$next/get", body, qos=1).rc == 0:
            self._next_asked = now

    def tick(self, client: mqtt.Client, now: float) -> None:
        if self._get_token is not None and now - self._get_sent > REQUEST_TIMEOUT_S:
            log.warning("shadow_get_unanswered timeout_s=%g; asking again", REQUEST_TIMEOUT_S)
            self._get_token, self._get_wanted = None, True
        self._ask(client, now)
        for token, (sent, _) in list(self._updates.items()):
            if now - sent > REQUEST_TIMEOUT_S:  # unknown whether it was applied: ask
                del self._updates[token]
                self._reported, self._get_wanted = None, True
        if self._next_asked and now - self._next_asked > REQUEST_TIMEOUT_S:
            self._ask_next(client, now)
        while self._job_updates:
            job_id, status, details = self._job_updates[0]
            if not self._update_job(client, job_id, status, details):
                break
            self._job_updates.pop(0)
        if self._state is not None and self._may_report(now):
            self._send_reported(client, self._state, now)

    # -- from AWS ----------------------------------------------------------------------------

    def incoming(self, topic: str, payload: bytes) -> Incoming:
        if topic.startswith(self.shadow + "/"):
            return self._shadow_message(topic[len(self.shadow) + 1 :], payload)
        if topic.startswith(self.jobs + "/"):
            return self._jobs_message(topic[len(self.jobs) + 1 :], payload)
        if topic_matches_sub(self.commands, topic):
            return CommandIn(payload)
        log.debug("aws_unexpected_message topic=%s", topic)
        return None

    def _shadow_message(self, op: str, payload: bytes) -> Incoming:
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            log.warning("shadow_message_unreadable topic=%s error=%s", op, exc)
            return None
        token = str(body.get("clientToken", ""))
        if op == "update/delta":
            self._get_wanted = True  # the whole desired document comes with the GET
            self._get_delta = True
            return None
        if op in ("update/accepted", "update/rejected"):
            sent = self._updates.pop(token, None)
            if sent is None:
                return None  # another client's update, or one of an earlier session
            if op == "update/accepted":
                self.update_throttle.succeeded()
                return None
            # Paused like a throttle (a 413 would come back at every state change), and said
            # at WARNING once per code.
            pause = self.update_throttle.throttled(time.monotonic())
            code = str(body.get("code"))
            log.log(
                logging.DEBUG if code in self._rejections else logging.WARNING,
                "shadow_update_rejected code=%s message=%s pause_s=%g; reading the shadow again",
                code,
                body.get("message"),
                pause,
            )
            self._rejections.add(code)
            self._reported, self._get_wanted = None, True
            return None
        if token != self._get_token:
            return None  # an answer to a GET of an earlier session or of another client
        self._get_token = None
        changed, self._get_delta = self._get_delta, False
        state = body.get("state")
        if op == "get/rejected":
            if body.get("code") == 404:  # no shadow yet: nothing desired, nothing reported
                self._reported = {}
                return None
            pause = self.throttle.throttled(time.monotonic())
            log.warning(
                "shadow_get_failed code=%s message=%s pause_s=%g",
                body.get("code"),
                body.get("message"),
                pause,
            )
            self._get_wanted = True
            return None
        if op != "get/accepted" or not isinstance(state, dict):
            return None
        self.throttle.succeeded()
        reported = state.get("reported")
        self._reported = reported if isinstance(reported, dict) else {}
        desired = state.get("desired")
        value = desired.get(DESIRED_KEY) if isinstance(desired, dict) else None
        if value is None:
            return None
        data = _canonical(value)
        if data == self._delivered:
            log.debug("shadow_config_unchanged")
            return None
        self._delivered = data
        version = value.get("version") if isinstance(value, dict) else None
        older = isinstance(version, int) and self._running is not None and version < self._running
        if older and not changed:
            # Read at a connect, older than what runs (a Job brought a newer one): a redelivery,
            # not a push; a delta (the cloud wrote it) is handed on, to be judged and answered.
            log.debug("shadow_config_older version=%s running=%s", version, self._running)
            return None
        return ConfigPush(data)

    def _jobs_message(self, rest: str, payload: bytes) -> Incoming:
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            log.warning("job_message_unreadable topic=%s error=%s", rest, exc)
            return None
        if rest == "notify-next" or rest == "$next/get/accepted":
            if rest == "$next/get/accepted":
                self._next_asked = 0.0
            execution = body.get("execution")
            return self._execution(execution) if isinstance(execution, dict) else None
        if rest == "$next/get/rejected":
            self._next_asked = 0.0
            log.warning("job_next_failed code=%s message=%s", body.get("code"), body.get("message"))
            return None
        if rest.endswith("/update/rejected"):
            log.warning(
                "job_update_rejected job=%s code=%s message=%s",
                rest.split("/")[0],
                body.get("code"),
                body.get("message"),
            )
        return None

    def _execution(self, execution: dict[str, Any]) -> Incoming:
        job_id = str(execution.get("jobId", ""))
        if not job_id or job_id == self._job:
            return None  # the one being handled, notified again
        status = execution.get("status")
        doc = execution.get("jobDocument")
        operation = doc.get("operation") if isinstance(doc, dict) else None
        resumed = status == "IN_PROGRESS" and job_id not in self._started
        self._job, self._job_version = job_id, None
        if operation == "config" and isinstance(doc, dict) and "document" in doc:
            value = doc["document"]
            version = value.get("version") if isinstance(value, dict) else None
            self._job_version = version if isinstance(version, int) else None
            known = self._decided.get(version) if isinstance(version, int) else None
            this = digest(value)[:OUTCOME_DIGEST_CHARS] if isinstance(value, dict) else None
            if (
                known is not None
                and known.get("status") in ("applied", "rolled_back")
                # another document under a decided version goes to the manager, which refuses it
                # (not newer); an outcome without a digest is from before digests were reported
                and known.get("digest", this) == this
            ):
                # The manager would not decide it again (an applied document redelivered is
                # no new outcome; an older or equal version is not tried): its decision stands.
                log.info("job_config_decided job=%s version=%s", job_id, version)
                self._outcome_done(known, f"version {version} was decided before: ")
                return None
            self._start(job_id, status)
            log.info("job_config job=%s version=%s", job_id, self._job_version)
            return ConfigPush(_canonical(value))
        if operation == "command" and isinstance(doc, dict):
            if resumed:
                self._finish(job_id, "FAILED", "unknown", "the gateway restarted while it ran")
                return None
            command = doc.get("command")
            if not isinstance(command, dict):
                self._finish(job_id, "REJECTED", "refused", "command is not a JSON object")
                return None
            self._start(job_id, status)
            try:
                text = json.dumps({**command, "id": f"job:{job_id}"}, allow_nan=False)
            except ValueError as exc:
                self._finish(job_id, "REJECTED", "refused", f"malformed command: {exc}")
                return None
            return CommandIn(text.encode())
        self._finish(
            job_id,
            "REJECTED",
            "refused",
            f"unknown job document: operation {operation!r}; gatewayd runs "
            '{"operation": "config", "document": ...} and {"operation": "command", '
            '"command": ...}',
        )
        return None

    def _start(self, job_id: str, status: Any) -> None:
        self._started.add(job_id)
        if status != "IN_PROGRESS":
            self._job_updates.append((job_id, "IN_PROGRESS", {}))

    def _finish(self, job_id: str, status: str, outcome: str, reason: str, **more: Any) -> None:
        details = {"status": outcome, "reason": _short(reason)}
        details.update({k: _short(v) for k, v in more.items() if v is not None})
        self._job_updates.append((job_id, status, details))
        self._started.discard(job_id)
        if job_id == self._job:
            self._job, self._job_version = None, None  # notify-next brings the next one

    def _update_job(
        self, client: mqtt.Client, job_id: str, status: str, details: dict[str, str]
    ) -> bool:
        body: dict[str, Any] = {"status": status, "clientToken": self._next_token("job")}
        if details:
            body["statusDetails"] = details
        topic = f"{self.jobs}/{job_id}/update"
        ok = client.publish(topic, json.dumps(body), qos=1).rc == 0
        if ok and status != "IN_PROGRESS":
            log.info("job_done job=%s status=%s", job_id, status)
        return ok

    # -- to AWS ------------------------------------------------------------------------------

    def report_state(self, client: mqtt.Client, payload: bytes) -> bool:
        self._state = payload
        self._remember_outcomes(payload)
        now = time.monotonic()
        self._ask(client, now)
        if not self._may_report(now):
            return True  # taken in charge: sent once the GET tells what the shadow holds
        return self._send_reported(client, payload, time.monotonic())

    def _may_report(self, now: float) -> bool:
        """The shadow's reported state is known, no update is waiting for its answer (the next
        is a diff against it), and no pause after a rejection runs."""
        return (
            self._reported is not None
            and not self._updates
            and not self.update_throttle.blocked(now)
        )

    def _send_reported(self, client: mqtt.Client, payload: bytes, now: float) -> bool:
        try:
            state = json.loads(payload)
        except ValueError:
            return True  # the session makes strict JSON; nothing to send otherwise
        patch = diff_patch(self._reported, state)
        self._state = None
        if not patch:
            return True
        token = self._next_token("state")
        body = json.dumps(
            {"state": {"reported": patch}, "clientToken": token},
            separators=(",", ":"),
            allow_nan=False,
        )
        if len(body) > SHADOW_MAX_BYTES:
            if not self._too_big_warned:
                log.warning(
                    "shadow_reported_too_big bytes=%d limit=%d fix=%s",
                    len(body),
                    SHADOW_MAX_BYTES,
                    "fewer devices or counters per gateway; a shadow holds 8 KB",
                )
                self._too_big_warned = True
            return True
        if client.publish(f"{self.shadow}/update", body, qos=1).rc != 0:
            self._state = payload
            return False
        self._updates[token] = (now, state)
        self._reported = state  # optimistic: a rejection or a timeout reads the shadow again
        return True

    def _remember_outcomes(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
        except ValueError:
            return
        if isinstance(state.get("config_version"), int):
            self._running = state["config_version"]
        for out in [state.get("config"), *(state.get("config_recent") or [])]:
            if isinstance(out, dict) and isinstance(out.get("version"), int):
                self._decided.setdefault(out["version"], out)
        while len(self._decided) > MAX_DECIDED:
            self._decided.pop(next(iter(self._decided)))

    def report_outcome(self, client: mqtt.Client, outcome: dict[str, Any]) -> None:
        if isinstance(outcome.get("version"), int):
            self._decided.pop(outcome["version"], None)
            self._decided[outcome["version"]] = outcome
        if self._job is not None and outcome.get("version") == self._job_version:
            self._outcome_done(outcome)

    def _outcome_done(self, outcome: dict[str, Any], before: str = "") -> None:
        assert self._job is not None
        status = str(outcome.get("status"))
        self._finish(
            self._job,
            "SUCCEEDED" if status == "applied" else "FAILED",
            status,
            before + str(outcome.get("reason", "")),
            version=outcome.get("version"),
        )

    def answer(self, client: mqtt.Client, result: dict[str, Any]) -> bool:
        rid = str(result.get("id", ""))
        if rid.startswith("job:"):
            job_id = rid[len("job:") :]
            status = str(result.get("status"))
            reason = str(result.get("reason", ""))
            self._finish(job_id, JOB_STATUS.get(status, "FAILED"), status, reason)
            self.tick(client, time.monotonic())  # sent now, not at the next tick
            return True
        payload = json.dumps(result, allow_nan=False)
        return client.publish(self.command_results, payload, qos=1).rc == 0
