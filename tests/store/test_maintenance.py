"""Housekeeping: the sync floor (bounded power-loss window for NORMAL writes, no fsync
when idle), retention run in small ops, the group-commit window, the loop never waits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mechaway.store.db import Database
from mechaway.store.kv import KVStore
from mechaway.store.maintenance import Maintenance
from mechaway.store.series import SeriesStore


@pytest.mark.asyncio
async def test_sync_floor_fsyncs_only_after_unsynced_writes(db: Database) -> None:
    m = Maintenance(db, sync_floor=0.0)
    await m.sync()  # the durable migration commits left nothing unsynced
    syncs = db.fsync_commits
    assert not await m.sync()
    await KVStore.of(db).set("n", "k", 1)  # a NORMAL commit
    assert db.unsynced
    assert await m.sync()
    assert not db.unsynced and db.fsync_commits == syncs + 1
    # idle: nothing to make durable, no fsync, no write
    assert not await m.sync()
    await db.write(lambda c: c.execute("SELECT 1").fetchall())  # writes nothing
    assert not db.unsynced and not await m.sync()
    assert db.fsync_commits == syncs + 1


@pytest.mark.asyncio
async def test_sync_floor_is_rate_limited(db: Database) -> None:
    m = Maintenance(db, sync_floor=10.0)
    kv = KVStore.of(db)
    await kv.set("n", "a", 1)
    assert await m.sync()
    await kv.set("n", "b", 1)
    assert not await m.sync()  # within the floor: wait for the next one
    assert await m.sync(force=True)


@pytest.mark.asyncio
async def test_run_once_applies_retention_and_the_task_stops(db: Database) -> None:
    s = SeriesStore.of(db)
    s.age_check_interval = 0.0
    now = time.time()
    await asyncio.gather(*[s.append("x", i, now - 100 + i, max_age_s=50) for i in range(100)])
    kv = KVStore.of(db)
    kv.purge_interval = 0.0
    await kv.set("n", "k", 1, ttl=0.01)
    await asyncio.sleep(0.02)
    m = Maintenance(db, tick=0.01, sync_floor=0.0)
    await m.start()
    deadline = time.monotonic() + 5
    # a round's floor sync comes after its retention: wait for all three, or a stop that
    # lands between them cancels the sync before it is counted (flaky on a busy machine)
    while s.info("x")["rows"] > 50 or kv.expired_purged == 0 or m.floor_syncs == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await m.stop()
    await m.stop()  # idempotent
    assert 49 <= s.info("x")["rows"] <= 50
    assert m.status()["floor_syncs"] >= 1
    syncs = m.floor_syncs
    await asyncio.sleep(0.05)
    assert m.floor_syncs == syncs  # stopped: no more rounds


@pytest.mark.asyncio
async def test_group_commit_window_bounds_the_commit_rate(tmp_path: Path) -> None:
    """Writes trickling in every millisecond share commits: at most one per window."""
    db = Database(tmp_path / "m.db", commit_interval=0.02)
    db.open()
    try:
        kv = KVStore.of(db)
        c0 = db.commits
        t0 = time.monotonic()
        futs = []
        for i in range(200):
            futs.append(kv.set("n", str(i), i))
            await asyncio.sleep(0.001)
        await asyncio.gather(*futs)
        elapsed = time.monotonic() - t0
        assert db.commits - c0 <= elapsed / 0.02 + 2
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_the_loop_keeps_running_during_a_big_retention_pass(db: Database) -> None:
    s = SeriesStore(db, age_check_interval=0.0, batch=2000)
    now = time.time()
    await asyncio.gather(*[s.append("big", 1.0, now - 10_000 + i / 10) for i in range(60_000)])
    lag = 0.0
    done = False

    async def watch() -> None:
        nonlocal lag
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = max(lag, time.perf_counter() - t - 0.001)

    w = asyncio.ensure_future(watch())
    await db.write(
        lambda c: c.execute("UPDATE series SET max_age_s = 1 WHERE name = 'big'").fetchall()
    )
    await s.maintain()
    done = True
    await w
    assert s.info("big")["rows"] == 0
    assert lag < 0.05, f"the loop stalled {lag * 1000:.0f} ms"
