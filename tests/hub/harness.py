"""Processes and plumbing for the hub tests: a hub subprocess, a TCP proxy the tests
control, PostgreSQL databases made per run, and checks of what reached the hub."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mechaway.testing.daemon import DaemonProc, clean_env, free_port

ADMIN = "admin-" + "x" * 24
PG_HOST = "127.0.0.1"


# -- PostgreSQL ---------------------------------------------------------------------------------
def _psql(sql: str, user: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-h", PG_HOST, "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def pg_user() -> str:
    """The role that connects (trust auth): postgres, else root."""
    for user in ("postgres", "root"):
        if _psql("SELECT 1", user).returncode == 0:
            return user
    raise RuntimeError(
        f"no PostgreSQL at {PG_HOST}:5432 for user postgres or root (start it:"
        " pg_ctlcluster <version> main start)"
    )


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database for this run; dropped afterwards."""
    user = pg_user()
    name = f"mechaway_hub_test_{os.getpid()}_{secrets.token_hex(3)}"
    r = _psql(f"CREATE DATABASE {name}", user)
    assert r.returncode == 0, r.stderr
    try:
        yield f"postgresql://{user}@{PG_HOST}:5432/{name}"
    finally:
        _psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            user,
        )
        _psql(f"DROP DATABASE IF EXISTS {name}", user)


# -- the hub process ----------------------------------------------------------------------------
class HubProc:
    """``mechaway hub start`` as a subprocess under ``root`` (hub.toml, hub.log)."""

    def __init__(self, root: Path, database: str, *, key: Path | None = None, extra: str = ""):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "hub.toml"
        self.logfile = root / "hub.log"
        self.database = database
        self.key = key or (root / "signing.key")
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.config.write_text(
            f'[hub]\nlisten = "127.0.0.1:{self.port}"\ndatabase = "{self.database}"\n'
            f'admin_token = "{ADMIN}"\nsigning_key = "{self.key}"\nlong_poll = 5\n{self.extra}\n'
        )
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mechaway", "hub", "start", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"hub exited:\n{self.log_tail()}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/health", timeout=1).read()
                return
            assert time.monotonic() < deadline, f"hub did not start:\n{self.log_tail()}"
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def call(self, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> Any:
        """(status, decoded body) of an API call."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        code, out = self.call(method, path, body)
        assert 200 <= code < 300, (code, out)
        return out

    def public_key(self) -> str:
        return str(self.ok("GET", "/public-key")["public_key"])

    def add_device(self, dev: str, tags: list[str]) -> str:
        return str(self.ok("POST", "/devices", {"id": dev, "tags": tags})["token"])

    def telemetry(self, dev: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.ok("GET", f"/devices/{dev}/telemetry?after={out[-1]['seq'] if out else 0}"
                           "&limit=10000")  # fmt: skip
            out += page
            if len(page) < 10000:
                return out


def edge(
    root: Path, dev: str, hub_url: str, token: str, *, public_key: str, extra: str = ""
) -> DaemonProc:
    """A real ``mechaway start`` daemon syncing with the hub at ``hub_url``."""
    cfg = (
        f'[device]\nid = "{dev}"\n\n[hub]\nurl = "{hub_url}"\ntoken = "{token}"\n'
        f'public_key = "{public_key}"\nheartbeat = 2\ntimeout = 5\nhealth_window = 10\n'
        f"error_threshold = 5\nbatch = 500\n{extra}"
    )
    return DaemonProc(root, token="edge-api-token-0123456789", config=cfg)


def flow(fid: str, interval: float = 0.02, *, name: str = "") -> dict[str, Any]:
    """InjectNode (payload: the time) -> UpstreamNode."""
    return {
        "id": fid,
        "name": name or fid,
        "nodes": [
            {"id": "tick", "type": "InjectNode",
             "params": {"interval": interval, "topic": f"{fid}/t"}},
            {"id": "up", "type": "UpstreamNode", "params": {}},
        ],
        "edges": [{"from": "tick", "to": "up"}],
    }  # fmt: skip


def outbox(d: DaemonProc) -> dict[str, Any]:
    """The edge's outbox state (from the UpstreamNode's status, or the hub section)."""
    st = d.status()
    for f in st["flows"].values():
        for n in f["nodes"].values():
            if "outbox" in n:
                return dict(n["outbox"])
    return {}


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def check_exactly_once(rows: list[dict[str, Any]], produced: int, what: str) -> None:
    """Hub seqs are 1..produced, each once, in order; timestamps never go back."""
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, produced + 1)), (
        f"{what}: {len(seqs)} rows, expected 1..{produced}; first gap at"
        f" {next((i + 1 for i, s in enumerate(seqs) if s != i + 1), None)}"
    )
    ts = [r["ts"] for r in rows]
    assert all(a <= b for a, b in itertools.pairwise(ts)), f"{what}: out of order"


# -- the TCP proxy ------------------------------------------------------------------------------
class Proxy:
    """A TCP proxy on its own thread and loop, between an edge and one or more hubs.

    Modes (``mode`` is read per chunk and per connection): ``pass``; ``drop`` (connections
    are closed at once); ``blackhole`` (accepted, read, never answered or forwarded);
    ``delay`` (each chunk waits ``delay_s``); ``cut`` (a connection is closed after
    ``cut_bytes`` bytes from the edge: mid-request). Upstreams are taken in turn.
    """

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = upstreams
        self.mode = "pass"
        self.delay_s = 0.2
        self.cut_bytes = 3000
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._rr = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="hub-test-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        """Change the mode; existing connections are closed so the change bites at once."""
        self.mode = mode
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(5)

    async def _close_all(self) -> None:
        for w in list(self._conns):
            w.close()
        self._conns.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._conns.add(w)
        try:
            if self.mode == "drop":
                return
            if self.mode == "blackhole":
                while await r.read(65536):
                    pass
                return
            port = self.upstreams[self._rr % len(self.upstreams)]
            self._rr += 1
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return
            self._conns.add(uw)
            sent = [0]
            await asyncio.gather(
                self._pump(r, uw, sent, upstream=True), self._pump(ur, w, sent, upstream=False),
                return_exceptions=True,
            )  # fmt: skip
            uw.close()
        finally:
            w.close()
            self._conns.discard(w)

    async def _pump(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, sent: list[int], *, upstream: bool
    ) -> None:
        try:
            while data := await r.read(16384):
                if self.mode == "blackhole":
                    continue
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                if self.mode == "cut" and upstream:
                    room = self.cut_bytes - sent[0]
                    if len(data) > room:
                        w.write(data[: max(room, 0)])
                        self.cuts += 1
                        w.close()
                        return
                sent[0] += len(data) if upstream else 0
                w.write(data)
                await w.drain()
        finally:
            w.close()

    def close(self) -> None:
        async def shut() -> None:
            await self._close_all()
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
