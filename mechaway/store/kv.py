"""Key-value store: namespaced keys, JSON values, optional time to live.

Writes are coalesced into one writer op per loop tick and committed with
``synchronous=NORMAL`` (they survive ``kill -9``; a power cut may lose the last second,
see ``Maintenance``'s sync floor). Reads run on the loop thread against the reader
connection (a primary-key lookup, microseconds) and see the caller's own writes at once:
writes not yet committed are served from an in-memory overlay.

An expired key reads as absent at once; its row is deleted later in small batches.
"""

from __future__ import annotations

import asyncio
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

_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Write:
    ns: str
    key: str
    value: bytes | None  # None: delete
    expires_at: float | None


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

    @classmethod
    def of(cls, db: Database) -> KVStore:
        """The store of ``db`` (created on first use)."""
        return attached(db, cls) or attach(db, cls(db))

    @classmethod
    def existing(cls, db: Database) -> KVStore | None:
        return attached(db, cls)

    # -- writes -----------------------------------------------------------------------------
    @staticmethod
    def _apply(conn: sqlite3.Connection, items: list[_Write]) -> list[Any]:
        now = time.time()
        for w in items:
            if w.value is None:
                conn.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (w.ns, w.key))
            else:
                conn.execute(
                    "INSERT INTO kv(ns, key, value, expires_at, updated_at) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value, "
                    "expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                    (w.ns, w.key, w.value, w.expires_at, now),
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
        expires = time.time() + ttl if ttl is not None else None
        return self._queue(_Write(ns, key, blob, expires))

    def delete(self, ns: str, key: str) -> asyncio.Future[None]:
        return self._queue(_Write(ns, key, None, None))

    # -- reads ------------------------------------------------------------------------------
    def get(self, ns: str, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when absent or expired."""
        now = time.time()
        w = self._overlay.get((ns, key))
        if w is not None:
            if w.value is None or (w.expires_at is not None and w.expires_at <= now):
                return default
            return orjson.loads(w.value)
        rows = self.db.read("SELECT value, expires_at FROM kv WHERE ns = ? AND key = ?", (ns, key))
        if not rows or (rows[0][1] is not None and rows[0][1] <= now):
            return default
        return orjson.loads(rows[0][0])

    def contains(self, ns: str, key: str) -> bool:
        return self.get(ns, key, _MISSING) is not _MISSING

    def keys(self, ns: str) -> list[str]:
        """Live keys of a namespace (committed ones merged with pending writes)."""
        now = time.time()
        found = {
            r[0]
            for r in self.db.read(
                "SELECT key FROM kv WHERE ns = ? AND (expires_at IS NULL OR expires_at > ?)",
                (ns, now),
            )
        }
        for (wns, wkey), w in self._overlay.items():
            if wns != ns:
                continue
            if w.value is None or (w.expires_at is not None and w.expires_at <= now):
                found.discard(wkey)
            else:
                found.add(wkey)
        return sorted(found)

    # -- housekeeping -----------------------------------------------------------------------
    async def maintain(self) -> None:
        """Delete expired rows, ``purge_batch`` per op (never one long transaction)."""
        if time.monotonic() - self._purged_at < self.purge_interval:
            return
        self._purged_at = time.monotonic()
        while True:
            n = await self.db.write(self._purge_op)
            self.expired_purged += n
            if n < self.purge_batch:
                return

    def _purge_op(self, conn: sqlite3.Connection) -> int:
        cur = conn.execute(
            "DELETE FROM kv WHERE (ns, key) IN (SELECT ns, key FROM kv WHERE expires_at <= ? "
            "LIMIT ?)",
            (time.time(), self.purge_batch),
        )
        return cur.rowcount

    def status(self) -> dict[str, Any]:
        return {
            "sets": self.sets,
            "pending": self._co.pending,
            "expired_purged": self.expired_purged,
        }
