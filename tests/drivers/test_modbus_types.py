"""The one table of Modbus data types serves config validation and the decoder alike."""

from __future__ import annotations

from typing import get_args

import pytest

from gatewayd.config import ConfigError, PointConfig, load
from gatewayd.config.model import DataType
from gatewayd.drivers.modbus import decode_point, encode_point
from gatewayd.drivers.modbus.types import ORDERS, TYPES, register_count
from gatewayd_sim.modbus import to_words

DEVICE = """
[uplink.auth]
kind = "none"
[[devices]]
id = "d"
driver = "modbus_tcp"
[[devices.points]]
id = "p"
table = "holding"
address = 0
type = "{dtype}"
order = "{order}"
length = {length}
bit = 0
"""

SAMPLE = {"int16": -2, "uint16": 0x1234, "int32": -70000, "uint32": 0x12345678}
SAMPLE |= {"int64": -(2**40), "uint64": 2**63 + 5, "float32": 3.25, "float64": -1234.5678}


def test_every_data_type_has_one_row() -> None:
    assert set(TYPES) == set(get_args(DataType))


@pytest.mark.parametrize("dtype", sorted(SAMPLE))
def test_decoder_reads_as_many_registers_as_the_table_says(dtype: DataType) -> None:
    p = PointConfig(id="x", table="holding", type=dtype)
    words = encode_point(p, SAMPLE[dtype])
    assert len(words) == register_count(p) == TYPES[dtype].registers
    # ... and an independent encoder (the simulator's) agrees on those registers
    assert words == to_words(SAMPLE[dtype], dtype)
    assert decode_point(p, words) == SAMPLE[dtype]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_config_accepts_exactly_the_orders_the_table_allows(dtype: DataType, order: str) -> None:
    toml = DEVICE.format(dtype=dtype, order=order, length=2 if dtype == "string" else 0)
    if dtype != "bool":
        toml = toml.replace("bit = 0\n", "")
    if order in TYPES[dtype].orders:
        assert load(toml).devices[0].points[0].order == order
        return
    with pytest.raises(ConfigError) as err:
        load(toml)
    assert err.value.place == "devices[0].points[0].order"
    assert f'type = "{dtype}"' in err.value.problem


def test_a_string_spans_its_length() -> None:
    p = PointConfig(id="s", table="input", type="string", length=7)
    assert register_count(p) == 7 and TYPES["string"].registers == 0
    assert register_count(PointConfig(id="c", table="coil", type="bool")) == 1
