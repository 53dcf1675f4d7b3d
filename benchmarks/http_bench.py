"""Webhook -> flow -> response over HTTP, printed as one JSON line.

The daemon runs as a subprocess (``mechaway start``, lazy API, the token it generates)
with one flow: ``WebhookNode -> JSONTransformNode -> HTTPResponseNode`` (the seed's
webhook shape: parse the JSON body, map two fields, answer with them as JSON). The load
comes from this process: a raw HTTP/1.1 keep-alive client on uvloop (one request in flight
per connection), cheaper per request than aiohttp's client, so that on a 2-core machine
most of the CPU goes to the server measured.

- ``*_rps``: closed loop, ``CONNS`` connections for ``SECONDS`` s: requests/s answered.
- ``*_p50_ms`` / ``*_p99_ms``: open loop at a fixed rate (``RATE`` requests/s for
  ``SECONDS`` s) over 64 connections, latency from when each request was *due* (so a
  stall shows as the latency of everything queued behind it, not hidden by the client
  waiting: no coordinated omission), or from when this client's own timer woke up, if
  later (libuv's timers tick in milliseconds: that slop is the client's, not the server's).
- The same two for two baselines doing the same work: ``aiohttp_floor`` (a bare aiohttp
  app on uvloop, served as the daemon serves its API, one route: orjson in, map, orjson
  out: the floor of our HTTP stack, no middleware, no flow) and
  ``node_http_floor`` (Node.js's ``http`` module doing the same in JavaScript: what the
  HTTP in/out nodes of Node-RED sit on, without Express and Node-RED's runtime, so a
  bound Node-RED itself does not beat; skipped when ``node`` is not installed).
- ``rss_mb``: the daemon's resident memory after the runs, its API served and
  ``/metrics`` scraped once a second during them; ``rss_peak_mb`` its high-water mark.
- ``daemon_cpu_us_per_req``: the daemon's CPU time per request in the closed-loop run.

Run: python benchmarks/http_bench.py [--seconds 5] [--rate 2000] [--conns 32]
Figures move run to run on a shared machine: compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from _util import compile_package, cpu_seconds, free_port, notify_socket, rss_mb, wait_ready

FLOW = {
    "id": "bench",
    "name": "webhook -> flow -> response",
    "nodes": [
        {"id": "hook", "type": "WebhookNode", "params": {"path": "/grade"}},
        {"id": "shape", "type": "JSONTransformNode", "params": {"map": "{id=$.id, score=$.score}"}},
        {"id": "answer", "type": "HTTPResponseNode"},
    ],
    "edges": [{"from": "hook", "to": "shape"}, {"from": "shape", "to": "answer"}],
}
BODY = b'{"id": 42, "score": 87.5, "name": "ada", "tags": ["x", "y"]}'
EXPECT = b'{"id":42,"score":87.5}'

AIOHTTP_FLOOR = """
import asyncio, sys, orjson, uvloop
from aiohttp import web
async def grade(request):
    data = orjson.loads(await request.read())
    return web.Response(body=orjson.dumps({"id": data.get("id"), "score": data.get("score")}),
                        content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_post("/webhook/bench/grade", grade)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.SockSite(runner, __import__("socket").create_server(
        ("127.0.0.1", int(sys.argv[1])), backlog=128)).start()
    await asyncio.Event().wait()
uvloop.run(main())
"""

NODE_FLOOR = """
const http = require('http');
http.createServer((req, res) => {
  const chunks = [];
  req.on('data', c => chunks.push(c));
  req.on('end', () => {
    const d = JSON.parse(Buffer.concat(chunks));
    const out = JSON.stringify({id: d.id, score: d.score});
    res.writeHead(200, {'Content-Type': 'application/json',
                        'Content-Length': Buffer.byteLength(out)});
    res.end(out);
  });
}).listen(parseInt(process.argv[process.argv.length - 1]), '127.0.0.1');
"""


def request_bytes(port: int, token: str | None = None) -> bytes:
    head = (
        f"POST /webhook/bench/grade HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
    )
    if token:
        head += f"X-Mechaway-Token: {token}\r\n"
    return head.encode() + b"\r\n" + BODY


class Conn:
    """One keep-alive connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, req: bytes) -> int:
        self.writer.write(req)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        if status == 200 and body != EXPECT:
            raise AssertionError(f"unexpected answer {body!r}")
        return status


async def connect(port: int, n: int) -> list[Conn]:
    out = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        out.append(Conn(r, w))
    return out


async def closed_loop(port: int, req: bytes, conns: int, seconds: float) -> float:
    pool = await connect(port, conns)
    done = 0
    bad = 0
    stop = time.monotonic() + seconds

    async def worker(c: Conn) -> None:
        nonlocal done, bad
        while time.monotonic() < stop:
            if await c.ask(req) == 200:
                done += 1
            else:
                bad += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(c) for c in pool))
    elapsed = time.monotonic() - t0
    for c in pool:
        c.writer.close()
    if bad:
        raise AssertionError(f"{bad} requests were not answered 200")
    return done / elapsed


async def open_loop(port: int, req: bytes, rate: float, seconds: float) -> tuple[float, float, int]:
    """Requests due every 1/rate s; latency from when each was due. (p50, p99, late)."""
    pool = await connect(port, 64)
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in pool:
        free.put_nowait(c)
    lat: list[float] = []
    n = int(rate * seconds)
    t0 = time.monotonic() + 0.05

    async def one(due: float) -> None:
        c = await free.get()
        try:
            status = await c.ask(req)
        finally:
            free.put_nowait(c)
        if status != 200:
            raise AssertionError(f"answer {status}")
        lat.append(time.monotonic() - due)

    tasks = []
    for i in range(n):
        due = t0 + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        # from when it was due, or later when this client's own timer woke up late (libuv
        # timers tick in milliseconds): a wait for a free connection still counts
        tasks.append(asyncio.ensure_future(one(max(due, time.monotonic()))))
    await asyncio.gather(*tasks)
    for c in pool:
        c.writer.close()
    lat.sort()
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, len(lat)


async def scrape_metrics(port: int, token: str, stop: asyncio.Event) -> int:
    """GET /metrics once a second until ``stop`` (the page read whole); how many."""
    n = 0
    req = (f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode()  # fmt: skip
    [c] = await connect(port, 1)
    while not stop.is_set():
        c.writer.write(req)
        head = await c.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(x[15:]) for x in lines if x[:15].lower() == b"content-length:")
        await c.reader.readexactly(length)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    c.writer.close()
    return n


async def measure(
    port: int, args: argparse.Namespace, prefix: str, *, pid: int | None = None,
    token: str | None = None,
) -> dict[str, float]:  # fmt: skip
    req = request_bytes(port)
    out: dict[str, float] = {}
    await closed_loop(port, req, 4, 0.5)  # warm up
    stop = asyncio.Event()
    scraper = asyncio.ensure_future(scrape_metrics(port, token, stop)) if token else None
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.monotonic()
    rps = await closed_loop(port, req, args.conns, args.seconds)
    if pid:
        total = rps * (time.monotonic() - t0)
        out["daemon_cpu_us_per_req"] = round((cpu_seconds(pid) - cpu0) / total * 1e6, 1)
    p50, p99, _ = await open_loop(port, req, args.rate, args.seconds)
    stop.set()
    if scraper is not None:
        out["metrics_scrapes"] = await scraper
    out[f"{prefix}_rps"] = round(rps)
    out[f"{prefix}_p50_ms"] = round(p50, 3)
    out[f"{prefix}_p99_ms"] = round(p99, 3)
    return out


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_daemon(args: argparse.Namespace) -> dict[str, float]:
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        flows = Path(tmp, "flows")
        flows.mkdir()
        (flows / "bench.json").write_text(json.dumps(FLOW))
        data = Path(tmp, "data")
        port = free_port()
        notify, notify_path = notify_socket(tmp)
        env = {**os.environ, "MECHAWAY_LOG_LEVEL": "warning", "NOTIFY_SOCKET": notify_path}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mechaway", "start", "--flows", str(flows),
             "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"], env=env,
        )  # fmt: skip
        try:
            wait_ready(notify)
            rss_idle = rss_mb(proc.pid)
            token = (data / "api-token").read_text().strip()
            out = uvloop.run(measure(port, args, "webhook", pid=proc.pid, token=token))
            time.sleep(0.5)
            out["rss_idle_mb"] = round(rss_idle, 1)
            out["rss_mb"] = round(rss_mb(proc.pid), 1)
            out["rss_peak_mb"] = round(peak_mb(proc.pid), 1)
        finally:
            stop(proc)
    return out


def bench_floor(args: argparse.Namespace, cmd: list[str], prefix: str) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([*cmd, str(port)])
    try:
        wait_port(port)
        out = uvloop.run(measure(port, args, prefix, pid=proc.pid))
        out[f"{prefix}_rss_mb"] = round(rss_mb(proc.pid), 1)
        out.pop("daemon_cpu_us_per_req", None)
    finally:
        stop(proc)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    p.add_argument("--rate", type=float, default=2000.0, help="requests/s of the fixed-rate run")
    p.add_argument("--conns", type=int, default=32, help="connections of the closed-loop run")
    args = p.parse_args()
    figures: dict[str, float] = {"fixed_rate_rps": args.rate, "conns": args.conns}
    figures.update(bench_daemon(args))
    figures.update(bench_floor(args, [sys.executable, "-c", AIOHTTP_FLOOR], "aiohttp_floor"))
    node = shutil.which("node")
    if node:
        figures.update(bench_floor(args, [node, "-e", NODE_FLOOR], "node_http_floor"))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
