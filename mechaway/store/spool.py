"""A durable FIFO of pending MQTT publishes (the driver's ``Spool``), in the SQLite file.

The queue lives in memory for speed and order; every append/removal is also written
through the store's single writer, so what was spooled survives a restart (it is
reloaded at open). Bounded: past ``max_items`` the declared policy drops the oldest or
the newest message, and every drop is counted.

A row the file refused (disk full) stays queued in memory and is delivered; the append's
future fails (so nothing waits on it as durable), and the row is written with the next
append once the file takes writes again. A failed deletion is covered by the next one
(``id <= n``); until then a restart may deliver those publishes again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
from concurrent.futures import Future
from typing import Any, Literal

from mechaway.store.db import Database, register_migration

log = logging.getLogger("mechaway.store.spool")

register_migration(
    100,
    """
    CREATE TABLE mqtt_spool (
        conn TEXT NOT NULL,
        id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        PRIMARY KEY (conn, id)
    ) WITHOUT ROWID;
    """,
)

Item = tuple[int, str, bytes, int, bool]


class SqliteSpool:
    """Spool for one MQTT connection, persisted in table ``mqtt_spool``."""

    def __init__(
        self,
        db: Database,
        conn_name: str,
        *,
        max_items: int = 100_000,
        overflow: Literal["drop_oldest", "drop_new"] = "drop_oldest",
    ) -> None:
        self.db = db
        self.name = conn_name
        self.max_items = max_items
        self.overflow = overflow
        self.dropped = 0
        #: appends whose row could not be written (disk full...): still queued in memory
        #: and delivered, written again with the next append once the file takes writes
        self.write_failures = 0
        #: appended to by the writer thread, taken from on the loop (deque ops are atomic)
        self._unwritten: collections.deque[Item] = collections.deque()
        self._q: collections.deque[Item] = collections.deque()
        rows = db.read(
            "SELECT id, topic, payload, qos, retain FROM mqtt_spool WHERE conn = ? ORDER BY id",
            (conn_name,),
        )
        for r in rows:
            self._q.append((int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4])))
        self._next = (self._q[-1][0] + 1) if self._q else 1
        if rows:
            log.info("mqtt.%s: %d spooled publishes reloaded", conn_name, len(rows))

    def __len__(self) -> int:
        return len(self._q)

    def append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> Future[Any] | None:
        """Queue one publish; the future resolves after its commit (``durable``: with
        fsync, which also makes every earlier commit durable). None: dropped (full)."""
        if len(self._q) >= self.max_items:
            self.dropped += 1
            if self.overflow == "drop_new":
                return None
            self._delete_upto(self._q.popleft()[0])
        item = (self._next, topic, payload, qos, retain)
        self._next += 1
        self._q.append(item)
        name = self.name
        items = [item]
        if self._unwritten and self.db.trouble is None:
            items = self._backlog() + items

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO mqtt_spool(conn, id, topic, payload, qos, retain) "
                "VALUES (?,?,?,?,?,?)",
                [(name, it[0], it[1], it[2], it[3], int(it[4])) for it in items],
            )

        fut = self.db.submit(op, durable=durable)
        fut.add_done_callback(lambda f: self._failed(f, items))
        return fut

    def _backlog(self) -> list[Item]:
        """Rows the file refused earlier that are still queued (a prefix is delivered and
        gone: ids only grow, and the queue only loses its head), oldest first."""
        head = self._q[0][0]
        out: list[Item] = []
        with contextlib.suppress(IndexError):
            while True:
                it = self._unwritten.popleft()
                if it[0] >= head:
                    out.append(it)
        out.sort()
        return out

    def _failed(self, fut: Future[Any], items: list[Item]) -> None:
        # on the writer thread: the rows are not in the file, only in memory (still
        # delivered); the next append once the file takes writes again writes them
        if not fut.cancelled() and fut.exception() is not None:
            self.write_failures += 1
            self._unwritten.extend(items)

    def peek(self, n: int) -> list[Item]:
        return [self._q[i] for i in range(min(n, len(self._q)))]

    def remove_upto(self, id_: int) -> None:
        q = self._q
        removed = False
        while q and q[0][0] <= id_:
            q.popleft()
            removed = True
        if removed:
            self._delete_upto(id_)

    def _delete_upto(self, id_: int) -> None:
        name = self.name
        self.db.submit(
            lambda conn: conn.execute(
                "DELETE FROM mqtt_spool WHERE conn = ? AND id <= ?", (name, id_)
            )
        )


class SqliteSpools:
    """The daemon's ``Spools`` (mechaway.drivers.base): one ``SqliteSpool`` per connection.

    MQTT's spools keep the connection's bare name in ``conn`` (as they always did);
    another kind's are kept as ``kind.name``.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _key(kind: str, name: str) -> str:
        return name if kind == "mqtt" else f"{kind}.{name}"

    def open(self, kind: str, name: str, *, max_items: int, overflow: str) -> SqliteSpool:
        if overflow not in ("drop_oldest", "drop_new"):
            raise ValueError(f"overflow {overflow!r} is not drop_oldest or drop_new")
        return SqliteSpool(
            self.db,
            self._key(kind, name),
            max_items=max_items,
            overflow="drop_oldest" if overflow == "drop_oldest" else "drop_new",
        )

    def pending(self, kind: str) -> list[str]:
        names = [r[0] for r in self.db.read("SELECT DISTINCT conn FROM mqtt_spool")]
        if kind == "mqtt":
            return sorted(n for n in names if "." not in n)
        prefix = f"{kind}."
        return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))

    def pending_kinds(self) -> list[str]:
        names = [r[0] for r in self.db.read("SELECT DISTINCT conn FROM mqtt_spool")]
        return sorted({n.partition(".")[0] if "." in n else "mqtt" for n in names})
