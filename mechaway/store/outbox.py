"""The outbox: telemetry waiting for the hub, durable before it is acknowledged.

Contract: ``Outbox.append`` resolves to a sequence number only after the message was
committed with ``synchronous=FULL`` (the WAL was fsynced): from then on it survives
``kill -9`` and power loss, until the hub acknowledged it (``ack``) or, under the
``drop_oldest`` policy, it was evicted to make room (counted in ``dropped``; the hub sees
the gap in ``seq``). A message that was not acknowledged may or may not be there after a
crash; a producer that sends it again should mark it ``dup`` (flag ``FLAG_DUP``), so the
hub can tell a retry from new data.

Sequence numbers are monotonic for the life of the file (``epoch`` names that life: a
file recreated from scratch starts a new epoch). Rows are always the contiguous range
``(floor_seq, last_seq]``: deletions only ever remove a prefix, so counting and sizing
the outbox are two index lookups, not scans, and nothing per-append is written besides
the rows themselves.

Appends made during one event-loop tick (from any number of ``UpstreamNode``s) become
ONE op of the store's writer, and all ops queued within its group-commit window share
ONE fsync: durable throughput grows with load instead of being bounded by fsync latency.

A source that must acknowledge upstream only once the data is durable (MQTT QoS 1
PUBACK) dispatches with ``mechaway.nodes.base.emit_collecting``; ``UpstreamNode``
registers each append's future there (``receipt``)::

    futs = emit_collecting(self.emit, msg)   # pure nodes run now, appends register
    await asyncio.gather(*futs)              # OutboxFull / StoreError: refused
    puback(mid)
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from mechaway.errors import StoreError
from mechaway.store.batching import Coalescer, attach, attached
from mechaway.store.db import Database, register_migration
from mechaway.store.encode import UnstorableValue, show, timestamp, to_json

register_migration(
    204,
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        cum INTEGER NOT NULL
    );
    CREATE TABLE outbox_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch TEXT NOT NULL,
        floor_seq INTEGER NOT NULL,
        floor_cum INTEGER NOT NULL,
        acked_upto INTEGER NOT NULL,
        dropped INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    INSERT INTO outbox_state(id, epoch, floor_seq, floor_cum, acked_upto, dropped, created_at)
    VALUES (1, lower(hex(randomblob(8))), 0, 0, 0, 0, CAST(strftime('%s', 'now') AS REAL));
    """,
)

Policy = Literal["reject_new", "drop_oldest"]
#: the message may have been stored before (a producer's retry after a crash)
FLAG_DUP = 1
#: accounted bytes per row beyond topic and payload
ROW_COST = 32


class OutboxFull(StoreError):
    """The outbox refused a message (bound reached under ``reject_new``, or too large)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored message, as the hub sync client reads it."""

    seq: int
    ts: float
    topic: str
    payload: bytes  # JSON
    flags: int

    @property
    def dup(self) -> bool:
        return bool(self.flags & FLAG_DUP)

    def value(self) -> Any:
        return orjson.loads(self.payload)


@dataclass(frozen=True, slots=True)
class _Item:
    ts: float
    topic: str
    payload: bytes
    #: accounted bytes: payload, UTF-8 topic, ``ROW_COST``
    size: int
    flags: int
    policy: Policy
    max_messages: int
    max_bytes: int


class Outbox:
    """The outbox table of one ``Database`` (``Outbox.of(db)``)."""

    def __init__(
        self,
        db: Database,
        *,
        max_inflight: int = 100_000,
        max_message_bytes: int = 1024 * 1024,
        ack_batch: int = 5000,
    ) -> None:
        self.db = db
        #: appends accepted in memory but not yet committed; beyond, appends are refused
        self.max_inflight = max_inflight
        self.max_message_bytes = max_message_bytes
        self.ack_batch = ack_batch
        self._co: Coalescer[_Item, int] = Coalescer(db, self._append_op, durable=True)
        #: counted by the writer thread (appended, refused by a bound, evicted) and on the
        #: loop (refused because the writer backlog is full)
        self.appended = 0
        self.refused = 0
        self.dropped_here = 0
        self.refused_backlog = 0

    @classmethod
    def of(cls, db: Database) -> Outbox:
        return attached(db, cls) or attach(db, cls(db))

    @classmethod
    def existing(cls, db: Database) -> Outbox | None:
        return attached(db, cls)

    # -- append -----------------------------------------------------------------------------
    def append(
        self,
        topic: str,
        payload: Any,
        *,
        ts: float | None = None,
        dup: bool = False,
        policy: Policy = "reject_new",
        max_messages: int = 1_000_000,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> asyncio.Future[int]:
        """Queue a message; the future resolves to its seq once it is durable.

        Fails with ``OutboxFull`` when refused. Raises ``ValueError`` (``UnstorableValue``)
        at once, queueing nothing, for a payload JSON has no form for or a ``ts`` that is
        not a finite number. Every stored payload is JSON: ``bytes`` too are a value (base64
        text), never taken as already-encoded JSON.
        """
        loop = asyncio.get_running_loop()
        data = to_json(payload, "outbox message on %s", topic)
        t = timestamp(ts, "outbox message on %s", topic)
        try:
            size = len(data) + len(topic.encode()) + ROW_COST
        except UnicodeEncodeError as err:
            raise UnstorableValue(f"outbox topic {show(topic)} is not valid text: {err}") from None
        fut: asyncio.Future[int]
        if self._co.pending >= self.max_inflight:
            fut = loop.create_future()
            fut.set_exception(OutboxFull(f"outbox writer backlog of {self.max_inflight} reached"))
            fut.exception()
            self.refused_backlog += 1
        else:
            item = _Item(
                t,
                topic,
                data,
                size,
                FLAG_DUP if dup else 0,
                policy,
                max_messages,
                max_bytes,
            )
            fut = self._co.add(item)
        return fut

    @property
    def pending(self) -> int:
        """Appends not yet committed."""
        return self._co.pending

    def _append_op(self, conn: sqlite3.Connection, items: list[_Item]) -> list[Any]:
        floor_seq, floor_cum = conn.execute(
            "SELECT floor_seq, floor_cum FROM outbox_state WHERE id = 1"
        ).fetchone()
        last = conn.execute("SELECT seq, cum FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
        last_seq, last_cum = (last[0], last[1]) if last else (floor_seq, floor_cum)
        new_floor_seq, new_floor_cum = floor_seq, floor_cum
        rows: list[tuple[int, float, str, bytes, int, int]] = []
        out: list[Any] = []
        dropped = 0
        for it in items:
            size = it.size
            if size > min(self.max_message_bytes, it.max_bytes):
                out.append(OutboxFull(f"message of {size} bytes is larger than the bound"))
                continue
            count = last_seq - new_floor_seq
            nbytes = last_cum - new_floor_cum
            if count + 1 > it.max_messages or nbytes + size > it.max_bytes:
                if it.policy == "reject_new":
                    out.append(
                        OutboxFull(
                            f"outbox full ({count} messages, {nbytes} bytes; "
                            f"bound {it.max_messages} / {it.max_bytes})"
                        )
                    )
                    continue
                # drop_oldest: advance the floor over the fewest rows that make room
                need_n = count + 1 - it.max_messages
                need_b = nbytes + size - it.max_bytes
                new_floor_seq, new_floor_cum, n = self._advance(
                    conn,
                    rows,
                    floor=(new_floor_seq, new_floor_cum),
                    need_n=need_n,
                    need_b=need_b,
                )
                dropped += n
            last_seq += 1
            last_cum += size
            rows.append((last_seq, it.ts, it.topic, it.payload, it.flags, last_cum))
            out.append(last_seq)
        if new_floor_seq != floor_seq:
            conn.execute("DELETE FROM outbox WHERE seq <= ?", (new_floor_seq,))
            rows = [r for r in rows if r[0] > new_floor_seq]
            conn.execute(
                "UPDATE outbox_state SET floor_seq = ?, floor_cum = ?, dropped = dropped + ? "
                "WHERE id = 1",
                (new_floor_seq, new_floor_cum, dropped),
            )
        if rows:
            conn.executemany(
                "INSERT INTO outbox(seq, ts, topic, payload, flags, cum) VALUES (?,?,?,?,?,?)",
                rows,
            )
        self.dropped_here += dropped  # counted once the op can no longer fail
        refused = sum(1 for r in out if isinstance(r, OutboxFull))
        self.refused += refused
        self.appended += len(out) - refused
        return out

    @property
    def rejected(self) -> int:
        """Appends refused (bound reached, message too large, writer backlog full)."""
        return self.refused + self.refused_backlog

    @staticmethod
    def _advance(
        conn: sqlite3.Connection,
        pending: list[tuple[int, float, str, bytes, int, int]],
        *,
        floor: tuple[int, int],
        need_n: int,
        need_b: int,
    ) -> tuple[int, int, int]:
        """New (floor_seq, floor_cum, dropped) after evicting the oldest rows to make room."""
        floor_seq, floor_cum = floor
        n = 0
        seq, cum = floor_seq, floor_cum
        while need_n > 0 or cum - floor_cum < need_b:
            nxt = conn.execute(
                "SELECT seq, cum FROM outbox WHERE seq > ? ORDER BY seq LIMIT 256", (seq,)
            ).fetchall()
            if len(nxt) < 256:  # the table is exhausted: then this op's own rows, oldest first
                nxt += [(r[0], r[5]) for r in pending if r[0] > (nxt[-1][0] if nxt else seq)]
            if not nxt:
                break
            for s, c in nxt:
                seq, cum = s, c
                n += 1
                need_n -= 1
                if need_n <= 0 and cum - floor_cum >= need_b:
                    break
        return seq, cum, n

    # -- the hub sync client's side ---------------------------------------------------------
    def peek(self, after_seq: int = 0, n: int = 500) -> list[Entry]:
        """Up to ``n`` stored messages with ``seq > after_seq``, oldest first."""
        rows = self.db.read(
            "SELECT seq, ts, topic, payload, flags FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, n),
        )
        return [Entry(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    async def ack(self, upto_seq: int) -> int:
        """The hub has everything up to ``upto_seq``: delete it (in small ops). Rows deleted.

        Not fsynced on its own: a power cut may bring acknowledged rows back, and the hub,
        storing by (device, seq), ignores them when they are sent again.
        """
        total = 0
        while True:
            n = await self.db.write(lambda c: self._ack_op(c, upto_seq))
            total += n
            if n < self.ack_batch:
                return total

    def _ack_op(self, conn: sqlite3.Connection, upto: int) -> int:
        floor_seq, acked = conn.execute(
            "SELECT floor_seq, acked_upto FROM outbox_state WHERE id = 1"
        ).fetchone()
        last = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0]
        top = min(upto, last if last is not None else floor_seq)
        if upto > acked:
            conn.execute(
                "UPDATE outbox_state SET acked_upto = ? WHERE id = 1", (max(acked, min(upto, top)),)
            )
        end = min(top, floor_seq + self.ack_batch)
        if end <= floor_seq:
            return 0
        (cum,) = conn.execute("SELECT cum FROM outbox WHERE seq = ?", (end,)).fetchone()
        cur = conn.execute("DELETE FROM outbox WHERE seq <= ?", (end,))
        conn.execute(
            "UPDATE outbox_state SET floor_seq = ?, floor_cum = ? WHERE id = 1", (end, cum)
        )
        return cur.rowcount

    # -- figures ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Depth, bytes, seq range, acked and dropped counts (two index lookups)."""
        st = self.db.read(
            "SELECT epoch, floor_seq, floor_cum, acked_upto, dropped FROM outbox_state"
        )
        epoch, floor_seq, floor_cum, acked, dropped = st[0]
        last = self.db.read("SELECT seq, cum FROM outbox ORDER BY seq DESC LIMIT 1")
        last_seq, last_cum = (last[0][0], last[0][1]) if last else (floor_seq, floor_cum)
        return {
            "epoch": epoch,
            "messages": last_seq - floor_seq,
            "bytes": last_cum - floor_cum,
            "first_seq": floor_seq + 1 if last_seq > floor_seq else None,
            "last_seq": last_seq,
            "acked_upto": acked,
            "dropped": dropped,
            "pending": self.pending,
            "rejected": self.rejected,
        }

    async def maintain(self) -> None:
        """Nothing periodic: bounds apply on append, deletions happen on ack."""
