"""The template driver against gatewayd's own config loader: what a driver package tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gatewayd_driver_template import CounterDriver

from gatewayd.config import ConfigError, load
from gatewayd.drivers import poll_groups

SAMPLE = (Path(__file__).parent.parent / "sample.toml").read_text()
HEAD = '[uplink.auth]\nkind = "none"\n'


def test_sample_loads_and_counts() -> None:
    (dev,) = load(HEAD + SAMPLE).devices
    drv = CounterDriver(dev)
    (group,) = poll_groups(dev)
    values = [asyncio.run(drv.poll(group))[0].value for _ in range(3)]
    assert values == [1.0, 2.0, 3.0]


def test_a_bad_option_names_the_place_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load(HEAD + SAMPLE.replace("step = 1 ", "step = 0 "))
    assert str(err.value) == "devices[0].step: 0 is below 1; use at least 1"
