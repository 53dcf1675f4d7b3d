"""The PostgreSQL driver: one ``[postgres.NAME]`` database, a small asyncpg pool shared by
the nodes naming it.

asyncpg is imported when a connection starts (``pip install 'mechaway[postgres]'``); why
asyncpg and not psycopg 3 is measured in docs/postgres.md. The driver uses the layer's
pieces: the ``Supervisor`` opens the pool (one connection tried at once, so a database
that is down is seen at start), pings it while idle, notices it is gone, backs off and
opens it again; ``DriverStatus`` counts what happens.

A node reports an operation that failed because the database went away (``lost(err)``):
the pool is dropped and reopened by the supervisor; until then ``connected`` is False,
``pool()`` raises ``NotConnected`` and nodes hold what they must write (``PostgresNode``
holds a bounded batch) or fail at once (``PostgresQueryNode``: a query is never replayed
later).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from mechaway.drivers.base import (
    Driver,
    DriverEnv,
    DriverSettings,
    LinkFailed,
    Supervisor,
    register_driver,
)
from mechaway.drivers.postgres.tables import Column, Table, qualified, split_table
from mechaway.errors import ConfigError, NotConnected

COUNTERS = ("batches", "rows", "copies", "queries", "failures", "lost", "connect_failures")

#: SQLSTATE classes and codes that mean the connection, not the statement, failed:
#: 08 connection exception, 57P01-03 admin/crash shutdown and cannot connect now, 53300
#: too many connections, 55000 "database is not accepting connections" (ALTER DATABASE
#: ... ALLOW_CONNECTIONS false), 3D000 the database does not exist (dropped)
_LOST_STATES = ("57P01", "57P02", "57P03", "53300", "55000", "3D000")
#: SQLSTATEs of a refused login
_AUTH_STATES = ("28000", "28P01")


class PostgresSettings(DriverSettings):
    """``[postgres.NAME]``: a database, by DSN."""

    dsn: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=...]; a password "
            "here is allowed but password_file (or PGPASSWORD, ~/.pgpass) keeps it out of "
            "the config",
        ),
    ]
    password_file: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="a file holding the password (read at each connect)"),
    ] = None
    pool_size: Annotated[
        int, msgspec.Meta(ge=1, le=64, description="connections at most (nodes share them)")
    ] = 4
    connect_timeout: Annotated[
        float, msgspec.Meta(gt=0, le=300, description="seconds to establish a connection")
    ] = 5.0
    command_timeout: Annotated[
        float, msgspec.Meta(gt=0, le=3600, description="seconds one statement may take")
    ] = 30.0
    ping_interval: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600, description="seconds between checks that the database "
                     "still answers (a SELECT 1), so status is true while nothing is written"),
    ] = 5.0
    synchronous_commit: Annotated[
        Literal["on", "off", "local", "remote_write", "remote_apply"] | None,
        msgspec.Meta(description="the session's synchronous_commit (off: faster commits "
                     "that a database crash may lose; default: the server's)"),
    ] = None
    application_name: Annotated[
        str, msgspec.Meta(max_length=63, description="shown in pg_stat_activity")
    ] = "mechaway"

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_dsn(self.dsn)


def parse_dsn(dsn: str) -> urllib.parse.SplitResult:
    """The DSN as a URL, ``ValueError`` saying what is wrong with it."""
    if any(ord(c) < 0x20 for c in dsn):
        raise ValueError("dsn holds a control character")
    try:
        url = urllib.parse.urlsplit(dsn)
        port = url.port  # raises for a port that is not a number or out of range
    except ValueError as err:
        raise ValueError(f"dsn is not a URL ({err})") from None
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "dsn must start with postgresql:// (e.g. postgresql://mechaway@127.0.0.1/telemetry)"
        )
    if not url.path.strip("/") and not url.hostname and port is None:
        raise ValueError("dsn names no host and no database")
    return url


def safe_dsn(dsn: str) -> str:
    """The DSN without its password (for logs and status)."""
    try:
        url = urllib.parse.urlsplit(dsn)
        if url.password is None:
            return dsn
        netloc = url.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urllib.parse.urlunsplit(url._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "(dsn)"


_PG: Any = None


def asyncpg() -> Any:
    """asyncpg, imported on first use."""
    global _PG
    if _PG is None:
        import asyncpg as pg  # type: ignore[import-untyped]

        _PG = pg
    return _PG


def is_lost(err: BaseException) -> bool:
    """True when ``err`` says the connection (not the statement) failed."""
    if isinstance(err, (ConnectionError, OSError, NotConnected)):
        return True
    pg = _PG
    if pg is None:
        return False
    if isinstance(err, pg.InterfaceError):  # "connection is closed", "pool is closing"
        return True
    state = getattr(err, "sqlstate", None) or ""
    return state.startswith("08") or state in _LOST_STATES


def error_kind(err: BaseException) -> str:
    """A failed connection attempt, sorted for the once-per-burst log and the state."""
    state = getattr(err, "sqlstate", None) or ""
    if state in _AUTH_STATES:
        return "auth refused"
    if state == "3D000":
        return "no such database"
    if state in ("55000", "57P03", "53300"):
        return "refused"
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return "unreachable"
    if isinstance(err, OSError):
        return "unreachable"
    return "error"


def _text(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome (nobody waits for it any more)."""
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class _Link:
    pool: Any
    lost: asyncio.Future[str]
    timescaledb: str | None = None
    server_version: str = ""

    def drop(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)


@register_driver("postgres")
class PostgresDriver(Driver[PostgresSettings]):
    """One database; see the module docstring."""

    Settings = PostgresSettings

    def __init__(
        self, name: str, settings: PostgresSettings, env: DriverEnv | None = None
    ) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(COUNTERS, 0))
        self.where = safe_dsn(settings.dsn)
        self._link: _Link | None = None
        self._up = asyncio.Event()
        self._sup: Supervisor[_Link] | None = None
        self._tables: dict[str, Table] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect in the background; ``ConfigError`` if asyncpg is not installed."""
        if self._sup is not None:
            return
        try:
            asyncpg()
        except ImportError as err:
            raise ConfigError(
                f"{self.label}: asyncpg is not installed (pip install 'mechaway[postgres]')"
            ) from err
        self._sup = Supervisor(
            self.label, self.health, self.settings, open=self._open, lost=self._lost,
            up=self._on_up, release=self._release, logger=self.log, states_by_kind=True,
            target=self.where,
        )  # fmt: skip
        self._sup.start()

    async def close(self, timeout: float = 5.0) -> None:
        sup, self._sup = self._sup, None
        if sup is not None:
            await asyncio.wait_for(sup.stop(), timeout)
        self.health.set("closed")

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and not link.lost.done()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Until the pool is up (True), or ``timeout`` seconds (False)."""
        if self.connected:
            return True
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    async def first_link(self) -> None:
        """While the very first connection attempt is in progress, wait for it (at most
        ``connect_timeout``): a query made as the daemon starts is not an outage.
        Afterwards (up once, or an attempt failed) this returns at once."""
        if self._link is None and self.health.last_error is None:
            await self.wait_connected(self.settings.connect_timeout)

    def pool(self) -> Any:
        """The live pool; ``NotConnected`` while the database is away."""
        link = self._link
        if link is None or link.lost.done():
            raise NotConnected(
                f"{self.label}: not connected ({self.health.last_error or 'connecting'})"
            )
        return link.pool

    @property
    def timescaledb(self) -> str | None:
        """The TimescaleDB extension's version in this database, or None."""
        return self._link.timescaledb if self._link is not None else None

    def lost(self, err: BaseException) -> bool:
        """An operation failed: if the connection is to blame, drop the pool (the
        supervisor reopens it) and return True."""
        self.health.count("failures")
        if not is_lost(err):
            return False
        link = self._link
        if link is not None and not link.lost.done():
            self.health.count("lost")
            link.drop(_text(err))
        return True

    # -- the supervisor's side ------------------------------------------------------------
    async def _open(self) -> _Link:
        pg = asyncpg()
        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.password_file is not None:
            try:
                text = await asyncio.to_thread(Path(s.password_file).read_text)
                kwargs["password"] = text.strip()
            except OSError as err:
                raise LinkFailed("config", f"password_file: {err.strerror or err}") from None
        server: dict[str, str] = {"application_name": s.application_name}
        if s.synchronous_commit is not None:
            server["synchronous_commit"] = s.synchronous_commit
        try:
            pool = await pg.create_pool(
                s.dsn, min_size=1, max_size=s.pool_size, timeout=s.connect_timeout,
                command_timeout=s.command_timeout, server_settings=server, **kwargs,
            )  # fmt: skip
        except (pg.PostgresError, pg.InterfaceError, OSError, TimeoutError) as err:
            raise LinkFailed(error_kind(err), _text(err)) from None
        link = _Link(pool, asyncio.get_running_loop().create_future())
        try:
            async with pool.acquire() as conn:
                link.server_version = str(await conn.fetchval("SHOW server_version"))
                link.timescaledb = await conn.fetchval(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                )
        except Exception as err:
            await self._close_pool(pool)
            raise LinkFailed(error_kind(err), _text(err)) from None
        return link

    def _on_up(self, link: _Link) -> None:
        self._link = link
        self._tables.clear()  # the schema may have changed while we were away
        self._up.set()

    async def _lost(self, link: _Link) -> str:
        """Until a node reports the connection lost, or a ping fails."""
        interval = self.settings.ping_interval
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(link.lost), interval)
            except TimeoutError:
                pass
            # not awaited past the timeout: on a silent network a cancelled query's
            # cleanup (a cancel request, the connection's reset) waits on that network
            # too; closing the pool ends it
            ping = asyncio.ensure_future(link.pool.fetchval("SELECT 1"))
            done, _ = await asyncio.wait({ping}, timeout=self.settings.connect_timeout)
            if not done:
                ping.cancel()
                ping.add_done_callback(_consume)
                self.health.count("lost")
                return f"no answer to a ping within {self.settings.connect_timeout} s"
            err = ping.exception()
            if err is not None:
                if is_lost(err):
                    self.health.count("lost")
                    return _text(err)
                self.log.debug("%s: ping failed: %s", self.label, _text(err))

    async def _release(self, link: _Link) -> None:
        link.drop("closed")
        if self._link is link:
            self._link = None
            self._up.clear()
        await self._close_pool(link.pool)

    async def _close_pool(self, pool: Any) -> None:
        try:
            await asyncio.wait_for(pool.close(), 2.0)
        except Exception:  # a dead server: close() may hang or fail, terminate() cannot
            with contextlib.suppress(Exception):
                pool.terminate()

    # -- tables ---------------------------------------------------------------------------
    async def table(self, name: str, *, refresh: bool = False) -> Table:
        """``name`` (``NAME`` or ``SCHEMA.NAME``) as the database describes it, cached
        until the next reconnect; ``LookupError`` when it does not exist."""
        if not refresh:
            cached = self._tables.get(name)
            if cached is not None:
                return cached
        schema, rel = split_table(name)
        pool = self.pool()
        async with pool.acquire() as conn:
            found = await conn.fetchrow(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p', 'v', 'f')",
                qualified(schema, rel),
            )
            if found is None:
                where = f"schema {schema!r}" if schema else "the search path"
                db = await conn.fetchval("SELECT current_database()")
                raise LookupError(f"table {name!r} does not exist in {where} of database {db!r}")
            oid = found["oid"]
            cols = await conn.fetch(
                "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod) AS sqltype,"
                " a.attnotnull, a.atthasdef FROM pg_attribute a"
                " JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum",
                oid,
            )
            uniq = await conn.fetch(
                "SELECT array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n"
                " ORDER BY k.o) AS cols FROM pg_index i"
                " WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL"
                " AND i.indexprs IS NULL",
                oid,
            )
            hyper = False
            if self.timescaledb:
                hyper = bool(await conn.fetchval(
                    "SELECT count(*) FROM timescaledb_information.hypertables"
                    " WHERE hypertable_schema = $1 AND hypertable_name = $2",
                    found["nspname"], found["relname"],
                ))  # fmt: skip
        table = Table(
            found["nspname"], found["relname"],
            {r["attname"]: Column(r["attname"], r["typname"], r["sqltype"], r["attnotnull"],
                                  r["atthasdef"]) for r in cols},
            [tuple(r["cols"]) for r in uniq], hyper,
        )  # fmt: skip
        self._tables[name] = table
        return table

    async def make_hypertable(self, table: Table, time_column: str) -> bool:
        """Turn ``table`` into a TimescaleDB hypertable on ``time_column`` when the
        extension is installed in this database (True when it is one afterwards)."""
        if table.hypertable:
            return True
        if not self.timescaledb:
            return False
        async with self.pool().acquire() as conn:
            await conn.execute(
                "SELECT create_hypertable($1::regclass, $2::name, if_not_exists => TRUE,"
                " migrate_data => TRUE)",
                table.sql, time_column,
            )  # fmt: skip
        table.hypertable = True
        return True

    def extra_status(self) -> dict[str, Any]:
        link = self._link
        return {
            "database": self.where,
            "server_version": link.server_version if link is not None else None,
            "timescaledb": link.timescaledb if link is not None else None,
        }
