"""Vector store: kNN by cosine and L2 against a reference computed here, bounds, nodes."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from array import array

import pytest

from mechaway.runtime.engine import Engine
from mechaway.store.db import Database
from mechaway.store.vectors import (
    VectorError,
    VectorStore,
    open_query_connection,
    python_query_connection,
)

from .util import deploy, edge, flow, got, node, settle, wait_until

DIM = 16


def _f32(v: list[float]) -> list[float]:
    """The float32 rounding the store applies."""
    return list(array("f", v))


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _l2(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


@pytest.mark.asyncio
@pytest.mark.parametrize("metric", ["cosine", "l2"])
async def test_knn_matches_a_reference(db: Database, metric: str) -> None:
    rng = random.Random(5)
    vs = VectorStore.of(db)
    data = {f"v{i}": [rng.uniform(-1, 1) for _ in range(DIM)] for i in range(400)}
    await asyncio.gather(*[vs.add("c", v, key=k, meta={"k": k}) for k, v in data.items()])
    assert vs.count("c") == 400
    ref_fn = _cos if metric == "cosine" else _l2
    for _ in range(10):
        q = [rng.uniform(-1, 1) for _ in range(DIM)]
        hits = await vs.query("c", q, k=7, metric=metric)  # type: ignore[arg-type]
        ref = sorted(((ref_fn(_f32(v), _f32(q)), k) for k, v in data.items()))[:7]
        assert [h.key for h in hits] == [k for _d, k in ref]
        for h, (d, _k) in zip(hits, ref, strict=True):
            assert h.distance == pytest.approx(d, abs=1e-5)
            assert h.meta == {"k": h.key}


@pytest.mark.asyncio
async def test_keys_replace_and_bound_drops_oldest(db: Database) -> None:
    vs = VectorStore.of(db)
    await vs.add("c", [1.0, 0.0], key="a")
    await vs.add("c", [0.0, 1.0], key="a")  # same key: replaced
    assert vs.count("c") == 1
    hits = await vs.query("c", [0.0, 1.0], k=1, metric="l2")
    assert hits[0].key == "a" and hits[0].distance == 0.0
    for i in range(10):
        await vs.add("c", [float(i), 1.0], max_vectors=5)
    assert vs.count("c") == 5
    assert db.read("SELECT count(*) FROM vectors") == [(5,)]


@pytest.mark.asyncio
async def test_bad_vectors(db: Database) -> None:
    vs = VectorStore.of(db)
    await vs.add("c", [1.0, 2.0, 3.0])
    with pytest.raises(VectorError, match="3-d"):
        await vs.add("c", [1.0, 2.0])
    with pytest.raises(VectorError):
        vs.add("c", [1.0, "x", 3.0])
    with pytest.raises(VectorError):
        vs.add("c", [])
    with pytest.raises(VectorError, match="3-d"):
        await vs.query("c", [1.0, 2.0])
    assert await vs.query("missing", [1.0]) == []


def test_python_functions_agree_with_sqlite_vec_when_installed() -> None:
    """Where sqlite-vec is usable, its functions and the Python fallback give the same."""
    conn, backend = open_query_connection(":memory:")
    assert backend != "python", "sqlite-vec (a dependency on x86_64/aarch64) did not load"
    from mechaway.store import vectors

    rng = random.Random(3)
    for _ in range(20):
        a = array("f", [rng.uniform(-5, 5) for _ in range(DIM)]).tobytes()
        b = array("f", [rng.uniform(-5, 5) for _ in range(DIM)]).tobytes()
        for name, py in (("cosine", vectors._Cosine()), ("l2", vectors._l2)):
            (got_c,) = conn.execute(f"SELECT vec_distance_{name}(?, ?)", (a, b)).fetchone()
            assert py(a, b) == pytest.approx(got_c, abs=1e-5)
    conn.close()


@pytest.mark.asyncio
async def test_both_backends_give_the_same_neighbours(db: Database) -> None:
    conn, backend = open_query_connection(str(db.path))
    conn.close()
    assert backend != "python", "sqlite-vec (a dependency on x86_64/aarch64) did not load"
    rng = random.Random(9)
    vs = VectorStore.of(db)
    await asyncio.gather(
        *[vs.add("c", [rng.gauss(0, 1) for _ in range(DIM)], key=str(i)) for i in range(300)]
    )
    py = python_query_connection(str(db.path))
    try:
        for metric in ("cosine", "l2"):
            q = [rng.gauss(0, 1) for _ in range(DIM)]
            hits = await vs.query("c", q, k=8, metric=metric)  # type: ignore[arg-type]
            rows = py.execute(
                f"SELECT key, py_vec_distance_{metric}(vec, ?) AS d FROM vectors "
                "ORDER BY d LIMIT 8",
                (array("f", q).tobytes(),),
            ).fetchall()
            assert [h.key for h in hits] == [r[0] for r in rows]
            assert vs.backend.startswith("sqlite-vec")
    finally:
        py.close()


def test_python_backend_sql_functions() -> None:
    conn = sqlite3.connect(":memory:")
    from mechaway.store import vectors

    conn.create_function("vec_distance_cosine", 2, vectors._Cosine())
    a = array("f", [1.0, 0.0]).tobytes()
    z = array("f", [0.0, 0.0]).tobytes()
    assert conn.execute("SELECT vec_distance_cosine(?, ?)", (a, a)).fetchone()[0] == 0.0
    assert conn.execute("SELECT vec_distance_cosine(?, ?)", (a, z)).fetchone()[0] == 1.0
    conn.close()


@pytest.mark.asyncio
async def test_vector_nodes_flag_anomalies(db: Database, engine: Engine) -> None:
    await deploy(
        engine,
        flow(
            "v",
            [
                node("put", "VectorStoreNode", collection="normal", key_property="topic"),
                node("ask", "VectorQueryNode", collection="normal", k=2, threshold=0.05),
                node("ok", "CollectNode"),
                node("odd", "CollectNode"),
            ],
            [
                edge("src", "put"),
                edge("src", "ask"),
                edge("ask", "ok"),
                edge("ask", "odd", "anomaly"),
            ],
        ),
    )
    for i in range(20):
        engine.inject("v", "put", {"payload": [1.0, 0.1 * (i % 3), 0.0], "topic": f"s{i}"})
    await settle(engine, "v")
    engine.inject("v", "ask", {"payload": [1.0, 0.1, 0.01]})
    engine.inject("v", "ask", {"payload": [0.0, 0.0, 1.0]})
    await wait_until(lambda: got("v", "ok") and got("v", "odd"))
    near = got("v", "ok")[0]["neighbors"]
    assert len(near) == 2 and near[0]["distance"] < 0.01
    assert got("v", "odd")[0]["neighbors"][0]["distance"] > 0.9
    assert engine.status()["v"]["nodes"]["ask"]["backend"] in ("python",) or engine.status()["v"][
        "nodes"
    ]["ask"]["backend"].startswith("sqlite-vec")
