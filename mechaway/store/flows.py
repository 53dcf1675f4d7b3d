"""Flow revisions: every deployed revision of every flow, with its source and time."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from mechaway.store.db import Database

Source = Literal["file", "api", "hub", "rollback"]


@dataclass(frozen=True, slots=True)
class Revision:
    flow_id: str
    rev: int
    source: str
    created_at: float
    doc: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"rev": self.rev, "source": self.source, "created_at": self.created_at}


def _canon(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


class FlowStore:
    """Revision history on top of the shared ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, doc: dict[str, Any], source: Source) -> tuple[int, bool]:
        """Record ``doc`` as the flow's active revision. Returns (rev, is_new).

        Saving a document identical to the active revision records nothing new.
        """
        flow_id = str(doc["id"])
        blob = _canon(doc)

        def op(conn: sqlite3.Connection) -> tuple[int, bool]:
            row = conn.execute(
                "SELECT r.rev, r.doc FROM flows f JOIN flow_revisions r "
                "ON r.flow_id = f.flow_id AND r.rev = f.active_rev WHERE f.flow_id = ?",
                (flow_id,),
            ).fetchone()
            if row is not None and bytes(row[1]) == blob:
                return int(row[0]), False
            (top,) = conn.execute(
                "SELECT COALESCE(MAX(rev), 0) FROM flow_revisions WHERE flow_id = ?", (flow_id,)
            ).fetchone()
            rev = int(top) + 1
            now = time.time()
            conn.execute(
                "INSERT INTO flow_revisions(flow_id, rev, doc, source, created_at) "
                "VALUES (?,?,?,?,?)",
                (flow_id, rev, blob, source, now),
            )
            self._activate(conn, flow_id, rev, now)
            return rev, True

        return await self.db.write(op, durable=True)

    @staticmethod
    def _activate(conn: sqlite3.Connection, flow_id: str, rev: int | None, now: float) -> None:
        conn.execute(
            "INSERT INTO flows(flow_id, active_rev, updated_at) VALUES (?,?,?) "
            "ON CONFLICT(flow_id) DO UPDATE SET active_rev = excluded.active_rev, "
            "updated_at = excluded.updated_at",
            (flow_id, rev, now),
        )

    async def deactivate(self, flow_id: str) -> None:
        """The flow was deleted: keep its history, run nothing at the next start."""
        await self.db.write(lambda c: self._activate(c, flow_id, None, time.time()), durable=True)

    def active(self) -> list[Revision]:
        """The active revision of every flow that has one (what to run at start)."""
        rows = self.db.read(
            "SELECT r.flow_id, r.rev, r.source, r.created_at, r.doc FROM flows f "
            "JOIN flow_revisions r ON r.flow_id = f.flow_id AND r.rev = f.active_rev "
            "ORDER BY r.flow_id"
        )
        return [Revision(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def active_rev(self, flow_id: str) -> int | None:
        rows = self.db.read("SELECT active_rev FROM flows WHERE flow_id = ?", (flow_id,))
        return rows[0][0] if rows else None

    def history(self, flow_id: str) -> list[Revision]:
        """Every revision of a flow, oldest first."""
        rows = self.db.read(
            "SELECT flow_id, rev, source, created_at, doc FROM flow_revisions "
            "WHERE flow_id = ? ORDER BY rev",
            (flow_id,),
        )
        return [Revision(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def get(self, flow_id: str, rev: int) -> Revision | None:
        rows = self.db.read(
            "SELECT flow_id, rev, source, created_at, doc FROM flow_revisions "
            "WHERE flow_id = ? AND rev = ?",
            (flow_id, rev),
        )
        return (
            Revision(rows[0][0], rows[0][1], rows[0][2], rows[0][3], orjson.loads(rows[0][4]))
            if rows
            else None
        )
