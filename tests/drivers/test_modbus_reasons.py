"""Modbus faults carry a typed `Reason`; the reason code readings carry is the same plain string
as before, and the driver's code compares no reason string."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gatewayd.drivers.modbus.causes import cause
from gatewayd.drivers.modbus.pdu import ModbusFault, Reason, parse_read, read_request

MODBUS = Path(__file__).resolve().parents[2] / "drivers" / "modbus"

# The reason codes in stored records, metrics (faults.<code>) and the state document.
CODES = {
    "timeout",
    "disconnected",
    "crc",
    "short_reply",
    "wrong_unit",
    "wrong_function",
    "wrong_transaction",
    "bad_frame",
}


def test_each_reason_keeps_its_code_as_a_plain_string() -> None:
    kinds = [r for r in Reason if r is not Reason.EXCEPTION]
    assert {r.value for r in kinds} == CODES
    for r in kinds:
        f = ModbusFault(r, "detail")
        assert type(f.reason) is str and f.reason == r.value
        assert (f.kind, f.code, f.device_answered) == (r, None, False)
        assert str(f) == f"{r.value}: detail"


@pytest.mark.parametrize(
    ("code", "text"), [(2, "exception_02"), (6, "exception_06"), (139, "exception_139")]
)
def test_an_exception_response_keeps_exception_nn(code: int, text: str) -> None:
    request = read_request("holding", 0, 1)
    with pytest.raises(ModbusFault) as got:
        parse_read(request, bytes([request[0] | 0x80, code]))
    f = got.value
    assert (f.kind, f.code, f.reason, f.device_answered) == (Reason.EXCEPTION, code, text, True)
    assert type(f.reason) is str


def test_causes_read_the_kind() -> None:
    assert cause(ModbusFault.exception(2)) == "exception 02 illegal data address"
    assert cause(ModbusFault.exception(0x42)) == "exception 66 unknown exception"
    assert cause(ModbusFault(Reason.SHORT_REPLY)) == "short reply"
    assert cause(ModbusFault(Reason.DISCONNECTED)) == "disconnected"


def test_a_kind_and_a_code_go_together() -> None:
    with pytest.raises(ValueError):
        ModbusFault(Reason.EXCEPTION)
    with pytest.raises(ValueError):
        ModbusFault(Reason.TIMEOUT, code=2)


def _docstrings(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_bare_reason_string_in_the_modbus_driver() -> None:
    found = []
    for path in sorted(MODBUS.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in ("Reason", "ModbusFault"):
                skip |= {id(n) for n in ast.walk(node)}  # where the codes are written, once
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and (node.value in CODES or node.value.startswith("exception_"))
            ):
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == [], "use pdu.Reason (and ModbusFault.code for exceptions)"
