"""Open device nodes the way a serial driver does; print `open_probe: PATH RESULT` per node.

Run by nspawn_systest.sh as an ExecStartPost= of gatewayd.service (a runtime drop-in), so it runs
in the daemon's cgroup, as its user and groups, under the unit's device policy (a cgroup BPF
program fixed when the unit started). It waits until every node exists, so the test can create
them after the start. Invariant: EPERM means the policy refused the node; anything else (ENXIO
for a major without a driver, `ok`) means the policy let it through. Standard library only: it
runs on the container's bare python3.
"""

from __future__ import annotations

import errno
import os
import sys
import time


def probe(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    os.close(fd)
    return "ok"


def main(paths: list[str], wait_s: float = 60.0) -> int:
    print("open_probe: waiting for", " ".join(paths), flush=True)
    deadline = time.monotonic() + wait_s
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            print("open_probe: gave up waiting", flush=True)
            return 1
        time.sleep(0.1)
    for p in paths:
        print("open_probe:", p, probe(p), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
