"""The installed layout: every package folder is listed, and the wheel carries it; the 32-bit
Raspberry Pi OS install path (Debian's cryptography and cffi, wheels only for the rest) works."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = tool["package-dir"]  # installed name -> folder
    listed = set(tool["packages"])
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set(), "packages a non-editable install would leave out"
    assert listed - found == set(), "listed packages that do not exist"


def _debian_python_with(*modules: str) -> str:
    """Debian's /usr/bin/python3, if its own packages provide `modules` (else skip; CI: fail)."""
    import os

    import pytest
    from conftest import IN_CI

    py = "/usr/bin/python3"
    code = (
        "import importlib, sys; "
        f"mods = [importlib.import_module(m) for m in {list(modules)!r}]; "
        "sys.exit(any(not m.__file__.startswith('/usr/lib/python3/dist-packages/') for m in mods))"
    )
    if os.path.exists(py) and subprocess.run([py, "-c", code], capture_output=True).returncode == 0:
        return py
    msg = f"Debian's {', '.join(modules)} (apt-get install python3-cryptography python3-cffi)"
    if IN_CI:
        pytest.fail(f"{msg} missing; CI must install them", pytrace=False)
    pytest.skip(f"{msg} not installed")


def test_32_bit_install_path_builds_nothing_but_gatewayd(tmp_path: Path) -> None:
    """install.sh's way on armv6l/armv7l, run here: Debian's cryptography and cffi through
    --system-site-packages, wheels only for the rest, from a copy of the checkout."""
    py = _debian_python_with("cryptography", "cffi")
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run([py, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    r = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    built = [line for line in r.stdout.splitlines() if "Building wheel for" in line]
    assert all("gatewayd" in line for line in built), built
    check = (
        "import cffi, cryptography, jwt\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from gatewayd.uplink.device_jwt import mint_jwt\n"
        "key = ec.generate_private_key(ec.SECP256R1())\n"
        "token = mint_jwt(key, 'ES256', 'aud-1', 60)\n"
        "claims = jwt.decode(token, key.public_key(), algorithms=['ES256'], audience='aud-1')\n"
        "print(cryptography.__file__, cffi.__file__, claims['aud'])\n"
    )
    # cwd: not the checkout, whose gatewayd/ folder would shadow the installed package.
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    crypto_file, cffi_file, aud = out.stdout.split()
    assert crypto_file.startswith("/usr/lib/python3/dist-packages/")
    assert cffi_file.startswith("/usr/lib/python3/dist-packages/")
    assert aud == "aud-1"


def test_armv7l_wheels_exist_for_all_but_what_debian_supplies() -> None:
    """pip download --only-binary for 32-bit Pi OS; what has no wheel must come from Debian."""
    import json
    import sys

    import pytest
    from conftest import IN_CI

    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "system" / "armv7l_wheels.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, dict[str, str]] = json.loads(r.stdout)
    errors = {
        f"{t}/{n}": v
        for t, rows in result.items()
        for n, v in rows.items()
        if v.startswith("error")
    }
    if errors:
        msg = f"PyPI not reachable: {errors}"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    for target, rows in result.items():
        missing = sorted(n for n, v in rows.items() if v == "none")
        print(f"\nno wheel on PyPI for {target}: {', '.join(missing) or 'none'}")
        # install.sh takes these from Debian on 32-bit ARM (python3-cryptography, python3-cffi).
        assert set(missing) <= {"cffi", "cryptography"}, (target, missing)
