"""The driver template, pip-installed into a fresh venv next to gatewayd, is a driver like the
built-in ones: `gatewayd schema` lists its options, `gatewayd check` validates them with place and
fix, its own test passes, and the daemon polls it into the buffer; no line of core config names it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from helpers import free_port, gateway_toml, wait_for, write_config

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "examples" / "driver-template"


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the template installed by pip; gatewayd and its dependencies come from
    the running environment through a .pth line (the venv itself installs nothing else)."""
    env = tmp_path_factory.mktemp("template-venv")
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # addsitedir, not a bare path: the editable install of gatewayd is itself a .pth hook.
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "gatewayd-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", str(TEMPLATE)],
        check=True,
        timeout=300,
    )
    return py


def _gatewayd(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=60
    )


def test_the_schema_lists_the_installed_template_driver(python: Path) -> None:
    res = _gatewayd(python, "schema")
    assert res.returncode == 0, res.stderr
    devices = json.loads(res.stdout)["properties"]["devices"]["items"]
    assert "template_counter" in devices["properties"]["driver"]["enum"]
    (then,) = (
        c["then"]
        for c in devices["allOf"]
        if c["if"]["properties"]["driver"]["const"] == "template_counter"
    )
    assert then["properties"]["step"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 1,
        "description": "added at every poll",
    }
    assert "factor" in then["properties"]["points"]["items"]["properties"]


def test_check_validates_the_template_options_with_place_and_fix(
    python: Path, tmp_path: Path
) -> None:
    sample = (TEMPLATE / "sample.toml").read_text()
    uplink = '[uplink]\nproject = "p"\nregion = "r"\nregistry = "g"\ndevice = "d"\n'
    good = write_config(tmp_path / "good.toml", uplink + '[uplink.auth]\nkind = "none"\n' + sample)
    res = _gatewayd(python, "check", str(good))
    assert res.returncode == 0, res.stderr
    for edit, expected in (
        (("step = 1 ", "step = 0 "), "devices[0].step: 0 is below 1; use at least 1"),
        (
            ('mode = "up"', 'mode = "upp"'),
            "devices[0].mode: 'upp' is not allowed; did you mean 'up'?",
        ),
        (
            ("factor = 1.0", "factr = 1.0"),
            "devices[0].points[0].factr: unknown key; did you mean 'factor'?",
        ),
        (
            ("start = 0 ", "start = 0\nmode2 = 1 "),
            "devices[0].mode2: unknown key; did you mean 'mode'?",
        ),
    ):
        bad = write_config(tmp_path / "bad.toml", good.read_text().replace(*edit))
        res = _gatewayd(python, "check", str(bad))
        assert res.returncode == 2, res.stdout
        assert expected in res.stderr, res.stderr


def test_the_template_package_passes_its_own_test(python: Path) -> None:
    res = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:]


def test_the_daemon_polls_the_template_driver_into_the_buffer(
    python: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    # No broker on the uplink port: readings stay in the buffer, where the test reads them.
    toml = gateway_toml(tmp_path, free_port(), free_port(), "")
    toml += '\n[[devices]]\nid = "c"\ndriver = "template_counter"\ninterval_ms = 100\nstep = 5\n'
    toml += '[[devices.points]]\nid = "n"\nfactor = 2.0\n'
    cfg = write_config(tmp_path / "gw.toml", toml)
    log = open(tmp_path / "gw.log", "ab")  # noqa: SIM115
    gw = subprocess.Popen(
        [python, "-m", "gatewayd", "run", "--config", str(cfg)], stdout=log, stderr=log
    )
    procs.append(gw)
    db = tmp_path / "buffer.sqlite"

    def stored() -> list[dict[str, object]]:
        if not db.exists():
            return []
        try:
            with sqlite3.connect(db, timeout=5) as c:
                rows = c.execute("SELECT body FROM records ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return []
        return [r for (b,) in rows for r in [json.loads(b)] if r.get("point") == "c/n"]

    wait_for(lambda: len(stored()) >= 3, 30, "three readings of the template driver")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, (tmp_path / "gw.log").read_text()[-3000:]
    values = [r["value"] for r in stored()]
    assert values[:3] == [10.0, 20.0, 30.0], values
    assert "gatewayd_driver_template" not in sys.modules
