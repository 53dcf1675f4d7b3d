"""The hub database's two backends behind one small transaction interface (``_Tx``):
``SqliteBackend`` (one file, one writer thread) and ``PgBackend`` (asyncpg pool, several
hub processes on one database), and the schema migrations both apply. What the hub does
with them is ``mechaway.hub.db.HubDb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mechaway.errors import MechawayError

log = logging.getLogger("mechaway.hub.db")

#: (version, statements); ``{int} {real} {blob} {serial} {norowid}`` differ per database.
#: Append only; never edit a released step.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE devices (
                id TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL,
                tags TEXT NOT NULL DEFAULT '[]',
                created_at {real} NOT NULL,
                last_seen {real},
                status TEXT,
                bundle_seq {int} NOT NULL DEFAULT 0,
                bundle_version {int} NOT NULL DEFAULT -1,
                bundle_hash TEXT,
                bundle TEXT,
                applied_seq {int} NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE tag_flows (
                tag TEXT NOT NULL, flow_id TEXT NOT NULL, doc TEXT NOT NULL,
                updated_at {real} NOT NULL, PRIMARY KEY (tag, flow_id)
            )""",
            """CREATE TABLE device_flows (
                device_id TEXT NOT NULL, flow_id TEXT NOT NULL, doc TEXT NOT NULL,
                updated_at {real} NOT NULL, PRIMARY KEY (device_id, flow_id)
            )""",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value {int} NOT NULL)",
            "INSERT INTO counters(name, value) VALUES ('flows', 0)",
            """CREATE TABLE epochs (
                device_id TEXT NOT NULL, epoch TEXT NOT NULL,
                base {int} NOT NULL, acked {int} NOT NULL, stored_hi {int} NOT NULL,
                live_lo {int} NOT NULL DEFAULT 0, live_hi {int} NOT NULL DEFAULT 0,
                dropped {int} NOT NULL DEFAULT 0, retired {int} NOT NULL DEFAULT 0,
                created_at {real} NOT NULL,
                PRIMARY KEY (device_id, epoch)
            )""",
            """CREATE TABLE telemetry (
                device_id TEXT NOT NULL, seq {int} NOT NULL, ts {real} NOT NULL,
                topic TEXT NOT NULL, payload {blob} NOT NULL, flags {int} NOT NULL,
                PRIMARY KEY (device_id, seq)
            ){norowid}""",
            """CREATE TABLE events (
                id {serial}, device_id TEXT NOT NULL, ts {real} NOT NULL,
                kind TEXT NOT NULL, detail TEXT NOT NULL
            )""",
            "CREATE INDEX events_device ON events(device_id, id)",
        ],
    ),
]

_DIALECT = {
    "sqlite": {
        "int": "INTEGER",
        "real": "REAL",
        "blob": "BLOB",
        "serial": "INTEGER PRIMARY KEY",
        "norowid": " WITHOUT ROWID",
    },
    "pg": {
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "serial": "BIGSERIAL PRIMARY KEY",
        "norowid": "",
    },
}
_SEEN = "UPDATE devices SET last_seen = ?, status = ?, applied_seq = ? WHERE id = ?"


class HubDbError(MechawayError):
    """The hub database cannot be used (unreachable, wrong schema)."""


class _Tx:
    dialect: str
    #: ``FOR UPDATE`` where the database has row locks (PostgreSQL)
    for_update: str = ""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> Sequence[Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def copy(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError


class Backend:
    """One database; ``tx()`` is a transaction (``durable``: committed to disk when done)."""

    dialect = ""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def tx(self, *, durable: bool = True) -> contextlib.AbstractAsyncContextManager[_Tx]:
        raise NotImplementedError

    async def migrate(self) -> int:
        raise NotImplementedError

    async def read(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """One read statement outside any explicit transaction."""
        raise NotImplementedError

    async def write1(self, sql: str, *args: Any) -> None:
        """One write statement, committed on its own (not durable: heartbeats)."""
        raise NotImplementedError

    async def seen(self, rows: list[tuple[str, float, str, int]]) -> None:
        """Heartbeats of many devices (id, last_seen, status, applied_seq), one write."""
        raise NotImplementedError


def _statements(dialect: str) -> list[tuple[int, list[str]]]:
    subs = _DIALECT[dialect]
    return [(v, [s.format(**subs) for s in stmts]) for v, stmts in MIGRATIONS]


# -- SQLite ----------------------------------------------------------------------------------
class _SqliteTx(_Tx):
    dialect = "sqlite"

    def __init__(self, backend: SqliteBackend) -> None:
        self.b = backend

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self.b.run(lambda c: c.execute(sql, args).fetchall())
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        n: int = await self.b.run(lambda c: c.execute(sql, args).rowcount)
        return n

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.b.run(lambda c: c.executemany(sql, rows))

    async def copy(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        marks = ",".join("?" * len(columns))
        await self.executemany(f"INSERT INTO {table}({','.join(columns)}) VALUES ({marks})", rows)


class SqliteBackend(Backend):
    """One connection on one thread; transactions take turns (SQLite has one writer)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="mechaway-hub-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._tid: int | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        if conn is None:
            raise HubDbError(f"{self.path}: not open")
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, conn)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA busy_timeout=10000")
            self._tid = threading.get_ident()
            return c

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._exec, connect)
        except sqlite3.Error as err:
            raise HubDbError(f"{self.path}: cannot open: {err}") from err

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._exec, conn.close)
        self._exec.shutdown(wait=True)

    async def read(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._lock:
            rows: list[Sequence[Any]] = await self.run(lambda c: c.execute(sql, args).fetchall())
        return rows

    async def write1(self, sql: str, *args: Any) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute(sql, args)

        async with self._lock:
            await self.run(op)

    async def seen(self, rows: list[tuple[str, float, str, int]]) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(_SEEN, [(t, st, seq, dev) for dev, t, st, seq in rows])
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

        async with self._lock:
            await self.run(op)

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[_Tx]:
        async with self._lock:
            sync = "FULL" if durable else "NORMAL"

            def begin(c: sqlite3.Connection) -> None:
                c.execute(f"PRAGMA synchronous={sync}")
                c.execute("BEGIN IMMEDIATE")

            await self.run(begin)
            try:
                yield _SqliteTx(self)
            except BaseException:
                await asyncio.shield(self.run(lambda c: c.execute("ROLLBACK")))
                raise
            await asyncio.shield(self.run(lambda c: c.execute("COMMIT")))

    async def migrate(self) -> int:
        async with self.tx() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS hub_schema (version INTEGER PRIMARY KEY,"
                " applied_at REAL NOT NULL)"
            )
            return await _apply_migrations(tx, "sqlite")


# -- PostgreSQL ------------------------------------------------------------------------------
def _pg_sql(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...`` (the SQL here has no ``?`` in literals)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}{part}")
    return "".join(out)


class _PgTx(_Tx):
    dialect = "pg"
    for_update = " FOR UPDATE"

    def __init__(self, conn: Any) -> None:
        self.c = conn

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self.c.fetch(_pg_sql(sql), *args)
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.c.execute(_pg_sql(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.c.executemany(_pg_sql(sql), rows)

    async def copy(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        await self.c.copy_records_to_table(table, records=rows, columns=list(columns))


class PgBackend(Backend):
    """An asyncpg pool. Commits are asynchronous (``synchronous_commit=off``) except in
    ``durable`` transactions (telemetry, flows, devices): a heartbeat lost in a crash of
    the database server is sent again 30 s later; a message acknowledged to an edge never."""

    dialect = "pg"

    def __init__(self, dsn: str, pool_size: int = 8) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        try:
            self.pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                command_timeout=60,
                timeout=10,
                server_settings={"synchronous_commit": "off", "application_name": "mechaway-hub"},
                # no session state is ever set here (only SET LOCAL and xact locks): skip
                # asyncpg's reset query, a round trip per release (measured: 250 -> 70 us)
                reset=_no_reset,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as err:
            raise HubDbError(f"database {_safe_dsn(self.dsn)}: cannot connect: {err}") from err

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
            self.pool = None

    async def read(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self.pool.fetch(_pg_sql(sql), *args)
        return rows

    async def write1(self, sql: str, *args: Any) -> None:
        await self.pool.execute(_pg_sql(sql), *args)

    async def seen(self, rows: list[tuple[str, float, str, int]]) -> None:
        ids, ts, st, seq = (list(col) for col in zip(*rows, strict=True))
        await self.pool.execute(
            "UPDATE devices AS d SET last_seen = v.ts, status = v.st, applied_seq = v.seq"
            " FROM unnest($1::text[], $2::float8[], $3::text[], $4::int8[]) AS v(id, ts, st, seq)"
            " WHERE d.id = v.id",
            ids,
            ts,
            st,
            seq,
        )

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[_Tx]:
        async with self.pool.acquire() as conn, conn.transaction():
            if durable:
                await conn.execute("SET LOCAL synchronous_commit = on")
            yield _PgTx(conn)

    async def migrate(self) -> int:
        async with self.tx() as tx:
            # two hubs starting at once: one migrates, the other waits and finds it done
            await tx.execute("SELECT pg_advisory_xact_lock(780000001)")
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS hub_schema (version INTEGER PRIMARY KEY,"
                " applied_at DOUBLE PRECISION NOT NULL)"
            )
            return await _apply_migrations(tx, "pg")


async def _no_reset(conn: Any) -> None:
    """Connections go back to the pool as they are (see ``PgBackend.open``)."""


def _safe_dsn(dsn: str) -> str:
    """A DSN without its password, for messages."""
    head, sep, tail = dsn.partition("@")
    if not sep:
        return dsn
    scheme, _, cred = head.partition("://")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}@{tail}"


async def _apply_migrations(tx: _Tx, dialect: str) -> int:
    """Run the steps not yet recorded in ``hub_schema``; the version now."""
    row = await tx.fetchrow("SELECT COALESCE(MAX(version), 0) FROM hub_schema")
    current = int(row[0]) if row else 0
    known = max(v for v, _ in MIGRATIONS)
    if current > known:
        raise HubDbError(f"database schema version {current} is newer than this hub ({known})")
    for version, stmts in _statements(dialect):
        if version <= current:
            continue
        for stmt in stmts:
            await tx.execute(stmt)
        await tx.execute(
            "INSERT INTO hub_schema(version, applied_at) VALUES (?, ?)", version, time.time()
        )
        log.info("hub database migrated to version %d", version)
        current = version
    return current


def open_backend(database: str, pool_size: int = 8) -> Backend:
    from mechaway.hub.config import is_postgres

    if is_postgres(database):
        return PgBackend(database, pool_size)
    return SqliteBackend(Path(database))


# -- the hub's operations --------------------------------------------------------------------
