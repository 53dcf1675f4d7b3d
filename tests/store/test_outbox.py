"""The outbox: monotonic seq, fsync before acknowledgement, bounds with counted drops,
peek/ack for the hub sync client, receipts a source can await."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mechaway.nodes.base import Emit, emit_collecting
from mechaway.runtime.engine import Engine
from mechaway.store.db import Database
from mechaway.store.outbox import FLAG_DUP, Outbox, OutboxFull

from .util import deploy, edge, flow, got, node, wait_until


def _rows(path: Path) -> list[tuple[int, bytes, int]]:
    """What another connection (another process, after a crash) sees in the file."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, payload, flags FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_seqs_are_monotonic_and_never_reused(db: Database) -> None:
    ob = Outbox.of(db)
    seqs = await asyncio.gather(*[ob.append("t", {"n": i}) for i in range(100)])
    assert seqs == list(range(1, 101))
    entries = ob.peek(0, 10)
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[3].value() == {"n": 3} and entries[3].topic == "t"
    assert [e.seq for e in ob.peek(95, 10)] == [96, 97, 98, 99, 100]

    assert await ob.ack(50) == 50
    st = ob.state()
    assert (st["messages"], st["first_seq"], st["last_seq"], st["acked_upto"]) == (50, 51, 100, 50)
    assert await ob.ack(40) == 0  # already acknowledged: nothing to do
    assert await ob.ack(10_000) == 50  # beyond the end: everything stored
    assert ob.state()["messages"] == 0 and ob.state()["bytes"] == 0
    assert await ob.append("t", "after all acked") == 101


@pytest.mark.asyncio
async def test_seqs_continue_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    d = Database(path, commit_interval=0.001)
    d.open()
    ob = Outbox.of(d)
    await asyncio.gather(*[ob.append("t", i) for i in range(10)])
    await ob.ack(10)
    epoch = ob.state()["epoch"]
    await d.close()
    d2 = Database(path, commit_interval=0.001)
    d2.open()
    try:
        ob2 = Outbox.of(d2)
        assert await ob2.append("t", "x") == 11
        assert ob2.state()["epoch"] == epoch
    finally:
        await d2.close()


@pytest.mark.asyncio
async def test_acknowledged_means_committed_with_fsync(db: Database) -> None:
    ob = Outbox.of(db)
    seen: list[list[tuple[int, bytes, int]]] = []
    syncs = db.fsync_commits
    fut = ob.append("t", {"v": 1})
    # at the moment the acknowledgement arrives, another connection already sees the row
    fut.add_done_callback(lambda _f: seen.append(_rows(db.path)))
    assert await fut == 1
    assert seen == [[(1, b'{"v":1}', 0)]]
    assert db.fsync_commits > syncs  # committed with synchronous=FULL


@pytest.mark.asyncio
async def test_reject_new_refuses_and_counts(db: Database) -> None:
    ob = Outbox.of(db)
    res = await asyncio.gather(
        *[ob.append("t", i, max_messages=10) for i in range(15)], return_exceptions=True
    )
    assert res[:10] == list(range(1, 11))
    assert all(isinstance(r, OutboxFull) for r in res[10:])
    assert ob.rejected == 5
    st = ob.state()
    assert st["messages"] == 10 and st["dropped"] == 0 and st["rejected"] == 5
    assert [r[0] for r in _rows(db.path)] == list(range(1, 11))  # the old ones are kept


@pytest.mark.asyncio
async def test_drop_oldest_evicts_and_counts(db: Database) -> None:
    ob = Outbox.of(db)
    res = await asyncio.gather(
        *[ob.append("t", i, policy="drop_oldest", max_messages=10) for i in range(25)]
    )
    assert res == list(range(1, 26))
    st = ob.state()
    assert (st["messages"], st["first_seq"], st["last_seq"], st["dropped"]) == (10, 16, 25, 15)
    assert [r[0] for r in _rows(db.path)] == list(range(16, 26))
    # the bound also holds across later batches
    await asyncio.gather(
        *[ob.append("t", i, policy="drop_oldest", max_messages=10) for i in range(3)]
    )
    assert ob.state()["messages"] == 10 and ob.state()["dropped"] == 18


@pytest.mark.asyncio
async def test_byte_bound(db: Database) -> None:
    ob = Outbox.of(db)
    big = "x" * 1000
    res = await asyncio.gather(
        *[ob.append("t", big, max_bytes=10_000) for i in range(20)], return_exceptions=True
    )
    ok = [r for r in res if isinstance(r, int)]
    assert 5 <= len(ok) <= 9
    assert ob.state()["bytes"] <= 10_000
    too_big = ob.append("t", "y" * 20_000, max_bytes=10_000)
    with pytest.raises(OutboxFull, match="larger than the bound"):
        await too_big
    await asyncio.gather(
        *[ob.append("t", big, policy="drop_oldest", max_bytes=10_000) for i in range(30)]
    )
    assert 9_000 <= ob.state()["bytes"] <= 10_000


@pytest.mark.asyncio
async def test_writer_backlog_is_refused_at_once(db: Database) -> None:
    ob = Outbox(db, max_inflight=5)
    futs = [ob.append("t", i) for i in range(8)]
    assert [f.done() for f in futs[5:]] == [True, True, True]
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert res[:5] == [1, 2, 3, 4, 5]
    assert all(isinstance(r, OutboxFull) for r in res[5:])


@pytest.mark.asyncio
async def test_dup_flag_is_stored(db: Database) -> None:
    ob = Outbox.of(db)
    await ob.append("t", 1)
    await ob.append("t", 1, dup=True)
    assert [e.dup for e in ob.peek()] == [False, True]
    assert _rows(db.path)[1][2] == FLAG_DUP


def _feeder(engine: Engine, fid: str, nid: str) -> Emit:
    def feed(msg: dict[str, Any], port: str = "out", /) -> None:
        engine.inject(fid, nid, msg)

    return feed


@pytest.mark.asyncio
async def test_receipts_collect_the_appends_of_one_emit(db: Database, engine: Engine) -> None:
    """A source dispatches with emit_collecting: it can await exactly its message's
    durability (an MQTT QoS 1 PUBACK waits for these)."""
    await deploy(
        engine,
        flow(
            "up",
            [node("a", "UpstreamNode"), node("b", "UpstreamNode", topic="copy"),
             node("k", "CollectNode")],
            [edge("src", "a"), edge("src", "b"), edge("a", "k")],
        ),
    )  # fmt: skip
    syncs = db.fsync_commits
    both = [
        *emit_collecting(_feeder(engine, "up", "a"), {"payload": 7, "topic": "x", "ts": 1.0}),
        *emit_collecting(_feeder(engine, "up", "b"), {"payload": 8, "topic": "x", "ts": 1.0}),
    ]
    assert len(both) == 2
    assert await asyncio.wait_for(asyncio.gather(*both), 5) == [1, 2]
    assert db.fsync_commits == syncs + 1  # both in one group commit
    assert [(e.topic, e.value()) for e in Outbox.of(db).peek()] == [("x", 7), ("copy", 8)]
    # the acknowledged message goes on, with its seq
    await wait_until(lambda: got("up", "k"), what="the acked message")
    assert got("up", "k")[0]["seq"] == 1
    # outside a collector, appends register nowhere (and nothing fails)
    engine.inject("up", "a", {"payload": 9, "topic": "x"})
    await wait_until(lambda: len(got("up", "k")) == 2)


@pytest.mark.asyncio
async def test_receipt_reports_a_refusal(db: Database, engine: Engine) -> None:
    await deploy(
        engine, flow("up", [node("a", "UpstreamNode", max_messages=1)], [edge("src", "a")])
    )
    feed = _feeder(engine, "up", "a")
    await asyncio.gather(*emit_collecting(feed, {"payload": 1, "topic": "x"}))
    refused = emit_collecting(feed, {"payload": 2, "topic": "x", "dup": True})
    with pytest.raises(OutboxFull):
        await asyncio.gather(*refused)
    await wait_until(lambda: engine.status()["up"]["nodes"]["a"]["dropped"] == 1)
    st = engine.status()["up"]["nodes"]["a"]
    assert st["rejected"] == 1 and st["acked"] == 1 and st["outbox"]["messages"] == 1


@pytest.mark.asyncio
async def test_durable_throughput_uses_group_commit(db: Database) -> None:
    """Many appends share few fsyncs (the benchmark measures the rate)."""
    ob = Outbox.of(db)
    syncs = db.fsync_commits
    n = 20_000
    seqs = await asyncio.gather(*[ob.append("t", {"n": i}) for i in range(n)])
    assert seqs[-1] == n
    assert db.fsync_commits - syncs <= 10
