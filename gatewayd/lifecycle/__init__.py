"""Self-update of gatewayd: signed releases, a venv per version, a `current` link, rollback.

Layout (the daemon writes only these two places; systemd/gatewayd.service allows nothing else):

    <releases_dir>/<version>/        one venv per release; `.complete` is written last
    <releases_dir>/current -> V      what ExecStart runs (/opt/gatewayd/current -> releases/current)
    <releases_dir>/previous -> V     the release that installed `current`: the way back, and
                                     the code that runs the start check (ExecStartPre)
    <state_dir>/update/downloads/V/  a release's files while they are fetched and verified
    <state_dir>/update/pending.json  the marker: an installed release not yet confirmed healthy
    <state_dir>/update/outcome.json  the last update's outcome, reported on the state topic

Invariants:
- nothing is installed before the manifest's signature, every file's size and SHA-256 and the
  release's buffer format are checked;
- `current` and `previous` always name complete releases, and change by rename (atomic);
- the marker is written before `current` moves, and removed only after the outcome is written:
  a process killed at any step comes back on a release that ran before (see `marker`);
- the buffer file is never touched: a release that declares a buffer format this one cannot
  read is refused.
"""

# The on-disk format of the buffer (buffer/store.py's schema) this release writes, and the ones it
# can read. A release may be installed only if this release can read what it writes, so that a
# rollback never meets a buffer it cannot open. Bump BUFFER_FORMAT with a schema change.
BUFFER_FORMAT = 1
READABLE_BUFFER_FORMATS = frozenset({1})

# The exit status that asks the supervisor (systemd: Restart=always) to start us again, on the
# release `current` now names. EX_TEMPFAIL: not a configuration error (2), not a crash (1).
EXIT_RESTART = 75

__all__ = ["BUFFER_FORMAT", "EXIT_RESTART", "READABLE_BUFFER_FORMATS"]
