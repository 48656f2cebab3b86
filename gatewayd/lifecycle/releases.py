"""The releases directory: one venv per version, `current` and `previous` links switched by rename.

Invariants: a release directory is usable only once `.complete` exists in it (written after the
venv is built and its `gatewayd version` answered); a link is replaced by creating it under a
temporary name and renaming it over the old one, so a reader sees the old or the new target,
never none; neither link is ever pointed at an incomplete release; `prune` never removes the
release a link names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from gatewayd.logs import quote

log = logging.getLogger("gatewayd.lifecycle")

COMPLETE = ".complete"
LINKS = ("current", "previous")


class BuildFailed(Exception):
    """The new venv could not be built; the reason holds the tool's last words."""


class Releases:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, version: str) -> Path:
        return self.root / version

    def link(self, name: str) -> str | None:
        """The release a link names (its directory name), or None."""
        try:
            return os.readlink(self.root / name).rstrip("/").rsplit("/", 1)[-1]
        except OSError:
            return None

    def complete(self, version: str) -> str | None:
        """The manifest digest a complete release was built from; None if it is not complete."""
        try:
            return (self.path(version) / COMPLETE).read_text().strip() or "?"
        except OSError:
            return None

    def set_link(self, name: str, version: str) -> None:
        assert self.complete(version) is not None, f"{version} is not a complete release"
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(version, tmp)  # relative: the tree may be staged under another root
        os.replace(tmp, self.root / name)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def runs_this_process(self) -> bool:
        """Whether this interpreter is the venv `current` names (else an update has nowhere to
        go back to: a development checkout, or a hand-made venv)."""
        cur = self.root / "current"
        return cur.exists() and Path(sys.prefix).resolve() == cur.resolve()

    def clean(self) -> None:
        """Remove incomplete releases (a build that was killed) and stray temporary links."""
        if not self.root.is_dir():
            return
        keep = {self.link(n) for n in LINKS}
        for p in self.root.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
            elif (
                p.is_dir()
                and not p.is_symlink()
                and p.name not in keep
                and not (p / COMPLETE).exists()
            ):
                log.warning("release_removed version=%s reason=incomplete", quote(p.name))
                shutil.rmtree(p, ignore_errors=True)

    def prune(self) -> None:
        """Keep only the releases the links name."""
        keep = {self.link(n) for n in LINKS}
        for p in self.root.iterdir():
            if p.is_dir() and not p.is_symlink() and p.name not in keep:
                log.info("release_removed version=%s reason=superseded", quote(p.name))
                shutil.rmtree(p, ignore_errors=True)

    async def build(
        self,
        version: str,
        wheels: Path,
        digest: str,
        checkpoint: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """A venv for `version` from the wheels in `wheels` only (no index, no network)."""
        target = self.path(version)
        if target.exists():
            shutil.rmtree(target)
        self.root.mkdir(parents=True, exist_ok=True)
        # Same interpreter and the same view of the system's packages as the running release
        # (32-bit ARM takes Debian's cryptography: --system-site-packages, see install.sh).
        venv = [sys.executable, "-m", "venv"]
        if _system_site_packages():
            venv.append("--system-site-packages")
        await _run([*venv, str(target)], "python -m venv")
        if checkpoint is not None:
            await checkpoint("build")
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--isolated", "--quiet"]
        pip += ["--no-index", "--find-links", str(wheels), "--no-cache-dir"]
        pip += ["--disable-pip-version-check", f"gatewayd=={version}"]
        await _run(pip, "pip install")
        out = await _run([str(target / "bin" / "gatewayd"), "version"], "gatewayd version")
        if not out.startswith(f"gatewayd {version} "):
            raise BuildFailed(f"the new venv's gatewayd says {out.strip()!r}, not {version}")
        (target / COMPLETE).write_text(digest + "\n")


def _system_site_packages() -> bool:
    try:
        cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return "include-system-site-packages = true" in cfg


async def _run(argv: list[str], what: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])[:400]
        raise BuildFailed(f"{what} exited with {proc.returncode}: {tail}")
    return text
