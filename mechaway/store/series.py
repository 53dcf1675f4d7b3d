"""Telemetry series: named, time-stamped samples with retention by age and by size.

Samples are appended through the single writer, coalesced into one op per loop tick and
committed with ``synchronous=NORMAL`` (they survive ``kill -9``; a power cut may lose the
last second, see ``Maintenance``'s sync floor). Numbers (and booleans, as 0/1) are stored
in ``value`` and can be aggregated; anything else is kept as JSON in ``data``.

Retention never takes a long lock: the size bound of a series is enforced inside the
append op that crossed it (deleting at most a few thousand of its oldest samples, so a
series never stays over its bound at a commit boundary, even under a flood); age limits
and the total bound are enforced by ``maintain`` in ops of ``batch`` rows each.

Age retention and clock steps: a Pi has no real-time clock, so samples stamped before
NTP set the clock carry 1970 (or the last time fake-hwclock saved) plus the uptime. Age
retention never deletes a sample on the strength of a timestamp the store cannot trust:

- a ``ts`` before ``PLAUSIBLE_EPOCH`` was written by a clock that was never set: it says
  nothing about the sample's age;
- a sample appended in this run before the wall clock stepped *forward* (a step seen by
  ``maintain``: the wall clock moved against the monotonic clock) was stamped in the old
  clock's frame, so its ``ts`` understates its age;

such a sample expires by age only once it is known old by insertion order: it was in the
table ``max_age`` seconds ago on the monotonic clock (the store keeps a few id marks per
run). Samples of earlier runs stamped before ``PLAUSIBLE_EPOCH`` are left to the size
bounds. Any other sample expires by ``ts`` (a backfill with old device timestamps is
expired at once, as before). A backward step only makes samples look younger: they are
kept longer, within the size bounds.

Sizes are *accounted* bytes: ``ROW_COST`` per sample (row, index entry, page slack) plus
the length of its JSON data. The file itself is larger by SQLite's own overhead.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from mechaway.errors import StoreError
from mechaway.store.batching import Coalescer, attach, attached
from mechaway.store.db import Database, register_migration
from mechaway.store.encode import UnstorableValue, place, show, timestamp, to_json

register_migration(
    202,
    """
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        rows INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        max_age_s REAL,
        max_bytes INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        value REAL,
        data BLOB
    );
    CREATE INDEX samples_by_time ON samples(series_id, ts);
    """,
)

log = logging.getLogger("mechaway.store.series")

#: 2025-01-01 UTC: a wall clock (or a ``ts``) before this was never set (systemd uses its
#: build date, or the mtime of /var/lib/systemd/timesync/clock, the same way)
PLAUSIBLE_EPOCH = 1_735_689_600.0
#: a move of the wall clock against the monotonic one larger than this (between two
#: ``maintain`` calls) is a step: NTP slews smaller offsets, it steps larger ones
CLOCK_STEP_S = 1.0
#: how often ``maintain`` records an insertion mark (monotonic time, highest sample id)
MARK_EVERY_S = 60.0

#: accounted bytes of one sample beyond its JSON data
ROW_COST = 40
Agg = Literal["mean", "min", "max", "count"]
AGGS: dict[str, str] = {"mean": "avg(value)", "min": "min(value)", "max": "max(value)",
                        "count": "count(*)"}  # fmt: skip


class SeriesNotFound(KeyError):
    """No series of that name."""


@dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    ts: float
    value: float | None
    data: bytes | None
    max_age_s: float | None
    max_bytes: int | None


def encode_value(v: Any, where: str = "a sample", *names: Any) -> tuple[float | None, bytes | None]:
    """A number (or bool) goes to ``value``; anything else to ``data`` as JSON.

    NaN and infinities are stored as a null sample; a value JSON has no form for raises
    ``UnstorableValue`` naming ``place(where, *names)``.
    """
    if isinstance(v, bool):
        return float(v), None
    if isinstance(v, int | float):
        try:
            f = float(v)
        except OverflowError:  # an int beyond a double's range: not a number we can keep
            raise UnstorableValue(f"{place(where, *names)}: {show(v)} is out of range") from None
        if math.isfinite(f):
            return f, None
    return None, to_json(v, where, *names)


class SeriesStore:
    """The telemetry series of one ``Database`` (``SeriesStore.of(db)``)."""

    def __init__(
        self,
        db: Database,
        *,
        default_max_age_s: float | None = 7 * 86400.0,
        default_max_bytes: int | None = 16 * 1024 * 1024,
        max_total_bytes: int | None = 256 * 1024 * 1024,
        batch: int = 2000,
        age_check_interval: float = 30.0,
        plausible_after: float = PLAUSIBLE_EPOCH,
    ) -> None:
        self.db = db
        #: a ``ts`` before this is not trusted for age retention (see the module doc)
        self.plausible_after = plausible_after
        #: age retention runs at most this often (it is a scan per series, size is not)
        self.age_check_interval = age_check_interval
        self._age_checked = 0.0
        self.default_max_age_s = default_max_age_s
        self.default_max_bytes = default_max_bytes
        self.max_total_bytes = max_total_bytes
        self.batch = batch
        self._co: Coalescer[_Sample, None] = Coalescer(db, self._append_op, durable=False)
        self.appended = 0
        self.trimmed = 0
        self.clock_steps = 0
        # wall minus monotonic at the last look: a jump in it is a step of the wall clock
        self._offset = time.time() - time.monotonic()
        try:
            self._start_id = self._max_id()  # samples of earlier runs: ids up to this
        except StoreError:
            self._start_id = 0
        #: samples appended before the last forward step of this run: ids up to this
        self._step_id = 0
        # insertion marks: every sample with id <= _mark_id[i] was in the table by the
        # monotonic time _mark_t[i]
        self._mark_t = [time.monotonic()]
        self._mark_id = [self._start_id]

    def _max_id(self) -> int:
        return int(self.db.read("SELECT coalesce(max(id), 0) FROM samples")[0][0])

    @classmethod
    def of(cls, db: Database) -> SeriesStore:
        """The store of ``db`` (created on first use)."""
        return attached(db, cls) or attach(db, cls(db))

    @classmethod
    def existing(cls, db: Database) -> SeriesStore | None:
        return attached(db, cls)

    # -- appends ----------------------------------------------------------------------------
    def append(
        self,
        name: str,
        value: Any,
        ts: float | None = None,
        *,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
    ) -> asyncio.Future[None]:
        """Queue one sample; the future resolves once it is committed.

        Raises ``ValueError`` (``UnstorableValue``) for a sample that cannot be kept: a
        value JSON has no form for, a ``ts`` that is not a finite number, a sample larger
        than the series' size bound (it would evict every other sample and then itself).
        """
        if not name:
            raise ValueError("a series needs a name")
        num, data = encode_value(value, "series %s", name)
        t = timestamp(ts, "series %s", name)
        cap = max_bytes if max_bytes is not None else self.default_max_bytes
        if cap is not None and data is not None and ROW_COST + len(data) > cap:
            raise UnstorableValue(
                f"series {show(name)}: a sample of {ROW_COST + len(data)} bytes is larger "
                f"than the series bound ({cap} bytes)"
            )
        self.appended += 1
        return self._co.add(_Sample(name, t, num, data, max_age_s, max_bytes))

    @property
    def pending(self) -> int:
        return self._co.pending

    def _series_id(self, conn: sqlite3.Connection, s: _Sample) -> int:
        row = conn.execute(
            "SELECT id, max_age_s, max_bytes FROM series WHERE name = ?", (s.name,)
        ).fetchone()
        if row is None:
            cur = conn.execute(
                "INSERT INTO series(name, max_age_s, max_bytes, created_at) VALUES (?,?,?,?)",
                (s.name, s.max_age_s, s.max_bytes, time.time()),
            )
            return int(cur.lastrowid or 0)
        if (row[1], row[2]) != (s.max_age_s, s.max_bytes):
            conn.execute(
                "UPDATE series SET max_age_s = ?, max_bytes = ? WHERE id = ?",
                (s.max_age_s, s.max_bytes, row[0]),
            )
        return int(row[0])

    def _append_op(self, conn: sqlite3.Connection, items: list[_Sample]) -> list[Any]:
        groups: dict[str, list[_Sample]] = {}
        for s in items:
            groups.setdefault(s.name, []).append(s)
        for group in groups.values():
            last = group[-1]
            sid = self._series_id(conn, last)
            conn.executemany(
                "INSERT INTO samples(series_id, ts, value, data) VALUES (?,?,?,?)",
                [(sid, s.ts, s.value, s.data) for s in group],
            )
            added = sum(ROW_COST + len(s.data or b"") for s in group)
            rows, nbytes = conn.execute(
                "UPDATE series SET rows = rows + ?, bytes = bytes + ? WHERE id = ? "
                "RETURNING rows, bytes",
                (len(group), added, sid),
            ).fetchone()
            cap = last.max_bytes if last.max_bytes is not None else self.default_max_bytes
            if cap is not None and nbytes > cap:
                self._trim(
                    conn,
                    sid,
                    size=(rows, nbytes),
                    excess=nbytes - cap,
                    limit=max(2 * len(group), self.batch),
                )
        if self.max_total_bytes is not None:
            self._trim_total(conn, max(2 * len(items), self.batch))
        return [None] * len(items)

    def _trim(
        self,
        conn: sqlite3.Connection,
        sid: int,
        *,
        size: tuple[int, int],
        excess: int,
        limit: int,
    ) -> None:
        """Delete the oldest samples of one series until ``excess`` bytes are freed."""
        rows, nbytes = size
        avg = max(1.0, nbytes / max(1, rows))
        freed = n = 0
        while freed < excess and n < limit:
            step = min(limit - n, max(1, math.ceil((excess - freed) / avg)))
            got = conn.execute(
                "DELETE FROM samples WHERE id IN (SELECT id FROM samples WHERE series_id = ? "
                "ORDER BY ts LIMIT ?) RETURNING length(data)",
                (sid, step),
            ).fetchall()
            if not got:
                break
            n += len(got)
            freed += sum(ROW_COST + (r[0] or 0) for r in got)
        if n:
            conn.execute(
                "UPDATE series SET rows = rows - ?, bytes = bytes - ? WHERE id = ?", (n, freed, sid)
            )
            self.trimmed += n

    def _trim_total(self, conn: sqlite3.Connection, limit: int) -> int:
        """Over the total bound: delete the globally oldest-inserted samples (<= ``limit``)."""
        assert self.max_total_bytes is not None
        total = conn.execute("SELECT coalesce(sum(bytes), 0) FROM series").fetchone()[0]
        excess = total - self.max_total_bytes
        if excess <= 0:
            return 0
        rows = conn.execute("SELECT coalesce(sum(rows), 0) FROM series").fetchone()[0]
        avg = max(1.0, total / max(1, rows))
        freed = n = 0
        per: dict[int, list[int]] = {}
        while freed < excess and n < limit:
            step = min(500, limit - n, max(1, math.ceil((excess - freed) / avg)))
            got = conn.execute(
                "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?) "
                "RETURNING series_id, length(data)",
                (step,),
            ).fetchall()
            if not got:
                break
            for sid, length in got:
                acc = per.setdefault(sid, [0, 0])
                acc[0] += 1
                acc[1] += ROW_COST + (length or 0)
                freed += ROW_COST + (length or 0)
            n += len(got)
        conn.executemany(
            "UPDATE series SET rows = rows - ?, bytes = bytes - ? WHERE id = ?",
            [(c, b, sid) for sid, (c, b) in per.items()],
        )
        self.trimmed += n
        return n

    # -- housekeeping -----------------------------------------------------------------------
    async def maintain(self) -> None:
        """Age and size retention, ``batch`` samples per op (other writes interleave)."""
        now = time.time()
        mono = time.monotonic()
        self._watch_clock(now, mono)
        check_age = mono - self._age_checked >= self.age_check_interval
        if check_age:
            self._age_checked = mono
        longest = 0.0
        for sid, max_age, max_bytes, rows, nbytes in self.db.read(
            "SELECT id, max_age_s, max_bytes, rows, bytes FROM series"
        ):
            age = max_age if max_age is not None else self.default_max_age_s
            if age is not None:
                longest = max(longest, age)
            if check_age and age is not None:
                expire = functools.partial(
                    self._expire, sid=sid, cutoff=now - age, known_old=self._known_old(mono - age)
                )
                while await self.db.write(expire):
                    pass
            cap = max_bytes if max_bytes is not None else self.default_max_bytes
            if cap is not None and nbytes > cap:
                trim = functools.partial(
                    self._trim, sid=sid, size=(rows, nbytes), excess=nbytes - cap, limit=self.batch
                )
                await self.db.write(trim)
        if self.max_total_bytes is not None:
            while await self.db.write(lambda c: self._trim_total(c, self.batch)) >= self.batch:
                pass
        if check_age:
            # marks older than the longest age are no longer looked up (keep the newest)
            drop = bisect.bisect_right(self._mark_t, mono - longest) - 1
            if drop > 0:
                del self._mark_t[:drop], self._mark_id[:drop]

    def _watch_clock(self, now: float, mono: float) -> None:
        """Notice a step of the wall clock; record an insertion mark now and then."""
        offset = now - mono
        step, self._offset = offset - self._offset, offset
        if abs(step) > CLOCK_STEP_S:
            self.clock_steps += 1
            log.warning("the wall clock stepped by %+.1f s (series age retention adjusts)", step)
        if step > CLOCK_STEP_S:
            # everything appended so far (committed or queued) was stamped in the old frame
            self._step_id = self._max_id() + self.pending
        if mono - self._mark_t[-1] >= MARK_EVERY_S:
            self._mark_t.append(mono)
            self._mark_id.append(self._max_id())

    def _known_old(self, t: float) -> int:
        """The highest sample id known to have been in the table at monotonic time ``t``."""
        i = bisect.bisect_right(self._mark_t, t) - 1
        return self._mark_id[i] if i >= 0 else 0

    def _expire(
        self, conn: sqlite3.Connection, *, sid: int, cutoff: float, known_old: int = 0
    ) -> bool:
        """Delete up to ``batch`` samples older than ``cutoff`` whose age is trusted (the
        module doc: a plausible ``ts`` not stamped before a forward step of this run, or
        an id up to ``known_old``); True if there may be more."""
        got = conn.execute(
            "DELETE FROM samples WHERE id IN (SELECT id FROM samples WHERE series_id = :sid "
            "AND ts < :cutoff AND (id <= :old OR (ts >= :floor AND (id <= :start OR id > :step)))"
            " ORDER BY ts LIMIT :n) RETURNING length(data)",
            {
                "sid": sid,
                "cutoff": cutoff,
                "old": known_old,
                "floor": self.plausible_after,
                "start": self._start_id,
                "step": self._step_id,
                "n": self.batch,
            },
        ).fetchall()
        if got:
            conn.execute(
                "UPDATE series SET rows = rows - ?, bytes = bytes - ? WHERE id = ?",
                (len(got), sum(ROW_COST + (r[0] or 0) for r in got), sid),
            )
            self.trimmed += len(got)
        return len(got) >= self.batch

    # -- queries ----------------------------------------------------------------------------
    def info(self, name: str) -> dict[str, Any]:
        """Rows, accounted bytes and limits of one series."""
        rows = self.db.read(
            "SELECT rows, bytes, max_age_s, max_bytes FROM series WHERE name = ?", (name,)
        )
        if not rows:
            raise SeriesNotFound(name)
        r = rows[0]
        return {"name": name, "rows": r[0], "bytes": r[1], "max_age_s": r[2], "max_bytes": r[3]}

    def names(self) -> list[str]:
        return [r[0] for r in self.db.read("SELECT name FROM series ORDER BY name")]

    async def query(
        self,
        name: str,
        *,
        start: float | None = None,
        end: float | None = None,
        agg: str | None = None,
        bucket: float | None = None,
        limit: int = 10_000,
    ) -> dict[str, Any]:
        """Samples of ``name`` in [start, end]; with ``agg``, one point per ``bucket`` seconds.

        Runs on a worker thread with its own read connection: a long range never stalls
        the event loop. Raises ``SeriesNotFound`` or ``ValueError`` (bad arguments).
        """
        if agg is not None and agg not in AGGS:
            raise ValueError(f"agg must be one of {', '.join(AGGS)}")
        if bucket is not None and not (bucket > 0 and math.isfinite(bucket)):
            raise ValueError("bucket must be a positive number of seconds")
        if bucket is not None and agg is None:
            raise ValueError("bucket needs agg")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        lo = -math.inf if start is None else start
        hi = math.inf if end is None else end
        points, truncated = await asyncio.to_thread(
            self._query, name, (lo, hi), agg=agg, bucket=bucket, limit=limit
        )
        return {
            "series": name,
            "from": start,
            "to": end,
            "agg": agg,
            "bucket": bucket,
            "points": points,
            "truncated": truncated,
        }

    def _query(
        self,
        name: str,
        span: tuple[float, float],
        *,
        agg: str | None,
        bucket: float | None,
        limit: int,
    ) -> tuple[list[list[Any]], bool]:
        lo, hi = span
        conn = sqlite3.connect(self.db.path, timeout=30.0)
        try:
            conn.execute("PRAGMA query_only=1")
            row = conn.execute("SELECT id FROM series WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise SeriesNotFound(name)
            sid = row[0]
            if agg is None:
                rows = conn.execute(
                    "SELECT ts, value, data FROM samples WHERE series_id = ? AND ts >= ? "
                    "AND ts <= ? ORDER BY ts, id LIMIT ?",
                    (sid, lo, hi, limit + 1),
                ).fetchall()
                pts = [[r[0], r[1] if r[2] is None else orjson.loads(r[2])] for r in rows]
            elif bucket is None:
                rows = conn.execute(
                    f"SELECT min(ts), {AGGS[agg]} FROM samples WHERE series_id = ? "
                    "AND ts >= ? AND ts <= ?",
                    (sid, lo, hi),
                ).fetchall()
                pts = [[r[0], r[1]] for r in rows if r[0] is not None]
            else:
                # floor(ts / bucket) (CAST truncates toward zero: -0.5 s would share bucket 0
                # with +0.5 s); SQLite's floor() is an optional build feature
                rows = conn.execute(
                    "SELECT CAST(ts / :w AS INTEGER) - (ts / :w < CAST(ts / :w AS INTEGER)) AS b,"
                    f" {AGGS[agg]} FROM samples WHERE series_id = :sid AND ts >= :lo"
                    " AND ts <= :hi GROUP BY b ORDER BY b LIMIT :n",
                    {"w": bucket, "sid": sid, "lo": lo, "hi": hi, "n": limit + 1},
                ).fetchall()
                pts = [[r[0] * bucket, r[1]] for r in rows]
        finally:
            conn.close()
        return pts[:limit], len(pts) > limit

    def status(self) -> dict[str, Any]:
        return {
            "appended": self.appended,
            "pending": self.pending,
            "trimmed": self.trimmed,
            "clock_steps": self.clock_steps,
        }
