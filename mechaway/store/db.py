"""The SQLite file: one writer thread with group commit, versioned migrations, WAL.

Every write goes through ``Database.write``: the writer thread takes whatever is queued,
runs it in ONE transaction (each op in its own savepoint, so one failing op does not undo
its neighbours), commits, then resolves the callers' futures. Under load batches grow by
themselves; the SD card sees one fsync per batch, and the event loop never touches disk
for writes.

Durability per write: ``durable=True`` ops are committed with ``synchronous=FULL`` (the
WAL is fsynced before the future resolves: survives power loss); other batches commit
with ``synchronous=NORMAL`` (survive a crash or ``kill -9``; a power cut may lose the
last ~batch, never corrupts).

When the file cannot be written (disk full, I/O error, read-only): SQLite rolls the
whole transaction back, so every write of that batch fails with ``StoreUnavailable``
(naming the file and why: "disk full"), nothing of it is acknowledged, and the writer
goes on with the next batch: writes resume by themselves once space is back. Failures
are counted (``stats``) and logged once per burst, not once per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, TypeVar

from mechaway.errors import StoreError, StoreUnavailable

log = logging.getLogger("mechaway.store")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

#: (version, SQL script). Append only; never edit a released step.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE flow_revisions (
            flow_id TEXT NOT NULL,
            rev INTEGER NOT NULL,
            doc BLOB NOT NULL,
            source TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (flow_id, rev)
        ) WITHOUT ROWID;
        CREATE TABLE flows (
            flow_id TEXT PRIMARY KEY,
            active_rev INTEGER,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
]


def register_migration(version: int, script: str) -> None:
    """Add a schema step (modules of the store layer call this at import)."""
    if any(v == version for v, _ in MIGRATIONS):
        raise ValueError(f"migration {version} already registered")
    MIGRATIONS.append((version, script))
    MIGRATIONS.sort()


#: store modules whose tables live in the file: importing one registers its migrations,
#: so ``open`` creates every table whichever module the caller imported first
SCHEMA_MODULES = (
    "mechaway.store.context",
    "mechaway.store.kv",
    "mechaway.store.series",
    "mechaway.store.vectors",
    "mechaway.store.outbox",
    "mechaway.store.maintenance",
)

_STOP = object()

#: primary SQLite result codes that mean "the file cannot be written now", not "this write
#: is bad": what failed may succeed later, unchanged
_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open a file",
}
#: a new burst of write failures is logged at most this often (seconds)
TROUBLE_LOG_INTERVAL = 60.0


def unavailable(exc: BaseException) -> str | None:
    """Why ``exc`` means the file cannot be written now ("disk full", ...), else None."""
    if isinstance(exc, StoreUnavailable):
        return exc.reason
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return _UNAVAILABLE.get(code & 0xFF)
        text = str(exc)  # raised without a code (a wrapper, a test double): by SQLite's text
        if "database or disk is full" in text:
            return "disk full"
        if "disk I/O error" in text:
            return "disk I/O error"
    return None


def _settle(fut: Future[Any], result: Any, failure: BaseException | None) -> None:
    """Resolve a caller's future; one the caller cancelled (``asyncio.wrap_future`` cancels
    it with the awaiting task) or already resolved is left alone: raising here would end
    the writer thread, and every later write with it."""
    if fut.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled between the check and now
        if failure is None:
            fut.set_result(result)
        else:
            fut.set_exception(failure)


class Database:
    """One SQLite file: a writer thread (group commit) and a reader connection."""

    def __init__(
        self, path: Path | str, *, batch_max: int = 2000, commit_interval: float = 0.01
    ) -> None:
        self.path = Path(path)
        self.batch_max = batch_max
        #: group commit window: a commit starts at most this long after the previous one
        #: started (earlier when ``batch_max`` writes are queued), so a steady stream costs
        #: at most 1/commit_interval fsyncs per second whatever its message rate
        self.commit_interval = commit_interval
        #: True after a NORMAL commit that no fsync has covered yet (the sync floor's cue)
        self.unsynced = False
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self.commits = 0
        self.fsync_commits = 0
        self.ops = 0
        #: writes refused because the file could not be written (disk full, I/O error)
        self.failed_writes = 0
        #: batches whose commit failed for that reason
        self.failed_commits = 0
        #: separate bursts of such failures (a burst ends with a commit that wrote)
        self.trouble_bursts = 0
        #: while writes fail: why ("disk full", ...) and since when (epoch seconds)
        self.trouble: str | None = None
        self.trouble_since: float | None = None
        self.last_error: str | None = None
        self._trouble_logged = -TROUBLE_LOG_INTERVAL
        self._burst_failed = 0
        self._burst_logged = False
        #: called on the loop by ``close`` before the writer stops (writers that gather
        #: ops in memory, e.g. per-tick coalescing, submit what they hold)
        self.before_close: list[Callable[[], None]] = []

    # -- open/close -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def open(self) -> None:
        """Open (creating if needed), check integrity, migrate; start the writer thread."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"{self.path.parent}: cannot create the data directory: {err.strerror or err}"
            ) from err
        for module in SCHEMA_MODULES:
            importlib.import_module(module)
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            self._migrate(conn)
        except sqlite3.DatabaseError as err:
            with contextlib.suppress(NameError, sqlite3.Error):
                conn.close()
            reason = unavailable(err)
            if reason is not None:  # not damage: moving the file aside would not help
                raise StoreUnavailable(
                    f"{self.path}: {reason}: cannot open the database for writing ({err}). "
                    f"Nothing was changed. Free space in (or make writable) "
                    f"{self.path.parent} and start again.",
                    reason,
                ) from err
            name = self.path.name
            why = " ".join(str(err).split())[:200]
            raise StoreError(
                f"{self.path}: the database is damaged ({why}). Nothing was changed. "
                f"Recovery: stop mechaway; in {self.path.parent} move the file aside WITH its "
                f'-wal and -shm files (`for f in {name}*; do mv "$f" "bad-$f"; done`); then '
                f"restore a backup, or salvage what is readable with `python -m "
                f"mechaway.store.salvage bad-{name} {name}` (or an sqlite3 shell that has "
                f"`.recover`), and start again."
            ) from err
        self._writer_settings(conn)
        self._reader = self._connect()
        self._reader.execute("PRAGMA query_only=1")
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="mechaway.store.writer", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _writer_settings(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=8388608")  # WAL shrinks back after checkpoints

    def _idle(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """``conn`` with no transaction open (after a failed batch): a transaction left
        open would fail every later BEGIN ("within a transaction") for ever. If ROLLBACK
        cannot end it, the connection is replaced."""
        if not conn.in_transaction:
            return conn
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if not conn.in_transaction:
            return conn
        log.error("%s: a transaction could not be rolled back: reopening the writer", self.path)
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        try:
            fresh = self._connect()
            self._writer_settings(fresh)
        except sqlite3.Error as err:
            log.error("%s: reopening the writer failed (next batch retries): %s", self.path, err)
            return conn
        return fresh

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply every registered step not yet applied, in version order.

        Applied steps are recorded by version in ``schema_migrations`` (not only as a
        high-water mark), so steps registered by different store modules never skip
        one another.
        """
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, script in MIGRATIONS:
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in script.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                conn.execute(f"PRAGMA user_version={max(done | {version})}")
                conn.execute("COMMIT")
                done.add(version)
            except Exception:
                conn.execute("ROLLBACK")
                raise
            log.info("%s: schema migrated to version %d", self.path, version)

    async def close(self) -> None:
        """Flush every queued write, stop the writer, checkpoint. Idempotent."""
        if self._thread is not None:
            for flush in self.before_close:
                try:
                    flush()
                except Exception:
                    log.exception("flushing pending writes before close failed")
            self._q.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def writer_alive(self) -> bool:
        """The writer thread runs: without it nothing more reaches the disk."""
        return self._thread is not None and self._thread.is_alive()

    # -- writes ---------------------------------------------------------------------------
    def submit(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> Future[T]:
        """Queue a write from any thread; the returned future resolves after its commit."""
        if self._thread is None:
            raise StoreError(f"{self.path}: the store is not open")
        fut: Future[T] = Future()
        self._q.put((op, fut, durable))
        return fut

    async def write(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``op(conn)`` inside the next group commit; returns its result once committed."""
        return await asyncio.wrap_future(self.submit(op, durable=durable))

    def _run(self, conn: sqlite3.Connection) -> None:
        q = self._q
        stopping = False
        started = 0.0
        while not stopping:
            item = q.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = started + self.commit_interval
            while len(batch) < self.batch_max:
                wait = deadline - time.monotonic()
                try:
                    nxt = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            started = time.monotonic()
            try:
                self._commit(conn, batch)
            except BaseException as exc:  # the writer must outlive anything one batch does
                log.exception("%s: a batch of %d writes failed unexpectedly", self.path, len(batch))
                err = StoreError(f"{self.path}: write failed: {type(exc).__name__}: {exc}")
                for _op, fut, _d in batch:
                    _settle(fut, None, err)
            try:
                conn = self._idle(conn)
            except BaseException:
                log.exception("%s: cleaning up after a batch failed", self.path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.exception("final checkpoint failed")
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        durable = any(d for _op, _f, d in batch)
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        changes = conn.total_changes
        troubled = False  # an op failed because the file could not be written
        try:
            if durable:
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for op, fut, _d in batch:
                conn.execute("SAVEPOINT op")
                try:
                    res = op(conn)
                except Exception as exc:
                    if not conn.in_transaction:
                        # SQLite gave the whole transaction up (disk full, I/O error): the
                        # ops before this one are undone too, so the whole batch fails
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    refusal = self._refused(exc, 1)
                    if unavailable(exc) is None:
                        log.error("%s: a write failed and was rolled back: %s", self.path, exc)
                    else:
                        troubled = True
                    results.append((fut, None, refusal))
                else:
                    if not conn.in_transaction:  # an op swallowed the error that ended it
                        raise StoreError("the transaction was rolled back under a write")
                    conn.execute("RELEASE op")
                    results.append((fut, res, None))
            conn.execute("COMMIT")
            self.commits += 1
            self.fsync_commits += durable
            self.ops += len(batch)
            if conn.total_changes != changes:  # a commit that wrote nothing synced nothing
                self.unsynced = not durable
                if self.trouble is not None and not troubled:
                    self._recovered()
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            err = self._refused(exc, len(batch), commit=True)
            if unavailable(exc) is None:
                log.error("%s: commit of %d writes failed: %s", self.path, len(batch), exc)
                err = StoreError(f"{self.path}: write failed: {exc}")
            results = [(fut, None, err) for _op, fut, _d in batch]
        finally:
            if durable:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous=NORMAL")
        for fut, res, failure in results:
            _settle(fut, res, failure)

    # -- the file cannot be written -------------------------------------------------------
    def _refused(self, exc: BaseException, n: int, *, commit: bool = False) -> BaseException:
        """``exc`` as the callers' error: a ``StoreUnavailable`` naming the file and why
        when the file could not be written (counted, logged once per burst), else ``exc``."""
        reason = unavailable(exc)
        if reason is None:
            return exc
        self.failed_writes += n
        self.failed_commits += commit
        self._burst_failed += n
        detail = str(exc.__cause__ or exc) if isinstance(exc, StoreUnavailable) else str(exc)
        self.last_error = f"{reason}: {detail}"
        if self.trouble != reason:
            if self.trouble is None:
                self.trouble_bursts += 1
                self.trouble_since = time.time()
            self.trouble = reason
            now = time.monotonic()
            if now - self._trouble_logged >= TROUBLE_LOG_INTERVAL:  # a flapping disk: quiet
                self._trouble_logged = now
                self._burst_logged = True
                log.error(
                    "%s: %s: writes fail and are not acknowledged until it can be written "
                    "again (%s); further failures are counted, not logged",
                    self.path,
                    reason,
                    detail,
                )
        if isinstance(exc, StoreUnavailable):
            return exc
        err = StoreUnavailable(f"{self.path}: {reason}: the write was not stored ({exc})", reason)
        err.__cause__ = exc
        return err

    def _recovered(self) -> None:
        """A commit wrote again after failures: end the burst (and say so if it was said)."""
        if self._burst_logged:
            log.warning(
                "%s: writes succeed again after %s for %.1f s (%d writes refused)",
                self.path,
                self.trouble,
                time.time() - (self.trouble_since or time.time()),
                self._burst_failed,
            )
        self.trouble = None
        self.trouble_since = None
        self._burst_failed = 0
        self._burst_logged = False

    # -- reads ----------------------------------------------------------------------------
    def read(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """A short read on the loop thread (WAL: never waits for the writer)."""
        if self._reader is None:
            raise StoreError(f"{self.path}: the store is not open")
        return self._reader.execute(sql, params).fetchall()

    def stats(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "fsync_commits": self.fsync_commits,
            "writes": self.ops,
            "queued": self._q.qsize(),
            "failed_writes": self.failed_writes,
            "failed_commits": self.failed_commits,
            "trouble_bursts": self.trouble_bursts,
            # while writes fail: why ("disk full", ...) and since when; None when healthy
            "trouble": self.trouble,
            "trouble_since": self.trouble_since,
            "last_error": self.last_error,
            "path": str(self.path),
            "ts": time.time(),
        }
