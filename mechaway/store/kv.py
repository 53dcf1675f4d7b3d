"""Key-value store: namespaced keys, JSON values, optional time to live.

Writes are coalesced into one writer op per loop tick and committed with
``synchronous=NORMAL`` (they survive ``kill -9``; a power cut may lose the last second,
see ``Maintenance``'s sync floor). Reads run on the loop thread against the reader
connection (a primary-key lookup, microseconds) and see the caller's own writes at once:
writes not yet committed are served from an in-memory overlay.

An expired key reads as absent at once; its row is deleted later in small batches.

Time to live and clock steps: a Pi has no real-time clock and its wall clock steps (years
forward when NTP first syncs, sometimes backward). Within a run a TTL counts elapsed
time: deadlines are kept on the store's own clock, ``time.monotonic()`` plus an offset
fixed at start, so a step neither expires every key at once nor keeps keys for years.
``maintain`` notices a step (the wall clock moved against the monotonic one by more than
``CLOCK_STEP_S``), moves the store's clock onto the new wall time, and shifts the stored
deadlines (and ``updated_at``) of the keys written in this run by the same step, so they
stay right after a restart. Keys written by an earlier run keep the wall-clock deadline
they were stored with: time the device was off counts, and if it booted with its clock
behind, they expire once the clock is set.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson

from mechaway.store.batching import Coalescer, attach, attached
from mechaway.store.db import Database, register_migration
from mechaway.store.encode import to_json

register_migration(
    201,
    """
    CREATE TABLE kv (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;
    CREATE INDEX kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL;
    """,
)

log = logging.getLogger("mechaway.store.kv")

_MISSING = object()
#: a move of the wall clock against the monotonic one larger than this is a step
CLOCK_STEP_S = 1.0


@dataclass(frozen=True, slots=True)
class _Write:
    ns: str
    key: str
    value: bytes | None  # None: delete
    expires_at: float | None
    #: when it was written, on the store's clock
    at: float = 0.0
    #: the store's total clock shift when it was written (``expires_at`` is in that frame)
    shift: float = 0.0


class KVStore:
    """The key-value table of one ``Database`` (``KVStore.of(db)``)."""

    def __init__(
        self, db: Database, *, purge_batch: int = 1000, purge_interval: float = 30.0
    ) -> None:
        self.db = db
        self.purge_batch = purge_batch
        #: expired rows are deleted at most this often (they already read as absent)
        self.purge_interval = purge_interval
        self._purged_at = 0.0
        self._co: Coalescer[_Write, None] = Coalescer(db, self._apply, durable=False)
        #: writes not yet committed: (ns, key) -> the write
        self._overlay: dict[tuple[str, str], _Write] = {}
        self.sets = 0
        self.expired_purged = 0
        self.clock_steps = 0
        #: the store's clock is ``time.monotonic() + _base`` (the wall clock, minus steps)
        self._base = time.time() - time.monotonic()
        #: the sum of the steps followed so far (the frame a pending write was made in)
        self._shift = 0.0
        #: the store's clock when this run started (moved with each step)
        self._run_from = time.monotonic() + self._base
        #: a shift submitted but maybe not committed: (from, to, step): rows with
        #: ``updated_at`` in [from, to] still read in the frame before the step
        self._unsettled: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, db: Database) -> KVStore:
        """The store of ``db`` (created on first use)."""
        return attached(db, cls) or attach(db, cls(db))

    @classmethod
    def existing(cls, db: Database) -> KVStore | None:
        return attached(db, cls)

    # -- writes -----------------------------------------------------------------------------
    def now(self) -> float:
        """The store's clock: wall-clock seconds that never step within a run."""
        return time.monotonic() + self._base

    @staticmethod
    def _apply(conn: sqlite3.Connection, items: list[_Write]) -> list[Any]:
        for w in items:
            if w.value is None:
                conn.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (w.ns, w.key))
            else:
                conn.execute(
                    "INSERT INTO kv(ns, key, value, expires_at, updated_at) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value, "
                    "expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                    (w.ns, w.key, w.value, w.expires_at, w.at),
                )
        return [None] * len(items)

    def _queue(self, w: _Write) -> asyncio.Future[None]:
        k = (w.ns, w.key)
        self._overlay[k] = w
        fut = self._co.add(w)

        def committed(_f: asyncio.Future[None]) -> None:
            if self._overlay.get(k) is w:
                del self._overlay[k]

        fut.add_done_callback(committed)
        return fut

    def set(
        self, ns: str, key: str, value: Any, *, ttl: float | None = None
    ) -> asyncio.Future[None]:
        """Store ``value`` (JSON-compatible) under ``ns``/``key``; ``ttl`` in seconds.

        Raises ``ValueError`` (``UnstorableValue``, naming the key) for a value JSON has no
        form for; nothing is queued then.
        """
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be > 0")
        blob = to_json(value, "key %s in namespace %s", key, ns)
        self.sets += 1
        now = time.monotonic() + self._base
        expires = now + ttl if ttl is not None else None
        return self._queue(_Write(ns, key, blob, expires, now, self._shift))

    def delete(self, ns: str, key: str) -> asyncio.Future[None]:
        return self._queue(_Write(ns, key, None, None, 0.0, self._shift))

    def _expired(self, w: _Write, now: float) -> bool:
        return w.expires_at is not None and w.expires_at + (self._shift - w.shift) <= now

    def _settled(self, expires_at: float, updated_at: float) -> float:
        """A stored deadline in the current frame, while a step's shift is in flight."""
        if self._unsettled is not None:
            lo, hi, step = self._unsettled
            if lo <= updated_at <= hi:
                return expires_at + step
        return expires_at

    # -- reads ------------------------------------------------------------------------------
    def get(self, ns: str, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when absent or expired."""
        now = time.monotonic() + self._base
        w = self._overlay.get((ns, key))
        if w is not None:
            if w.value is None or self._expired(w, now):
                return default
            return orjson.loads(w.value)
        rows = self.db.read(
            "SELECT value, expires_at, updated_at FROM kv WHERE ns = ? AND key = ?", (ns, key)
        )
        if not rows:
            return default
        value, expires_at, updated_at = rows[0]
        if expires_at is not None and self._settled(expires_at, updated_at) <= now:
            return default
        return orjson.loads(value)

    def contains(self, ns: str, key: str) -> bool:
        return self.get(ns, key, _MISSING) is not _MISSING

    def keys(self, ns: str) -> list[str]:
        """Live keys of a namespace (committed ones merged with pending writes)."""
        now = time.monotonic() + self._base
        if self._unsettled is None:
            found = {
                r[0]
                for r in self.db.read(
                    "SELECT key FROM kv WHERE ns = ? AND (expires_at IS NULL OR expires_at > ?)",
                    (ns, now),
                )
            }
        else:  # a step's shift is in flight: some deadlines are still in the old frame
            found = {
                r[0]
                for r in self.db.read(
                    "SELECT key, expires_at, updated_at FROM kv WHERE ns = ?", (ns,)
                )
                if r[1] is None or self._settled(r[1], r[2]) > now
            }
        for (wns, wkey), w in self._overlay.items():
            if wns != ns:
                continue
            if w.value is None or self._expired(w, now):
                found.discard(wkey)
            else:
                found.add(wkey)
        return sorted(found)

    # -- housekeeping -----------------------------------------------------------------------
    async def maintain(self) -> None:
        """Follow a step of the wall clock; delete expired rows, ``purge_batch`` per op
        (never one long transaction)."""
        await self._follow_clock()
        if time.monotonic() - self._purged_at < self.purge_interval:
            return
        self._purged_at = time.monotonic()
        while True:
            n = await self.db.write(functools.partial(self._purge_op, now=self.now()))
            self.expired_purged += n
            if n < self.purge_batch:
                return

    async def _follow_clock(self) -> None:
        """If the wall clock stepped, move the store's clock and this run's rows with it."""
        mono = time.monotonic()
        step = time.time() - (mono + self._base)
        if abs(step) <= CLOCK_STEP_S:
            return
        self.clock_steps += 1
        log.warning("the wall clock stepped by %+.1f s (KV deadlines follow it)", step)
        # every write made in the old frame goes to the writer before the shift does (the
        # writer runs ops in order); writes made from here on are in the new frame
        self._co.flush()
        lo, hi = self._run_from, mono + self._base
        self._base += step
        self._shift += step
        self._run_from += step
        self._unsettled = (lo, hi, step)
        try:
            await self.db.write(functools.partial(self._shift_op, lo=lo, hi=hi, step=step))
        finally:
            self._unsettled = None

    @staticmethod
    def _shift_op(conn: sqlite3.Connection, *, lo: float, hi: float, step: float) -> None:
        conn.execute(
            "UPDATE kv SET expires_at = expires_at + :d, updated_at = updated_at + :d "
            "WHERE updated_at >= :lo AND updated_at <= :hi",
            {"d": step, "lo": lo, "hi": hi},
        )

    def _purge_op(self, conn: sqlite3.Connection, *, now: float) -> int:
        cur = conn.execute(
            "DELETE FROM kv WHERE (ns, key) IN (SELECT ns, key FROM kv WHERE expires_at <= ? "
            "LIMIT ?)",
            (now, self.purge_batch),
        )
        return cur.rowcount

    def status(self) -> dict[str, Any]:
        return {
            "sets": self.sets,
            "pending": self._co.pending,
            "expired_purged": self.expired_purged,
            "clock_steps": self.clock_steps,
        }
