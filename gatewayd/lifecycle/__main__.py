"""`python -m gatewayd.lifecycle --config FILE`: the start check (systemd's ExecStartPre).

Run from the `previous` release, so it is the code that installed `current` that counts the
starts of an unconfirmed `current` and takes it back after too many (see `marker`). Never fails:
a start check that cannot decide must not keep the gateway down.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gatewayd.lifecycle")
    p.add_argument("--config", "-c", default="/etc/gatewayd/gateway.toml")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="level=%(levelname)s event=%(message)s")
    try:
        from gatewayd.config import load_file

        from .marker import UpdateFiles, check_start
        from .releases import Releases

        cfg = load_file(args.config)
        state = Path(os.environ.get("STATE_DIRECTORY") or cfg.state_dir)
        check_start(
            UpdateFiles(state), Releases(Path(cfg.update.releases_dir)), cfg.update.max_starts, True
        )
    except Exception as exc:
        print(f"gatewayd start check: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
