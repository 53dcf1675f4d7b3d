"""Hub benchmark: ingest and heartbeats per database, two hubs on one PostgreSQL, the drain
of a 1,000,000-message backlog, and what syncing costs an edge. Prints ONE JSON line.

    python benchmarks/hub_ingest.py                 # everything (~2-3 min on 2 cores)
    python benchmarks/hub_ingest.py --drivers       # asyncpg vs psycopg 3 (COPY, executemany, RSS)

Simulated edges are separate processes (``--loader``) that send precomputed batches
(msgpack + zlib, ``mechaway.hub.wire``) or heartbeats over keep-alive HTTP; the backlog
drain and the edge costs use real ``mechaway start`` daemons. PostgreSQL databases are
created for the run and dropped after it (127.0.0.1:5432, trust auth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import cpu_seconds, free_port, rss_mb

ADMIN = "bench-admin-" + "x" * 20
PY = sys.executable


# -- processes ----------------------------------------------------------------------------------
def psql(sql: str, user: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", user, "-d", db, "-qAtc", sql],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def pg_user() -> str:
    for user in ("postgres", "root"):
        if psql("SELECT 1", user).returncode == 0:
            return user
    raise SystemExit("no PostgreSQL on 127.0.0.1:5432 (user postgres or root)")


@contextlib.contextmanager
def pg_database() -> Any:
    user = pg_user()
    name = f"mechaway_hub_bench_{os.getpid()}_{secrets.token_hex(3)}"
    psql(f"CREATE DATABASE {name}", user)
    try:
        yield f"postgresql://{user}@127.0.0.1:5432/{name}"
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname='{name}'", user)
        psql(f"DROP DATABASE IF EXISTS {name}", user)


class Hub:
    def __init__(self, root: Path, database: str, key: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = root / "hub.toml"
        cfg.write_text(
            f'[hub]\nlisten = "127.0.0.1:{self.port}"\ndatabase = "{database}"\n'
            f'admin_token = "{ADMIN}"\nsigning_key = "{key}"\n[log]\nlevel = "warning"\n'
        )
        self.log = (root / "hub.log").open("ab")
        self.proc = subprocess.Popen(
            [PY, "-m", "mechaway", "hub", "start", "--config", str(cfg)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_http(f"{self.url}/health")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"{self.url}/api/v1{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- loaders (simulated edges, in their own processes) ------------------------------------------
def loader_main(spec_path: str) -> None:
    """``--loader SPEC``: prepare, print "ready", wait for "go" on stdin, run, print JSON."""
    import aiohttp

    from mechaway.hub.wire import BATCH_CONTENT_TYPE, encode_batch

    spec = json.loads(Path(spec_path).read_text())
    devices: list[tuple[str, str, str]] = spec["devices"]  # (id, token, hub url)

    async def run() -> dict[str, Any]:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            if spec["kind"] == "ingest":
                per, size = spec["per_device"], spec["batch"]
                bodies: dict[str, list[bytes]] = {}
                epoch = secrets.token_hex(8)
                for dev, _, _ in devices:
                    out = []
                    for first in range(1, per + 1, size):
                        rows = [
                            (
                                s,
                                1.7e9 + s * 0.01,
                                "bench/t",
                                b'{"v":%d.%02d}' % (s % 997, s % 89),
                                0,
                            )
                            for s in range(first, min(first + size, per + 1))
                        ]
                        out.append(encode_batch(epoch, 0, rows))
                    bodies[dev] = out
                print("ready", flush=True)
                sys.stdin.readline()
                t0 = time.time()

                async def push(dev: str, token: str, url: str) -> int:
                    h = {"Authorization": f"Bearer {token}", "Content-Type": BATCH_CONTENT_TYPE}
                    acked = 0
                    for body in bodies[dev]:
                        async with http.post(
                            f"{url}/api/v1/devices/{dev}/telemetry", data=body, headers=h
                        ) as r:
                            acked = (await r.json())["acked"]
                    return int(acked)

                acks = await asyncio.gather(*(push(*d) for d in devices))
                return {"messages": sum(acks), "t0": t0, "t1": time.time()}
            # heartbeats
            body = json.dumps({
                "state": "running", "version": "bench", "bundle_seq": 0,
                "flows": [{"id": "tel", "rev": 3, "state": "running", "source": "hub",
                           "hub": True}],
                "backlog": {"epoch": "e", "messages": 0, "bytes": 0, "last_seq": 10},
                "problems": [],
            }).encode()  # fmt: skip
            print("ready", flush=True)
            sys.stdin.readline()
            t0 = time.time()
            deadline = time.monotonic() + spec["seconds"]

            async def beat(dev: str, token: str, url: str) -> int:
                n = 0
                h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                seq = 0
                while time.monotonic() < deadline:
                    data = body.replace(b'"bundle_seq": 0', b'"bundle_seq": %d' % seq)
                    async with http.post(
                        f"{url}/api/v1/devices/{dev}/heartbeat", data=data, headers=h
                    ) as r:
                        answer = await r.json()
                        assert r.status == 200, answer
                        if answer["bundle"] is not None:
                            seq = json.loads(
                                __import__("base64").b64decode(answer["bundle"]["payload"])
                            )["seq"]
                    n += 1
                return n

            counts = await asyncio.gather(*(beat(*d) for d in devices))
            return {"messages": sum(counts), "t0": t0, "t1": time.time()}

    import uvloop

    print(json.dumps(uvloop.run(run())), flush=True)


def run_loaders(tmp: Path, specs: list[dict[str, Any]]) -> tuple[float, int]:
    """Start loaders, wait until all are ready, go: (items per second overall, items)."""
    procs = []
    for i, spec in enumerate(specs):
        path = tmp / f"loader{i}.json"
        path.write_text(json.dumps(spec))
        procs.append(
            subprocess.Popen(
                [PY, __file__, "--loader", str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["messages"] for r in results)
    span = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return total / span, total


def register(hub: Hub, prefix: str, n: int, tags: list[str] | None = None) -> list[tuple[str, str]]:
    return [
        (
            f"{prefix}{i}",
            hub.call("POST", "/devices", {"id": f"{prefix}{i}", "tags": tags or []})["token"],
        )
        for i in range(n)
    ]


def measure_hubs(
    tmp: Path, database: str, nhubs: int, args: argparse.Namespace
) -> dict[str, float]:
    key = tmp / "signing.key"
    hubs = [Hub(tmp / f"hub{database[:4]}{nhubs}{i}", database, key) for i in range(nhubs)]
    try:
        tag = secrets.token_hex(3)
        devs = register(hubs[0], f"d{tag}-", args.devices)
        per = args.messages // args.devices
        loaders = 2
        specs = []
        for li in range(loaders):
            mine = [
                (d, t, hubs[(i) % nhubs].url) for i, (d, t) in enumerate(devs) if i % loaders == li
            ]
            specs.append(
                {"kind": "ingest", "devices": mine, "per_device": per, "batch": args.batch}
            )
        c0 = sum(cpu_seconds(h.proc.pid) for h in hubs)
        ingest, total = run_loaders(tmp, specs)
        ingest_cpu = sum(cpu_seconds(h.proc.pid) for h in hubs) - c0
        ingest_us = ingest_cpu / total * 1e6
        hb_devs = register(hubs[0], f"h{tag}-", args.hb_devices)
        specs = []
        for li in range(loaders):
            mine = [
                (d, t, hubs[i % nhubs].url) for i, (d, t) in enumerate(hb_devs) if i % loaders == li
            ]
            specs.append({"kind": "heartbeat", "devices": mine, "seconds": args.hb_seconds})
        c0 = sum(cpu_seconds(h.proc.pid) for h in hubs)
        beats, total = run_loaders(tmp, specs)
        hb_us = (sum(cpu_seconds(h.proc.pid) for h in hubs) - c0) / total * 1e6
        return {"ingest": ingest, "heartbeats": beats, "ingest_us": ingest_us, "hb_us": hb_us}
    finally:
        for h in hubs:
            h.stop()


# -- the edge: backlog drain and the cost of syncing ----------------------------------------------
def fill_outbox(data_dir: Path, n: int) -> None:
    """An outbox of ``n`` messages, written in its own layout (as n UpstreamNode appends)."""
    from mechaway.store.db import Database
    from mechaway.store.outbox import ROW_COST

    async def create() -> None:
        db = Database(data_dir / "mechaway.db")
        db.open()
        await db.close()

    asyncio.run(create())
    conn = sqlite3.connect(data_dir / "mechaway.db", isolation_level=None)
    conn.execute("BEGIN")
    cum = 0
    rows = []
    for s in range(1, n + 1):
        payload = b'{"v":%d.%02d,"n":%d}' % (s % 997, s % 89, s)
        cum += len(payload) + len("bench/t") + ROW_COST
        rows.append((s, 1.7e9 + s * 0.01, "bench/t", payload, 0, cum))
        if len(rows) == 100_000:
            conn.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?)", rows)
            rows = []
    conn.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    conn.close()


def edge_daemon(
    root: Path, dev: str, hub: Hub | None, token: str, pk: str
) -> subprocess.Popen[bytes]:
    cfg = root / "mechaway.toml"
    hub_cfg = f'\n[hub]\nurl = "{hub.url}"\ntoken = "{token}"\npublic_key = "{pk}"\n' if hub else ""
    cfg.write_text(f'[device]\nid = "{dev}"\n[log]\nlevel = "warning"\n{hub_cfg}')
    port = free_port()
    log = (root / "daemon.log").open("ab")
    p = subprocess.Popen(
        [PY, "-m", "mechaway", "--config", str(cfg), "start", "--data-dir", str(root / "data"),
         "--listen", f"127.0.0.1:{port}", "--flows", str(root / "flows")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/api/v1/health")
    return p


def drain(tmp: Path, hub: Hub, n: int) -> dict[str, float]:
    root = tmp / "drain"
    (root / "data").mkdir(parents=True)
    (root / "flows").mkdir()
    fill_outbox(root / "data", n)
    dev = f"drain-{secrets.token_hex(3)}"
    token = hub.call("POST", "/devices", {"id": dev, "tags": []})["token"]
    pk = hub.call("GET", "/public-key")["public_key"]
    t0 = time.monotonic()
    p = edge_daemon(root, dev, hub, token, pk)
    peak = 0.0
    try:
        while True:
            view = hub.call("GET", f"/devices/{dev}")
            peak = max(peak, rss_mb(p.pid))
            if view["uploads"] and view["uploads"][-1]["acked"] >= n:
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit("backlog drain took more than 10 minutes")
            time.sleep(0.25)
        seconds = time.monotonic() - t0
        cpu = cpu_seconds(p.pid)
    finally:
        p.terminate()
        p.wait(30)
    return {"drain_s": seconds, "edge_cpu_s": cpu, "edge_peak_rss_mb": peak}


def edge_cost(tmp: Path, hub: Hub, seconds: float) -> dict[str, float]:
    """The same daemon and flow (inject 50/s -> UpstreamNode) without and with the hub."""
    pk = hub.call("GET", "/public-key")["public_key"]
    out: dict[str, float] = {}
    flow = {
        "id": "tel",
        "nodes": [{"id": "t", "type": "InjectNode", "params": {"interval": 0.02}},
                  {"id": "u", "type": "UpstreamNode", "params": {}}],
        "edges": [{"from": "t", "to": "u"}],
    }  # fmt: skip
    for mode in ("off", "on"):
        root = tmp / f"cost-{mode}"
        (root / "flows").mkdir(parents=True)
        (root / "flows" / "tel.json").write_text(json.dumps(flow))
        dev = f"cost-{mode}-{secrets.token_hex(3)}"
        token = hub.call("POST", "/devices", {"id": dev, "tags": []})["token"]
        p = edge_daemon(root, dev, hub if mode == "on" else None, token, pk)
        try:
            time.sleep(2)
            c0 = cpu_seconds(p.pid)
            time.sleep(seconds)
            out[f"edge_rss_mb_hub_{mode}"] = rss_mb(p.pid)
            out[f"edge_cpu_pct_hub_{mode}"] = 100 * (cpu_seconds(p.pid) - c0) / seconds
        finally:
            p.terminate()
            p.wait(30)
    return out


# -- driver comparison ----------------------------------------------------------------------------
def drivers() -> dict[str, Any]:
    """asyncpg vs psycopg 3 on this machine: COPY and executemany rows/s, import RSS."""
    out: dict[str, Any] = {}
    for mod in ("asyncpg", "psycopg"):
        code = (
            "import sys,importlib\n"
            "def r():\n for l in open('/proc/self/status'):\n"
            "  if l.startswith('VmRSS'): return int(l.split()[1])/1024\n"
            "import asyncio,ssl; b=r(); importlib.import_module(sys.argv[1]); print(r()-b)"
        )
        res = subprocess.run([PY, "-c", code, mod], capture_output=True, text=True, check=False)
        out[f"{mod}_import_rss_mb"] = round(float(res.stdout or "nan"), 2)
    n, b = 200_000, 2000
    rows = [("dev1", i, 1.7e9 + i, "bench/t", b'{"v":%d}' % i, 0) for i in range(n)]
    ddl = ("DROP TABLE IF EXISTS t; CREATE TABLE t(device_id text, seq bigint, ts double precision,"
           " topic text, payload bytea, flags int, PRIMARY KEY(device_id, seq))")  # fmt: skip
    cols = ["device_id", "seq", "ts", "topic", "payload", "flags"]
    with pg_database() as dsn:

        async def apg() -> tuple[float, float]:
            import asyncpg

            c = await asyncpg.connect(dsn)
            await c.execute(ddl)
            t = time.perf_counter()
            for i in range(0, n, b):
                async with c.transaction():
                    await c.copy_records_to_table("t", records=rows[i : i + b], columns=cols)
            copy = n / (time.perf_counter() - t)
            await c.execute(ddl)
            t = time.perf_counter()
            for i in range(0, n, b):
                await c.executemany(
                    "INSERT INTO t VALUES($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
                    rows[i : i + b],
                )
            many = n / (time.perf_counter() - t)
            await c.close()
            return copy, many

        async def pg3() -> tuple[float, float]:
            import psycopg

            c = await psycopg.AsyncConnection.connect(dsn)
            await c.execute(ddl)
            await c.commit()
            t = time.perf_counter()
            for i in range(0, n, b):
                async with (
                    c.cursor() as cur,
                    cur.copy(f"COPY t({','.join(cols)}) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    cp.set_types(["text", "int8", "float8", "text", "bytea", "int4"])
                    for r in rows[i : i + b]:
                        await cp.write_row(r)
                await c.commit()
            copy = n / (time.perf_counter() - t)
            await c.execute(ddl)
            await c.commit()
            t = time.perf_counter()
            for i in range(0, n, b):
                async with c.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO t VALUES(%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                        rows[i : i + b],
                    )
                await c.commit()
            many = n / (time.perf_counter() - t)
            await c.close()
            return copy, many

        for name, fn in (("asyncpg", apg), ("psycopg", pg3)):
            try:
                copy, many = asyncio.run(fn())
            except ImportError:
                continue
            out[f"{name}_copy_rows_per_s"] = round(copy)
            out[f"{name}_executemany_rows_per_s"] = round(many)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loader")
    ap.add_argument("--drivers", action="store_true")
    ap.add_argument("--messages", type=int, default=400_000)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--hb-devices", type=int, default=200)
    ap.add_argument("--hb-seconds", type=float, default=5.0)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--edge-seconds", type=float, default=15.0)
    ap.add_argument("--only", default="ingest,drain", help="ingest and/or drain (with edge costs)")
    args = ap.parse_args()
    if args.loader:
        loader_main(args.loader)
        return
    if args.drivers:
        print(json.dumps(drivers()))
        return
    result: dict[str, Any] = {
        "messages": args.messages,
        "batch": args.batch,
        "load_avg_1m_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as t:
        tmp = Path(t)
        parts = set(args.only.split(","))
        if "ingest" in parts:
            s = measure_hubs(tmp / "sqlite", str(tmp / "sqlite" / "hub.db"), 1, args)
            result["sqlite_ingest_msgs_per_s"] = round(s["ingest"])
            result["sqlite_heartbeats_per_s"] = round(s["heartbeats"])
            result["sqlite_hub_cpu_us_per_msg"] = round(s["ingest_us"], 2)
            result["sqlite_hub_cpu_us_per_heartbeat"] = round(s["hb_us"])
            for nh in (1, 2):
                with pg_database() as dsn:
                    r = measure_hubs(tmp / f"pg{nh}", dsn, nh, args)
                result[f"pg_{nh}hub_ingest_msgs_per_s"] = round(r["ingest"])
                result[f"pg_{nh}hub_heartbeats_per_s"] = round(r["heartbeats"])
                result[f"pg_{nh}hub_cpu_us_per_msg"] = round(r["ingest_us"], 2)
                result[f"pg_{nh}hub_cpu_us_per_heartbeat"] = round(r["hb_us"])
            result["pg_2hub_heartbeats_per_s_per_process"] = round(
                result["pg_2hub_heartbeats_per_s"] / 2
            )
        if "drain" in parts:
            with pg_database() as dsn:
                hub = Hub(tmp / "pg-edge", dsn, tmp / "signing.key")
                try:
                    d = drain(tmp, hub, args.backlog)
                    result["backlog_messages"] = args.backlog
                    result["backlog_drain_s"] = round(d["drain_s"], 1)
                    result["backlog_drain_msgs_per_s"] = round(args.backlog / d["drain_s"])
                    result["edge_drain_cpu_s"] = round(d["edge_cpu_s"], 1)
                    result["edge_drain_peak_rss_mb"] = round(d["edge_peak_rss_mb"], 1)
                    c = edge_cost(tmp, hub, args.edge_seconds)
                finally:
                    hub.stop()
            result.update({k: round(v, 2) for k, v in c.items()})
            result["edge_sync_rss_cost_mb"] = round(
                c["edge_rss_mb_hub_on"] - c["edge_rss_mb_hub_off"], 2
            )
            result["edge_sync_cpu_cost_pct"] = round(
                c["edge_cpu_pct_hub_on"] - c["edge_cpu_pct_hub_off"], 2
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
