"""PostgreSQL figures, printed as one JSON line.

Rows/s through ``PostgresNode`` in a flow (``engine.inject`` -> the sink's queue -> the
node's batches -> the machine's PostgreSQL), into a fresh database that is dropped
afterwards; the table ``(id bigint, ts timestamptz, sensor text, value double precision)``
with columns from the message (``payload.*``, ``ts``), timed from the first message in to
the last row committed:

- ``pgnode_copy_rows_per_s``: insert, batches of ``BATCH`` rows through COPY;
- ``pgnode_insert_rows_per_s``: insert, the same batches as pipelined INSERTs (COPY off);
- ``pgnode_upsert_rows_per_s``: upsert on ``id`` (one ``INSERT ... SELECT FROM unnest
  ... ON CONFLICT`` per batch), half the rows updating existing ones;
- ``pgnode_batch_100_copy_rows_per_s``: insert with batches of 100 (COPY).

``--drivers`` adds the bare libraries' figures behind the choice (docs/postgres.md):
``asyncpg_copy_rows_per_s``, ``asyncpg_executemany_rows_per_s``,
``psycopg_copy_rows_per_s``, ``psycopg_executemany_rows_per_s`` (``DRIVER_ROWS`` rows in
batches of ``BATCH``) and ``asyncpg_import_rss_mb`` / ``psycopg_import_rss_mb`` (RSS an
import adds to a bare interpreter).

``python benchmarks/pg_bench.py [--rows N] [--drivers] [--admin-dsn DSN]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import uvloop

from mechaway.drivers.base import Connections, parse_sections
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.flows import IDLE_SOURCE

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 5000
DRIVER_ROWS = 200_000
TABLE = "CREATE TABLE {t} (id bigint PRIMARY KEY, ts timestamptz, sensor text, value float8)"


async def _node_run(dsn: str, table: str, rows: int, **params: Any) -> float:
    """Rows/s of one PostgresNode run."""
    conns = Connections(parse_sections({"postgres": {"default": {"dsn": dsn}}}))
    engine = Engine(Services(drivers=conns), stop_timeout=30.0)
    doc = {"id": "bench", "nodes": [IDLE_SOURCE, {"id": "pg", "type": "PostgresNode", "params": {
        "table": table, "queue_size": 20_000, "overflow": "block", "flush_interval": 0.05,
        "columns": {"id": "payload.id", "sensor": "payload.sensor", "value": "payload.value",
                    "ts": "ts"},
        **params}}], "edges": [{"from": "src", "to": "pg"}]}  # fmt: skip
    await engine.deploy(validate(doc), 1)
    node = engine.flows["bench"].instances["pg"]
    sink = engine.flows["bench"].sinks["pg"]
    drv = conns.live()[("postgres", "default")]
    assert await drv.wait_connected(10)
    await node._load_table()  # the catalog read is not part of the rate
    base = node.written
    sensors = [f"s{i}" for i in range(16)]
    t0 = time.perf_counter()
    for i in range(rows):  # made as they come, as a source would
        if not sink.room.is_set():
            await sink.room.wait()
        engine.inject("bench", "pg", {"payload": {"id": i, "sensor": sensors[i & 15],
                                                  "value": i * 0.5},
                                      "topic": "t", "ts": time.time()})  # fmt: skip
        if i % 1000 == 999:
            await asyncio.sleep(0)
    while node.written - base < rows:
        if node.stats.errors or node.stats.dropped:
            raise RuntimeError(f"errors {node.stats.errors}, dropped {node.stats.dropped}: "
                               f"{node.stats.last_error}")  # fmt: skip
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await engine.stop()
    await conns.close()
    return rows / elapsed


async def node_figures(dsn: str, rows: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    for t in ("b_copy", "b_insert", "b_upsert", "b_small"):
        await conn.execute(TABLE.format(t=t))
    await conn.execute("INSERT INTO b_upsert SELECT g, now(), 'x', 0 FROM generate_series(0, $1) g",
                       rows // 2)  # fmt: skip
    await conn.close()
    out: dict[str, Any] = {}
    out["pgnode_copy_rows_per_s"] = round(await _node_run(dsn, "b_copy", rows, batch_size=BATCH))
    out["pgnode_insert_rows_per_s"] = round(
        await _node_run(dsn, "b_insert", rows, batch_size=BATCH, copy_min_rows=10**9)
    )
    out["pgnode_upsert_rows_per_s"] = round(
        await _node_run(dsn, "b_upsert", rows, batch_size=BATCH, mode="upsert", key=["id"])
    )
    out["pgnode_batch_100_copy_rows_per_s"] = round(
        await _node_run(dsn, "b_small", rows // 4, batch_size=100)
    )
    return out


# -- the libraries alone ---------------------------------------------------------------------
def _rows(n: int) -> list[tuple[Any, ...]]:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return [(i, now, f"s{i % 16}", i * 0.5) for i in range(n)]


async def asyncpg_figures(dsn: str) -> dict[str, float]:
    rows = _rows(DRIVER_ROWS)
    conn = await asyncpg.connect(dsn)
    out = {}
    for kind in ("copy", "executemany"):
        t = f"a_{kind}"
        await conn.execute(TABLE.format(t=t))
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            chunk = rows[i:i + BATCH]
            if kind == "copy":
                await conn.copy_records_to_table(t, records=chunk,
                                                 columns=["id", "ts", "sensor", "value"])
            else:
                await conn.executemany(f"INSERT INTO {t} VALUES ($1, $2, $3, $4)", chunk)
        out[f"asyncpg_{kind}_rows_per_s"] = round(len(rows) / (time.perf_counter() - t0))
    await conn.close()
    return out


async def psycopg_figures(dsn: str) -> dict[str, float]:
    import psycopg

    rows = _rows(DRIVER_ROWS)
    out = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for kind in ("copy", "executemany"):
            t = f"p_{kind}"
            await conn.execute(TABLE.format(t=t))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            async with conn.cursor() as cur:
                for i in range(0, len(rows), BATCH):
                    chunk = rows[i:i + BATCH]
                    if kind == "copy":
                        q = f"COPY {t} (id, ts, sensor, value) FROM STDIN (FORMAT BINARY)"
                        async with cur.copy(q) as copy:  # type: ignore[arg-type]
                            copy.set_types(["int8", "timestamptz", "text", "float8"])
                            for r in chunk:
                                await copy.write_row(r)
                    else:
                        await cur.executemany(
                            f"INSERT INTO {t} VALUES (%s, %s, %s, %s)",  # type: ignore[arg-type]
                            chunk,
                        )
            out[f"psycopg_{kind}_rows_per_s"] = round(len(rows) / (time.perf_counter() - t0))
    return out


def import_rss_mb(module: str) -> float:
    """RSS an ``import module`` adds to a bare interpreter (VmRSS, MB)."""
    rss = ("int([x for x in open('/proc/self/status') if x.startswith('VmRSS')][0].split()[1])")
    code = f"a = {rss}; import {module}; b = {rss}; print((b - a) / 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout), 2)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--drivers", action="store_true", help="the bare libraries too")
    ap.add_argument("--admin-dsn", default=ADMIN)
    args = ap.parse_args()
    name = f"mw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{args.admin_dsn.rpartition('/')[0]}/{name}"
    try:
        result: dict[str, Any] = {"rows": args.rows, "batch_rows": BATCH}
        result.update(await node_figures(dsn, args.rows))
        if args.drivers:
            result["driver_rows"] = DRIVER_ROWS
            result.update(await asyncpg_figures(dsn))
            result.update(await psycopg_figures(dsn))
            result["asyncpg_import_rss_mb"] = import_rss_mb("asyncpg")
            result["psycopg_import_rss_mb"] = import_rss_mb("psycopg")
        result["server_version"] = await admin.fetchval("SHOW server_version")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(result))


if __name__ == "__main__":
    uvloop.run(main())
