"""The pending-update marker and the last outcome, and the check made at every start.

`pending.json` exists from just before `current` moves to a new release until that release is
confirmed healthy or rolled back. `check_start` runs before the daemon (ExecStartPre, from the
`previous` release, so a new release that cannot even import is still counted), and again inside
the daemon without counting. Standard library only: it must start fast and never fail a start.

Invariants: the outcome is written before the marker is removed, so a kill between the two
leaves a marker whose outcome is already known (and is not overwritten); after `max_starts`
starts of an unconfirmed release, `current` goes back to `previous`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .releases import Releases

log = logging.getLogger("gatewayd.lifecycle")


class UpdateFiles:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "update"
        self.pending_path = self.dir / "pending.json"
        self.outcome_path = self.dir / "outcome.json"
        self.downloads = self.dir / "downloads"

    def pending(self) -> dict[str, Any] | None:
        return _read(self.pending_path)

    def outcome(self) -> dict[str, Any] | None:
        return _read(self.outcome_path)

    def write_pending(self, doc: dict[str, Any]) -> None:
        _write(self.pending_path, doc)

    def write_outcome(self, doc: dict[str, Any]) -> None:
        _write(self.outcome_path, {**doc, "ts": int(time.time() * 1000)})

    def clear_pending(self) -> None:
        self.pending_path.unlink(missing_ok=True)


def check_start(
    files: UpdateFiles, releases: Releases, max_starts: int, count: bool
) -> dict[str, Any] | None:
    """Settle what a previous process left; returns the marker still pending (to confirm), if any.

    `count`: this start is one more start of the release `current` names (the ExecStartPre
    check). The daemon calls it with count=False.
    """
    pending = files.pending()
    if pending is None:
        releases.clean()
        shutil.rmtree(files.downloads, ignore_errors=True)  # a fetch that was killed
        return None
    version, previous = str(pending.get("version")), str(pending.get("previous"))
    current = releases.link("current")
    last = files.outcome()
    known = last is not None and last.get("id") == pending.get("id")
    if current != version:
        # Killed before the switch, or after a rollback's switch back: not running the new one.
        if not known:
            files.write_outcome(
                {
                    **_ident(pending),
                    "status": "failed",
                    "reason": f"interrupted before the switch to {version}; still on {current}",
                }
            )
        files.clear_pending()
        releases.clean()
        shutil.rmtree(files.downloads, ignore_errors=True)
        return None
    if not count:
        return pending
    starts = int(pending.get("starts", 0)) + 1
    if starts > max_starts and releases.complete(previous) is not None:
        files.write_outcome(
            {
                **_ident(pending),
                "status": "rolled_back",
                "reason": (
                    f"{version} did not report healthy in {starts - 1} starts (it exits or "
                    f"crashes before); back on {previous}"
                ),
            }
        )
        releases.set_link("current", previous)
        files.clear_pending()
        log.error("update_rolled_back version=%s to=%s starts=%d", version, previous, starts - 1)
        return None
    files.write_pending({**pending, "starts": starts})
    return {**pending, "starts": starts}


def _ident(pending: dict[str, Any]) -> dict[str, Any]:
    return {k: pending.get(k) for k in ("id", "version", "previous")}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
