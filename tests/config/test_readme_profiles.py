"""Every profile has a short, complete config example in the README, and each one loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gatewayd.config import ConfigError, load_document
from gatewayd.config.profiles import PROFILES

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def _examples() -> dict[str, str]:
    out: dict[str, str] = {}
    for block in re.findall(r"```toml\n(.*?)```", README.read_text(), re.S):
        m = re.search(r'^profile = "([^"]+)"', block, re.M)
        if m:
            out.setdefault(m.group(1), block)
    return out


def test_every_profile_but_the_default_has_a_readme_example() -> None:
    named = {p for p in PROFILES if p and p != "cloud-iot-core"}  # the example file is that one
    missing = named - set(_examples())
    assert not missing, f"README has no ```toml example with profile = {sorted(missing)}"


def test_each_readme_example_loads_under_its_profile() -> None:
    for name, text in _examples().items():
        try:
            cfg = load_document(tomllib.loads(text))
        except ConfigError as e:
            raise AssertionError(f"README's {name} example: {e}") from e
        assert cfg.uplink.profile == name
        assert cfg.devices, f"the {name} example names a device"
