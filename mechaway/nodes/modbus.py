"""Modbus nodes: ``ModbusReadNode`` (poll on an interval or per message) and
``ModbusWriteNode``, over a shared ``[modbus.NAME]`` connection (``ModbusDriver``).

Failures (no reply, exception replies, CRC errors, no link, a value that cannot be
written) never raise through the flow: each is counted in the node's status, logged once
per burst, and sent to the node's ``error`` port as ``{..., error: {type, kind, message,
connection, unit[, code]}}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from mechaway.drivers.modbus import profiles
from mechaway.drivers.modbus.decode import (
    MAX_BITS,
    MAX_REGISTERS,
    MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
    Order,
    ReadSpec,
    Span,
    ValueType,
    encode,
    plan,
    width,
)
from mechaway.drivers.modbus.driver import ModbusDriver, ModbusExceptionReply
from mechaway.errors import MechawayError, NotConnected, error_text
from mechaway.nodes.base import Message, Result, SinkNode, SinkParams, get_path
from mechaway.nodes.base import split_path as _split_path
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask

if TYPE_CHECKING:
    from mechaway.nodes.context import NodeContext

#: registers a merged request may read between two values unless a profile says otherwise
DEFAULT_MAX_GAP = 8

Connection = Annotated[
    str,
    msgspec.Meta(min_length=1, description="name of the [modbus.NAME] connection to use"),
]
Unit = Annotated[
    int,
    msgspec.Meta(ge=0, le=255, description="unit (device id, slave id) on the link: 1-247 on "
                 "RTU; TCP devices often answer any, gateways route by it"),
]


class ModbusReadParams(SinkParams):
    """What to poll, where, how often."""

    connection: Connection = "default"
    unit: Unit = 1
    interval: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=86400)] | None,
        msgspec.Meta(description="seconds between polls; none: one poll per "
                     "incoming message (with an interval, messages poll too)"),
    ] = None
    reads: Annotated[
        list[ReadSpec],
        msgspec.Meta(max_length=1000, description="the values to read (with a profile: read "
                     "as well as the profile's)"),
    ] = msgspec.field(default_factory=list)
    profile: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="a device profile instead of reads, e.g. "
                     f"eastron-sdm630 (shipped: {', '.join(profiles.available())})"),
    ] = None
    max_gap: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=MAX_BITS)] | None,
        msgspec.Meta(description="unread registers (bits) one request may "
                     f"span to merge reads; default: the profile's, else {DEFAULT_MAX_GAP}"),
    ] = None
    max_registers: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=MAX_REGISTERS)] | None,
        msgspec.Meta(description="registers per request the device "
                     "accepts; default: the profile's, else 125 (the protocol's limit)"),
    ] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reads and self.profile is None:
            raise ValueError("give reads, a profile, or both")
        self.spans()  # duplicate names, sizes: checked now, not at the first poll

    def all_reads(self) -> list[ReadSpec]:
        """The profile's reads (if any), then the node's own."""
        if self.profile is None:
            return list(self.reads)
        return [*profiles.reads_of(self.profile), *self.reads]

    def spans(self) -> list[Span]:
        """The reads merged into requests (``ValueError`` for an unknown profile)."""
        try:
            prof = profiles.load(self.profile) if self.profile is not None else None
        except profiles.ProfileError as err:
            raise ValueError(str(err)) from None
        gap = self.max_gap
        if gap is None:
            gap = prof.max_gap if prof is not None else DEFAULT_MAX_GAP
        regs = self.max_registers
        if regs is None:
            regs = prof.max_registers if prof is not None else MAX_REGISTERS
        return plan(self.all_reads(), max_gap=gap, max_registers=regs)


class _ModbusNode:
    """What both node types share: the connection, failures counted and reported."""

    id: str
    ctx: NodeContext
    stats: Any
    emit: Any

    def _init_failures(self, connection: str, unit: int) -> None:
        self._connection = connection
        self._unit = unit
        self._conn: ModbusDriver | None = None
        self.failures: dict[str, int] = {}

    async def _connect(self) -> ModbusDriver:
        conn = await self.ctx.services.connection(ModbusDriver, self._connection)
        self._conn = conn
        return conn

    def _fail(self, msg: Message | None, err: BaseException) -> None:
        """Count ``err``, log it once per burst, send it to the ``error`` port."""
        kind = getattr(err, "kind", None) or (
            "not_connected" if isinstance(err, NotConnected) else "bad_value"
        )
        self.failures[kind] = self.failures.get(kind, 0) + 1
        st = self.stats
        st.errors += 1
        st.last_error = f"{type(err).__name__}: {error_text(err)}"
        st.last_error_ts = time.time()
        self.ctx.burst.warning("modbus[%s] unit %d: %s", self._connection, self._unit,
                               st.last_error)  # fmt: skip
        error: dict[str, Any] = {
            "flow": self.ctx.flow_id,
            "node": self.id,
            "type": type(err).__name__,
            "kind": kind,
            "message": error_text(err),
            "connection": self._connection,
            "unit": self._unit,
        }
        code = getattr(err, "code", None)
        if code is not None:
            error["code"] = code
        self.emit({**(msg or {}), "error": error, "ts": time.time()}, "error")


@register_node("ModbusReadNode")
class ModbusReadNode(_ModbusNode, SinkNode[ModbusReadParams]):
    """Poll a unit's registers and bits; one message per poll:
    ``{payload: {NAME: value, ...}, connection, unit, ts}``.

    Reads are merged into as few requests as the protocol and the device allow. A merged
    request the device refuses with exception 2 (illegal address: a gap it does not map)
    is split into the runs of adjacent reads, once, and kept split. A unit that does not
    answer is polled only when its connection's backoff allows (skipped polls are counted,
    other units on the bus keep their rate); polls missed while the connection is down
    are skipped, not caught up, and polling resumes by itself on reconnect.
    """

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: ModbusReadParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._init_failures(params.connection, params.unit)
        self._spans = params.spans()
        self._task = OwnedTask(f"modbus.read[{ctx.flow_id}.{node_id}]")
        self._offline = False
        self.polls = 0
        self.skipped = 0
        self.overruns = 0
        self.splits = 0

    @classmethod
    def self_starting(cls, params: ModbusReadParams) -> bool:
        """With an interval it polls on its own: it may be a flow's only source."""
        return params.interval is not None

    async def start(self) -> None:
        await self._connect()
        if self.params.interval is not None:
            self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    # -- polling --------------------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.params.interval
        assert interval is not None
        due = time.monotonic()
        while True:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            due += interval
            now = time.monotonic()
            if due < now:  # a slow poll or a stalled loop: skip, never burst to catch up
                self.overruns += 1
                due = now + interval
            if self.blocked():
                await self.room()
            out = await self._tick(None)
            if out is not None:
                self.emit(out)

    async def write(self, msg: Message) -> Result:
        """A message asks for one poll now (the reply carries the message's other keys)."""
        return await self._tick(msg)

    async def _tick(self, msg: Message | None) -> Message | None:
        conn = self._conn
        assert conn is not None
        unit = self._unit
        if not conn.connected:
            await conn.first_link()
        if not conn.connected:
            self.skipped += 1
            first_attempt = conn.health.last_error is None  # still connecting: no outage
            if msg is not None or not (self._offline or first_attempt):  # said once
                self._offline = True
                self._fail(msg, NotConnected(f"modbus[{self._connection}] is not connected "
                                             f"({conn.health.last_error or 'connecting'})"))
            return None
        self._offline = False
        if not conn.ready(unit):
            self.skipped += 1
            if msg is not None:
                self._fail(msg, UnitNotAnswering(f"unit {unit} is not answering; it is "
                                                 "probed with backoff"))
            return None
        try:
            payload = await self._poll(conn, unit)
        except MechawayError as err:
            self._fail(msg, err)
            return None
        self.polls += 1
        base = msg if msg is not None else {}
        return {**base, "payload": payload, "connection": self._connection, "unit": unit,
                "ts": time.time()}  # fmt: skip

    async def _poll(self, conn: ModbusDriver, unit: int) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        spans = self._spans
        i = 0
        while i < len(spans):
            span = spans[i]
            try:
                regs = await conn.read(unit, span.table, span.address, span.count)
            except ModbusExceptionReply as err:
                if err.code == 2 and span.gaps:
                    parts = span.split()
                    spans[i : i + 1] = parts
                    self.splits += 1
                    self.ctx.log.info(
                        "unit %d refuses a merged read of %s %d..%d (exception 2): reading "
                        "it as %d requests without the gaps from now on", unit, span.table,
                        span.address, span.address + span.count - 1, len(parts),
                    )  # fmt: skip
                    continue
                raise
            payload.update(span.decode(regs))
            i += 1
        return payload

    def status(self) -> dict[str, Any] | None:
        conn = self._conn
        unit = conn.unit(self._unit).as_dict()["state"] if conn is not None else None
        return {
            "connection": self._connection,
            "unit": self._unit,
            "unit_state": unit,
            "requests_per_poll": len(self._spans),
            "polls": self.polls,
            "skipped": self.skipped,
            "overruns": self.overruns,
            "splits": self.splits,
            "failures": dict(self.failures),
        }


class UnitNotAnswering(MechawayError):
    """A poll asked of a unit that is between probes (it stopped answering)."""

    kind = "unit_not_answering"


class ModbusWriteParams(SinkParams, kw_only=True):
    """Where and how to write each message's value."""

    connection: Connection = "default"
    unit: Unit = 1
    table: Annotated[
        Literal["holding", "coil"],
        msgspec.Meta(description="holding registers (fc 6/16) or coils (fc 5/15)"),
    ] = "holding"
    address: Annotated[
        int, msgspec.Meta(ge=0, le=65535, description="first register or coil, 0-based")
    ]
    type: Annotated[
        ValueType, msgspec.Meta(description="value type (coil: bool)")
    ] = "uint16"
    count: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_WRITE_BITS, description="values per message (more than 1: "
                     "the value is a list); for string, the registers to fill"),
    ] = 1
    byte_order: Annotated[
        Order, msgspec.Meta(description="byte order within each register")
    ] = "big"
    word_order: Annotated[
        Order, msgspec.Meta(description="register order of 32/64-bit values")
    ] = "big"
    scale: Annotated[
        float,
        msgspec.Meta(description="the register holds (value - offset) / scale, rounded for "
                     "integer types"),
    ] = 1.0
    offset: Annotated[float, msgspec.Meta(description="see scale")] = 0.0
    property: Annotated[
        str, msgspec.Meta(min_length=1, description="what to write: a path into the message")
    ] = "payload"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.table == "coil" and self.type != "bool":
            raise ValueError(f"coils hold bits: type must be bool, not {self.type}")
        size = width(self.table, self.type, self.count)
        limit = MAX_WRITE_BITS if self.table == "coil" else MAX_WRITE_REGISTERS
        if size > limit:
            raise ValueError(f"{size} {'coils' if self.table == 'coil' else 'registers'} are "
                             f"more than one request can write ({limit})")
        if self.address + size > 65536:
            raise ValueError(f"address {self.address} + {size} runs past 65535")


@register_node("ModbusWriteNode")
class ModbusWriteNode(_ModbusNode, SinkNode[ModbusWriteParams]):
    """Write each message's ``property`` (default ``payload``) to a unit; the message goes
    on to ``out`` once the device confirmed the write.

    A value of the wrong type or out of range goes to the ``error`` port (``bad_value``),
    as does a write while the connection is down (``not_connected``): writes are never
    queued for later, so a stale command is never replayed after an outage.
    """

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: ModbusWriteParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._init_failures(params.connection, params.unit)
        self._keys = _split_path(params.property)
        self.writes = 0

    async def start(self) -> None:
        await self._connect()

    def _values(self, msg: Message) -> list[Any]:
        p = self.params
        missing = object()
        value = get_path(msg, self._keys, missing)
        if value is missing:
            raise BadValue(f"{p.property}: missing from the message")
        try:
            if p.table == "coil":
                items = value if p.count > 1 else [value]
                if p.count > 1 and (not isinstance(value, list) or len(value) != p.count):
                    raise ValueError(f"expected a list of {p.count} booleans")
                out: list[Any] = []
                for v in items:
                    if isinstance(v, bool) or (type(v) is int and v in (0, 1)):
                        out.append(bool(v))
                    else:
                        raise ValueError(f"expected true/false, got {v!r:.40}")
                return out
            return encode(value, p.type, count=p.count, byte_order=p.byte_order,
                          word_order=p.word_order, scale=p.scale, offset=p.offset)  # fmt: skip
        except ValueError as err:
            raise BadValue(f"{p.property}: {err}") from None

    async def write(self, msg: Message) -> Result:
        conn = self._conn
        assert conn is not None
        if not conn.connected:
            await conn.first_link()
        try:
            values = self._values(msg)
            await conn.write(self._unit, self.params.table, self.params.address, values)
        except MechawayError as err:
            self._fail(msg, err)
            return None
        self.writes += 1
        return msg

    def status(self) -> dict[str, Any] | None:
        return {"connection": self._connection, "unit": self._unit, "writes": self.writes,
                "failures": dict(self.failures)}  # fmt: skip


class BadValue(MechawayError):
    """A message whose value cannot be written as configured."""

    kind = "bad_value"
