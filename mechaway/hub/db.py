"""The hub's database: SQLite (one file) or PostgreSQL (several hub processes share it).

Everything about a device lives here, never only in one hub process's memory: its token
hash, tags, last heartbeat, the signed bundle it should run (with its sequence), what it
reported, and the per-(device, epoch) upload state. The logic is written once against a
small transaction interface (``_Tx``); ``SqliteBackend`` and ``PgBackend`` provide it.

Telemetry is stored idempotently: ``telemetry`` has the primary key (device, seq) where
seq is the hub's per-device sequence ``epoch.base + edge seq``. Per (device, epoch) the
hub keeps ``acked`` (everything up to it is stored: the edge may delete it), ``stored_hi``
(nothing above it is stored: a batch starting above it is COPYed with no conflict check)
and one *live range* ``[live_lo, live_hi]`` stored ahead of the contiguous prefix (an edge
with a backlog sends live data first). A batch overlapping what is stored goes through
``INSERT ... ON CONFLICT DO NOTHING``. Upload transactions lock their epoch row (``FOR
UPDATE`` on PostgreSQL; SQLite has one writer), so two hubs receiving the same device's
retries store each message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from mechaway.errors import MechawayError
from mechaway.hub.backends import _SEEN, Backend, HubDbError, _Tx, open_backend
from mechaway.hub.wire import Batch, Heartbeat, bundle_payload, canonical, envelope

__all__ = ["Backend", "Conflict", "HubDb", "HubDbError", "open_backend", "token_hash"]

log = logging.getLogger("mechaway.hub.db")

#: events kept per device (older ones are pruned when new ones arrive)
EVENTS_KEPT = 200
TELEMETRY_COLUMNS = ("device_id", "seq", "ts", "topic", "payload", "flags")


class Conflict(MechawayError):
    """A request that contradicts what is stored (unknown device, existing id, old epoch)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- the transaction interface both backends provide ------------------------------------------
# -- the hub's operations --------------------------------------------------------------------
class HubDb:
    """What the hub does with its database, the same for SQLite and PostgreSQL."""

    def __init__(self, backend: Backend, sign: Callable[[bytes], bytes] | None = None) -> None:
        self.b = backend
        self.sign = sign
        self.ingested = 0
        self._seen = _Coalesced(backend.seen)

    async def open(self) -> None:
        await self.b.open()
        await self.b.migrate()

    async def close(self) -> None:
        await self.b.close()

    # -- devices -------------------------------------------------------------------------
    async def add_device(self, device: str, tags: list[str], hashed: str) -> None:
        async with self.b.tx() as tx:
            if await tx.fetchrow("SELECT 1 FROM devices WHERE id = ?", device):
                raise Conflict(409, f"device {device!r} exists")
            await tx.execute(
                "INSERT INTO devices(id, token_hash, tags, created_at) VALUES (?, ?, ?, ?)",
                device,
                hashed,
                orjson.dumps(sorted(set(tags))).decode(),
                time.time(),
            )

    async def device_token_hash(self, device: str) -> str | None:
        rows = await self.b.read("SELECT token_hash FROM devices WHERE id = ?", device)
        return str(rows[0][0]) if rows else None

    async def devices(self) -> list[dict[str, Any]]:
        rows = await self.b.read(
            "SELECT id, tags, created_at, last_seen, status, bundle_seq, applied_seq"
            " FROM devices ORDER BY id"
        )
        return [_device_view(r) for r in rows]

    async def device(self, device: str) -> dict[str, Any] | None:
        async with self.b.tx(durable=False) as tx:
            r = await tx.fetchrow(
                "SELECT id, tags, created_at, last_seen, status, bundle_seq, applied_seq"
                " FROM devices WHERE id = ?",
                device,
            )
            if r is None:
                return None
            view = _device_view(r)
            ev = await tx.fetch(
                "SELECT ts, kind, detail FROM events WHERE device_id = ? ORDER BY id DESC"
                " LIMIT 50",
                device,
            )
            ep = await tx.fetch(
                "SELECT epoch, base, acked, stored_hi, dropped, retired FROM epochs"
                " WHERE device_id = ? ORDER BY created_at",
                device,
            )
        view["events"] = [
            {"ts": e[0], "kind": e[1], **orjson.loads(e[2])} for e in ev
        ]
        view["uploads"] = [
            {
                "epoch": e[0],
                "base": e[1],
                "acked": e[2],
                "stored_hi": e[3],
                "dropped": e[4],
                "retired": bool(e[5]),
            }
            for e in ep
        ]
        return view

    # -- flows ---------------------------------------------------------------------------
    async def put_flow(self, scope: str, key: str, flow_id: str, doc: dict[str, Any]) -> int:
        """Desired flow for a tag or a device; the new flows version."""
        table, col = ("tag_flows", "tag") if scope == "tag" else ("device_flows", "device_id")
        async with self.b.tx() as tx:
            if scope == "device" and not await tx.fetchrow(
                "SELECT 1 FROM devices WHERE id = ?", key
            ):
                raise Conflict(404, f"no device {key!r}")
            await tx.execute(
                f"INSERT INTO {table}({col}, flow_id, doc, updated_at) VALUES (?, ?, ?, ?)"
                f" ON CONFLICT({col}, flow_id) DO UPDATE SET doc = excluded.doc,"
                " updated_at = excluded.updated_at",
                key,
                flow_id,
                canonical(doc).decode(),
                time.time(),
            )
            return await self._bump(tx)

    async def delete_flow(self, scope: str, key: str, flow_id: str) -> bool:
        table, col = ("tag_flows", "tag") if scope == "tag" else ("device_flows", "device_id")
        async with self.b.tx() as tx:
            n = await tx.execute(
                f"DELETE FROM {table} WHERE {col} = ? AND flow_id = ?", key, flow_id
            )
            if n:
                await self._bump(tx)
        return bool(n)

    @staticmethod
    async def _bump(tx: _Tx) -> int:
        await tx.execute("UPDATE counters SET value = value + 1 WHERE name = 'flows'")
        row = await tx.fetchrow("SELECT value FROM counters WHERE name = 'flows'")
        assert row is not None
        return int(row[0])

    async def flows_version(self) -> int:
        rows = await self.b.read("SELECT value FROM counters WHERE name = 'flows'")
        return int(rows[0][0]) if rows else 0

    # -- heartbeats and bundles ----------------------------------------------------------
    async def heartbeat(self, device: str, hb: Heartbeat, raw_status: bytes) -> None:
        now = time.time()
        args = (now, raw_status.decode(), hb.bundle_seq, device)
        if not hb.reports:  # the usual heartbeat: written with the others of this tick
            await self._seen.add((device, now, args[1], hb.bundle_seq))
            return
        async with self.b.tx(durable=False) as tx:
            await tx.execute(_SEEN, *args)
            if hb.reports:
                await tx.executemany(
                    "INSERT INTO events(device_id, ts, kind, detail) VALUES (?, ?, ?, ?)",
                    [
                        (
                            device,
                            r.ts,
                            r.result,
                            orjson.dumps(
                                {"bundle_seq": r.bundle_seq, "flow": r.flow, "detail": r.detail}
                            ).decode(),
                        )
                        for r in hb.reports
                    ],
                )
                cut = await tx.fetchrow(
                    "SELECT id FROM events WHERE device_id = ? ORDER BY id DESC"
                    f" LIMIT 1 OFFSET {EVENTS_KEPT}",
                    device,
                )
                if cut is not None:
                    await tx.execute(
                        "DELETE FROM events WHERE device_id = ? AND id <= ?", device, cut[0]
                    )

    async def device_state(self, device: str, after_seq: int) -> tuple[str, Any] | None:
        """(token hash, the state ``bundle_for`` needs) in one read; None if unknown."""
        rows = await self.b.read(
            "SELECT d.token_hash, d.bundle_seq, d.bundle_version,"
            " CASE WHEN d.bundle_seq > ? THEN d.bundle END, c.value"
            " FROM devices d, counters c WHERE d.id = ? AND c.name = 'flows'",
            after_seq,
            device,
        )
        return (str(rows[0][0]), rows[0]) if rows else None

    async def bundle_for(
        self, device: str, after_seq: int, state: Any = None
    ) -> str | None:
        """The device's signed bundle (JSON text) if its seq is above ``after_seq``."""
        if state is None:
            found = await self.device_state(device, after_seq)
            if found is None:
                return None
            state = found[1]
        seq, version, bundle, current = int(state[1]), int(state[2]), state[3], int(state[4])
        if version != current:
            seq, bundle = await self._rebuild(device, after_seq)
        if bundle is not None and seq > after_seq:
            return str(bundle)
        return None

    async def _rebuild(self, device: str, reported: int) -> tuple[int, str | None]:
        """Recompute the device's desired flows; a new signed bundle if they changed."""
        if self.sign is None:
            raise HubDbError("this hub process has no signing key")
        async with self.b.tx() as tx:
            row = await tx.fetchrow(
                "SELECT tags, bundle_seq, bundle_version, bundle_hash, bundle FROM devices"
                " WHERE id = ?" + tx.for_update,
                device,
            )
            if row is None:
                return 0, None
            tags, seq, version, old_hash, bundle = (
                orjson.loads(row[0]),
                int(row[1]),
                int(row[2]),
                row[3],
                row[4],
            )
            vrow = await tx.fetchrow("SELECT value FROM counters WHERE name = 'flows'")
            current = int(vrow[0]) if vrow else 0
            if version == current:
                return seq, bundle  # another request (or hub) rebuilt it meanwhile
            flows: dict[str, tuple[float, dict[str, Any]]] = {}
            for tag in tags:
                for fid, doc, updated in await tx.fetch(
                    "SELECT flow_id, doc, updated_at FROM tag_flows WHERE tag = ?", tag
                ):
                    # two tags with one flow id: the most recently deployed wins
                    if fid not in flows or updated > flows[fid][0]:
                        flows[fid] = (updated, orjson.loads(doc))
            for fid, doc in await tx.fetch(
                "SELECT flow_id, doc FROM device_flows WHERE device_id = ?", device
            ):
                flows[fid] = (float("inf"), orjson.loads(doc))  # a device's own flow wins
            desired = {fid: d for fid, (_, d) in sorted(flows.items())}
            digest = hashlib.sha256(canonical(desired)).hexdigest()
            if digest == old_hash and bundle is not None:
                await tx.execute(
                    "UPDATE devices SET bundle_version = ? WHERE id = ?", current, device
                )
                return seq, bundle
            seq = max(seq, reported) + 1
            payload = bundle_payload(device, seq, desired)
            text = orjson.dumps(envelope(payload, self.sign(payload))).decode()
            await tx.execute(
                "UPDATE devices SET bundle_seq = ?, bundle_version = ?, bundle_hash = ?,"
                " bundle = ? WHERE id = ?",
                seq,
                current,
                digest,
                text,
                device,
            )
            return seq, text

    # -- telemetry -----------------------------------------------------------------------
    async def ingest(self, device: str, batch: Batch) -> dict[str, Any]:
        """Store a batch idempotently; the device's acknowledged seq for the epoch."""
        rows = batch.rows
        first, last = batch.first, batch.last
        async with self.b.tx() as tx:
            ep = await tx.fetchrow(
                "SELECT base, acked, stored_hi, live_lo, live_hi, dropped, retired FROM epochs"
                " WHERE device_id = ? AND epoch = ?" + tx.for_update,
                device,
                batch.epoch,
            )
            if ep is None:
                ep = await self._new_epoch(tx, device, batch.epoch)
            base, acked, stored_hi, live_lo, live_hi, dropped, retired = (int(x) for x in ep)
            if retired:
                raise Conflict(
                    409, f"epoch {batch.epoch} of {device!r} is retired: a newer outbox uploads"
                )
            new = rows[max(0, acked + 1 - first) :]
            if new:
                recs = [(device, base + s, t, tp, p, f) for s, t, tp, p, f in new]
                if new[0][0] > stored_hi:
                    await tx.copy("telemetry", TELEMETRY_COLUMNS, recs)
                else:  # overlaps what is stored: a retry, or backlog reaching the live range
                    await tx.executemany(
                        "INSERT INTO telemetry(device_id, seq, ts, topic, payload, flags)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING",
                        recs,
                    )
                stored_hi = max(stored_hi, last)
            # contiguous: it continues what is stored, or starts at the edge's oldest row
            # (everything before it is gone from the edge: evicted, never to come)
            if first <= acked + 1 or first == batch.floor + 1:
                if first > acked + 1:  # the edge evicted these before they were sent
                    dropped += first - acked - 1
                acked = max(acked, last)
                if live_hi and acked + 1 >= live_lo:
                    acked = max(acked, live_hi)
                    live_lo = live_hi = 0
            elif live_hi and live_lo <= first <= live_hi + 1:
                live_hi = max(live_hi, last)
            else:
                live_lo, live_hi = first, last
            await tx.execute(
                "UPDATE epochs SET acked = ?, stored_hi = ?, live_lo = ?, live_hi = ?,"
                " dropped = ? WHERE device_id = ? AND epoch = ?",
                acked,
                stored_hi,
                live_lo,
                live_hi,
                dropped,
                device,
                batch.epoch,
            )
        self.ingested += len(new)
        return {"epoch": batch.epoch, "acked": acked, "live_hi": live_hi}

    @staticmethod
    async def _new_epoch(tx: _Tx, device: str, epoch: str) -> Sequence[Any]:
        """First batch of an outbox: its seqs follow everything stored for the device."""
        if not await tx.fetchrow("SELECT 1 FROM devices WHERE id = ?" + tx.for_update, device):
            raise Conflict(404, f"no device {device!r}")
        ep = await tx.fetchrow(
            "SELECT base, acked, stored_hi, live_lo, live_hi, dropped, retired FROM epochs"
            " WHERE device_id = ? AND epoch = ?" + tx.for_update,
            device,
            epoch,
        )
        if ep is not None:
            return ep  # another request created it while we waited for the device lock
        row = await tx.fetchrow(
            "SELECT COALESCE(MAX(base + stored_hi), 0) FROM epochs WHERE device_id = ?", device
        )
        base = int(row[0]) if row else 0
        await tx.execute("UPDATE epochs SET retired = 1 WHERE device_id = ?", device)
        await tx.execute(
            "INSERT INTO epochs(device_id, epoch, base, acked, stored_hi, created_at)"
            " VALUES (?, ?, ?, 0, 0, ?)",
            device,
            epoch,
            base,
            time.time(),
        )
        log.info("device %s: new outbox epoch %s (hub seqs from %d)", device, epoch, base + 1)
        return (base, 0, 0, 0, 0, 0, 0)

    async def telemetry(self, device: str, after: int, limit: int) -> bytes:
        """``[{seq, ts, topic, payload}, ...]`` as JSON bytes (payloads as stored)."""
        rows = await self.b.read(
            "SELECT seq, ts, topic, payload FROM telemetry WHERE device_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            device,
            after,
            limit,
        )
        frag = orjson.Fragment
        return orjson.dumps(
            [{"seq": r[0], "ts": r[1], "topic": r[2], "payload": frag(bytes(r[3]))} for r in rows]
        )


class _Coalesced:
    """Heartbeat writes that arrive while one is in flight go out together as the next
    one (one statement for many devices; a device's latest heartbeat wins). A caller
    writes at most the batch it is in: its latency stays one or two writes under load."""

    def __init__(self, write: Callable[[list[tuple[str, float, str, int]]], Any]) -> None:
        self._write = write
        self._pending: dict[str, tuple[str, float, str, int]] = {}
        self._next: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.writes = 0

    async def add(self, row: tuple[str, float, str, int]) -> None:
        self._pending[row[0]] = row
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        mine = self._next
        while not mine.done():
            if self._inflight is None:
                await self._flush()
            else:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._inflight)
        mine.result()

    async def _flush(self) -> None:
        rows, self._pending = list(self._pending.values()), {}
        fut, self._next = self._next, None
        assert fut is not None
        self._inflight = fut
        try:
            await self._write(rows)
            self.writes += 1
        except BaseException as err:
            fut.set_exception(err if isinstance(err, Exception) else HubDbError("cancelled"))
            fut.exception()  # retrieved here; every waiter sees it through ``result``
            if not isinstance(err, Exception):
                raise
        else:
            fut.set_result(None)
        finally:
            self._inflight = None


def _device_view(r: Sequence[Any]) -> dict[str, Any]:
    status = orjson.loads(r[4]) if r[4] else {}
    return {
        "id": r[0],
        "tags": orjson.loads(r[1]),
        "created_at": r[2],
        "last_seen": r[3],
        "bundle_seq": r[5],
        "applied_seq": r[6],
        "state": status.get("state"),
        "flows": status.get("flows", []),
        "backlog": status.get("backlog", {}),
        "problems": status.get("problems", []),
        "version": status.get("version"),
    }
