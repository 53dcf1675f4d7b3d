"""Modbus values <-> registers: pure, no I/O, no pymodbus.

A *read* (``ReadSpec``) names a value at a table address. ``plan()`` merges the reads of
one unit into as few requests (``Span``) as the protocol and the device allow; each span
carries a precompiled decoder that turns the registers of its reply into
``{name: value}`` with one ``struct`` unpack per byte/word-order combination used.

Byte and word order: a 32-bit value in registers ``r0, r1`` is the bytes ``A B C D``
(``r0 = AB``, ``r1 = CD``) in the usual big/big order. The four orders are one unpack each:
the reply's registers packed big-endian (``AB CD``) or byte-swapped (``BA DC``), read with
``>`` or ``<``:

=========  =========  ======================  =================
byte       word       bytes                   unpack
=========  =========  ======================  =================
big        big        ABCD                    ``>`` on AB CD
little     little     DCBA                    ``<`` on AB CD
big        little     CDAB                    ``<`` on BA DC
little     big        BADC                    ``>`` on BA DC
=========  =========  ======================  =================
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool",
    "string",
]  # fmt: skip
Order = Literal["big", "little"]

#: registers per value, struct code
TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, "h"),
    "uint16": (1, "H"),
    "int32": (2, "i"),
    "uint32": (2, "I"),
    "int64": (4, "q"),
    "uint64": (4, "Q"),
    "float32": (2, "f"),
    "float64": (4, "d"),
    "bool": (1, "H"),  # in a register table: the register is non-zero
}
BIT_TABLES = frozenset({"coil", "discrete"})
#: the protocol's limits per request (Modbus application protocol 1.1b3, 6.1-6.4)
MAX_REGISTERS = 125
MAX_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968

INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


class ReadSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One value to read: where it is, how it is laid out, how to scale it."""

    name: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=64, description="key of the value in the payload"
        ),
    ]
    address: Annotated[
        int,
        msgspec.Meta(ge=0, le=65535, description="first register or bit, 0-based (the PDU "
                     "address: register 40001 is holding address 0)"),
    ]
    table: Annotated[
        Table,
        msgspec.Meta(description="holding (fc 3), input (fc 4), coil (fc 1) or discrete "
                     "(fc 2)"),
    ] = "holding"
    type: Annotated[
        ValueType,
        msgspec.Meta(description="value type; coil and discrete take bool only; bool in a "
                     "register table is true when the register is non-zero"),
    ] = "uint16"
    count: Annotated[
        int,
        msgspec.Meta(ge=1, le=2000, description="values to read (more than 1: a list); for "
                     "string, the registers holding it (2 characters each)"),
    ] = 1
    byte_order: Annotated[
        Order, msgspec.Meta(description="byte order within each register (big: Modbus)")
    ] = "big"
    word_order: Annotated[
        Order,
        msgspec.Meta(description="register order of 32/64-bit values (big: most "
                     "significant register first)"),
    ] = "big"
    scale: Annotated[
        float,
        msgspec.Meta(description="numbers are multiplied by this (then offset is added)"),
    ] = 1.0
    offset: Annotated[float, msgspec.Meta(description="added to numbers after scale")] = 0.0

    def __post_init__(self) -> None:
        check_layout(self.table, self.type, self.count, self.address)

    @property
    def size(self) -> int:
        """Registers (or bits) this read covers."""
        return width(self.table, self.type, self.count)


def width(table: str, vtype: str, count: int) -> int:
    """Registers (register tables) or bits (coil, discrete) covered by ``count`` values."""
    if table in BIT_TABLES or vtype == "string":
        return count
    return TYPES[vtype][0] * count


def check_layout(table: str, vtype: str, count: int, address: int) -> None:
    """``ValueError`` for a type the table cannot hold or a read past the address space."""
    if table in BIT_TABLES and vtype != "bool":
        raise ValueError(f"a {table} holds bits: type must be bool, not {vtype}")
    size = width(table, vtype, count)
    limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
    if size > limit:
        raise ValueError(
            f"{count} x {vtype} is {size} {'bits' if table in BIT_TABLES else 'registers'}: "
            f"more than one request can read ({limit})"
        )
    if address + size > 65536:
        raise ValueError(f"address {address} + {size} runs past 65535")


# ---------------------------------------------------------------------------------------
# Plans: reads merged into requests
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Span:
    """One request: ``count`` registers/bits of ``table`` from ``address``, decoded into
    named values by ``decode(reply)``. ``gaps``: registers read only to merge requests."""

    table: str
    address: int
    count: int
    reads: tuple[ReadSpec, ...]
    gaps: int
    decode: Callable[[Sequence[int] | Sequence[bool]], dict[str, Any]]

    def split(self) -> list[Span]:
        """This span without its gaps: one span per run of adjacent reads."""
        return plan(self.reads, max_gap=0, max_registers=self.count, max_bits=self.count)


def plan(
    reads: Sequence[ReadSpec],
    *,
    max_gap: int = 0,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[Span]:
    """Merge ``reads`` into requests: per table, sorted by address, a read joins the
    current request when the registers (or bits) between them are at most ``max_gap`` and
    the request stays within ``max_registers`` (``max_bits``). Overlapping reads share
    registers. ``ValueError`` for duplicate names."""
    seen: set[str] = set()
    for r in reads:
        if r.name in seen:
            raise ValueError(f"duplicate read name {r.name!r}")
        seen.add(r.name)
    spans: list[Span] = []
    order = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
    by_table = sorted(reads, key=lambda r: (order[r.table], r.address, -r.size))
    group: list[ReadSpec] = []
    start = end = 0  # current group covers [start, end)
    limit = 0
    gaps = 0
    for r in by_table:
        limit = max_bits if r.table in BIT_TABLES else max_registers
        if r.size > limit:
            raise ValueError(f"read {r.name!r} covers {r.size}, more than one request ({limit})")
        if group and group[0].table == r.table:
            gap = r.address - end
            new_end = max(end, r.address + r.size)
            if gap <= max_gap and new_end - start <= limit:
                gaps += max(gap, 0)
                group.append(r)
                end = new_end
                continue
        if group:
            spans.append(_span(group, start, end, gaps))
        group, start, end, gaps = [r], r.address, r.address + r.size, 0
    if group:
        spans.append(_span(group, start, end, gaps))
    return spans


def _span(reads: list[ReadSpec], start: int, end: int, gaps: int) -> Span:
    table = reads[0].table
    decode = _bit_decoder(reads, start) if table in BIT_TABLES else _reg_decoder(reads, start)
    return Span(table, start, end - start, tuple(reads), gaps, decode)


def _bit_decoder(
    reads: list[ReadSpec], start: int
) -> Callable[[Sequence[int] | Sequence[bool]], dict[str, Any]]:
    items = [(r.name, r.address - start, r.count) for r in reads]

    def decode(bits: Sequence[int] | Sequence[bool]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, off, n in items:
            out[name] = bool(bits[off]) if n == 1 else [bool(b) for b in bits[off : off + n]]
        return out

    return decode


#: (buffer, endianness) of each (byte_order, word_order); buffer 0: registers big-endian,
#: 1: registers byte-swapped
_LAYOUT = {
    ("big", "big"): (0, ">"),
    ("little", "little"): (0, "<"),
    ("big", "little"): (1, "<"),
    ("little", "big"): (1, ">"),
}


def _reg_decoder(
    reads: list[ReadSpec], start: int
) -> Callable[[Sequence[int] | Sequence[bool]], dict[str, Any]]:
    """One precompiled ``struct.Struct`` per (buffer, endianness) used by the reads: the
    values of the whole span in one unpack each, skipped bytes as pad (``x``)."""
    n_regs = max(r.address + r.size for r in reads) - start
    pack_be = struct.Struct(f">{n_regs}H").pack
    pack_le = struct.Struct(f"<{n_regs}H").pack
    # per layout: [(byte offset, struct code, read)] -> one format with pads
    layouts: dict[tuple[int, str], list[tuple[int, str, ReadSpec]]] = {}
    for r in reads:
        key: tuple[int, str]
        if r.type == "string":
            key = (0, ">") if r.byte_order == "big" else (1, ">")
            code = f"{2 * r.count}s"
        else:
            regs, c = TYPES[r.type]
            word = r.word_order if regs > 1 else r.byte_order
            key = _LAYOUT[(r.byte_order, word)]
            code = f"{r.count}{c}" if r.count > 1 else c
        layouts.setdefault(key, []).append((2 * (r.address - start), code, r))
    # each unpack yields values in read order; ``slots`` maps them back to names
    unpackers: list[tuple[int, Callable[[bytes], tuple[Any, ...]], list[ReadSpec]]] = []
    for (buf, endian), items in layouts.items():
        items.sort(key=lambda t: t[0])
        fmt = [endian]
        pos = 0
        order: list[ReadSpec] = []
        for off, code, r in items:
            if off < pos:  # overlapping reads: this one gets its own unpack
                alone = struct.Struct(f"{endian}{off}x{code}" if off else f"{endian}{code}")
                unpackers.append((buf, alone.unpack_from, [r]))
                continue
            if off > pos:
                fmt.append(f"{off - pos}x")
            fmt.append(code)
            pos = off + struct.calcsize(f"{endian}{code}")
            order.append(r)
        if order:
            s = struct.Struct("".join(fmt))
            unpackers.append((buf, s.unpack_from, order))
    # post-processing, only for the reads that need it
    flat: list[ReadSpec] = []
    plan_: list[tuple[int, Callable[[bytes], tuple[Any, ...]], int, int]] = []
    for buf, unpack, order in unpackers:
        first = len(flat)
        n_values = sum(1 if r.type == "string" else r.count for r in order)
        flat.extend(order)
        plan_.append((buf, unpack, first, n_values))
    fixes = _fixers(flat)
    names = [r.name for r in flat]
    simple = all(r.count == 1 and r.type != "string" for r in flat)
    needs_le = any(buf == 1 for buf, *_ in plan_)
    one = plan_[0] if len(plan_) == 1 and simple else None

    if one is not None and one[0] == 0:
        # the usual span: one unpack; plain floats checked for NaN/inf by one sum (a
        # non-finite value makes it non-finite), value by value only when it is not
        unpack0 = one[1]
        float_pos = [i for i, r in enumerate(flat) if r.type.startswith("float")
                     and r.scale == 1.0 and r.offset == 0.0]  # fmt: skip
        slow = [f for f, r in zip(fixes, _fixed(flat), strict=True) if r not in float_pos]
        has_float = bool(float_pos)

        def decode_fast(regs: Sequence[int] | Sequence[bool]) -> dict[str, Any]:
            vals = unpack0(pack_be(*regs))
            if has_float:
                total = sum(vals)
                if total - total != 0.0:
                    fixed = list(vals)
                    for i in float_pos:
                        fixed[i] = finite(fixed[i])
                    vals = tuple(fixed)
            out = dict(zip(names, vals, strict=False))  # same length by construction
            for fix in slow:
                fix(out)
            return out

        return decode_fast

    def decode(regs: Sequence[int] | Sequence[bool]) -> dict[str, Any]:
        bufs = (pack_be(*regs), pack_le(*regs) if needs_le else b"")
        values: list[Any] = []
        for buf, unpack, _first, _n in plan_:
            values.extend(unpack(bufs[buf]))
        out: dict[str, Any] = {}
        i = 0
        for r in flat:
            if r.type == "string" or r.count == 1:
                out[r.name] = values[i]
                i += 1
            else:
                out[r.name] = values[i : i + r.count]
                i += r.count
        for fix in fixes:
            fix(out)
        return out

    return decode


def _fixed(reads: list[ReadSpec]) -> list[int]:
    """Positions in ``reads`` of the reads ``_fixers`` returns a fix for, in its order."""
    return [
        i for i, r in enumerate(reads)
        if r.type in ("bool", "string") or r.scale != 1.0 or r.offset != 0.0
        or r.type.startswith("float")
    ]  # fmt: skip


def _fixers(reads: list[ReadSpec]) -> list[Callable[[dict[str, Any]], None]]:
    """In-place fixes of decoded values: bool, text, scale/offset, non-finite floats."""
    out: list[Callable[[dict[str, Any]], None]] = []
    for r in reads:
        name = r.name
        if r.type == "bool":
            out.append(_fix_bool(name))
        elif r.type == "string":
            out.append(_fix_text(name))
        elif r.scale != 1.0 or r.offset != 0.0:
            out.append(_fix_scale(name, r.scale, r.offset))
        elif r.type.startswith("float"):
            out.append(_fix_float(name))
    return out


def _fix_bool(name: str) -> Callable[[dict[str, Any]], None]:
    def fix(d: dict[str, Any]) -> None:
        v = d[name]
        d[name] = [x != 0 for x in v] if type(v) is list else v != 0

    return fix


def _fix_text(name: str) -> Callable[[dict[str, Any]], None]:
    def fix(d: dict[str, Any]) -> None:
        d[name] = text(d[name])

    return fix


def _fix_scale(name: str, scale: float, offset: float) -> Callable[[dict[str, Any]], None]:
    def fix(d: dict[str, Any]) -> None:
        v = d[name]
        if type(v) is list:
            d[name] = [finite(x * scale + offset) for x in v]
        else:
            d[name] = finite(v * scale + offset)

    return fix


def _fix_float(name: str) -> Callable[[dict[str, Any]], None]:
    def fix(d: dict[str, Any]) -> None:
        v = d[name]
        if type(v) is list:
            d[name] = [finite(x) for x in v]
        elif v - v != 0.0:  # NaN or +-inf: not JSON
            d[name] = None

    return fix


def finite(x: float) -> float | None:
    """``x``, or None for NaN and +-inf (a meter's "no value" is often NaN; JSON has none)."""
    return x if x - x == 0.0 else None


def text(raw: bytes) -> str:
    """A register string: up to the first NUL, trailing spaces dropped, Latin-1 (every
    byte decodes; devices are not consistent about ASCII)."""
    return raw.split(b"\0", 1)[0].rstrip(b" ").decode("latin-1")


# ---------------------------------------------------------------------------------------
# Encoding (writes)
# ---------------------------------------------------------------------------------------
def encode(
    value: Any,
    vtype: str,
    *,
    count: int = 1,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """Registers for ``value`` (a list of ``count`` values when count > 1; a str for
    string, padded with NULs to ``count`` registers). ``ValueError`` naming what is wrong
    for a value of the wrong type or out of range."""
    if vtype == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        raw = value.encode("latin-1", errors="strict") if value.isascii() else None
        if raw is None:
            try:
                raw = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("string has characters outside Latin-1") from None
        if len(raw) > 2 * count:
            raise ValueError(f"string of {len(raw)} bytes does not fit {count} registers")
        raw = raw.ljust(2 * count, b"\0")
        regs = list(struct.unpack(f">{count}H", raw))
        return regs if byte_order == "big" else [_swap(r) for r in regs]
    values = value if count > 1 else [value]
    if count > 1 and (not isinstance(value, list) or len(value) != count):
        raise ValueError(f"expected a list of {count} values, got {_kind(value)}")
    n_regs, code = TYPES[vtype]
    out: list[int] = []
    for v in values:
        raw_v = _raw(v, vtype, scale, offset)
        word = word_order if n_regs > 1 else byte_order
        buf, endian = _LAYOUT[(byte_order, word)]
        packed = struct.pack(f"{endian}{code}", raw_v)
        regs = list(struct.unpack(f">{n_regs}H" if buf == 0 else f"<{n_regs}H", packed))
        out.extend(regs)
    return out


def _raw(v: Any, vtype: str, scale: float, offset: float) -> int | float:
    if vtype == "bool":
        if isinstance(v, bool) or v in (0, 1):
            return int(bool(v))
        raise ValueError(f"expected true/false, got {_kind(v)}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {_kind(v)}")
    x = (v - offset) / scale if (scale != 1.0 or offset != 0.0) else v
    if x - x != 0.0:
        raise ValueError(f"{v!r} is not a finite number")
    if vtype.startswith("float"):
        if vtype == "float32" and abs(x) > 3.4028234663852886e38:
            raise ValueError(f"{v!r} is out of float32 range")
        return float(x)
    if isinstance(x, float):
        if not x.is_integer():
            x = round(x)
        x = int(x)
    lo, hi = INT_RANGES[vtype]
    if not lo <= x <= hi:
        raise ValueError(f"{v!r} is out of {vtype} range ({lo}..{hi})")
    return x


def _swap(r: int) -> int:
    return ((r & 0xFF) << 8) | (r >> 8)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (an RTU frame carries it low byte first)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc
