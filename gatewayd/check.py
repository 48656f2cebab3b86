"""What `gatewayd check` reports and `run` refuses at start: one list, so they do not disagree.

Invariants:
- `run` refuses what `check` reports, except a device key not provisioned yet (`KeyNotYet`):
  the daemon then buffers and its uplink retries, as before;
- `problems` gathers every error of a file at once (config.check parses part by part) and adds
  what needs more than the document: driver names through the driver registry (with a did-you-
  mean), the device key (exists, a usable PEM key, not readable by group or others), the
  access token file (exists, not empty: a missing one is like a key not provisioned yet), TLS and
  signing files readable (the TLS client key not by group or others either), the state
  directory present or creatable;
- nothing is created or changed: the state directory is only looked at;
- each error names the place in the file, the problem and the fix (a ConfigError).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.config import ConfigError, GatewayConfig, read_document
from gatewayd.config.check import device_problems, merge, parse_all, template_problems
from gatewayd.config.model import RemoteConfigConfig, UplinkConfig


class KeyNotYet(ConfigError):
    """The device key does not exist yet: an error for `check`; `run` warns, buffers and its
    uplink retries until the key is provisioned (a key that exists but is unusable stops it)."""

    def __init__(self, err: ConfigError) -> None:
        super().__init__(err.place, err.problem, err.fix)


@dataclass
class Report:
    errors: list[ConfigError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cfg: GatewayConfig | None = None  # the file's configuration, when it has no error

    @property
    def refusals(self) -> list[ConfigError]:
        """What stops `run` at start: every error but a device key not provisioned yet."""
        return [e for e in self.errors if not isinstance(e, KeyNotYet)]


def problems(path: Path) -> Report:
    """Every reason `run` would refuse the file at `path`, and notes on what overrides it."""
    try:
        doc = read_document(path)
    except ConfigError as exc:
        return Report([exc])
    parsed = parse_all(doc)
    extra = device_problems(doc)  # unknown drivers: parse_all, through the driver registry
    if parsed.uplink is not None:
        extra += template_problems(parsed.uplink)
        extra += _uplink_files(parsed.uplink, path.parent)
    if parsed.remote_config is not None:
        extra += _signing_key(parsed.remote_config, path.parent)
    state_dir = state_dir_of(parsed.state_dir)
    if state_dir is not None:
        extra += _state_dir(state_dir)
    report = Report(merge(parsed.errors, extra))
    if not report.refusals:
        report.cfg = parsed.cfg
    if parsed.cfg is not None and state_dir is not None and parsed.cfg.remote_config.enabled:
        from gatewayd.remote_config.manager import override_note

        note = override_note(parsed.cfg.version, doc, state_dir / "config")
        if note:
            report.notes.append(note)
    return report


def state_dir_of(configured: str | None) -> Path | None:
    """Where `run` keeps its state: systemd's $STATE_DIRECTORY wins over [gateway] state_dir."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env)
    return None if configured is None else Path(configured)


def _uplink_files(uplink: UplinkConfig, config_dir: Path) -> list[ConfigError]:
    out = []
    auth = uplink.auth
    if auth.kind == "jwt":
        from gatewayd.uplink.device_jwt import DeviceKeyError, load_private_key

        key = Path(auth.private_key)
        key = key if key.is_absolute() else config_dir / key
        try:
            load_private_key(key, auth.algorithm)
        except DeviceKeyError as exc:
            bad = ConfigError("uplink.auth.private_key", f"{key}: {exc.problem}", exc.fix)
            out.append(KeyNotYet(bad) if not key.exists() else bad)
    if auth.kind == "access_token" and auth.access_token_file is not None:
        from gatewayd.uplink.credentials import AccessToken

        token = AccessToken(auth, config_dir)
        try:
            token.load()
        except ConfigError as exc:
            assert token.path is not None
            out.append(KeyNotYet(exc) if not token.path.exists() else exc)
    tls = uplink.tls
    if tls.enabled:
        for setting in ("ca_file", "cert_file", "key_file"):
            err = _unreadable(f"uplink.tls.{setting}", getattr(tls, setting))
            if err is not None:
                out.append(err)
        key_file = tls.key_file or tls.cert_file
        if key_file is not None and tls.cert_file is not None and os.path.exists(key_file):
            mode = os.stat(key_file).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):  # refused at connect too (uplink/tls.py)
                out.append(
                    ConfigError(
                        "uplink.tls.key_file",
                        f"{key_file}: readable by group or others (mode {stat.S_IMODE(mode):04o})",
                        f"run `chmod 600 {key_file}`",
                    )
                )
    return out


def _signing_key(rc: RemoteConfigConfig, config_dir: Path) -> list[ConfigError]:
    if not (rc.require_signed and rc.signing_key):  # read only then (remote_config.manager)
        return []
    p = Path(rc.signing_key)
    err = _unreadable("remote_config.signing_key", str(p if p.is_absolute() else config_dir / p))
    return [] if err is None else [err]


def _unreadable(place: str, path: str | None) -> ConfigError | None:
    if path is None:
        return None
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return ConfigError(
            place, f"{path}: cannot read it: {exc.strerror}", "fix the path or the file's mode"
        )


def _state_dir(state_dir: Path) -> list[ConfigError]:
    # The place is the folder, as the buffer names it when it cannot open there.
    setting = "$STATE_DIRECTORY" if os.environ.get("STATE_DIRECTORY") else "gateway.state_dir"
    place = str(state_dir)
    if state_dir.exists():
        if not state_dir.is_dir():
            problem = f"is not a directory ({setting})"
            return [ConfigError(place, problem, f"point {setting} at a folder")]
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return [
                ConfigError(
                    place,
                    f"is not writable by this user ({setting})",
                    "fix its owner or mode (systemd's StateDirectory= does it for the service)",
                )
            ]
        return []
    parent = state_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a directory" if not parent.is_dir() else "is not writable by this user"
        return [
            ConfigError(
                place,
                f"does not exist and cannot be created ({setting}; {parent} {why})",
                f"create it, or point {setting} at a folder this user may write",
            )
        ]
    return []


__all__ = ["KeyNotYet", "Report", "problems", "state_dir_of"]
