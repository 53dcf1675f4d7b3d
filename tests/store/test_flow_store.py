"""The SQLite store: flow revisions, rollback through the FlowManager, group commit that
survives a failing op, and a damaged file refused with a recovery hint."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechaway.errors import FlowError, StoreError
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node
from mechaway.testing.nodes import BadSourceNode

pytestmark = pytest.mark.asyncio


def flow(fid: str = "f", keep: int = 20) -> dict[str, Any]:
    return doc(fid, [IDLE_SOURCE, node("log", "LogNode", keep=keep)], [edge("src", "log")])


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    d = Database(tmp_path / "data" / "mechaway.db")
    d.open()
    try:
        yield d
    finally:
        await d.close()


@pytest_asyncio.fixture
async def manager(db: Database) -> AsyncIterator[FlowManager]:
    engine = Engine(stop_timeout=2.0)
    try:
        yield FlowManager(engine, FlowStore(db))
    finally:
        await engine.stop()


# -- FlowStore --------------------------------------------------------------------------------
async def test_revisions_are_numbered_and_kept(db: Database) -> None:
    store = FlowStore(db)
    assert await store.save(flow(keep=1), "file") == (1, True)
    assert await store.save(flow(keep=2), "api") == (2, True)
    assert await store.save(flow("g"), "hub") == (1, True)
    hist = store.history("f")
    assert [(r.rev, r.source) for r in hist] == [(1, "file"), (2, "api")]
    assert hist[0].doc == flow(keep=1)
    assert hist[0].created_at <= hist[1].created_at
    assert store.active_rev("f") == 2
    assert [(r.flow_id, r.rev) for r in store.active()] == [("f", 2), ("g", 1)]
    got = store.get("f", 1)
    assert got is not None and got.doc == flow(keep=1)
    assert store.get("f", 9) is None
    assert store.active_rev("nope") is None
    assert store.history("nope") == []


async def test_identical_redeploy_is_not_a_new_revision(db: Database) -> None:
    store = FlowStore(db)
    assert await store.save(flow(), "file") == (1, True)
    reordered = dict(reversed(list(flow().items())))  # key order does not matter
    assert await store.save(reordered, "api") == (1, False)
    assert len(store.history("f")) == 1
    # identical to an OLDER revision (not the active one) is a new revision
    await store.save(flow(keep=2), "api")
    assert await store.save(flow(), "api") == (3, True)


async def test_deactivate_keeps_history(db: Database) -> None:
    store = FlowStore(db)
    await store.save(flow(), "file")
    await store.deactivate("f")
    assert store.active_rev("f") is None
    assert store.active() == []
    assert len(store.history("f")) == 1
    # the same document deployed again after a delete is a new, active revision
    assert await store.save(flow(), "api") == (2, True)
    assert store.active_rev("f") == 2


async def test_revisions_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "mechaway.db"
    d = Database(path)
    d.open()
    await FlowStore(d).save(flow(), "file")
    await d.close()
    await d.close()  # idempotent
    d2 = Database(path)
    d2.open()
    try:
        assert [r.rev for r in FlowStore(d2).active()] == [1]
    finally:
        await d2.close()


# -- FlowManager: deploy, rollback, delete ----------------------------------------------------
async def test_rollback_deploys_the_old_doc_as_a_new_revision(manager: FlowManager) -> None:
    r1 = await manager.deploy(flow(keep=1), "file")
    r2 = await manager.deploy(flow(keep=2), "api")
    assert (r1.rev, r1.new_revision, r2.rev) == (1, True, 2)
    assert r2.diff.changed == ("log",)
    rb = await manager.rollback("f", 1)
    assert rb.rev == 3
    assert rb.new_revision
    assert rb.diff.changed == ("log",)
    hist = manager.store.history("f")
    assert [(r.rev, r.source) for r in hist] == [(1, "file"), (2, "api"), (3, "rollback")]
    assert hist[2].doc == hist[0].doc
    running = manager.engine.flows["f"]
    assert running.rev == 3
    assert running.instances["log"].params.keep == 1


async def test_rollback_to_a_missing_revision_is_not_found(manager: FlowManager) -> None:
    await manager.deploy(flow(), "api")
    with pytest.raises(KeyError) as exc:
        await manager.rollback("f", 7)
    assert "flow 'f' has no revision 7" in str(exc.value)
    assert manager.store.active_rev("f") == 1


async def test_identical_deploy_through_manager(manager: FlowManager) -> None:
    await manager.deploy(flow(), "file")
    again = await manager.deploy(flow(), "api")
    assert (again.rev, again.new_revision) == (1, False)
    assert again.diff.noop
    assert manager.engine.flows["f"].rev == 1


async def test_invalid_or_failing_deploy_records_nothing(manager: FlowManager) -> None:
    await manager.deploy(flow(), "api")
    bad = flow()
    bad["nodes"][1]["params"] = {"keep": "many"}
    with pytest.raises(FlowError):
        await manager.deploy(bad, "api")
    broken = flow()
    broken["nodes"].append({"id": "hw", "type": BadSourceNode.type_name, "params": {}})
    with pytest.raises(FlowError):
        await manager.deploy(broken, "api")
    assert [r.rev for r in manager.store.history("f")] == [1]
    assert manager.engine.flows["f"].rev == 1


async def test_delete_deactivates_and_stops(manager: FlowManager) -> None:
    await manager.deploy(flow(), "api")
    assert await manager.delete("f") is True
    assert "f" not in manager.engine.flows
    assert manager.store.active_rev("f") is None
    assert len(manager.store.history("f")) == 1
    assert await manager.delete("f") is False
    assert await manager.delete("never") is False


async def test_start_stored_brings_active_flows_back(db: Database, manager: FlowManager) -> None:
    await manager.deploy(flow("a", keep=1), "api")
    await manager.deploy(flow("a", keep=3), "api")
    await manager.deploy(flow("b"), "file")
    await manager.deploy(flow("gone"), "file")
    await manager.delete("gone")
    engine = Engine()
    try:
        await FlowManager(engine, FlowStore(db)).start_stored()
        assert {fid: rf.rev for fid, rf in engine.flows.items()} == {"a": 2, "b": 1}
        assert engine.flows["a"].instances["log"].params.keep == 3
    finally:
        await engine.stop()


# -- Database: group commit -------------------------------------------------------------------
async def test_a_failing_op_does_not_undo_its_batch_neighbours(db: Database) -> None:
    await db.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    entered, gate = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> str:
        entered.set()
        gate.wait(5)
        return "first"

    def insert(k: str, fail: Exception | None = None) -> Any:
        def op(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES (?)", (k,))
            if fail is not None:
                raise fail
            return k

        return op

    first = db.submit(blocker)
    assert await asyncio.to_thread(entered.wait, 5)
    commits = db.commits
    # these queue up while the writer is busy, so they are committed as one batch
    futs = [
        db.submit(insert("a")),
        db.submit(insert("b", ValueError("op b failed after its insert"))),
        db.submit(insert("a")),  # primary key violation: sqlite3.IntegrityError
        db.submit(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)")),
        db.submit(insert("c"), durable=True),
    ]
    gate.set()
    assert await asyncio.wrap_future(first) == "first"
    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futs), return_exceptions=True)
    assert results[0] == "a"
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert isinstance(results[3], sqlite3.OperationalError)
    assert results[4] == "c"
    assert db.commits - commits == 2  # the blocker's batch and the one batch of five
    assert db.read("SELECT k FROM t ORDER BY k") == [("a",), ("c",)]  # b rolled back alone
    assert db.fsync_commits >= 1


async def test_writes_from_the_loop_keep_order(db: Database) -> None:
    await db.write(lambda c: c.execute("CREATE TABLE n (i INTEGER)"))
    await asyncio.gather(
        *(db.write(lambda c, i=i: c.execute("INSERT INTO n VALUES (?)", (i,))) for i in range(200))
    )
    assert [r[0] for r in db.read("SELECT i FROM n ORDER BY rowid")] == list(range(200))
    assert db.stats()["writes"] >= 201


async def test_store_not_open_is_a_store_error(tmp_path: Path) -> None:
    d = Database(tmp_path / "x.db")
    with pytest.raises(StoreError, match="not open"):
        d.submit(lambda c: None)
    with pytest.raises(StoreError, match="not open"):
        d.read("SELECT 1")


async def test_wal_mode(db: Database) -> None:
    assert db.read("PRAGMA journal_mode") == [("wal",)]


# -- damaged files ----------------------------------------------------------------------------
def _assert_recovery_hint(err: StoreError, path: Path) -> None:
    text = str(err)
    assert str(path) in text
    assert "damaged" in text
    assert "Nothing was changed" in text
    assert "Recovery" in text
    assert ".recover" in text
    assert "\n" not in text


async def test_garbage_file_is_refused_with_a_recovery_hint(tmp_path: Path) -> None:
    path = tmp_path / "mechaway.db"
    garbage = b"this is not an SQLite database at all " * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as exc:
        Database(path).open()
    _assert_recovery_hint(exc.value, path)
    assert path.read_bytes() == garbage  # nothing was changed


async def test_damaged_pages_are_refused_with_a_recovery_hint(tmp_path: Path) -> None:
    path = tmp_path / "mechaway.db"
    d = Database(path)
    d.open()
    store = FlowStore(d)
    for i in range(40):
        await store.save(flow(f"f{i}", keep=i), "api")
    await d.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 : 3 * 4096] = b"\xa5" * (2 * 4096)  # wipe pages 2 and 3 (table b-trees)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as exc:
        Database(path).open()
    _assert_recovery_hint(exc.value, path)


async def test_a_revision_that_cannot_be_recorded_does_not_stay_running(
    manager: FlowManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deploy = run + record. If recording fails, the previous revision runs again."""
    first = flow()
    await manager.deploy(first, "api")
    running_before = manager.engine.flows["f"].valid.doc.to_builtins()

    async def broken_save(doc: Any, source: Any) -> tuple[int, bool]:
        raise StoreError("disk full")

    monkeypatch.setattr(manager.store, "save", broken_save)
    second = flow(keep=3)
    with pytest.raises(StoreError, match="disk full"):
        await manager.deploy(second, "api")
    assert manager.engine.flows["f"].valid.doc.to_builtins() == running_before
    assert manager.engine.flows["f"].rev == 1

    third = flow("g")
    with pytest.raises(StoreError):
        await manager.deploy(third, "api")
    assert "g" not in manager.engine.flows  # a new flow that cannot be recorded never runs
