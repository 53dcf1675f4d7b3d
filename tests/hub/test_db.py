"""The hub database on SQLite and PostgreSQL: migrations, idempotent ingest, the live
range, epochs, bundles, and two hub processes' worth of connections on one database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from mechaway.hub.db import Conflict, HubDb, open_backend, token_hash
from mechaway.hub.keys import Signer, generate_pem
from mechaway.hub.wire import Batch, Heartbeat, open_bundle

SIGNER = Signer(generate_pem(), "test key")


def rows(first: int, last: int) -> list[tuple[int, float, str, bytes, int]]:
    return [(s, 1000.0 + s, "t", b"%d" % s, 0) for s in range(first, last + 1)]


def batch(first: int, last: int, *, floor: int = 0, epoch: str = "e1") -> Batch:
    return Batch(epoch, floor, rows(first, last))


async def stored(db: HubDb, dev: str = "d") -> list[int]:
    return [r["seq"] for r in orjson.loads(await db.telemetry(dev, 0, 10_000))]


async def open_db(database: str) -> HubDb:
    db = HubDb(open_backend(database), SIGNER.sign)
    await db.open()
    return db


@pytest.mark.asyncio
async def test_migrations_are_idempotent(database: str) -> None:
    for _ in range(2):
        db = await open_db(database)
        assert await db.b.migrate() == 1
        await db.close()


@pytest.mark.asyncio
async def test_ingest_contiguous_retry_live_and_gaps(database: str) -> None:
    db = await open_db(database)
    try:
        await db.add_device("d", [], token_hash("t"))
        assert (await db.ingest("d", batch(1, 10)))["acked"] == 10
        # a retry of what is stored (its answer was lost): nothing twice
        assert (await db.ingest("d", batch(1, 10)))["acked"] == 10
        assert (await db.ingest("d", batch(5, 15)))["acked"] == 15
        # live data ahead of a backlog: stored, not acknowledged yet
        r = await db.ingest("d", batch(31, 40, floor=15))
        assert (r["acked"], r["live_hi"]) == (15, 40)
        assert (await db.ingest("d", batch(41, 45, floor=15)))["live_hi"] == 45
        # the backlog reaches the live range: everything up to its top is acknowledged
        assert (await db.ingest("d", batch(16, 25, floor=15)))["acked"] == 25
        assert (await db.ingest("d", batch(26, 30, floor=15)))["acked"] == 45
        assert await stored(db) == list(range(1, 46))
        # the edge evicted 46..49 (drop_oldest) before sending: its batch starts at its floor
        assert (await db.ingest("d", batch(50, 52, floor=49)))["acked"] == 52
        view = await db.device("d")
        assert view is not None and view["uploads"][0]["dropped"] == 4
        # a gap the edge does not explain is not acknowledged over
        r = await db.ingest("d", batch(60, 61, floor=52))
        assert r["acked"] == 52
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_new_epoch_follows_and_old_epoch_is_refused(database: str) -> None:
    db = await open_db(database)
    try:
        await db.add_device("d", [], token_hash("t"))
        await db.ingest("d", batch(1, 5, epoch="old"))
        # the edge's outbox was recreated: its seqs restart, the hub's continue
        assert (await db.ingest("d", batch(1, 3, epoch="new")))["acked"] == 3
        assert await stored(db) == [1, 2, 3, 4, 5, 6, 7, 8]
        with pytest.raises(Conflict):
            await db.ingest("d", batch(6, 7, epoch="old"))
        with pytest.raises(Conflict):
            await db.ingest("nobody", batch(1, 2))
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_concurrent_retries_store_each_message_once(database: str) -> None:
    """Two hub processes' worth of connections get the same batches at once."""
    a, b = await open_db(database), await open_db(database)
    try:
        await a.add_device("d", [], token_hash("t"))
        jobs = []
        for i in range(20):
            first = i * 50 + 1
            for db in (a, b, a):
                jobs.append(db.ingest("d", batch(first, first + 49)))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        # some batches may have been answered "not contiguous yet": send again in order
        for i in range(20):
            await b.ingest("d", batch(i * 50 + 1, i * 50 + 50))
        assert await stored(a) == list(range(1, 1001))
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_bundles_tags_devices_and_reported_seq(database: str, tmp_path: Path) -> None:
    db = await open_db(database)
    try:
        await db.add_device("d", ["gh", "x"], token_hash("t"))
        with pytest.raises(Conflict):
            await db.add_device("d", [], token_hash("t"))
        first = await db.bundle_for("d", 0)
        assert first is not None  # an empty bundle, seq 1
        b1 = open_bundle(orjson.loads(first), SIGNER.public_raw, device="d", last_seq=0)
        assert b1 is not None and b1.flows == {}
        await db.put_flow("tag", "gh", "f", {"id": "f", "nodes": [], "edges": [], "name": "t"})
        await db.put_flow("device", "d", "g", {"id": "g", "nodes": [], "edges": []})
        env = await db.bundle_for("d", 1)
        assert env is not None
        b2 = open_bundle(orjson.loads(env), SIGNER.public_raw, device="d", last_seq=1)
        assert b2 is not None and b2.seq == 2 and sorted(b2.flows) == ["f", "g"]
        assert await db.bundle_for("d", 2) is None
        # a change elsewhere: no new bundle for this device
        await db.put_flow("tag", "other", "h", {"id": "h", "nodes": [], "edges": []})
        assert await db.bundle_for("d", 2) is None
        # the device reports a higher seq (a hub database restored from a backup): the
        # next bundle comes after it
        await db.delete_flow("device", "d", "g")
        env = await db.bundle_for("d", 40)
        assert env is not None and orjson.loads(env)["payload"]
        b3 = open_bundle(orjson.loads(env), SIGNER.public_raw, device="d", last_seq=40)
        assert b3 is not None and b3.seq == 41 and list(b3.flows) == ["f"]
        with pytest.raises(Conflict):
            await db.put_flow("device", "nobody", "g", {"id": "g", "nodes": [], "edges": []})
        await db.heartbeat("d", Heartbeat(bundle_seq=41), b'{"state": "running"}')
        view = await db.device("d")
        assert view is not None and view["applied_seq"] == 41 and view["state"] == "running"
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_heartbeats_of_many_devices_share_writes(database: str) -> None:
    db = await open_db(database)
    try:
        for i in range(40):
            await db.add_device(f"d{i}", [], token_hash("t"))
        await asyncio.gather(
            *(
                db.heartbeat(f"d{i}", Heartbeat(bundle_seq=i), b'{"state": "s%d"}' % i)
                for i in range(40)
                for _ in range(3)
            )
        )
        assert db._seen.writes < 40
        for i in (0, 17, 39):
            view = await db.device(f"d{i}")
            assert view is not None and view["applied_seq"] == i and view["state"] == f"s{i}"
    finally:
        await db.close()
