"""Housekeeping of the SQLite file, in small steps that never stall the event loop.

Every ``tick`` seconds, one task:

- runs each store's ``maintain`` (series age/size retention, expired KV keys): work is
  done by the writer thread in ops of at most a few thousand rows, so other writes
  interleave and no transaction is long;
- keeps the **sync floor**: if a ``synchronous=NORMAL`` commit is not yet covered by an
  fsync, it queues a tiny durable write, whose fsync of the WAL makes every earlier
  commit durable too. A power cut therefore loses at most ``sync_floor`` seconds of
  non-outbox data, at a cost of at most one fsync per ``sync_floor``;
- never shrinks the file: pages freed by retention and acks are reused by new rows.
  Giving them back (auto_vacuum) would cost a pointer-map page write on most commits
  (measured: +20% WAL bytes) and re-growing the file wears the card again. To shrink a
  file after lowering a bound, stop the daemon and run ``sqlite3 mechaway.db VACUUM``.

Checkpoints: SQLite's automatic checkpoint (every 1000 WAL pages, ~4 MB) runs on the
writer thread, never on the loop; ``journal_size_limit`` trims the WAL file back after
it. ``VACUUM`` is never run by the daemon: it rewrites the whole file.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any, Protocol

from mechaway.errors import StoreUnavailable
from mechaway.store.db import Database, register_migration
from mechaway.store.kv import KVStore
from mechaway.store.outbox import Outbox
from mechaway.store.series import SeriesStore
from mechaway.store.vectors import VectorStore
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.store.maintenance")

register_migration(
    205,
    """
    CREATE TABLE store_meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    INSERT INTO store_meta(k, v) VALUES ('sync_floor', 0);
    """,
)


class _Maintained(Protocol):
    async def maintain(self) -> None: ...


def _mark_synced(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE store_meta SET v = ? WHERE k = 'sync_floor'", (time.time(),))


class Maintenance:
    """The periodic housekeeping task of one ``Database``."""

    def __init__(
        self,
        db: Database,
        *,
        tick: float = 1.0,
        sync_floor: float = 1.0,
    ) -> None:
        self.db = db
        self.tick = tick
        self.sync_floor = sync_floor
        self._task = OwnedTask("mechaway.store.maintenance")
        self._last_floor = 0.0
        self.floor_syncs = 0
        #: retention or sync steps that failed because the file could not be written
        self.unavailable_steps = 0
        self.last_run_ms = 0.0

    async def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        """Cancel the task. Idempotent."""
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store maintenance failed (will retry)")

    def _stores(self) -> list[_Maintained]:
        found: list[_Maintained | None] = [
            SeriesStore.existing(self.db),
            KVStore.existing(self.db),
            VectorStore.existing(self.db),
            Outbox.existing(self.db),
        ]
        return [s for s in found if s is not None]

    async def run_once(self) -> None:
        """One round: retention, then the sync floor.

        While the file cannot be written (disk full) a step that fails for that reason is
        counted (the store logs the burst once) and the round goes on: another store's
        retention may be what frees the space.
        """
        t0 = time.perf_counter()
        for store in self._stores():
            try:
                await store.maintain()
            except StoreUnavailable:
                self.unavailable_steps += 1
        try:
            await self.sync()
        except StoreUnavailable:
            self.unavailable_steps += 1
        self.last_run_ms = (time.perf_counter() - t0) * 1000.0

    async def sync(self, *, force: bool = False) -> bool:
        """Make every NORMAL commit so far durable (one fsync) if the floor is due."""
        now = time.monotonic()
        if not self.db.unsynced or (not force and now - self._last_floor < self.sync_floor):
            return False
        self._last_floor = now
        await self.db.write(_mark_synced, durable=True)
        self.floor_syncs += 1
        return True

    def free_pages(self) -> tuple[int, int, int]:
        """(free pages, total pages, page size) of the file."""
        free = self.db.read("PRAGMA freelist_count")[0][0]
        total = self.db.read("PRAGMA page_count")[0][0]
        size = self.db.read("PRAGMA page_size")[0][0]
        return int(free), int(total), int(size)

    def status(self) -> dict[str, Any]:
        return {
            "floor_syncs": self.floor_syncs,
            "unavailable_steps": self.unavailable_steps,
            "free_pages": self.free_pages()[0],
            "last_run_ms": round(self.last_run_ms, 3),
        }
