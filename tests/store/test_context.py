"""Node context: ``persist: true`` state restored after a restart or redeploy, saved on
retire and periodically at a bounded rate."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.store.context import ContextKeeper
from mechaway.store.db import Database
from mechaway.testing.nodes import COLLECTED

from .util import deploy, edge, flow, got, node


def deadband(persist: bool = True, band: float = 5.0) -> dict[str, Any]:
    return flow(
        "f",
        [node("d", "DeadbandNode", band=band, persist=persist), node("k", "CollectNode")],
        [edge("src", "d"), edge("d", "k")],
    )


@asynccontextmanager
async def daemon_like(
    path: Path, interval: float = 60.0
) -> AsyncIterator[tuple[Engine, ContextKeeper]]:
    """Store + engine + keeper, started and stopped in the daemon's order."""
    db = Database(path, commit_interval=0.002)
    db.open()
    engine = Engine(Services(store=db), stop_timeout=5.0)
    keeper = ContextKeeper(db, interval=interval)
    keeper.attach(engine)
    await keeper.start()
    try:
        yield engine, keeper
    finally:
        await keeper.stop()
        await engine.stop()
        await db.close()


def stored(path: Path) -> dict[tuple[str, str], Any]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT flow_id, node_id, state FROM node_context").fetchall()
    finally:
        conn.close()
    return {(r[0], r[1]): orjson.loads(r[2]) for r in rows}


def feed(engine: Engine, values: list[float]) -> None:
    for v in values:
        engine.inject("f", "d", {"payload": v, "topic": "t"})


@pytest.mark.asyncio
async def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    async with daemon_like(path) as (engine, _keeper):
        await deploy(engine, deadband())
        feed(engine, [10.0])
    assert stored(path) == {("f", "d"): {"t": 10.0}}  # saved when the node was retired
    COLLECTED.clear()

    async with daemon_like(path) as (engine, keeper):
        await deploy(engine, deadband())
        assert keeper.restored == 1
        feed(engine, [12.0, 20.0])  # 12 is inside the band around the restored 10
        await asyncio.sleep(0.05)
        assert [m["payload"] for m in got("f", "k")] == [20.0]


@pytest.mark.asyncio
async def test_without_persist_nothing_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    async with daemon_like(path) as (engine, _keeper):
        await deploy(engine, deadband(persist=False))
        feed(engine, [10.0])
    assert stored(path) == {}


@pytest.mark.asyncio
async def test_periodic_save_covers_a_crash(tmp_path: Path) -> None:
    """No retire (as after kill -9): what the last periodic pass saved is there."""
    path = tmp_path / "m.db"
    db = Database(path, commit_interval=0.002)
    db.open()
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db, interval=0.05)
    keeper.attach(engine)
    await keeper.start()
    await deploy(engine, deadband())
    feed(engine, [10.0])
    await asyncio.sleep(0.2)
    assert stored(path) == {("f", "d"): {"t": 10.0}}
    # abandon without retiring anything (the writer thread is stopped only to free the file)
    await keeper.stop()
    engine.on_node_retired = None
    await engine.stop()
    await db.close()

    async with daemon_like(path) as (engine2, keeper2):
        await deploy(engine2, deadband())
        assert keeper2.restored == 1


@pytest.mark.asyncio
async def test_write_rate_is_bounded(db: Database) -> None:
    """A state that changes with every message costs one durable commit per interval."""
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db, interval=0.1)
    keeper.attach(engine)
    await keeper.start()
    try:
        await deploy(engine, deadband(band=0.0))
        syncs = db.fsync_commits
        for i in range(50):  # 0.5 s of constant change
            feed(engine, [float(i)])
            await asyncio.sleep(0.01)
        n = db.fsync_commits - syncs
        assert 2 <= n <= 7, n
        assert keeper.saves <= 7
    finally:
        await keeper.stop()
        await engine.stop()


@pytest.mark.asyncio
async def test_unchanged_state_is_not_rewritten(db: Database) -> None:
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db)
    keeper.attach(engine)
    try:
        await deploy(engine, deadband())
        feed(engine, [1.0])
        assert keeper.save_changed() is not None
        assert keeper.save_changed() is None
        await keeper.flush()
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_redeploy_hands_the_running_state_to_the_new_instance(db: Database) -> None:
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db)
    keeper.attach(engine)
    try:
        await deploy(engine, deadband(band=5.0))
        feed(engine, [10.0])
        await deploy(engine, deadband(band=4.0), rev=2)  # params changed: a new instance
        feed(engine, [13.0, 14.5])
        await asyncio.sleep(0.05)
        assert [m["payload"] for m in got("f", "k")] == [10.0, 14.5]
        # the replaced instance did not overwrite the new one's state when it retired
        await keeper.flush()
        assert stored(db.path)[("f", "d")] == {"t": 14.5}
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_window_state_survives_and_restore_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    win = flow(
        "f",
        [node("d", "WindowNode", op="sum", size=10, persist=True), node("k", "CollectNode")],
        [edge("src", "d"), edge("d", "k")],
    )
    async with daemon_like(path) as (engine, _keeper):
        await deploy(engine, win)
        feed(engine, [1.0] * 7)
    COLLECTED.clear()
    async with daemon_like(path) as (engine, keeper):
        await deploy(engine, win)
        assert keeper.last_restore_ms < 50
        feed(engine, [1.0] * 3)
        await asyncio.sleep(0.05)
        assert [(m["payload"], m["count"]) for m in got("f", "k")] == [(10.0, 10)]


@pytest.mark.asyncio
async def test_a_state_that_cannot_be_encoded_is_counted_not_fatal(db: Database) -> None:
    class Odd:
        stateful = True
        params = type("P", (), {"persist": True})()

        def get_state(self) -> Any:
            return {1j}

        def set_state(self, state: Any) -> None:
            pass

    keeper = ContextKeeper(db)
    keeper.retire("f", "odd", Odd())
    assert keeper.save_errors == 1
