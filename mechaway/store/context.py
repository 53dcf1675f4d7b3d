"""Node context: the state of nodes with ``persist: true``, kept across restarts.

``ContextKeeper`` hangs on the engine's two hooks: a node created with ``persist: true``
gets its state back (from the instance it replaces on a redeploy, else from the file);
a node retired for good (flow removed, daemon stopping) has its state saved at once. In
between, a periodic pass saves the state of every running persistent node that changed,
ALL in one durable commit per ``interval``: the write rate is bounded (at most one fsync
per interval) whatever the message rate, and a power cut loses at most the changes of
the last ``interval`` seconds. ``kill -9`` loses the same; a clean stop loses nothing.

State is JSON (``orjson``) of what ``Node.get_state`` returns; the Lua ``state`` table
and every built-in stateful node go through the same two methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson

from mechaway.store.db import Database, register_migration, unavailable
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.store.context")

register_migration(
    200,
    """
    CREATE TABLE node_context (
        flow_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        state BLOB NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (flow_id, node_id)
    ) WITHOUT ROWID;
    """,
)


class Stateful(Protocol):
    """What the keeper needs of a node (``mechaway.nodes.base.Node`` has all of it)."""

    @property
    def params(self) -> Any: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any, /) -> None: ...


class _Running(Protocol):
    @property
    def instances(self) -> Mapping[str, Any]: ...


class EngineHooks(Protocol):
    """The engine surface the keeper attaches to (``mechaway.runtime.engine.Engine``)."""

    @property
    def flows(self) -> Mapping[str, _Running]: ...

    on_node_created: Callable[[str, str, Any], None] | None
    on_node_retired: Callable[[str, str, Any], None] | None


def persistent(node: Any) -> bool:
    """A node whose type keeps state and whose params say ``persist: true``."""
    return bool(getattr(node, "stateful", False)) and getattr(node.params, "persist", False) is True


Key = tuple[str, str]


class ContextKeeper:
    """Restores, saves and periodically checkpoints the state of persistent nodes."""

    def __init__(self, db: Database, *, interval: float = 2.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.db = db
        self.interval = interval
        self._engine: EngineHooks | None = None
        #: the last state blob read or submitted per node (newer than the file until committed)
        self._saved: dict[Key, bytes] = {}
        #: states whose save failed (disk full...): submitted again by the next pass, also
        #: for nodes that are gone (retired while the file could not be written)
        self._retry: dict[Key, bytes] = {}
        self._task = OwnedTask("mechaway.store.context.saver")
        self.restored = 0
        self.saves = 0
        self.save_errors = 0
        self.last_restore_ms = 0.0
        self.restore_ms_total = 0.0

    # -- engine wiring ----------------------------------------------------------------------
    def attach(self, engine: EngineHooks) -> None:
        """Install the restore/retire hooks on ``engine``."""
        self._engine = engine
        engine.on_node_created = self.restore
        engine.on_node_retired = self.retire

    def _running(self) -> Iterator[tuple[str, str, Any]]:
        if self._engine is None:
            return
        for fid, rf in list(self._engine.flows.items()):
            for nid, node in list(rf.instances.items()):
                if persistent(node):
                    yield fid, nid, node

    def _current(self, fid: str, nid: str) -> Any:
        if self._engine is None:
            return None
        rf = self._engine.flows.get(fid)
        return rf.instances.get(nid) if rf is not None else None

    # -- the file ---------------------------------------------------------------------------
    def load(self, flow_id: str, node_id: str) -> Any:
        """The last saved state of a node (``None`` when there is none)."""
        blob = self._saved.get((flow_id, node_id)) or self._retry.get((flow_id, node_id))
        if blob is None:
            rows = self.db.read(
                "SELECT state FROM node_context WHERE flow_id = ? AND node_id = ?",
                (flow_id, node_id),
            )
            if not rows:
                return None
            blob = bytes(rows[0][0])
            self._saved[(flow_id, node_id)] = blob  # known: an unchanged state is not rewritten
        return orjson.loads(blob)

    def _encode(self, fid: str, nid: str, node: Any) -> bytes | None:
        try:
            return orjson.dumps(node.get_state())
        except Exception as exc:
            self.save_errors += 1
            log.warning("flow %s node %s: state not saved: %s", fid, nid, exc)
            return None

    def _submit(self, items: list[tuple[str, str, bytes]]) -> asyncio.Future[None] | None:
        if not items:
            return None
        for fid, nid, blob in items:
            self._saved[(fid, nid)] = blob
            self._retry.pop((fid, nid), None)  # superseded
        now = time.time()
        rows = [(fid, nid, blob, now) for fid, nid, blob in items]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO node_context(flow_id, node_id, state, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(flow_id, node_id) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                rows,
            )

        self.saves += len(items)
        fut = asyncio.wrap_future(self.db.submit(op, durable=True))
        fut.add_done_callback(functools.partial(self._count_failure, items))
        return fut

    def _count_failure(
        self, items: list[tuple[str, str, bytes]], fut: asyncio.Future[None]
    ) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            return
        self.save_errors += 1
        # the file cannot be written (disk full): the store logs that once per burst
        level = logging.ERROR if unavailable(exc) is None else logging.DEBUG
        log.log(level, "saving node state failed (retried at the next pass): %s", exc)
        for fid, nid, blob in items:
            # not on disk: forget it was "saved" (else an unchanged state is never written
            # again), and keep it for the next pass unless a newer state was submitted since
            if self._saved.get((fid, nid)) is blob:
                del self._saved[(fid, nid)]
                self._retry[(fid, nid)] = blob

    # -- hooks ------------------------------------------------------------------------------
    def restore(self, flow_id: str, node_id: str, node: Any) -> None:
        """Engine hook: give a new persistent node the state it had."""
        if not persistent(node):
            return
        t0 = time.perf_counter()
        old = self._current(flow_id, node_id)
        if old is not None and old is not node and persistent(old):
            state = old.get_state()  # a redeploy: the running instance is fresher than the file
        else:
            state = self.load(flow_id, node_id)
        if state is not None:
            node.set_state(state)
            self.restored += 1
        self.last_restore_ms = (time.perf_counter() - t0) * 1000.0
        self.restore_ms_total += self.last_restore_ms

    def retire(self, flow_id: str, node_id: str, node: Any) -> None:
        """Engine hook: a node stops for good; save its state unless a new instance took over."""
        if not persistent(node):
            return
        current = self._current(flow_id, node_id)
        if current is not None and current is not node:
            return
        blob = self._encode(flow_id, node_id, node)
        if blob is not None and blob != self._saved.get((flow_id, node_id)):
            self._submit([(flow_id, node_id, blob)])

    async def forget(self, flow_id: str) -> None:
        """A flow was deleted: drop its nodes' saved state (a new flow of the same id
        starts fresh). Waits until the deletion is durable, after any pending save."""
        for key in [k for k in self._saved if k[0] == flow_id]:
            del self._saved[key]
        for key in [k for k in self._retry if k[0] == flow_id]:
            del self._retry[key]
        await self.db.write(
            lambda conn: conn.execute("DELETE FROM node_context WHERE flow_id = ?", (flow_id,)),
            durable=True,
        )

    # -- periodic checkpoint ----------------------------------------------------------------
    def save_changed(self) -> asyncio.Future[None] | None:
        """Save every running persistent node whose state changed, and every state whose
        save failed before: ONE durable op."""
        changed = dict(self._retry)
        self._retry.clear()
        for fid, nid, node in self._running():
            blob = self._encode(fid, nid, node)
            if blob is not None and blob != self._saved.get((fid, nid)):
                changed[(fid, nid)] = blob
        return self._submit([(fid, nid, blob) for (fid, nid), blob in changed.items()])

    async def flush(self) -> None:
        """Save what changed and wait for the commit."""
        fut = self.save_changed()
        if fut is not None:
            with contextlib.suppress(Exception):
                await fut

    async def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        """Stop the periodic pass (retiring nodes still save through the hook). Idempotent."""
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.save_changed()
            except Exception:
                log.exception("periodic context save failed")

    def status(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval,
            "restored": self.restored,
            "saves": self.saves,
            "save_errors": self.save_errors,
            "unsaved": len(self._retry),
            "last_restore_ms": round(self.last_restore_ms, 3),
        }
