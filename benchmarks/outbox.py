"""Durable local data figures, printed as one JSON line.

- ``outbox_durable_msgs_per_s``: messages/s through a flow into the outbox
  (``engine.inject`` -> ``UpstreamNode``), each acknowledged only after the fsync of its
  group commit (``synchronous=FULL``), awaited through ``emit_collecting`` as an MQTT
  QoS 1 source does; at most ``INFLIGHT`` unacknowledged at a time.
- ``outbox_api_durable_msgs_per_s``: the same through ``Outbox.append`` directly.
- at a steady 5,000 msg/s stream (paced every 2 ms) for ``STREAM_S`` seconds:
  ``fsyncs_per_s_at_5k`` (durable group commits per second: one WAL fsync each),
  ``ack_ms_p50_at_5k`` / ``ack_ms_p99_at_5k`` (append to durable acknowledgement),
  ``loop_lag_max_ms_at_5k`` / ``loop_lag_p99_ms_at_5k`` (lateness of a 1 ms timer: the
  loop never waits for disk; the max also catches the machine's own scheduling noise),
  and ``bytes_written_per_msg`` (``/proc/self/io`` write_bytes, WAL writes plus the
  checkpoint that copies them into the main file, divided by messages; compare
  ``payload_bytes_per_msg``).
- ``context_restore_ms``: restoring the state of ``CTX_NODES`` persistent nodes (each
  with ``CTX_TOPICS`` remembered topics) from the file when their flow is deployed;
  ``context_restore_us_per_node``.
- ``vector_knn_ms``: one k=10 cosine query over ``VEC_N`` ``VEC_DIM``-d vectors (backend
  named in ``vector_backend``).

The database lives in a temp dir on the same file system as the repository; pass a
directory to measure another disk: ``python benchmarks/outbox.py [DIR]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import uvloop

from mechaway.flow.validate import validate
from mechaway.nodes.base import emit_collecting
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.store.context import ContextKeeper
from mechaway.store.db import Database
from mechaway.store.outbox import Outbox
from mechaway.store.vectors import VectorStore

N = 100_000
INFLIGHT = 20_000
STREAM_RATE = 5_000
STREAM_S = 4.0
CTX_NODES = 100
CTX_TOPICS = 50
VEC_N = 10_000
VEC_DIM = 64

IDLE = {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}}


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}


def _msg(i: int) -> dict[str, Any]:
    return {"payload": {"sensor": "greenhouse/1/temp", "value": 20.0 + (i % 100) / 10, "n": i},
            "topic": "greenhouse/1/temp", "ts": time.time()}  # fmt: skip


async def _engine(db: Database) -> Engine:
    engine = Engine(Services(store=db))
    doc = {
        "id": "up",
        "nodes": [IDLE, {"id": "up", "type": "UpstreamNode"}],
        "edges": [{"from": "src", "to": "up"}],
    }
    await engine.deploy(validate(doc), 1)
    return engine


Receipts = list[Awaitable[Any]]


def _feeder(engine: Engine) -> Any:
    def feed(msg: dict[str, Any], port: str = "out", /) -> None:
        engine.inject("up", "up", msg)

    return feed


async def _acker(
    q: asyncio.Queue[tuple[float, Receipts] | None],
    lat: list[float],
    window: asyncio.Semaphore | None = None,
) -> None:
    """What a QoS 1 source does: acknowledge in order, each once its receipt is durable."""
    while (item := await q.get()) is not None:
        t_sent, r = item
        for f in r:
            await f
        lat.append(time.perf_counter() - t_sent)
        if window is not None:
            window.release()


async def flow_rate(base: Path) -> float:
    db = Database(base / "rate.db")
    db.open()
    engine = await _engine(db)
    q: asyncio.Queue[tuple[float, Receipts] | None] = asyncio.Queue()
    lat: list[float] = []
    feed = _feeder(engine)
    window = asyncio.Semaphore(INFLIGHT)  # unacknowledged messages at most
    acker = asyncio.ensure_future(_acker(q, lat, window))
    t0 = time.perf_counter()
    for i in range(N):
        await window.acquire()
        q.put_nowait((0.0, emit_collecting(feed, _msg(i))))
        if i % 1000 == 999:
            await asyncio.sleep(0)
    q.put_nowait(None)
    await acker
    dt = time.perf_counter() - t0
    assert Outbox.of(db).state()["messages"] == N
    await engine.stop()
    await db.close()
    return N / dt


async def api_rate(base: Path) -> float:
    db = Database(base / "api.db")
    db.open()
    ob = Outbox.of(db)
    futs: list[asyncio.Future[int]] = []
    t0 = time.perf_counter()
    for i in range(N):
        futs.append(ob.append("greenhouse/1/temp", _msg(i)["payload"]))
        if len(futs) >= INFLIGHT:
            await futs[len(futs) - INFLIGHT]
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    await db.close()
    return N / dt


async def stream(base: Path) -> dict[str, float]:
    db = Database(base / "stream.db")
    db.open()
    engine = await _engine(db)
    await asyncio.sleep(0.1)
    lat: list[float] = []
    lag = 0.0
    stop = False

    lags: list[float] = []

    async def watch_lag() -> None:
        nonlocal lag
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)
            lag = max(lag, lags[-1])

    watcher = asyncio.ensure_future(watch_lag())
    feed = _feeder(engine)
    q: asyncio.Queue[tuple[float, Receipts] | None] = asyncio.Queue()
    acker = asyncio.ensure_future(_acker(q, lat))
    io0 = _io()
    fs0, c0 = db.fsync_commits, db.commits
    per_tick = STREAM_RATE // 500  # every 2 ms
    ticks = int(STREAM_S * 500)
    t0 = time.perf_counter()
    i = 0
    for k in range(ticks):
        for _ in range(per_tick):
            t = time.perf_counter()
            q.put_nowait((t, emit_collecting(feed, _msg(i))))
            i += 1
        delay = t0 + (k + 1) * 0.002 - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    q.put_nowait(None)
    await acker
    dt = time.perf_counter() - t0
    fsyncs = db.fsync_commits - fs0
    commits = db.commits - c0
    stop = True
    await watcher
    await engine.stop()
    await db.close()  # its checkpoint copies the WAL into the main file: part of the cost
    io1 = _io()
    payload = sum(len(json.dumps(_msg(j)["payload"], separators=(",", ":"))) for j in range(100))
    lat.sort()
    written = (io1["write_bytes"] - io0["write_bytes"]) - (
        io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]
    )
    return {
        "stream_msgs_per_s": round(i / dt),
        "fsyncs_per_s_at_5k": round(fsyncs / dt, 1),
        "commits_per_s_at_5k": round(commits / dt, 1),
        "msgs_per_fsync_at_5k": round(i / max(1, fsyncs), 1),
        "ack_ms_p50_at_5k": round(statistics.median(lat) * 1000, 2),
        "ack_ms_p99_at_5k": round(lat[int(len(lat) * 0.99)] * 1000, 2),
        "loop_lag_max_ms_at_5k": round(lag * 1000, 2),
        "loop_lag_p99_ms_at_5k": round(sorted(lags)[int(len(lags) * 0.99)] * 1000, 2),
        "bytes_written_per_msg": round(written / i, 1),
        "syscall_bytes_written_per_msg": round((io1["wchar"] - io0["wchar"]) / i, 1),
        "payload_bytes_per_msg": round(payload / 100, 1),
    }


def _ctx_doc() -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [IDLE]
    nodes += [
        {"id": f"d{i}", "type": "DeadbandNode", "params": {"band": 0.5, "persist": True}}
        for i in range(CTX_NODES)
    ]
    edges = [{"from": "src", "to": f"d{i}"} for i in range(CTX_NODES)]
    return {"id": "ctx", "nodes": nodes, "edges": edges}


async def context_restore(base: Path) -> dict[str, float]:
    path = base / "ctx.db"
    doc = validate(_ctx_doc())
    db = Database(path)
    db.open()
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db)
    keeper.attach(engine)
    await engine.deploy(doc, 1)
    for i in range(CTX_NODES):
        for t in range(CTX_TOPICS):
            engine.inject("ctx", f"d{i}", {"payload": float(t), "topic": f"site/{t}/temp"})
    await engine.stop()  # retire: every state saved
    await db.close()

    db = Database(path)
    db.open()
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db)
    keeper.attach(engine)
    await engine.deploy(doc, 1)
    assert keeper.restored == CTX_NODES
    ms = keeper.restore_ms_total
    await engine.stop()
    await db.close()
    return {
        "context_restore_ms": round(ms, 2),
        "context_restore_us_per_node": round(ms * 1000 / CTX_NODES, 1),
        "context_nodes": CTX_NODES,
        "context_topics_per_node": CTX_TOPICS,
    }


async def knn(base: Path) -> dict[str, Any]:
    db = Database(base / "vec.db")
    db.open()
    vs = VectorStore.of(db)
    rng = random.Random(1)
    futs = [vs.add("emb", [rng.uniform(-1, 1) for _ in range(VEC_DIM)]) for _ in range(VEC_N)]
    await asyncio.gather(*futs)
    q = [rng.uniform(-1, 1) for _ in range(VEC_DIM)]
    await vs.query("emb", q, k=10)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        await vs.query("emb", q, k=10)
        times.append(time.perf_counter() - t)
    backend = vs.backend
    vs.close()
    await db.close()
    return {"vector_knn_ms": round(min(times) * 1000, 1), "vector_backend": backend,
            "vector_n": VEC_N, "vector_dim": VEC_DIM}  # fmt: skip


async def main(where: str | None) -> dict[str, Any]:
    root = where or str(Path(__file__).resolve().parent.parent)  # noqa: ASYNC240
    with tempfile.TemporaryDirectory(dir=root) as d:
        base = Path(d)
        out: dict[str, Any] = {
            "outbox_durable_msgs_per_s": round(await flow_rate(base)),
            "outbox_api_durable_msgs_per_s": round(await api_rate(base)),
        }
        out.update(await stream(base))
        out.update(await context_restore(base))
        out.update(await knn(base))
        out["commit_interval_ms"] = Database(base / "x.db").commit_interval * 1000
        return out


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else None))))
