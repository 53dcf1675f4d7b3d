"""Coalescing of many small writes into one writer op per event-loop tick.

A node that appends one row per message would otherwise queue one op (and one
cross-thread future) per message. ``Coalescer.add`` costs a list append on the loop; at
the end of the tick (``call_soon``) everything gathered becomes ONE op for the writer
thread, and each caller's asyncio future resolves with its own result after the commit.

One item must not sink the others of its op: when the batch function raises (a value
SQLite refuses, say), what it did is rolled back and every item runs again alone, each in
its own savepoint and in the original order, inside the same transaction. Only the
items that fail alone fail; the rest commit as if nothing happened. Not when the file
cannot be written (disk full, I/O error): that is no item's fault, every item of the op
fails with the store's ``StoreUnavailable``, and nothing is retried item by item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from mechaway.store.db import Database, unavailable

log = logging.getLogger("mechaway.store")

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def attached(db: Database, cls: type[S]) -> S | None:
    """The ``cls`` service attached to ``db`` (one per file), if it was created."""
    inst: S | None = vars(db).get(f"_service_{cls.__qualname__}")
    return inst


def attach(db: Database, inst: S) -> S:
    """Attach a store service to ``db``; kept on the object, so it lives and dies with it."""
    vars(db)[f"_service_{type(inst).__qualname__}"] = inst
    return inst


#: ``run(conn, items)`` -> one result per item; an ``Exception`` instance fails that item only
BatchOp = Callable[[sqlite3.Connection, list[T]], list[Any]]


def run_isolated(run: BatchOp[T], items: list[T], conn: sqlite3.Connection) -> list[Any]:
    """``run(conn, items)``; if it raises, each item alone (a failure fails that item only).

    The fallback costs one savepoint per item, and only for an op that failed: the usual
    op pays one savepoint in all.
    """
    conn.execute("SAVEPOINT batch")
    try:
        out = run(conn, items)
    except Exception as exc:
        # SQLite gave the whole transaction up, or the file cannot be written: no item's
        # fault, retrying each alone would fail each the same way
        if not conn.in_transaction or unavailable(exc) is not None:
            raise
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        if len(items) == 1:
            raise
        log.debug("a batch of %d writes failed (%s): writing each alone", len(items), exc)
        return [_run_one(run, item, conn) for item in items]
    conn.execute("RELEASE batch")
    return out


def _run_one(run: BatchOp[T], item: T, conn: sqlite3.Connection) -> Any:
    conn.execute("SAVEPOINT item")
    try:
        (res,) = run(conn, [item])
    except Exception as exc:
        if not conn.in_transaction or unavailable(exc) is not None:
            raise
        conn.execute("ROLLBACK TO item")
        res = exc
    conn.execute("RELEASE item")
    return res


class Coalescer(Generic[T, R]):
    """Gathers items added during one loop tick into ONE writer op (``durable`` or not)."""

    def __init__(
        self, db: Database, run: BatchOp[T], *, durable: bool, max_batch: int = 5000
    ) -> None:
        self.db = db
        self.run = run
        self.durable = durable
        self.max_batch = max_batch
        self._items: list[T] = []
        self._futs: list[asyncio.Future[R]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: items added whose commit has not been reported yet
        self.pending = 0
        db.before_close.append(self.flush)

    def add(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` for the next op; the future resolves after its commit."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futs.append(fut)
        self.pending += 1
        if len(self._items) >= self.max_batch:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        """Submit what was gathered now (normally called at the end of the tick)."""
        self._scheduled = False
        if not self._items:
            return
        items, futs = self._items, self._futs
        self._items, self._futs = [], []
        try:
            cf = self.db.submit(
                functools.partial(run_isolated, self.run, items), durable=self.durable
            )
        except Exception as exc:
            self._settle(futs, None, exc)
            return
        loop = self._loop
        assert loop is not None

        def done(f: concurrent.futures.Future[list[Any]]) -> None:
            # runs on the writer thread: hand the outcome to the loop
            exc = f.exception()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._settle, futs, None if exc else f.result(), exc)

        cf.add_done_callback(done)

    def _settle(
        self, futs: list[asyncio.Future[R]], results: list[Any] | None, exc: BaseException | None
    ) -> None:
        self.pending -= len(futs)
        for i, fut in enumerate(futs):
            if fut.done():
                continue
            r = exc if results is None else results[i]
            if isinstance(r, BaseException):
                fut.set_exception(r)
                fut.exception()  # retrieved: a failure nobody awaits is counted, not logged
            else:
                fut.set_result(cast(R, r))
