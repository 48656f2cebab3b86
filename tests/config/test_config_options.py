"""Drivers own their options: config reads a device table through its driver's OptionSet."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gatewayd.config import ConfigError, load
from gatewayd.config.options import table_lookup
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import OptionSet, device_options, option, options_of

HEAD = '[uplink.auth]\nkind = "none"\n'


@dataclass(frozen=True, slots=True)
class Knob:
    colour: str = option("red", doc="the knob's colour")
    turns: int = option(3, lo=1, hi=10)


def test_an_injected_lookup_declares_a_drivers_options() -> None:
    lookup = table_lookup({"knob": OptionSet(device=Knob)})
    cfg = load(HEAD + '[[devices]]\nid = "k"\ndriver = "knob"\nturns = 7\n', drivers=lookup)
    assert device_options(cfg.devices[0], Knob) == Knob(turns=7)
    with pytest.raises(ConfigError) as err:
        load(HEAD + '[[devices]]\nid = "k"\ndriver = "knob"\nturns = 11\n', drivers=lookup)
    assert str(err.value) == "devices[0].turns: 11 is above 10; use at most 10"
    with pytest.raises(ConfigError) as err:
        load(HEAD + '[[devices]]\nid = "k"\ndriver = "knob"\nport = 502\n', drivers=lookup)
    assert str(err.value).startswith("devices[0].port: unknown key")


def test_modbus_keys_belong_to_the_modbus_drivers_only() -> None:
    """A Modbus key on a serial_line device was silently accepted when core config owned them."""
    text = HEAD + '[[devices]]\nid = "g"\ndriver = "serial_line"\nserial_port = "/dev/x"\n'
    assert load(text).devices[0].options.serial_port == "/dev/x"
    with pytest.raises(ConfigError) as err:
        load(text + "max_gap = 4\n")
    assert str(err.value).startswith("devices[0].max_gap: unknown key")


def test_an_unknown_driver_is_a_config_error_naming_the_place() -> None:
    with pytest.raises(ConfigError) as err:
        load(HEAD + '[[devices]]\nid = "x"\ndriver = "modbus_tpc"\n')
    assert str(err.value).startswith(
        "devices[0].driver: unknown driver 'modbus_tpc'; did you mean 'modbus_tcp'?"
    )
    with pytest.raises(ConfigError) as err:
        load(HEAD + '[[devices]]\nid = "x"\ndriver = "profibus"\n')
    assert str(err.value).startswith("devices[0].driver: unknown driver 'profibus'; use one of")



@pytest.mark.parametrize("name", ["modbus_tpc", "profibus"])
def test_config_and_the_driver_registry_report_an_unknown_driver_alike(name: str) -> None:
    """A push or `run` (the registry builds drivers) and `check` (config's option lookup) once
    said different things about the same typo; one function reports it now."""
    from gatewayd.config.check import parse_all
    from gatewayd.drivers import load_driver

    with pytest.raises(ConfigError) as by_config:
        load(HEAD + f'[[devices]]\nid = "x"\ndriver = "{name}"\n')
    with pytest.raises(ConfigError) as by_registry:
        load_driver(name, "devices[0].driver")
    assert str(by_registry.value) == str(by_config.value)
    doc = {"uplink": {"auth": {"kind": "none"}}, "devices": [{"id": "x", "driver": name}]}
    assert [str(e) for e in parse_all(doc).errors] == [str(by_config.value)]


def test_check_and_load_read_the_gateway_table_alike() -> None:
    from gatewayd.config.check import parse_all

    doc = {"uplink": {"auth": {"kind": "none"}}, "gateway": {"id": "g", "labels": {"Site": "x"}}}
    with pytest.raises(ConfigError) as err:
        load(HEAD + '[gateway]\nid = "g"\nlabels = { Site = "x" }\n')
    assert err.value.place == "gateway.labels.Site"
    assert [e.place for e in parse_all(doc).errors] == ["gateway.labels.Site"]

def test_defaults_and_ranges_are_read_from_the_dataclass() -> None:
    port = {o.name: o for o in options_of(ModbusTcpOptions)}["port"]
    assert (port.kind, port.default, port.lo, port.hi) == ("integer", 502, 1, 65535)
    assert (
        load(HEAD + '[[devices]]\nid = "p"\ndriver = "modbus_tcp"\n').devices[0].options
        == ModbusTcpOptions()
    )


@dataclass(frozen=True, slots=True)
class Ids:
    # The shape a list of unit ids takes (e.g. a Modbus `accept_unit_ids`).
    ids: tuple[int, ...] = option((), lo=1, hi=247, doc="accepted ids")


def test_an_integer_array_option_bounds_each_item_and_names_its_index() -> None:
    lookup = table_lookup({"ids": OptionSet(device=Ids)})
    dev = '[[devices]]\nid = "k"\ndriver = "ids"\n'
    assert device_options(load(HEAD + dev, drivers=lookup).devices[0], Ids) == Ids()
    cfg = load(HEAD + dev + "ids = [1, 247]\n", drivers=lookup)
    assert device_options(cfg.devices[0], Ids).ids == (1, 247)
    with pytest.raises(ConfigError) as err:
        load(HEAD + dev + "ids = [1, 248]\n", drivers=lookup)
    assert str(err.value) == "devices[0].ids[1]: 248 is above 247; use at most 247"
    with pytest.raises(ConfigError) as err:
        load(HEAD + dev + 'ids = [1, "2"]\n', drivers=lookup)
    assert (
        str(err.value) == "devices[0].ids[1]: expected an integer, got a string; write an integer"
    )
