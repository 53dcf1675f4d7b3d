"""A durable FIFO of pending MQTT publishes (the driver's ``Spool``), in the SQLite file.

The queue lives in memory for speed and order; every append/removal is also written
through the store's single writer, so what was spooled survives a restart (it is
reloaded at open). Bounded: past ``max_items`` the declared policy drops the oldest or
the newest message, and every drop is counted.
"""

from __future__ import annotations

import collections
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

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO mqtt_spool(conn, id, topic, payload, qos, retain) "
                "VALUES (?,?,?,?,?,?)",
                (name, item[0], item[1], item[2], item[3], int(item[4])),
            )

        return self.db.submit(op, durable=durable)

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
