"""The operator's tool: a signed `update` command for a release's wheels.

    python -m gatewayd.lifecycle.release --version 0.2.0 --key release.key \\
        --url https://ops.example/releases/0.2.0 wheelhouse/*.whl > update.json
    python -m gatewayd_sim cloud command "$(cat update.json)" --to gw1 ...   # or any MQTT client

The wheels are gatewayd's and every dependency's (`pip wheel -w wheelhouse .`); serve them at
--url, or give --mqtt and publish each file's bytes on
`<commands>/update/<version>/<index>/<offset>` in manifest order (sorted by file name).
--key is the private half of [update] release_key (Ed25519 or P-256 PEM); it is read here only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import BUFFER_FORMAT
from .verify import make_manifest, sign


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gatewayd.lifecycle.release")
    p.add_argument("--version", required=True)
    p.add_argument("--key", required=True, type=Path, help="the release key (private PEM)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="where the gateway fetches the files (the folder)")
    where.add_argument("--mqtt", action="store_true", help="the files follow as MQTT chunks")
    p.add_argument("--id", default=None, help="the command id (default: update-<version>)")
    p.add_argument("--buffer-format", type=int, default=BUFFER_FORMAT)
    p.add_argument("wheels", nargs="+", type=Path)
    a = p.parse_args(argv)
    manifest = make_manifest(a.version, a.wheels, a.buffer_format)
    try:
        signature = sign(a.key.read_bytes(), manifest)
    except (OSError, ValueError) as exc:
        print(f"error: {a.key}: {exc}", file=sys.stderr)
        return 2
    source = {"source": "mqtt"} if a.mqtt else {"url": a.url}
    cmd = {"id": a.id or f"update-{a.version}", "command": "update", "version": a.version,
           "manifest": manifest, "signature": signature, **source}  # fmt: skip
    print(json.dumps(cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
