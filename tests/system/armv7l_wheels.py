"""Which of gatewayd's runtime dependencies have no wheel on PyPI for 32-bit Raspberry Pi OS.

    python tests/system/armv7l_wheels.py [--json]

Invariants: the dependency set is the installed closure of gatewayd's own requirements (extras
of gatewayd excluded, extras it asks of others, such as pyjwt[crypto], included), at the versions
installed in the running environment; a package "has a wheel" for a target when
`pip download --only-binary=:all: --no-deps` finds one for Python 3.11 on that platform. What has
no wheel would need a compiler on the Pi: install.sh takes those from Debian instead
(python3-cryptography, python3-cffi, with a venv made with --system-site-packages). Needs PyPI;
a pip failure other than "no matching distribution" is reported as `error`, not as no wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Raspberry Pi OS Bookworm: glibc 2.36, Python 3.11. armv6l (Pi Zero/1) has no manylinux tag.
TARGETS: dict[str, list[str]] = {
    "armv7l": ["manylinux_2_31_armv7l", "linux_armv7l"],
    "armv6l": ["linux_armv6l"],
}


def runtime_closure(root: str = "gatewayd") -> dict[str, str]:
    """name -> installed version, for `root` and everything it needs at run time."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        if key in found and not extras:
            continue
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    found.pop(canonicalize_name(root), None)
    return dict(sorted(found.items()))


def has_wheel(name: str, version: str, platforms: list[str], dest: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--no-deps",
        "-d",
        dest,
    ]
    for p in platforms:
        cmd += ["--platform", p]
    r = subprocess.run([*cmd, f"{name}=={version}"], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        return "wheel"
    if "No matching distribution" in r.stderr or "Could not find a version" in r.stderr:
        return "none"
    return "error: " + (r.stderr.strip().splitlines() or ["?"])[-1]


def check() -> dict[str, dict[str, str]]:
    """target -> {package: "wheel" | "none" | "error: ..."}."""
    deps = runtime_closure()
    out: dict[str, dict[str, str]] = {t: {} for t in TARGETS}
    with tempfile.TemporaryDirectory() as dest, ThreadPoolExecutor(4) as pool:
        jobs = {
            (t, n): pool.submit(has_wheel, n, v, plats, dest)
            for t, plats in TARGETS.items()
            for n, v in deps.items()
        }
        for (t, n), job in jobs.items():
            out[t][n] = job.result()
    return out


def main(argv: list[str]) -> int:
    result = check()
    if "--json" in argv:
        print(json.dumps(result, indent=1))
        return 0
    deps = runtime_closure()
    for t, rows in result.items():
        for n, r in rows.items():
            print(f"{t:7} {n}=={deps[n]}: {r}")
    for t, rows in result.items():
        missing = [n for n, r in rows.items() if r == "none"]
        print(f"no wheel for {t}: {', '.join(missing) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
