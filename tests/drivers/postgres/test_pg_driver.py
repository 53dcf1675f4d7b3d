"""PostgresDriver against the machine's PostgreSQL: settings checked at the boundary,
connect, tables read from the catalog, a database that refuses connections, one that goes
away and comes back, one that is not there at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from pg_server import execute, set_allowed

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.postgres import PostgresDriver, PostgresSettings, safe_dsn
from mechaway.errors import ConfigError, NotConnected
from mechaway.testing.daemon import free_port

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.2, "ping_interval": 0.2,
        "connect_timeout": 2.0}  # fmt: skip


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


def settings(dsn: str, **extra: Any) -> PostgresSettings:
    parsed = parse_sections({"postgres": {"db": {"dsn": dsn, **FAST, **extra}}})
    s = parsed["postgres"]["db"]
    assert isinstance(s, PostgresSettings)
    return s


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("mysql://u@h/db", "must start with postgresql://"),
        ("postgresql://u@h:99999/db", "dsn is not a URL"),
        ("postgresql://u@h/db\nx", "control character"),
        ("postgresql://", "names no host and no database"),
    ],
)
def test_a_bad_dsn_is_a_located_config_error(dsn: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sections({"postgres": {"main": {"dsn": dsn}}}, "mechaway.toml")
    assert "postgres.main" in str(err.value) and says in str(err.value)


def test_unknown_keys_and_wrong_types_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"postgres\.main.*unknown key.*pool"):
        parse_sections({"postgres": {"main": {"dsn": "postgresql://h/db", "pool": 2}}})
    with pytest.raises(ConfigError, match="pool_size"):
        parse_sections({"postgres": {"main": {"dsn": "postgresql://h/db", "pool_size": "4"}}})


def test_the_password_never_shows() -> None:
    assert safe_dsn("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert safe_dsn("postgresql://app@db/x") == "postgresql://app@db/x"


@pytest.mark.asyncio
async def test_connects_and_reads_a_table_from_the_catalog(dsn: str) -> None:
    await execute(dsn, "CREATE SCHEMA lab")
    await execute(dsn, 'CREATE TABLE lab."Mixed" (id int PRIMARY KEY, v numeric(5,2) NOT NULL,'
                  ' at timestamptz DEFAULT now(), UNIQUE (v, at))')  # fmt: skip
    drv = PostgresDriver("db", settings(dsn))
    async with drv:
        assert await drv.wait_connected(10)
        st = drv.status()
        assert st["state"] == "connected" and st["server_version"]
        assert st["timescaledb"] is None  # not installed here: detected, not required
        t = await drv.table("lab.Mixed")
        assert list(t.columns) == ["id", "v", "at"]
        assert t.columns["v"].sqltype == "numeric(5,2)" and t.columns["v"].not_null
        assert t.columns["at"].has_default and t.columns["at"].typname == "timestamptz"
        assert sorted(t.unique) == [("id",), ("v", "at")]
        assert t.sql == '"lab"."Mixed"'
        with pytest.raises(LookupError, match=r"'lab\.mixed' does not exist in schema 'lab'"):
            await drv.table("lab.mixed")  # names are exact
        with pytest.raises(LookupError, match="of database 'mw_test"):
            await drv.table("nothere")
    assert drv.status()["state"] == "closed"


@pytest.mark.asyncio
async def test_a_database_that_goes_away_is_reported_and_reconnected(dsn: str) -> None:
    conns = Connections(parse_sections({"postgres": {"db": {"dsn": dsn, **FAST}}}))
    drv = await conns.get(PostgresDriver, "db")
    try:
        assert await drv.wait_connected(10)
        await set_allowed(dsn, False)  # new connections refused, live ones ended
        await until(lambda: not drv.connected, what="the loss to be noticed by the ping")
        with pytest.raises(NotConnected, match=r"postgres\[db\]: not connected"):
            drv.pool()
        await until(lambda: drv.health.state == "refused", what="a refused attempt")
        st = conns.status()["postgres.db"]
        assert "not currently accepting connections" in st["last_error"]
        assert st["counters"]["lost"] >= 1 and st["counters"]["connect_failures"] >= 1
        await set_allowed(dsn, True)
        await until(lambda: drv.connected, what="the reconnect")
        assert drv.status()["reconnects"] == 1
        assert await drv.pool().fetchval("SELECT 41 + 1") == 42
    finally:
        await set_allowed(dsn, True)
        await conns.close()


@pytest.mark.asyncio
async def test_a_node_reporting_a_lost_connection_drops_the_pool(dsn: str) -> None:
    drv = PostgresDriver("db", settings(dsn, ping_interval=3600))
    async with drv:
        assert await drv.wait_connected(10)
        assert drv.lost(ValueError("bad row")) is False and drv.connected
        assert drv.lost(ConnectionResetError("peer reset")) is True
        assert not drv.connected
        await until(lambda: drv.connected, what="the supervisor to reopen the pool")
        assert drv.health.counters["lost"] == 1


@pytest.mark.asyncio
async def test_nothing_listening_is_unreachable_and_a_missing_database_named() -> None:
    port = free_port()
    drv = PostgresDriver("gone", settings(f"postgresql://postgres@127.0.0.1:{port}/x"))
    async with drv:
        await until(lambda: drv.health.state == "unreachable", what="the failed attempt")
        assert not await drv.wait_connected(0.05)
    drv = PostgresDriver("nodb", settings("postgresql://postgres@127.0.0.1:5432/mw_no_such_db"))
    async with drv:
        await until(lambda: drv.health.state == "no such database", what="the refusal")
        assert 'database "mw_no_such_db" does not exist' in str(drv.health.last_error)


@pytest.mark.asyncio
async def test_the_password_file_is_read_at_connect(dsn: str, tmp_path: Any) -> None:
    missing = tmp_path / "nope"
    drv = PostgresDriver("db", settings(dsn, password_file=str(missing)))
    async with drv:
        await until(lambda: drv.health.state == "config", what="the failed attempt")
        assert "password_file" in str(drv.health.last_error)
    pw = tmp_path / "pw"
    pw.write_text("anything\n")  # trust auth: accepted, and the file was read
    drv = PostgresDriver("db", settings(dsn, password_file=str(pw)))
    async with drv:
        assert await drv.wait_connected(10)


@pytest.mark.asyncio
async def test_a_silent_network_is_noticed_by_the_ping_and_recovered(dsn: str) -> None:
    """Between the daemon and the server a proxy stops forwarding without closing anything
    (an unplugged cable): the ping times out, the connection is reported lost, attempts
    fail until the path works again, then it reconnects."""
    from pg_server import Proxy

    proxy = Proxy()
    await proxy.start()
    drv = PostgresDriver("db", settings(proxy.dsn(dsn), connect_timeout=0.5))
    try:
        async with drv:
            assert await drv.wait_connected(10)
            proxy.pause()
            await until(lambda: not drv.connected, what="the silent link to be noticed")
            await until(lambda: drv.health.counters["connect_failures"] >= 1,
                        what="an attempt through the dead path")  # fmt: skip
            assert drv.health.state in ("unreachable", "error", "connecting")
            proxy.resume()
            proxy.cut()  # what the dead path still held
            await until(lambda: drv.connected, what="the reconnect")
            assert await drv.pool().fetchval("SELECT 1") == 1
            assert drv.health.counters["lost"] >= 1
    finally:
        await proxy.close()
