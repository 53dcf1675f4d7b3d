"""PostgreSQL nodes over a shared ``[postgres.NAME]`` connection (``PostgresDriver``).

``PostgresNode`` writes messages as rows of a table: insert (COPY for batches of
``copy_min_rows`` or more) or upsert on a key, batched by size (``batch_size``) and time
(``flush_interval``). While the database is away it holds up to ``max_pending`` rows
(past that the oldest are dropped, counted in ``dropped``) and writes them when the
database is back. A row that the database refuses for its data (a value out of range, a
NOT NULL or unique violation) goes to the ``error`` port alone; the rest of its batch is
written. A table that is missing or lacks a column holds the rows (bounded) and reports
until it is fixed.

``PostgresQueryNode`` runs one parameterised statement per message (``$1``, ``$2`` bound
from message paths, never pasted into the SQL) and sends the result on. A query made
while the database is away fails at once (to the ``error`` port): it is never replayed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import decimal
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import orjson
from msgspec import Meta

from mechaway.drivers.base import Backoff
from mechaway.drivers.postgres.driver import PostgresDriver
from mechaway.drivers.postgres.tables import (
    FAST_TYPES,
    BadValue,
    Convert,
    Table,
    check_ident,
    columns_of,
    insert_sql,
    last_per_key,
    split_table,
    upsert_sql,
)
from mechaway.errors import MechawayError, NotConnected, error_text
from mechaway.nodes.base import Message, Result, SinkNode, SinkParams, get_path, split_path
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask

if TYPE_CHECKING:
    from mechaway.nodes.context import NodeContext

_MISSING = object()

Connection = Annotated[
    str,
    Meta(min_length=1, description="name of the [postgres.NAME] connection to use"),
]


class TableTrouble(MechawayError):
    """The table cannot take rows as configured (missing, a missing column, no unique
    key for an upsert, no permission): rows are held until it is fixed."""


def _sqlstate(err: BaseException) -> str:
    return str(getattr(err, "sqlstate", None) or "")


def _row_error(err: BaseException) -> bool:
    """The database refused this row's data (SQLSTATE classes 22, 23; asyncpg's encoder)."""
    if isinstance(err, (BadValue, ValueError, TypeError, OverflowError)):
        return True
    return _sqlstate(err)[:2] in ("22", "23")


def _describe(err: BaseException) -> str:
    state = _sqlstate(err)
    text = error_text(err)
    return f"{text} (SQLSTATE {state})" if state else text


class PostgresParams(SinkParams, kw_only=True):
    """Which table, how rows are made, how they are batched and held."""

    connection: Connection = "default"
    table: Annotated[
        str,
        Meta(min_length=1, description="the table: NAME or SCHEMA.NAME, exactly as stored "
             "(an unquoted CREATE TABLE stores lower case)"),
    ]
    mode: Annotated[
        Literal["insert", "upsert"],
        Meta(description="insert every message as a new row, or upsert: insert, or update "
             "the row with the same key"),
    ] = "insert"
    key: Annotated[
        list[str],
        Meta(description="upsert: the key columns (a primary key or unique constraint of "
             "the table on exactly these columns)"),
    ] = msgspec.field(default_factory=list)
    columns: Annotated[
        dict[str, str] | None,
        Meta(description="column: message path (payload.score, ts, topic); none: the "
             "payload's keys are the columns (the payload must be an object)"),
    ] = None
    unknown_fields: Annotated[
        Literal["error", "ignore"],
        Meta(description="without columns: a payload key that is not a column of the "
             "table fails the row (error) or is left out (ignore)"),
    ] = "error"
    time_column: Annotated[
        str | None,
        Meta(description="a timestamp column that gets the message's ts (epoch seconds) "
             "when the row has no value for it; the time column of a hypertable"),
    ] = None
    hypertable: Annotated[
        Literal["auto", "off"],
        Meta(description="auto: with time_column, make the table a TimescaleDB hypertable "
             "when the extension is installed in the database (never required)"),
    ] = "auto"
    batch_size: Annotated[
        int, Meta(ge=1, le=100_000, description="rows written in one statement, at most")
    ] = 1000
    flush_interval: Annotated[
        float,
        Meta(gt=0, le=3600, description="seconds a row waits for its batch to fill, at most"),
    ] = 1.0
    copy_min_rows: Annotated[
        int,
        Meta(ge=1, description="insert batches of this many rows or more go through COPY "
             "(fewer: one prepared INSERT per row, pipelined)"),
    ] = 32
    max_pending: Annotated[
        int,
        Meta(ge=1, le=10_000_000, description="rows held while the database is away or the "
             "table is in trouble; past this the oldest are dropped (counted)"),
    ] = 100_000
    drain_timeout: Annotated[
        float,
        Meta(gt=0, le=300, description="at stop, seconds to write what is held (what is "
             "left is dropped and counted)"),
    ] = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        split_table(self.table)
        for c in [*self.key, *(self.columns or {}), *([self.time_column] if self.time_column
                                                      else [])]:  # fmt: skip
            check_ident(c, "column")
        if self.mode == "upsert" and not self.key:
            raise ValueError("upsert needs key: the columns that identify a row")
        if self.mode == "insert" and self.key:
            raise ValueError("key is for mode upsert")
        if self.columns is not None:
            if not self.columns:
                raise ValueError("columns is empty (leave it out to take the payload's keys)")
            for col, path in self.columns.items():
                if not split_path(path):
                    raise ValueError(f"columns.{col}: {path!r} is not a message path")
            missing = [k for k in self.key if k not in self.columns]
            if missing:
                raise ValueError(f"key column {missing[0]!r} is not in columns")


#: one row to write: the message it came from, its columns and values
_Row = tuple[Message, tuple[str, ...], tuple[Any, ...]]
#: per column: its name, converter, the Python type it takes as is, and whether it needs a
#: value (NOT NULL without a default)
_Plan = tuple[tuple[str, Convert, type | None, bool], ...]


def _getter(path: tuple[str | int, ...]) -> Callable[[Message], Any]:
    """A fast reader of one message path (``payload.x``: two dict lookups)."""
    if len(path) == 1 and isinstance(path[0], str):
        key = path[0]
        return lambda m: m.get(key)
    if len(path) == 2 and isinstance(path[0], str) and isinstance(path[1], str):
        a, b = path[0], path[1]

        def two(m: Message) -> Any:
            inner = m.get(a)
            return inner.get(b) if type(inner) is dict else None

        return two
    return lambda m: get_path(m, path, None)


@register_node("PostgresNode")
class PostgresNode(SinkNode[PostgresParams]):
    """Write messages as rows of a PostgreSQL table (insert or upsert), batched; held
    (bounded) while the database is away and written when it is back."""

    ports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, node_id: str, params: PostgresParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._pending: collections.deque[Message] = collections.deque()
        self._first = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._flowing = False
        self._stopping = False
        self._drv: PostgresDriver | None = None
        self._table: Table | None = None
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._paths = (
            {c: split_path(p) for c, p in params.columns.items()} if params.columns else None
        )
        self._names: tuple[str, ...] = tuple(self._paths or ())
        self._getters = (
            [_getter(path) for path in self._paths.values()] if self._paths else None
        )
        self._retry = Backoff(0.5, 30.0)
        self._task = OwnedTask(f"mechaway.postgres[{ctx.flow_id}.{node_id}]")
        self.trouble: str | None = None
        self.written = 0
        self.batches = 0
        self.copies = 0
        self.rejected = 0
        self.held_dropped = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._drv = await self.ctx.services.connection(PostgresDriver, self.params.connection)
        self._task.start(self._run)

    async def stop(self) -> None:
        self._stopping = True
        if self._task.running:
            self._drained.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.params.drain_timeout)
        await self._task.stop()
        if self._pending:
            n = len(self._pending)
            self._pending.clear()
            self.stats.dropped += n
            self.held_dropped += n
            self.ctx.log.warning(
                "%d rows for %s not written at stop (%s)", n, self.params.table,
                self.trouble or "the database did not take them in time",
            )  # fmt: skip

    # -- the hot path ---------------------------------------------------------------------
    async def write(self, msg: Message) -> Result:
        pending = self._pending
        pending.append(msg)
        n = len(pending)
        p = self.params
        if n == 1:
            self._first = time.monotonic()
            self._wake.set()
        elif n == p.batch_size:
            self._wake.set()
        if n > p.max_pending:
            pending.popleft()
            self.stats.dropped += 1
            self.held_dropped += 1
            self.ctx.burst.warning(
                "holding %d rows for %s (%s): the oldest are dropped", p.max_pending, p.table,
                self.trouble or "database away",
            )  # fmt: skip
        elif n >= 2 * p.batch_size and self._flowing:
            # the database is up and a batch is being written: wait for it rather than
            # growing the held rows (backpressure reaches the node's queue)
            self._room.clear()
            await self._room.wait()
        return None

    # -- the flusher ----------------------------------------------------------------------
    async def _run(self) -> None:
        p = self.params
        pending = self._pending
        drv = self._drv
        assert drv is not None
        while True:
            if not pending:
                self._room.set()
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(pending) < p.batch_size and not self._stopping:
                delay = self._first + p.flush_interval - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue
            if not drv.connected:
                self._hold()
                await drv.wait_connected()
                continue
            take = min(p.batch_size, len(pending))
            batch = [pending.popleft() for _ in range(take)]
            self._first = time.monotonic()
            left = await self._flush(batch)
            if left:
                pending.extendleft(reversed(left))
                over = len(pending) - p.max_pending
                for _ in range(max(0, over)):
                    pending.popleft()
                if over > 0:
                    self.stats.dropped += over
                    self.held_dropped += over
                self._hold()
                await asyncio.sleep(self._retry.next())
            else:
                self._retry.reset()
                self._flowing = True
                self._room.set()

    def _hold(self) -> None:
        self._flowing = False
        self._room.set()

    async def _flush(self, batch: list[Message]) -> list[Message]:
        """Write ``batch``; return the messages to hold and try again (empty: done)."""
        drv = self._drv
        assert drv is not None
        try:
            table = await self._load_table()
        except TableTrouble as err:
            self._fail_flush(str(err))
            return batch
        except Exception as err:
            if not drv.lost(err):
                self._fail_flush(_describe(err))
            return batch
        groups: dict[tuple[str, ...], list[_Row]] = {}
        for msg in batch:
            try:
                cols, row = self._row(msg, table)
            except (BadValue, ValueError, TypeError) as err:
                self._reject(msg, err)
                continue
            groups.setdefault(cols, []).append((msg, cols, row))
        todo = list(groups.values())
        for i, rows in enumerate(todo):
            try:
                await self._write(table, rows)
            except Exception as err:
                if drv.lost(err):
                    return [m for g in todo[i:] for m, _c, _r in g]
                if not _row_error(err):
                    await self._trouble(err)
                    return [m for g in todo[i:] for m, _c, _r in g]
                left = await self._one_by_one(table, rows)
                if left:
                    return left + [m for g in todo[i + 1:] for m, _c, _r in g]
        if self.trouble is not None:
            self.ctx.log.info("writing to %s again", table.label())
            self.trouble = None
        return []

    async def _write(self, table: Table, rows: list[_Row]) -> None:
        drv = self._drv
        assert drv is not None
        cols = rows[0][1]
        values = [r for _m, _c, r in rows]
        pool = drv.pool()
        # bounded as a whole (a silent network would hang a cancel request): a timeout
        # counts as a lost connection, the rows are held
        async with asyncio.timeout(drv.settings.command_timeout + drv.settings.connect_timeout):
            await self._write_on(pool, table, cols, values)
        self.written += len(rows)
        self.batches += 1
        drv.health.count("batches")
        drv.health.count("rows", len(rows))

    async def _write_on(self, pool: Any, table: Table, cols: tuple[str, ...],
                        values: list[tuple[Any, ...]]) -> None:  # fmt: skip
        p = self.params
        drv = self._drv
        assert drv is not None
        async with pool.acquire() as conn:
            if p.mode == "upsert":
                index = [cols.index(k) for k in p.key]
                values = last_per_key(values, index)
                await conn.execute(upsert_sql(table, cols, p.key), *columns_of(values, len(cols)))
            elif len(values) >= p.copy_min_rows:
                await conn.copy_records_to_table(
                    table.name, schema_name=table.schema, columns=list(cols), records=values
                )
                self.copies += 1
                drv.health.count("copies")
            else:
                await conn.executemany(insert_sql(table, cols), values)

    async def _one_by_one(self, table: Table, rows: list[_Row]) -> list[Message]:
        """A batch the database refused for its data: each row alone, the bad ones to the
        error port. Returns the messages to hold (the connection was lost meanwhile)."""
        drv = self._drv
        assert drv is not None
        for i, item in enumerate(rows):
            try:
                await self._write(table, [item])
            except Exception as err:
                if drv.lost(err):
                    return [m for m, _c, _r in rows[i:]]
                if not _row_error(err):
                    await self._trouble(err)
                    return [m for m, _c, _r in rows[i:]]
                self._reject(item[0], err)
        return []

    async def _load_table(self) -> Table:
        drv = self._drv
        assert drv is not None
        p = self.params
        try:
            table = await drv.table(p.table)
        except LookupError as err:
            raise TableTrouble(str(err.args[0])) from None
        if table is self._table:
            return table
        try:
            if self._paths is not None:
                table.require(list(self._paths), "columns:")
            table.require(p.key, "key")
            if p.time_column:
                table.require([p.time_column], "time_column")
        except ValueError as err:
            raise TableTrouble(str(err)) from None
        if p.mode == "upsert" and not any(set(u) == set(p.key) for u in table.unique):
            raise TableTrouble(
                f"upsert on ({', '.join(p.key)}): {table.label()} has no primary key or unique"
                " constraint on exactly these columns"
            )
        if p.hypertable == "auto" and p.time_column and drv.timescaledb:
            try:
                await drv.make_hypertable(table, p.time_column)
                self.ctx.log.info("%s is a TimescaleDB hypertable on %s", table.label(),
                                  p.time_column)  # fmt: skip
            except Exception as err:
                if drv.lost(err):
                    raise
                self.ctx.burst.warning("%s: not made a hypertable: %s", table.label(),
                                       _describe(err))  # fmt: skip
        self._table = table
        self._plans.clear()
        return table

    async def _trouble(self, err: BaseException) -> None:
        """A statement failed for the table, not a row: hold, report, re-read the table."""
        self._fail_flush(_describe(err))
        self._table = None
        drv = self._drv
        if drv is not None:
            with contextlib.suppress(Exception):
                await drv.table(self.params.table, refresh=True)

    def _fail_flush(self, text: str) -> None:
        first = self.trouble is None
        self.trouble = text
        st = self.stats
        st.errors += 1
        st.last_error = f"rows held: {text}"
        st.last_error_ts = time.time()
        if first:
            self.ctx.log.warning("%s: rows held (%d): %s", self.params.table,
                                 len(self._pending), text)  # fmt: skip

    def _reject(self, msg: Message, err: BaseException) -> None:
        self.rejected += 1
        st = self.stats
        st.errors += 1
        st.last_error = f"{type(err).__name__}: {_describe(err)}"
        st.last_error_ts = time.time()
        self.ctx.burst.warning("row refused: %s", st.last_error)
        self.emit(
            {**msg, "error": {"flow": self.ctx.flow_id, "node": self.id,
                              "type": type(err).__name__, "message": _describe(err)}},
            "error",
        )  # fmt: skip

    # -- rows -----------------------------------------------------------------------------
    def _plan(self, table: Table, names: tuple[str, ...]) -> _Plan:
        """How each column of ``names`` gets its value (cached per column set)."""
        plan = self._plans.get(names)
        if plan is None:
            if not names:
                raise BadValue("the message gives no column a value")
            if len(self._plans) >= 64:  # payloads with ever new key sets: keep a few
                self._plans.clear()
            plan = self._plans[names] = tuple(
                (n, table.columns[n].convert, FAST_TYPES.get(table.columns[n].typname),
                 table.columns[n].not_null and not table.columns[n].has_default)
                for n in names
            )  # fmt: skip
        return plan

    def _row(self, msg: Message, table: Table) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """The columns and converted values of ``msg`` (``BadValue`` naming the column)."""
        p = self.params
        if self._getters is not None:
            values = [get(msg) for get in self._getters]
            names = self._names
        else:
            payload = msg.get("payload")
            if type(payload) is not dict:
                raise BadValue(
                    f"payload is {type(payload).__name__}, not an object (set columns to map "
                    "message paths to columns)"
                )
            cols = table.columns
            if p.unknown_fields == "error":
                for k in payload:
                    if k not in cols:
                        raise BadValue(
                            f"payload key {str(k)[:60]!r} is not a column of {table.label()} "
                            f"(it has: {', '.join(cols)}; unknown_fields: ignore leaves it out)"
                        )
                names = tuple(payload)
                values = list(payload.values())
            else:
                names = tuple(k for k in payload if k in cols)
                values = [payload[k] for k in names]
        tc = p.time_column
        if tc:
            if tc not in names:
                names = (*names, tc)
                values.append(None)
            i = names.index(tc)
            if values[i] is None:
                values[i] = msg.get("ts") or time.time()
        plan = self._plan(table, names)
        row: list[Any] = []
        add = row.append
        for (name, conv, fast, required), v in zip(plan, values, strict=True):
            if v is None:
                if required:
                    raise BadValue(f"column {name!r} is NOT NULL and the message has no value")
                add(None)
            elif type(v) is fast:
                add(v)
            else:
                try:
                    add(conv(v))
                except BadValue as err:
                    raise BadValue(f"column {name!r}: {err}") from None
        return names, tuple(row)

    def status(self) -> dict[str, Any] | None:
        return {
            "table": self._table.label() if self._table is not None else self.params.table,
            "pending": len(self._pending),
            "written": self.written,
            "batches": self.batches,
            "copies": self.copies,
            "rejected": self.rejected,
            "held_dropped": self.held_dropped,
            "hypertable": bool(self._table and self._table.hypertable),
            "state": ("holding: " + self.trouble) if self.trouble else (
                "holding: database away" if self._drv is not None and not self._drv.connected
                else "writing"),
        }  # fmt: skip


# -- queries ------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\$(\d+)")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def placeholders(sql: str) -> int:
    """The highest ``$N`` in ``sql`` outside quotes (0: none)."""
    bare = _QUOTED.sub("", sql)
    return max((int(n) for n in _PLACEHOLDER.findall(bare)), default=0)


class PostgresQueryParams(SinkParams, kw_only=True):
    """A statement, its parameters from the message, what to send on."""

    connection: Connection = "default"
    sql: Annotated[
        str,
        Meta(min_length=1, max_length=100_000, description="one SQL statement with $1, $2... "
             "for the values of args (values are never pasted into the SQL)"),
    ]
    args: Annotated[
        list[str],
        Meta(description="message paths giving $1, $2... in order (payload.id, topic)"),
    ] = msgspec.field(default_factory=list)
    result: Annotated[
        Literal["rows", "first", "value", "status"],
        Meta(description="rows: a list of row objects; first: the first row or null; value: "
             "the first column of the first row or null; status: {command, count}"),
    ] = "rows"
    output: Annotated[
        str, Meta(description="where the result goes in the message (object keys only)")
    ] = "payload"
    max_rows: Annotated[
        int,
        Meta(ge=1, le=1_000_000, description="rows read at most; a larger result is an error "
             "(read in a cursor: memory stays bounded)"),
    ] = 10_000
    timeout: Annotated[
        Annotated[float, Meta(gt=0, le=3600)] | None,
        Meta(description="seconds the statement may take (default: the connection's "
             "command_timeout)"),
    ] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for a in self.args:
            if not split_path(a):
                raise ValueError(f"args: {a!r} is not a message path")
        out = split_path(self.output)
        if not out or not all(isinstance(k, str) for k in out):
            raise ValueError(f"output {self.output!r} must be a path of object keys")
        n = placeholders(self.sql)
        if n != len(self.args):
            raise ValueError(
                f"sql has placeholders $1..${n} but args gives {len(self.args)} path(s)"
                if n else f"args gives {len(self.args)} path(s) but sql has no $1 placeholder"
            )


def _jsonable(v: Any) -> Any:
    """A value asyncpg returned -> what a message may hold."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() and abs(v) < 2**63 else float(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


@register_node("PostgresQueryNode")
class PostgresQueryNode(SinkNode[PostgresQueryParams]):
    """Run a parameterised SQL statement per message; the rows (or status) go on as the
    message's ``output``. Not replayed: a query while the database is away fails at once."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: PostgresQueryParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._args = [split_path(a) for a in params.args]
        self._out = [k for k in split_path(params.output) if isinstance(k, str)]
        self._drv: PostgresDriver | None = None
        self.queries = 0

    async def start(self) -> None:
        self._drv = await self.ctx.services.connection(PostgresDriver, self.params.connection)

    async def write(self, msg: Message) -> Result:
        drv = self._drv
        assert drv is not None, "node not started"
        args = [get_path(msg, path) for path in self._args]
        limit = (self.params.timeout or drv.settings.command_timeout) + drv.settings.connect_timeout
        try:
            async with asyncio.timeout(limit):
                result = await self._run(drv, args)
        except NotConnected:
            drv.health.count("failures")
            raise
        except Exception as err:
            if drv.lost(err):
                raise NotConnected(f"{drv.label}: connection lost ({error_text(err)})") from None
            raise QueryFailed(_describe(err)) from None
        self.queries += 1
        drv.health.count("queries")
        out = dict(msg)
        cur = out
        for k in self._out[:-1]:
            nxt = cur.get(k)
            cur[k] = dict(nxt) if isinstance(nxt, dict) else {}
            cur = cur[k]
        cur[self._out[-1]] = result
        return out

    async def _run(self, drv: PostgresDriver, args: Sequence[Any]) -> Any:
        p = self.params
        if not drv.connected:
            await drv.first_link()
        pool = drv.pool()
        timeout = p.timeout
        async with pool.acquire() as conn:
            stmt = await conn.prepare(p.sql, timeout=timeout)
            attrs = stmt.get_attributes()
            if not attrs:
                status = await conn.execute(p.sql, *args, timeout=timeout)
                return _status(status) if p.result == "status" else (
                    [] if p.result == "rows" else None)  # fmt: skip
            json_cols = {a.name for a in attrs if a.type.name in ("json", "jsonb")}
            async with conn.transaction():
                cursor = await stmt.cursor(*args, timeout=timeout)
                records = await cursor.fetch(p.max_rows + 1, timeout=timeout)
            if len(records) > p.max_rows:
                raise QueryFailed(f"the query returned more than max_rows ({p.max_rows}) rows")
        rows = [
            {k: (orjson.loads(v) if k in json_cols and isinstance(v, str) else _jsonable(v))
             for k, v in r.items()}
            for r in records
        ]  # fmt: skip
        if p.result == "rows":
            return rows
        if p.result == "first":
            return rows[0] if rows else None
        if p.result == "value":
            return next(iter(rows[0].values())) if rows else None
        return {"command": stmt.get_statusmsg() or "", "count": len(rows)}

    def status(self) -> dict[str, Any] | None:
        return {"queries": self.queries}


class QueryFailed(MechawayError):
    """The database refused the statement (its message and SQLSTATE)."""


def _status(text: str) -> dict[str, Any]:
    """``"INSERT 0 3"`` -> ``{"command": "INSERT", "count": 3}``."""
    parts = (text or "").split()
    count = int(parts[-1]) if parts and parts[-1].isdigit() else 0
    return {"command": parts[0] if parts else "", "count": count}


__all__ = ["PostgresNode", "PostgresQueryNode"]
