"""Telemetry series: appends, queries with downsampling, the HTTP endpoint, and retention
by size and age that holds under a flood."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mechaway.api.server import make_app
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.store.series import ROW_COST, SeriesNotFound, SeriesStore

from .util import deploy, edge, flow, node, settle

T0 = 1_700_000_040.0  # a multiple of 60


async def _fill(store: SeriesStore, name: str = "temp", n: int = 600) -> None:
    """One sample per second for ``n`` seconds: value = second % 60."""
    await asyncio.gather(*[store.append(name, i % 60, T0 + i) for i in range(n)])


@pytest.mark.asyncio
async def test_raw_query_and_bounds(db: Database) -> None:
    s = SeriesStore.of(db)
    await _fill(s)
    r = await s.query("temp", start=T0 + 10, end=T0 + 14)
    assert r["points"] == [[T0 + i, float(i)] for i in range(10, 15)]
    assert not r["truncated"]
    r = await s.query("temp", limit=3)
    assert len(r["points"]) == 3 and r["truncated"]
    assert s.info("temp")["rows"] == 600


@pytest.mark.asyncio
async def test_downsampling(db: Database) -> None:
    s = SeriesStore.of(db)
    await _fill(s)
    mean = await s.query("temp", agg="mean", bucket=60)
    assert len(mean["points"]) == 10
    assert all(p[1] == pytest.approx(29.5) for p in mean["points"])
    first_bucket = (T0 // 60) * 60
    assert mean["points"][0][0] == first_bucket
    mx = await s.query("temp", agg="max", bucket=600, start=T0, end=T0 + 599)
    mn = await s.query("temp", agg="min", bucket=600, start=T0, end=T0 + 599)
    cnt = await s.query("temp", agg="count", start=T0 + 100, end=T0 + 199)
    assert sum(p[1] for p in mx["points"]) > 0
    assert max(p[1] for p in mx["points"]) == 59.0
    assert min(p[1] for p in mn["points"]) == 0.0
    assert cnt["points"] == [[T0 + 100, 100]]


@pytest.mark.asyncio
async def test_buckets_floor_negative_and_fractional_times(db: Database) -> None:
    s = SeriesStore.of(db)
    for ts, v in [(-1.5, 1), (-0.5, 2), (0.5, 3), (1.0, 4), (1.5, 5), (-2.0, 6)]:
        await s.append("t", v, ts)
    r = await s.query("t", agg="count", bucket=1, start=-10, end=10)
    # before: CAST truncated toward zero, so -0.5 s landed in bucket 0 with +0.5 s
    assert r["points"] == [[-2.0, 2], [-1.0, 1], [0.0, 1], [1.0, 2]]


@pytest.mark.asyncio
async def test_non_numeric_values_and_errors(db: Database) -> None:
    s = SeriesStore.of(db)
    await s.append("state", {"door": "open"}, T0)
    await s.append("state", True, T0 + 1)
    r = await s.query("state")
    assert r["points"] == [[T0, {"door": "open"}], [T0 + 1, 1.0]]
    with pytest.raises(SeriesNotFound):
        await s.query("nope")
    with pytest.raises(ValueError):
        await s.query("state", agg="median")
    with pytest.raises(ValueError):
        await s.query("state", bucket=-1, agg="mean")
    with pytest.raises(ValueError):
        await s.query("state", bucket=10)


@pytest.mark.asyncio
async def test_http_endpoint(db: Database) -> None:
    s = SeriesStore.of(db)
    await _fill(s, "gh/1/temp")
    app = make_app(
        FlowManager(Engine(), FlowStore(db)),
        dict,
        token=None,
        max_body=1 << 20,
        series_store=s,
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get(
            "/api/v1/series/gh/1/temp",
            params={"from": str(T0), "to": str(T0 + 119), "agg": "mean", "bucket": "60"},
        )
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        assert body["series"] == "gh/1/temp" and len(body["points"]) == 2
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + 5))
        resp = await client.get("/api/v1/series/gh/1/temp", params={"from": iso, "limit": "2"})
        body = await resp.json()
        assert body["points"][0] == [T0 + 5, 5.0] and body["truncated"]
        resp = await client.get("/api/v1/series/gh/1/temp", params={"agg": "median"})
        assert resp.status == 400 and "agg" in (await resp.json())["error"]
        resp = await client.get("/api/v1/series/gh/1/temp", params={"from": "yesterday"})
        assert resp.status == 400
        for key in ("limit", "bucket"):
            resp = await client.get("/api/v1/series/gh/1/temp", params={key: "many"})
            assert resp.status == 400
            assert (await resp.json())["error"] == f"{key}: expected a number, got 'many'"
        resp = await client.get("/api/v1/series/none")
        assert resp.status == 404


@pytest.mark.asyncio
async def test_size_retention_holds_under_a_flood(db: Database, engine: Engine) -> None:
    cap = 64 * 1024
    await deploy(
        engine,
        flow(
            "f",
            [node("s", "StoreNode", series="flood", max_bytes=cap, queue_size=5000)],
            [edge("src", "s")],
        ),
    )
    store = SeriesStore.of(db)
    worst = 0
    for burst in range(40):
        for i in range(2500):
            engine.inject(
                "f", "s", {"payload": {"v": i, "tag": "x" * 20}, "ts": T0 + burst * 2500 + i}
            )
        await settle(engine, "f")
        worst = max(worst, store.info("flood")["bytes"])
    info = store.info("flood")
    assert worst <= cap  # never over the bound at a commit boundary
    assert info["bytes"] > cap * 0.8
    per_row = ROW_COST + len(b'{"v":0000,"tag":"xxxxxxxxxxxxxxxxxxxx"}')
    assert info["rows"] <= cap // (per_row - 4)
    # what is kept is the newest
    r = await store.query("flood", limit=1)
    assert r["points"][0][0] >= T0 + 100_000 - info["rows"] - 1
    # the file stays small: the flood wrote ~6 MB of samples
    assert db.path.stat().st_size < 2 * 1024 * 1024
    assert engine.status()["f"]["nodes"]["s"]["errors"] == 0


@pytest.mark.asyncio
async def test_age_and_total_retention(db: Database) -> None:
    s = SeriesStore(db, max_total_bytes=200 * ROW_COST, batch=50)
    now = time.time()
    await asyncio.gather(*[s.append("old", i, now - 7200 + i, max_age_s=3600) for i in range(300)])
    await asyncio.gather(*[s.append("new", i, now - 10 + i / 100) for i in range(100)])
    s.max_total_bytes = None
    await s.maintain()
    assert s.info("old")["rows"] == 0  # everything older than an hour, in ops of 50
    assert s.info("new")["rows"] == 100
    # the total bound deletes the oldest-inserted first, across series
    s.max_total_bytes = 60 * ROW_COST
    await s.maintain()
    assert s.info("new")["rows"] == 60
    assert db.read("SELECT count(*) FROM samples") == [(60,)]


@pytest.mark.asyncio
async def test_store_node_uses_topic_and_ts(db: Database, engine: Engine) -> None:
    await deploy(engine, flow("f", [node("s", "StoreNode")], [edge("src", "s")]))
    engine.inject("f", "s", {"payload": 3, "topic": "a/b", "ts": T0})
    engine.inject("f", "s", {"payload": 4, "topic": "a/c"})
    engine.inject("f", "s", {"payload": 5})  # no topic, no series: a counted error
    await settle(engine, "f")
    s = SeriesStore.of(db)
    assert (await s.query("a/b"))["points"] == [[T0, 3.0]]
    assert s.names() == ["a/b", "a/c"]
    assert engine.status()["f"]["nodes"]["s"]["errors"] == 1
