"""Hostile and unusual payloads, as the codecs really hand them to flows, against the store
and the nodes that persist: a bad value is refused with an error naming its place and
counted; it never sinks the other writes of its group commit, never stops the writer
thread, and never costs other data already accepted.
"""

from __future__ import annotations

import asyncio
import base64
import math
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.errors import StoreError
from mechaway.nodes.codec import DECODERS
from mechaway.runtime.engine import Engine
from mechaway.store.batching import Coalescer
from mechaway.store.db import Database
from mechaway.store.encode import UnstorableValue, to_json
from mechaway.store.kv import KVStore
from mechaway.store.outbox import Outbox
from mechaway.store.series import SeriesStore
from mechaway.store.vectors import VectorError, VectorStore, to_blob
from mechaway.testing.flows import stats

from .test_context import daemon_like, stored
from .util import deploy, edge, flow, got, node, settle, wait_until

T0 = 1_700_000_000.0
U64 = 2**64 - 1  # the largest integer msgpack (and orjson) carries


def nested(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for _ in range(depth):
        v = {"x": v}
    return v


def mp(value: Any) -> Any:
    """``value`` as the msgpack codec hands it to a flow (packed, then decoded)."""
    return DECODERS["msgpack"](msgpack.packb(value, use_bin_type=True))


# -- the codec ---------------------------------------------------------------------------------
def test_msgpack_shapes_come_out_json_compatible_or_refused() -> None:
    dec = DECODERS["msgpack"]
    # a timestamp (ext -1) is epoch seconds, not an object JSON cannot hold
    assert mp({"t": msgpack.Timestamp(1_700_000_000, 500_000_000)}) == {"t": 1_700_000_000.5}
    # any other ext type is a decoding failure that says which
    with pytest.raises(ValueError, match="ext type 5"):
        dec(msgpack.packb(msgpack.ExtType(5, b"xy")))
    # non-string map keys were already refused; NaN and u64 pass as they are
    for key in (1, None, 1.5, True):
        with pytest.raises(ValueError, match="not allowed for map key"):
            dec(msgpack.packb({key: 1}))
    assert math.isnan(mp(math.nan)) and mp(U64) == U64
    # bin keys and values pass as bytes (the store writes bytes values as base64)
    assert mp({b"k": b"\x00"}) == {b"k": b"\x00"}
    # nesting: msgpack stops at 1024 levels, orjson too; both with a ValueError
    with pytest.raises(ValueError):
        dec(b"\x91" * 1100 + b"\xc0")
    with pytest.raises(ValueError):
        DECODERS["json"](b"[" * 1100 + b"]" * 1100)
    for empty in ("json", "msgpack"):
        with pytest.raises(ValueError):
            DECODERS[empty](b"")
    # JSON carries integers past 64 bits as floats (orjson), never as Python big ints
    assert DECODERS["json"](b"1180591620717411303424") == float(2**70)


# -- one poisoned write never sinks its group commit ------------------------------------------
@pytest.mark.asyncio
async def test_a_write_sqlite_refuses_fails_alone_in_its_batch(db: Database) -> None:
    """Items of one tick are ONE writer op; an item SQLite refuses (here a text with a lone
    surrogate) used to fail the whole op: every sample of the tick was lost."""
    s = SeriesStore.of(db)
    futs = [s.append("ok", 1, T0), s.append("bad\ud800", 2, T0), s.append("ok", 3, T0 + 1)]
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert res[0] is None and res[2] is None
    assert isinstance(res[1], Exception)
    assert (await s.query("ok"))["points"] == [[T0, 1.0], [T0 + 1, 3.0]]
    assert s.info("ok")["rows"] == 2  # the accounting is the committed rows'
    kv = KVStore.of(db)
    futs = [kv.set("n", "a", 1), kv.set("n", "b\udcff", 2), kv.set("n", "c", 3)]
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert [isinstance(r, Exception) for r in res] == [False, True, False]
    assert db.read("SELECT key FROM kv ORDER BY key") == [("a",), ("c",)]


@pytest.mark.asyncio
async def test_the_fallback_keeps_order_and_one_transaction(db: Database) -> None:
    """The generic mechanism: a batch function that raises on one item is run again item
    by item, in order, in the same commit; results line up with the items."""
    await db.write(lambda c: c.execute("CREATE TABLE t (n INTEGER NOT NULL)"))
    calls: list[list[Any]] = []

    def run(conn: sqlite3.Connection, items: list[Any]) -> list[Any]:
        calls.append(list(items))
        out: list[Any] = []
        for it in items:
            if it == "boom":
                raise RuntimeError("refused")
            conn.execute("INSERT INTO t VALUES (?)", (it,))
            out.append(it * 10)
        return out

    co: Coalescer[Any, int] = Coalescer(db, run, durable=False)
    commits = db.commits
    futs = [co.add(1), co.add(2), co.add("boom"), co.add(4)]
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert res[:2] == [10, 20] and res[3] == 40
    assert isinstance(res[2], RuntimeError) and str(res[2]) == "refused"
    assert calls == [[1, 2, "boom", 4], [1], [2], ["boom"], [4]]
    assert db.read("SELECT n FROM t ORDER BY rowid") == [(1,), (2,), (4,)]
    assert db.commits == commits + 1
    # a batch that succeeds runs once
    assert await co.add(5) == 50 and calls[-1] == [5]


@pytest.mark.asyncio
async def test_store_node_keeps_a_batch_with_a_u64_timestamp(db: Database, engine: Engine) -> None:
    """``ts`` 2**64-1 (JSON or msgpack; a ChangeNode moved it from the payload) is a finite
    number the node accepts; SQLite refused it as an INTEGER, and the whole tick with it."""
    await deploy(engine, flow("f", [node("s", "StoreNode", series="x")], [edge("src", "s")]))
    for i, ts in enumerate([T0, U64, T0 + 2]):
        engine.inject("f", "s", {"payload": i, "ts": ts})
    await settle(engine, "f")
    points = (await SeriesStore.of(db).query("x"))["points"]
    assert points == [[T0, 0.0], [T0 + 2, 2.0], [float(U64), 1.0]]
    assert stats(engine, "f", "s")["errors"] == 0


def upstream(fid: str = "u") -> dict[str, Any]:
    return flow(
        fid,
        [node("u", "UpstreamNode"), node("ok", "CollectNode"), node("err", "CollectNode")],
        [edge("src", "u"), edge("u", "ok"), edge("u", "err", "error")],
    )


@pytest.mark.asyncio
async def test_upstream_keeps_a_batch_with_a_u64_timestamp(db: Database, engine: Engine) -> None:
    await deploy(engine, upstream())
    for i, ts in enumerate([1.0, U64, 3.0]):
        engine.inject("u", "u", {"payload": i, "ts": ts, "topic": "t"})
    await wait_until(lambda: len(got("u", "ok")) == 3, what="three outbox acks")
    entries = Outbox.of(db).peek()
    assert [(e.seq, e.value(), e.ts) for e in entries] == [
        (1, 0, 1.0),
        (2, 1, float(U64)),
        (3, 2, 3.0),
    ]
    assert stats(engine, "u", "u")["errors"] == 0


@pytest.mark.asyncio
async def test_upstream_refuses_what_json_cannot_hold_and_keeps_the_rest(
    db: Database, engine: Engine
) -> None:
    await deploy(engine, upstream())
    msgs = [
        {"payload": 1},
        {"payload": mp({b"key": 1})},  # bin map key
        {"payload": nested(300)},  # msgpack and JSON decode 1,000 levels, orjson writes 254
        {"payload": 2, "topic": nested(5)},  # a topic that is no text
        {"payload": 3},
    ]
    for m in msgs:
        engine.inject("u", "u", {"topic": "t", **m})
    await wait_until(lambda: len(got("u", "ok")) == 2, what="two outbox acks")
    assert [e.value() for e in Outbox.of(db).peek()] == [1, 3]
    st = stats(engine, "u", "u")
    assert st["errors"] == 3
    errors = [m["error"]["message"] for m in got("u", "err")]
    assert errors[0] == "outbox message on 't': cannot be stored as JSON: Dict key must be str"
    assert errors[1].startswith("outbox message on 't': cannot be stored as JSON: Recursion")
    assert errors[2].startswith("topic is not text: {'x': {")
    assert all(len(e) < 200 for e in errors)


@pytest.mark.asyncio
async def test_a_bytes_payload_is_stored_as_json(db: Database) -> None:
    """A msgpack ``bin`` payload was stored raw, as if it were encoded JSON: the entry then
    could not be read (``Entry.value()`` raised) and would block the hub sync at its seq."""
    ob = Outbox.of(db)
    seqs = await asyncio.gather(ob.append("t", mp(b"\x00\xffraw")), ob.append("t", {"b": b"\x01"}))
    assert seqs == [1, 2]
    assert [e.value() for e in ob.peek()] == [
        base64.b64encode(b"\x00\xffraw").decode(),
        {"b": base64.b64encode(b"\x01").decode()},
    ]


@pytest.mark.asyncio
async def test_outbox_ts_and_topic_are_checked_at_append(db: Database) -> None:
    ob = Outbox.of(db)
    for ts in (math.nan, math.inf, 2**1100):
        with pytest.raises(UnstorableValue, match=r"ts .* is not a finite number"):
            ob.append("t", 1, ts=ts)
    with pytest.raises(UnstorableValue, match="not valid text"):
        ob.append("t\ud800", 1)
    assert await ob.append("t", 1) == 1  # nothing refused took a seq


# -- the writer thread outlives anything --------------------------------------------------------
@pytest.mark.asyncio
async def test_a_cancelled_write_does_not_stop_the_writer(db: Database) -> None:
    """``asyncio.wrap_future`` cancels the writer's future with the awaiting task (a task
    stopped at shutdown); setting its result raised InvalidStateError in the writer thread,
    which ended it: every later write hung."""
    busy, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait()

    first = db.submit(hold)
    await asyncio.to_thread(busy.wait)
    cancelled = db.submit(lambda c: 1)
    assert cancelled.cancel()
    release.set()
    await asyncio.wrap_future(first)
    assert await asyncio.wait_for(db.write(lambda c: 42), 10) == 42


@pytest.mark.asyncio
async def test_an_op_raising_a_base_exception_fails_its_batch_only(db: Database) -> None:
    class Escape(BaseException):
        pass

    def escape(conn: sqlite3.Connection) -> None:
        raise Escape("out of the op")

    with pytest.raises(StoreError, match="Escape: out of the op"):
        await asyncio.wait_for(db.write(escape), 10)
    assert await asyncio.wait_for(db.write(lambda c: 7), 10) == 7


# -- series --------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_sample_larger_than_the_bound_is_refused_not_evicting_the_rest(
    db: Database, engine: Engine
) -> None:
    """A sample bigger than its series bound used to be accepted, then the size retention
    deleted every other sample of the series to make room, and finally the sample itself."""
    cap = 4096
    await deploy(
        engine, flow("f", [node("s", "StoreNode", series="x", max_bytes=cap)], [edge("src", "s")])
    )
    for i in range(20):
        engine.inject("f", "s", {"payload": {"n": i}, "ts": T0 + i})
    await settle(engine, "f")
    engine.inject("f", "s", {"payload": "x" * cap, "ts": T0 + 100})
    await settle(engine, "f")
    s = SeriesStore.of(db)
    assert s.info("x")["rows"] == 20
    st = stats(engine, "f", "s")
    assert st["errors"] == 1
    assert f"larger than the series bound ({cap} bytes)" in st["last_error"]
    assert "series 'x'" in st["last_error"]


@pytest.mark.asyncio
async def test_series_values_as_the_codecs_give_them(db: Database) -> None:
    s = SeriesStore.of(db)
    await asyncio.gather(
        s.append("v", U64, T0),
        s.append("v", math.nan, T0 + 1),  # JSON has no NaN: a null sample
        s.append("v", mp({"b": b"\x00"}), T0 + 2),
    )
    assert (await s.query("v"))["points"] == [
        [T0, float(U64)],
        [T0 + 1, None],
        [T0 + 2, {"b": "AA=="}],
    ]
    with pytest.raises(UnstorableValue, match="series 'v': cannot be stored as JSON"):
        s.append("v", mp({b"k": 1}))
    with pytest.raises(UnstorableValue, match=r"series 'v': ts nan is not a finite number"):
        s.append("v", 1, math.nan)


# -- key-value -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_kv_set_deletes_only_on_an_explicit_null(db: Database, engine: Engine) -> None:
    """A message without the property (an empty payload, a bare scalar where payload.value
    was expected) used to delete the stored key, as an explicit null does."""
    await deploy(
        engine,
        flow("kv", [node("set", "KVSetNode", property="payload.value")], [edge("src", "set")]),
    )
    engine.inject("kv", "set", {"payload": {"value": 21.5}, "topic": "room"})
    await settle(engine, "kv")
    for payload in ({}, 7, "text", None, []):
        engine.inject("kv", "set", {"payload": payload, "topic": "room"})
    await settle(engine, "kv")
    assert KVStore.of(db).get("kv", "room") == 21.5
    st = stats(engine, "kv", "set")
    assert st["errors"] == 5 and st["last_error"] == "ValueError: payload.value is missing"
    engine.inject("kv", "set", {"payload": {"value": None}, "topic": "room"})
    await settle(engine, "kv")
    assert KVStore.of(db).get("kv", "room", "gone") == "gone"


@pytest.mark.asyncio
async def test_kv_nodes_with_hostile_keys_and_values(db: Database, engine: Engine) -> None:
    await deploy(
        engine,
        flow(
            "kv",
            [
                node("set", "KVSetNode"),
                node("get", "KVGetNode", key="k", output="payload.last"),
                node("ok", "CollectNode"),
                node("err", "CollectNode"),
            ],
            [edge("src", "set"), edge("get", "ok"), edge("get", "err", "error")],
        ),
    )
    for msg in [
        {"payload": 1, "topic": "k"},
        {"payload": mp({b"k": 1}), "topic": "k2"},  # refused, named
        {"payload": 2, "topic": nested(1000)},  # refused, shown short
        {"payload": mp({"raw": b"\x00"}), "topic": "k3"},
    ]:
        engine.inject("kv", "set", msg)
    await settle(engine, "kv")
    kv = KVStore.of(db)
    assert kv.get("kv", "k") == 1 and kv.get("kv", "k3") == {"raw": "AA=="}
    st = stats(engine, "kv", "set")
    assert st["errors"] == 2
    assert st["last_error"].startswith("ValueError: topic is not a usable key: {'x': {")
    assert len(st["last_error"]) < 200
    # KVGetNode into a payload that is no object: an error, the message as it was
    engine.inject("kv", "get", {"payload": 5})
    engine.inject("kv", "get", {"payload": {"q": 1}})
    engine.inject("kv", "get", {})
    await wait_until(lambda: len(got("kv", "ok")) == 2 and got("kv", "err"))
    assert [m["payload"] for m in got("kv", "ok")] == [{"q": 1, "last": 1}, {"last": 1}]
    (bad,) = got("kv", "err")
    assert bad["payload"] == 5
    assert bad["error"]["message"] == "cannot write payload.last: payload is not an object"


# -- context persistence -------------------------------------------------------------------------
def window(**params: Any) -> dict[str, Any]:
    return flow(
        "f",
        [
            node("d", "WindowNode", persist=True, **params),
            node("k", "CollectNode"),
            node("e", "CollectNode"),
        ],
        [edge("src", "d"), edge("d", "k"), edge("d", "e", "error")],
    )


@pytest.mark.asyncio
async def test_window_refuses_nan_and_inf(db: Database, engine: Engine) -> None:
    """A NaN (msgpack carries it) made the window's mean NaN and, saved as null, made the
    restore drop everything the window held."""
    await deploy(engine, window(size=3, op="mean"))
    for v in (1.0, mp(math.nan), 2.0, -math.inf, 3.0):
        engine.inject("f", "d", {"payload": v, "topic": "t"})
    await settle(engine, "f")
    assert [m["payload"] for m in got("f", "k")] == [2.0]
    assert [m["error"]["message"] for m in got("f", "e")] == [
        "payload is not a finite number: nan",
        "payload is not a finite number: -inf",
    ]


@pytest.mark.asyncio
async def test_window_state_survives_overflow_and_an_odd_topic(tmp_path: Path) -> None:
    """A sum that overflowed to inf was saved as null (restore then dropped the window); a
    topic that is no text (bytes from msgpack) made the state unsavable at every pass."""
    path = tmp_path / "m.db"
    async with daemon_like(path) as (engine, keeper):
        await deploy(engine, window(size=4, op="sum"))
        for v in (1e308, 1e308, 5):
            engine.inject("f", "d", {"payload": v, "topic": b"\x00raw"})
        await keeper.flush()
        assert keeper.save_errors == 0
    assert stored(path)[("f", "d")]["sum"] == "inf"
    async with daemon_like(path) as (engine, _keeper):
        await deploy(engine, window(size=4, op="max"))
        engine.inject("f", "d", {"payload": 7, "topic": "t"})
        await settle(engine, "f")
        (out,) = got("f", "k")
        assert (out["payload"], out["count"]) == (1e308, 4)


@pytest.mark.asyncio
async def test_deadband_and_ratelimit_state_with_hostile_values(tmp_path: Path) -> None:
    """A NaN never reaches DeadbandNode's saved state (the node refuses it), the other
    keys survive, a u64 as a float; a RateLimit's state does not depend on payloads."""
    path = tmp_path / "m.db"
    doc = flow(
        "f",
        [
            node("d", "DeadbandNode", band=1.0, persist=True),
            node("r", "RateLimitNode", rate=5, persist=True),
        ],
        [edge("src", "d"), edge("src", "r")],
    )
    async with daemon_like(path) as (engine, keeper):
        await deploy(engine, doc)
        for topic, v in (("a", 1.0), ("b", mp(math.nan)), ("c", U64)):
            engine.inject("f", "d", {"payload": v, "topic": topic})
            engine.inject("f", "r", {"payload": mp({b"k": b"v"}), "topic": topic})
        await keeper.flush()
        assert keeper.save_errors == 0
    saved = stored(path)
    assert saved[("f", "d")] == {"a": 1.0, "c": float(U64)}
    assert 0.0 <= saved[("f", "r")]["tokens"] <= 5.0


# -- vectors -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_vectors_out_of_float32_range_and_overflowing_distances(db: Database) -> None:
    """1e39 is finite but no float32: it was stored as inf. Elements so large that float32
    arithmetic overflows gave NaN distances (NULL in SQL): the query raised TypeError."""
    for bad in ([1e39, 0.0], [2**200, 1.0], [mp(math.nan), 1.0]):
        with pytest.raises(VectorError, match="not a finite float32 number"):
            to_blob(bad)
    vs = VectorStore.of(db)
    await vs.add("c", [1.0, 0.0], key="small")
    await vs.add("c", [3e38, 3e38], key="huge")
    for metric in ("cosine", "l2"):
        hits = await vs.query("c", [3e38, 3e38], metric=metric)  # type: ignore[arg-type]
        assert sorted(h.key for h in hits) == ["huge", "small"]
        assert not any(math.isnan(h.distance) for h in hits)
    with pytest.raises(UnstorableValue, match="metadata of a vector in 'c'"):
        vs.add("c", [1.0, 1.0], meta=mp({b"k": 1}))


# -- property: whatever the codecs produce, neighbours commit ------------------------------------
B64 = base64.b64encode
INT = st.integers(-(2**63), U64)
LEAVES = (
    st.none()
    | st.booleans()
    | INT
    | st.floats()  # NaN, inf included
    | st.text(max_size=20)
    | st.binary(max_size=12)
)
KEYS = st.text(max_size=6) | st.binary(max_size=4)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
#: values past the limits: orjson writes 254 levels, msgpack and JSON decode 1,000
DEEP = st.integers(240, 1000).map(lambda n: nested(n, b"leaf"))
PAYLOADS = st.lists(VALUES.map(mp) | DEEP | st.just(orjson.loads(b"1e300")), min_size=1, max_size=6)

_UNSTORABLE = object()


def json_form(v: Any, depth: int = 0) -> Any:
    """What reading a stored ``v`` back gives, or ``_UNSTORABLE`` (an independent model)."""
    if isinstance(v, bytes):
        return B64(v).decode()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list | dict) and depth >= 254:
        return _UNSTORABLE
    if isinstance(v, list):
        items = [json_form(x, depth + 1) for x in v]
        return _UNSTORABLE if any(x is _UNSTORABLE for x in items) else items
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return _UNSTORABLE
        out = {k: json_form(x, depth + 1) for k, x in v.items()}
        return _UNSTORABLE if any(x is _UNSTORABLE for x in out.values()) else out
    return v


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[asyncio.AbstractEventLoop, Database]]:
    loop = uvloop.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        d = Database(Path(tmp) / "m.db", commit_interval=0.001)
        d.open()
        try:
            yield loop, d
        finally:
            loop.run_until_complete(d.close())
            loop.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOADS, st.lists(st.sampled_from([None, 1.5, U64, 2**63, 2**100]), min_size=6))
def test_any_codec_payload_is_stored_or_refused_alone(
    rig: tuple[asyncio.AbstractEventLoop, Database], payloads: list[Any], stamps: list[Any]
) -> None:
    loop, d = rig
    loop.run_until_complete(_store_all(d, payloads, stamps))


async def _store_all(d: Database, payloads: list[Any], stamps: list[Any]) -> None:
    series, kv, ob = SeriesStore.of(d), KVStore.of(d), Outbox.of(d)
    before = d.read("SELECT count(*) FROM samples")[0][0]
    first_seq = ob.state()["last_seq"]
    kinds: list[str] = []
    futs: list[asyncio.Future[Any]] = []
    expect: list[Any] = []
    # every write of one tick, so they share ops and group commits with the good ones
    for i, p in enumerate(payloads):
        form = json_form(p)
        for kind in ("series", "kv", "outbox"):
            try:
                if kind == "series":
                    fut: asyncio.Future[Any] = series.append("s", p, stamps[i])
                elif kind == "kv":
                    fut = kv.set("ns", str(i), p)
                else:
                    fut = ob.append("t", p, ts=stamps[i])
            except ValueError as exc:
                assert form is _UNSTORABLE, f"{kind} refused a storable value: {exc}"
                assert isinstance(exc, UnstorableValue)
                continue
            assert form is not _UNSTORABLE, f"{kind} took an unstorable value"
            kinds.append(kind)
            futs.append(fut)
            expect.append(form)
    sentinel = ob.append("t", "sentinel")
    await asyncio.gather(*futs, sentinel)  # every accepted write commits: none raises
    stored_kv = [kv.get("ns", str(i)) for i in range(len(payloads))]
    assert [x for x in stored_kv if x is not None] == [
        f for k, f in zip(kinds, expect, strict=True) if k == "kv" and f is not None
    ]
    entries = ob.peek(first_seq)
    assert [e.value() for e in entries] == [
        *(f for k, f in zip(kinds, expect, strict=True) if k == "outbox"),
        "sentinel",
    ]
    n_series = kinds.count("series")
    assert d.read("SELECT count(*) FROM samples")[0][0] == before + n_series
    for k in range(len(payloads)):
        kv.delete("ns", str(k))


def test_encoded_values_hold_only_their_own_size() -> None:
    """orjson's result holds ~4 KB whatever its length: a backlog of queued store writes
    (thousands after a reconnect) kept ~20 MB resident (found by benchmarks/soak.py)."""
    import tracemalloc

    tracemalloc.start()
    try:
        kept = [
            to_json({"seq": i, "temp": 31.5}, "outbox message on %s", "t") for i in range(10_000)
        ]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == 10_000
    assert held < 2_000_000  # ~60 bytes each; 41 MB before
