"""Salvage what is readable from a damaged mechaway database into a new file.

``python -m mechaway.store.salvage bad-mechaway.db mechaway.db``

Works on a copy of the damaged file set (``X``, ``X-wal``, ``X-shm``), so the original
is never touched. The new file gets the current schema (every migration), then each table
of the damaged file is copied row by row: a forward scan until the first unreadable page,
then a backward scan from the other end until it meets damage again, so the rows on both
sides of a damaged region are kept. Rows on damaged pages are lost and reported as a
table that could not be read completely.

The new file (and its ``-wal``/``-shm``) gets the owner and group of the directory it is
written to and the mode of the damaged file: run as root in the service's data directory
(the recovery recipe), it belongs to the ``mechaway`` user as the old one did, not to root
(which the service, ``User=mechaway``, could not write).

Needed because the ``sqlite3`` shell of Debian 12 / Raspberry Pi OS (3.40, built without
``sqlite_dbpage``) fails on ``.recover``, and its ``.dump`` ends a damaged file's dump
with ``ROLLBACK``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechaway.store.db import Database

#: tables the new file's migrations own; never copied over
_SKIP = {"schema_migrations", "sqlite_sequence", "sqlite_stat1", "sqlite_stat4"}


@dataclass
class TableReport:
    name: str
    copied: int = 0
    complete: bool = True
    errors: list[str] = field(default_factory=list)


def _key_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The ORDER BY that walks the table's own b-tree: rowid, or the WITHOUT ROWID key."""
    without_rowid = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    sql = (without_rowid[0] or "").upper() if without_rowid else ""
    if "WITHOUT ROWID" not in sql:
        return ["rowid"]
    pk = sorted((r[5], r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")') if r[5])
    return [f'"{name}"' for _i, name in pk]


def _scan(conn: sqlite3.Connection, sql: str, out: dict[tuple[Any, ...], tuple[Any, ...]],
          nkey: int, report: TableReport) -> None:  # fmt: skip
    try:
        for row in conn.execute(sql):
            out.setdefault(tuple(row[:nkey]), tuple(row[nkey:]))
    except sqlite3.DatabaseError as err:
        report.complete = False
        report.errors.append(str(err))


def salvage(bad: Path, new: Path) -> list[TableReport]:
    """Copy every readable row of ``bad`` into a fresh database at ``new``."""
    if new.exists():
        raise FileExistsError(f"{new} exists: salvage writes a new file only")
    reports: list[TableReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "damaged.db"
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{bad}{suffix}")
            if src.exists():
                shutil.copyfile(src, f"{copy}{suffix}")
        src_conn = sqlite3.connect(copy)
        try:
            tables = [
                r[0]
                for r in src_conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
        except sqlite3.DatabaseError as err:
            src_conn.close()
            raise RuntimeError(
                f"{bad}: the schema itself is unreadable ({err}); restore a backup"
            ) from err
        db = Database(new)
        db.open()
        asyncio.run(db.close())  # the new file now has the current schema
        dst = sqlite3.connect(new, isolation_level=None)
        try:
            dst_tables = {
                r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            dst.execute("BEGIN")
            for table in tables:
                if table in _SKIP or table.startswith("sqlite_") or table not in dst_tables:
                    continue
                report = TableReport(table)
                reports.append(report)
                src_cols = [r[1] for r in src_conn.execute(f'PRAGMA table_info("{table}")')]
                dst_cols = {r[1] for r in dst.execute(f'PRAGMA table_info("{table}")')}
                cols = [c for c in src_cols if c in dst_cols]
                keys = _key_columns(src_conn, table)
                select = ", ".join([*keys, *(f'"{c}"' for c in cols)])
                order = ", ".join(keys)
                rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
                base = f'SELECT {select} FROM "{table}" ORDER BY {order}'
                _scan(src_conn, base, rows, len(keys), report)
                if not report.complete:
                    desc = ", ".join(f"{k} DESC" for k in keys)
                    _scan(src_conn, f'SELECT {select} FROM "{table}" ORDER BY {desc}', rows,
                          len(keys), report)  # fmt: skip
                collist = ", ".join(f'"{c}"' for c in cols)
                marks = ", ".join("?" * len(cols))
                dst.executemany(
                    f'INSERT OR REPLACE INTO "{table}" ({collist}) VALUES ({marks})',
                    list(rows.values()),
                )
                report.copied = len(rows)
            dst.execute("COMMIT")
        finally:
            dst.close()
            src_conn.close()
    give_ownership(new, bad)
    return reports


def give_ownership(new: Path, like: Path) -> None:
    """``new`` and its ``-wal``/``-shm``: owned as their directory is (when we may change
    owners: root), with ``like``'s permission bits (else the directory's, less x)."""
    folder = os.stat(new.parent)
    try:
        mode = os.stat(like).st_mode & 0o777
    except OSError:
        mode = folder.st_mode & 0o666
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{new}{suffix}")
        if not f.exists():
            continue
        if os.geteuid() == 0 and (os.stat(f).st_uid, os.stat(f).st_gid) != (
            folder.st_uid, folder.st_gid
        ):
            os.chown(f, folder.st_uid, folder.st_gid)
        os.chmod(f, mode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mechaway.store.salvage",
        description="Copy the readable rows of a damaged mechaway database into a new file.",
    )
    p.add_argument("damaged", type=Path, help="the damaged file (moved aside with -wal/-shm)")
    p.add_argument("new", type=Path, help="the new database to create (must not exist)")
    args = p.parse_args(argv)
    try:
        reports = salvage(args.damaged, args.new)
    except (OSError, RuntimeError, sqlite3.Error) as err:
        print(f"salvage: {err}", file=sys.stderr)
        return 1
    for r in reports:
        state = "complete" if r.complete else f"PARTIAL ({r.errors[0]})"
        print(f"{r.name:<20} {r.copied:>9} rows  {state}")
    lost = [r.name for r in reports if not r.complete]
    print(f"salvaged into {args.new}" + (f"; damaged tables: {', '.join(lost)}" if lost else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
