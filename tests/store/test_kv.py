"""Key-value store and nodes: namespaces, TTL, read-your-writes, survival across reopen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mechaway.runtime.engine import Engine
from mechaway.store.db import Database
from mechaway.store.kv import KVStore

from .util import deploy, edge, flow, got, node, settle, wait_until


@pytest.mark.asyncio
async def test_set_get_namespaces_and_delete(db: Database) -> None:
    kv = KVStore.of(db)
    kv.set("a", "k", {"x": 1})
    kv.set("b", "k", [1, 2])
    # read-your-writes before the commit
    assert kv.get("a", "k") == {"x": 1}
    assert kv.get("b", "k") == [1, 2]
    assert kv.get("c", "k", "none") == "none"
    await kv.set("a", "k2", "v")
    assert kv.keys("a") == ["k", "k2"]
    kv.delete("a", "k")
    assert kv.get("a", "k") is None and not kv.contains("a", "k")
    assert kv.keys("a") == ["k2"]
    await kv.delete("a", "k2")
    assert kv.keys("a") == []


@pytest.mark.asyncio
async def test_ttl_expires_and_is_purged(db: Database) -> None:
    kv = KVStore.of(db)
    await kv.set("n", "short", 1, ttl=0.05)
    await kv.set("n", "long", 2, ttl=60)
    await kv.set("n", "forever", 3)
    assert kv.get("n", "short") == 1
    await asyncio.sleep(0.08)
    assert kv.get("n", "short", "gone") == "gone"
    assert kv.keys("n") == ["forever", "long"]
    await kv.maintain()
    assert kv.expired_purged == 1
    assert db.read("SELECT count(*) FROM kv") == [(2,)]
    with pytest.raises(ValueError):
        kv.set("n", "bad", 1, ttl=0)


@pytest.mark.asyncio
async def test_values_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    d = Database(path, commit_interval=0.001)
    d.open()
    KVStore.of(d).set("n", "k", {"deep": [1, {"x": None}]})
    await d.close()  # close flushes what is queued
    d2 = Database(path)
    d2.open()
    try:
        assert KVStore.of(d2).get("n", "k") == {"deep": [1, {"x": None}]}
    finally:
        await d2.close()


@pytest.mark.asyncio
async def test_kv_nodes(db: Database, engine: Engine) -> None:
    await deploy(
        engine,
        flow(
            "kv",
            [
                node("set", "KVSetNode", ttl=60),
                node("get", "KVGetNode", output="payload.last"),
                node("ok", "CollectNode"),
                node("miss", "CollectNode"),
            ],
            [
                edge("src", "set"),
                edge("src", "get"),
                edge("get", "ok"),
                edge("get", "miss", "missing"),
            ],
        ),
    )
    engine.inject("kv", "set", {"payload": 21.5, "topic": "room1"})
    await settle(engine, "kv")
    engine.inject("kv", "get", {"payload": {"q": 1}, "topic": "room1"})
    engine.inject("kv", "get", {"payload": {"q": 2}, "topic": "room2"})
    await wait_until(lambda: got("kv", "ok") and got("kv", "miss"))
    assert got("kv", "ok")[0]["payload"] == {"q": 1, "last": 21.5}
    assert got("kv", "miss")[0]["payload"] == {"q": 2}
    # the namespace defaults to the flow id
    assert KVStore.of(db).get("kv", "room1") == 21.5
    # a null value deletes the key
    engine.inject("kv", "set", {"payload": None, "topic": "room1"})
    await settle(engine, "kv")
    assert KVStore.of(db).get("kv", "room1", "gone") == "gone"


@pytest.mark.asyncio
async def test_kv_set_without_a_key_is_a_counted_error(engine: Engine) -> None:
    await deploy(engine, flow("kv", [node("set", "KVSetNode")], [edge("src", "set")]))
    engine.inject("kv", "set", {"payload": 1})
    await settle(engine, "kv")
    st = engine.status()["kv"]["nodes"]["set"]
    assert st["errors"] == 1 and "not a usable key" in st["last_error"]
