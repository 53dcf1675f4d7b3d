"""A full disk (SQLite's ``max_page_count`` on the writer connection) and its return.

Writes that cannot be stored fail with ``StoreUnavailable`` naming the file and "disk
full", nothing of them is acknowledged, the writer lives on, and writes resume by
themselves once there is room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from mechaway.errors import StoreUnavailable
from mechaway.store.context import ContextKeeper
from mechaway.store.db import Database
from mechaway.store.kv import KVStore
from mechaway.store.maintenance import Maintenance
from mechaway.store.outbox import Outbox
from mechaway.store.series import SeriesStore
from mechaway.store.spool import SqliteSpool

BIG = "x" * 5000  # more than a 4 KiB page: every such write needs a new page


async def fill(db: Database) -> None:
    """No page more than the file has now: the next write needing one fails SQLITE_FULL."""
    pages = db.read("PRAGMA page_count")[0][0]
    await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())


async def room(db: Database) -> None:
    await db.write(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchone())


def assert_disk_full(exc: BaseException | None, db: Database) -> None:
    assert isinstance(exc, StoreUnavailable), repr(exc)
    assert exc.reason == "disk full"
    assert str(db.path) in str(exc) and "disk full" in str(exc)


@pytest.mark.asyncio
async def test_outbox_refuses_when_full_keeps_acknowledged_and_resumes(db: Database) -> None:
    ob = Outbox.of(db)
    acked = [await ob.append("t", i) for i in range(3)]
    await fill(db)
    got = await asyncio.gather(*(ob.append("t", BIG) for _ in range(20)), return_exceptions=True)
    refused = [r for r in got if not isinstance(r, int)]
    acked += [r for r in got if isinstance(r, int)]
    assert refused
    for exc in refused:
        assert_disk_full(exc, db)
    assert db.writer_alive
    st = db.stats()
    assert st["trouble"] == "disk full" and st["failed_writes"] >= 1
    assert st["trouble_since"] is not None and "disk full" in st["last_error"]
    # everything acknowledged is there, in order; nothing refused took a seq
    assert [e.seq for e in ob.peek(0, 1000)] == acked == list(range(1, len(acked) + 1))
    await room(db)
    seq = await ob.append("t", BIG)
    assert seq == acked[-1] + 1
    st = db.stats()
    assert st["trouble"] is None and st["trouble_since"] is None
    assert st["failed_writes"] >= 1 and st["trouble_bursts"] == 1


@pytest.mark.asyncio
async def test_batch_neighbour_of_a_full_write_is_not_acknowledged(db: Database) -> None:
    """SQLite rolls the whole transaction back on SQLITE_FULL: an op before it in the same
    batch was undone too, even if the failing op swallowed the error."""
    await db.write(lambda c: c.execute("CREATE TABLE t (v BLOB)"))
    await fill(db)
    gate = threading.Event()
    hold = db.submit(lambda c: gate.wait(10))  # keeps the writer busy: the rest, one batch

    def swallow(c: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            c.execute("INSERT INTO t VALUES (?)", (BIG,))

    before = db.submit(lambda c: c.execute("UPDATE store_meta SET v = 'before'"))
    full = db.submit(swallow)
    after = db.submit(lambda c: c.execute("UPDATE store_meta SET v = 'after'"))
    gate.set()
    hold.exception(10)  # done (it may share their batch, and its fate)
    for fut in (before, full, after):
        assert fut.exception(10) is not None
    # old: ``before`` reported committed but rolled back, ``after`` committed alone
    assert db.read("SELECT v FROM store_meta WHERE k = 'sync_floor'") == [(0,)]
    assert db.writer_alive
    await room(db)
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (BIG,)))


@pytest.mark.asyncio
async def test_coalesced_items_fail_with_store_error_each(db: Database) -> None:
    series = SeriesStore.of(db)
    await series.append("s", 1.0)
    await fill(db)
    got = await asyncio.gather(
        *(series.append("s", {"v": BIG}) for _ in range(5)), return_exceptions=True
    )
    for exc in got:  # old: the raw sqlite3.OperationalError, after a retry per item
        assert_disk_full(exc, db)
    await room(db)
    await series.append("s", {"v": BIG})
    assert series.info("s")["rows"] == 2


@pytest.mark.asyncio
async def test_logged_once_per_burst(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox.of(db)
    await fill(db)
    caplog.set_level(logging.INFO, logger="mechaway.store")
    for _ in range(10):
        with pytest.raises(StoreUnavailable):
            await ob.append("t", BIG)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk full" in errors[0].getMessage()
    await room(db)
    await ob.append("t", BIG)
    back = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(back) == 1 and "10 writes refused" in back[0].getMessage()
    assert db.stats()["failed_writes"] == 10


@pytest.mark.asyncio
async def test_deleting_works_on_a_full_file_and_makes_room(db: Database) -> None:
    """Acks and retention delete: they need no new page, and free ones for new rows."""
    ob = Outbox.of(db)
    for _ in range(10):
        await ob.append("t", BIG)
    await fill(db)
    with pytest.raises(StoreUnavailable):
        await ob.append("t", BIG)
    assert await ob.ack(10) == 10
    assert await ob.append("t", BIG) == 11  # freed pages reused, no restart
    assert db.stats()["trouble"] is None


@pytest.mark.asyncio
async def test_maintenance_goes_on_when_a_step_cannot_write(db: Database) -> None:
    kv = KVStore.of(db)
    series = SeriesStore.of(db)
    calls: list[str] = []

    async def refused() -> None:
        calls.append("kv")
        raise StoreUnavailable(f"{db.path}: disk full: the write was not stored", "disk full")

    async def trims() -> None:
        calls.append("series")
        raise StoreUnavailable(f"{db.path}: disk full: the write was not stored", "disk full")

    kv.maintain = refused  # type: ignore[method-assign]
    series.maintain = trims  # type: ignore[method-assign]
    await series.append("s", 1.0)  # a NORMAL commit: the sync floor is due
    m = Maintenance(db)
    await m.run_once()  # old: the first refusal ended the round (and was logged each tick)
    assert calls == ["series", "kv"]
    assert m.floor_syncs == 1 and m.status()["unavailable_steps"] == 2


class _Node:
    stateful = True
    params = SimpleNamespace(persist=True)

    def __init__(self, state: Any) -> None:
        self.state = state

    def get_state(self) -> Any:
        return self.state

    def set_state(self, state: Any) -> None:
        self.state = state


def _saved(db: Database, nid: str) -> list[tuple[Any, ...]]:
    return db.read("SELECT state FROM node_context WHERE flow_id = 'f' AND node_id = ?", (nid,))


@pytest.mark.asyncio
async def test_context_save_that_failed_is_written_when_room_is_back(db: Database) -> None:
    keeper = ContextKeeper(db)
    running, retired = _Node({"n": BIG}), _Node({"gone": BIG})
    instances: dict[str, Any] = {"a": running, "b": retired}
    engine = SimpleNamespace(
        flows={"f": SimpleNamespace(instances=instances)},
        on_node_created=None,
        on_node_retired=None,
    )
    keeper.attach(engine)
    await fill(db)
    fut = keeper.save_changed()
    assert fut is not None
    with pytest.raises(StoreUnavailable):
        await fut
    del instances["b"]
    keeper.retire("f", "b", retired)  # also fails: the file is still full
    with contextlib.suppress(StoreUnavailable):  # may share the retire's batch
        await db.write(lambda c: None)  # after the retire's commit
    for _ in range(3):
        await asyncio.sleep(0)  # its outcome reaches the loop
    assert keeper.status()["save_errors"] == 2 and keeper.status()["unsaved"] == 2
    await room(db)
    await keeper.flush()  # old: nothing "changed", so nothing was written again
    assert _saved(db, "a") and _saved(db, "b")
    assert keeper.status()["unsaved"] == 0


@pytest.mark.asyncio
async def test_spool_row_refused_is_written_once_room_is_back(db: Database) -> None:
    spool = SqliteSpool(db, "c")
    await fill(db)
    first = spool.append("t", BIG.encode(), 1, False, durable=True)
    assert isinstance(first, Future)
    assert_disk_full(first.exception(10), db)  # a QoS 1 source must not PUBACK on this
    assert len(spool) == 1  # still queued in memory: delivered if the process lives
    await room(db)
    for _ in range(2):
        fut = spool.append("t", b"x", 1, False)
        assert fut is not None
        await asyncio.wrap_future(fut)
    rows = db.read("SELECT id FROM mqtt_spool WHERE conn = 'c' ORDER BY id")
    assert rows == [(1,), (2,), (3,)]  # old: row 1 never written: lost at a restart
    assert spool.write_failures == 1


@pytest.mark.asyncio
async def test_spool_does_not_rewrite_a_delivered_row(db: Database) -> None:
    spool = SqliteSpool(db, "c")
    await fill(db)
    first = spool.append("t", BIG.encode(), 1, False)
    assert first is not None and first.exception(10) is not None
    spool.remove_upto(1)  # delivered meanwhile
    await room(db)
    for _ in range(2):
        fut = spool.append("t", b"x", 1, False)
        assert fut is not None
        await asyncio.wrap_future(fut)
    assert db.read("SELECT id FROM mqtt_spool WHERE conn = 'c' ORDER BY id") == [(2,), (3,)]


def test_open_on_a_full_disk_is_not_called_damage(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mechaway.db"

    def no_room(self: Database) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Database, "_connect", no_room)
    with pytest.raises(StoreUnavailable) as err:
        Database(path).open()
    text = str(err.value)
    assert "disk full" in text and str(path) in text  # old: "damaged ... move the file aside"
    assert "damaged" not in text and "salvage" not in text
