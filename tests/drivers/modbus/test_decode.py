"""Modbus decoding and merging, pure: every type and order against an independent encoder,
plans within the protocol's limits, writes' encoding and its errors."""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaway.drivers.modbus.decode import (
    MAX_BITS,
    MAX_REGISTERS,
    ReadSpec,
    crc16,
    encode,
    plan,
    text,
)

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
         "uint64": "Q", "float32": "f", "float64": "d"}  # fmt: skip


def registers_of(value: Any, vtype: str, byte_order: str, word_order: str) -> list[int]:
    """Independent of the code under test: pack big-endian (ABCD...), split in words,
    reverse the words for little word order, swap each word's bytes for little byte order."""
    raw = struct.pack(">" + CODES[vtype], value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def value_strategy(vtype: str) -> st.SearchStrategy[Any]:
    if vtype == "float32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if vtype == "float64":
        return st.floats(allow_nan=False, allow_infinity=False)
    bits = int(vtype.lstrip("uint"))
    if vtype.startswith("u"):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


ORDERS = st.sampled_from(["big", "little"])
read_case = st.sampled_from(sorted(CODES)).flatmap(
    lambda t: st.tuples(st.just(t), value_strategy(t), ORDERS, ORDERS)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(read_case, min_size=1, max_size=12), st.integers(0, 3))
def test_every_type_and_order_decodes_to_what_was_encoded(
    cases: list[tuple[str, Any, str, str]], gap: int
) -> None:
    reads, registers, expected = [], [], {}
    address = 100
    for i, (vtype, value, bo, wo) in enumerate(cases):
        regs = registers_of(value, vtype, bo, wo)
        reads.append(ReadSpec(name=f"v{i}", address=address, type=vtype,  # type: ignore[arg-type]
                              byte_order=bo, word_order=wo))  # type: ignore[arg-type]  # fmt: skip
        registers += regs + [0xDEAD] * gap
        address += len(regs) + gap
        expected[f"v{i}"] = value
    spans = plan(reads, max_gap=gap)
    assert len(spans) == 1 and spans[0].address == 100  # all merged: gaps within max_gap
    got = spans[0].decode(registers[: spans[0].count])
    for name, value in expected.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-6, abs=0) or got[name] == value
        else:
            assert got[name] == value, name
    # encode is the inverse of decode, for every type and order
    for i, (vtype, value, bo, wo) in enumerate(cases):
        assert encode(value, vtype, byte_order=bo, word_order=wo) == registers_of(
            value, vtype, bo, wo
        ), (i, vtype, bo, wo)


def test_the_four_orders_of_a_float32_by_their_names() -> None:
    # 123.456 as float32 is 0x42F6E979: AB=0x42F6 CD=0xE979
    cases = {
        ("big", "big"): [0x42F6, 0xE979],  # ABCD
        ("big", "little"): [0xE979, 0x42F6],  # CDAB
        ("little", "big"): [0xF642, 0x79E9],  # BADC
        ("little", "little"): [0x79E9, 0xF642],  # DCBA
    }
    for (bo, wo), regs in cases.items():
        (span,) = plan([ReadSpec(name="x", address=0, type="float32", byte_order=bo,  # type: ignore[arg-type]
                                 word_order=wo)])  # type: ignore[arg-type]  # fmt: skip
        assert span.decode(regs)["x"] == pytest.approx(123.456, rel=1e-6), (bo, wo)


def test_counts_lists_bools_strings_scale_and_non_finite_floats() -> None:
    reads = [
        ReadSpec(name="arr", address=0, type="int16", count=3),
        ReadSpec(name="flag", address=3, type="bool"),
        ReadSpec(name="label", address=4, type="string", count=3),
        ReadSpec(name="tenths", address=7, type="uint16", scale=0.1, offset=-40),
        ReadSpec(name="nan", address=8, type="float32"),
        ReadSpec(name="inf", address=10, type="float32"),
        ReadSpec(name="swapped", address=12, type="string", count=1, byte_order="little"),
    ]
    regs = [0xFFFF, 2, 3, 7, *struct.unpack(">3H", b"AB C\0\0"), 655,
            0x7FC0, 0, 0x7F80, 0, 0x4241]  # fmt: skip
    (span,) = plan(reads)
    got = span.decode(regs)
    assert got == {"arr": [-1, 2, 3], "flag": True, "label": "AB C", "tenths": pytest.approx(25.5),
                   "nan": None, "inf": None, "swapped": "AB"}  # fmt: skip
    assert text(b"ok  \0garbage") == "ok"


def test_non_finite_floats_become_null_in_a_span_of_plain_values() -> None:
    (span,) = plan([ReadSpec(name="a", address=0, type="float32"),
                    ReadSpec(name="n", address=2, type="uint16"),
                    ReadSpec(name="b", address=3, type="float32"),
                    ReadSpec(name="s", address=5, type="float32", scale=2.0),
                    ReadSpec(name="on", address=7, type="bool")])  # fmt: skip
    finite = [0x3FC0, 0, 7, 0xC000, 0, 0x3F80, 0, 2]
    assert span.decode(finite) == {"a": 1.5, "n": 7, "b": -2.0, "s": 2.0, "on": True}
    for bad in (0x7FC0, 0x7F80, 0xFF80):  # NaN, +inf, -inf in each float position
        for pos in (0, 3, 5):
            regs = list(finite)
            regs[pos] = bad
            got = span.decode(regs)
            name = {0: "a", 3: "b", 5: "s"}[pos]
            assert got[name] is None, (bad, pos)
            assert [k for k, v in got.items() if v is None] == [name]


def test_bits_decode_one_or_a_list() -> None:
    spans = plan([
        ReadSpec(name="a", address=10, table="coil", type="bool"),
        ReadSpec(name="b", address=11, table="coil", type="bool", count=3),
        ReadSpec(name="d", address=0, table="discrete", type="bool"),
    ])  # fmt: skip
    assert [(s.table, s.address, s.count) for s in spans] == [("coil", 10, 4), ("discrete", 0, 1)]
    assert spans[0].decode([True, False, True, True]) == {"a": True, "b": [False, True, True]}


def test_merging_respects_tables_gaps_overlaps_and_the_protocol_limits() -> None:
    def r(name: str, address: int, **kw: Any) -> ReadSpec:
        return ReadSpec(name=name, address=address, **kw)

    # adjacent reads of one table: one request; another table: another request
    spans = plan([r("a", 0), r("b", 1, type="float32"), r("c", 3), r("i", 3, table="input")])
    assert [(s.table, s.address, s.count, s.gaps) for s in spans] == [
        ("holding", 0, 4, 0), ("input", 3, 1, 0)
    ]  # fmt: skip
    # a gap of 5: merged with max_gap 5, not with 4
    assert len(plan([r("a", 0), r("b", 6)], max_gap=5)) == 1
    assert len(plan([r("a", 0), r("b", 6)], max_gap=4)) == 2
    # overlapping reads share registers: a float and its two halves
    (span,) = plan([r("f", 0, type="uint32"), r("hi", 0), r("lo", 1)])
    assert span.count == 2
    assert span.decode([0x0001, 0x0002]) == {"f": 65538, "hi": 1, "lo": 2}
    # 200 adjacent registers: two requests, 125 + 75
    many = [r(f"x{i}", i) for i in range(200)]
    assert [s.count for s in plan(many)] == [MAX_REGISTERS, 75]
    assert [s.count for s in plan(many, max_registers=80)] == [80, 80, 40]
    coils = [r(f"c{i}", i, table="coil", type="bool") for i in range(2500)]
    assert [s.count for s in plan(coils)] == [MAX_BITS, 500]
    # a split span reads its runs without the gaps
    (merged,) = plan([r("a", 0), r("b", 1), r("c", 5)], max_gap=8)
    assert merged.gaps == 3
    assert [(s.address, s.count) for s in merged.split()] == [(0, 2), (5, 1)]


def test_bad_reads_are_refused_with_the_reason() -> None:
    def conv(**kw: Any) -> ReadSpec:
        return msgspec.convert({"name": "x", "address": 0, **kw}, ReadSpec)

    cases = [
        ({"table": "coil", "type": "int16"}, "a coil holds bits: type must be bool"),
        ({"type": "float64", "count": 40}, "160 registers: more than one request can read (125)"),
        ({"address": 65535, "type": "uint32"}, "address 65535 + 2 runs past 65535"),
        ({"type": "int8"}, "Invalid enum value 'int8'"),
        ({"address": -1}, "Expected `int` >= 0"),
        ({"name": ""}, "Expected `str` of length >= 1"),
        ({"byte_order": "middle"}, "Invalid enum value 'middle'"),
        ({"adress": 3}, "Object contains unknown field `adress`"),
    ]
    for kw, why in cases:
        with pytest.raises(msgspec.ValidationError, match=re.escape(why)):
            conv(**kw)
    with pytest.raises(ValueError, match="duplicate read name 'x'"):
        plan([ReadSpec(name="x", address=0), ReadSpec(name="x", address=1)])


def test_encoding_refuses_values_that_do_not_fit() -> None:
    assert encode(-1, "int16") == [0xFFFF]
    assert encode(21.5, "int16", scale=0.1) == [215]
    assert encode(20.0, "uint16", scale=0.5, offset=10) == [20]
    assert encode([1, 2], "uint16", count=2) == [1, 2]
    assert encode("AB", "string", count=2) == [0x4142, 0]
    assert encode("AB", "string", count=1, byte_order="little") == [0x4241]
    assert encode(True, "bool") == [1]
    cases: list[tuple[Any, str, dict[str, Any], str]] = [
        (70000, "uint16", {}, "out of uint16 range"),
        (-1, "uint32", {}, "out of uint32 range"),
        ("12", "int16", {}, "expected a number, got the string '12'"),
        (True, "int16", {}, "expected a number, got a boolean"),
        (None, "float32", {}, "expected a number, got null"),
        (math.nan, "float32", {}, "not a finite number"),
        (1e39, "float32", {}, "out of float32 range"),
        ([1], "uint16", {"count": 2}, "expected a list of 2 values, got a list of 1"),
        ("toolong", "string", {"count": 2}, "7 bytes does not fit 2 registers"),
        ("€", "string", {"count": 2}, "outside Latin-1"),
        (5, "bool", {}, "expected true/false"),
    ]
    for value, vtype, kw, why in cases:
        with pytest.raises(ValueError, match=why):
            encode(value, vtype, **kw)


def test_crc16_is_modbus_crc() -> None:
    # read holding register 0, count 1, unit 1: the frame every Modbus manual shows
    frame = bytes.fromhex("010300000001")
    assert crc16(frame).to_bytes(2, "little") == bytes.fromhex("840a")
