"""Crash safety of the real daemon: ``kill -9`` at random moments while a producer pushes
numbered messages through a flow into the outbox; node context across restarts.

The producer plays an MQTT QoS 1 client: it counts a number as delivered only when the
daemon acknowledged it (after the outbox fsync), and after a crash sends everything not
acknowledged again, flagged ``dup``. After every restart the outbox must hold every
acknowledged number, the first copies in order with no gap, and any second copy flagged.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from mechaway.testing.daemon import DaemonProc, clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


def daemon_env() -> dict[str, str]:
    return clean_env(PYTHONPATH=str(ROOT))


class Daemon(DaemonProc):
    """``mechaway start`` (the real CLI) with the test's AckFeedNode type registered."""

    def __init__(self, base: Path, flow: dict[str, Any]) -> None:
        super().__init__(base, env=daemon_env())
        (self.flows / f"{flow['id']}.json").write_text(json.dumps(flow))

    def start(self, poll_interval: float = 1.0, *, feed: bool = True) -> None:
        """The CLI via ``crash_feed.py`` (registers AckFeedNode first; the producer waits for
        its port) or ``-m mechaway`` (then wait until the API answers: the schema exists)."""
        self.entry = (
            [str(Path(__file__).with_name("crash_feed.py"))] if feed else ["-m", "mechaway"]
        )
        super().start(poll_interval, wait=not feed)

    def term(self) -> int:
        return self.terminate()

    def tail(self) -> str:
        return self.log_tail(60)


def read_outbox(db: Path) -> list[tuple[int, int, int]]:
    """(seq, number, flags) in seq order, read-only (no checkpoint, no recovery write)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, payload, flags FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(r[0], orjson.loads(r[1]), r[2]) for r in rows]


class Producer:
    """Sends numbers in order with a window of unacknowledged ones; resends after a cut."""

    def __init__(self, port: int, window: int = 300) -> None:
        self.port = port
        self.window = window
        self.acked = 0  # acks arrive in order: 1..acked are acknowledged
        self.sent = Counter[int]()
        self.first_ack = asyncio.Event()

    async def connect(
        self, timeout: float = 20.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Produce until the connection is cut (the daemon was killed)."""
        self.first_ack.clear()
        nxt = self.acked + 1
        room = asyncio.Event()
        room.set()

        async def read_acks() -> None:
            while line := await reader.readline():
                kind, n = line.decode().split()
                assert kind == "ack", f"the daemon refused {n}"
                assert int(n) == self.acked + 1, f"ack {n} out of order after {self.acked}"
                self.acked = int(n)
                self.first_ack.set()
                room.set()

        acks = asyncio.get_running_loop().create_task(read_acks())
        try:
            while not acks.done():
                if nxt - self.acked > self.window:
                    room.clear()
                    await asyncio.wait([acks, asyncio.ensure_future(room.wait())], timeout=1.0,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    continue
                batch = range(nxt, min(nxt + 50, self.acked + self.window + 1))
                lines = []
                for n in batch:
                    lines.append(f"{n} dup\n" if self.sent[n] else f"{n}\n")
                    self.sent[n] += 1
                writer.write("".join(lines).encode())
                nxt = batch[-1] + 1
                await writer.drain()
        except (ConnectionError, OSError, RuntimeError):  # uvloop: "the handler is closed"
            pass
        finally:
            with_exc = await asyncio.gather(acks, return_exceptions=True)
            writer.close()
        if with_exc and isinstance(with_exc[0], AssertionError):
            raise with_exc[0]


def check(rows: list[tuple[int, int, int]], prod: Producer) -> tuple[int, int]:
    """The contract, checked on what survived. Returns (stored first copies, dup copies)."""
    seqs = [r[0] for r in rows]
    assert seqs == sorted(set(seqs)), "seq must be strictly increasing"
    count = Counter(n for _s, n, _f in rows)
    seen: set[int] = set()
    firsts: list[int] = []
    for _seq, n, flags in rows:
        if n in seen:
            assert flags & 1, f"second copy of {n} is not flagged as a possible duplicate"
        else:
            seen.add(n)
            firsts.append(n)
    # first copies: 1..M in order, no gap (commits happen in emission order)
    assert firsts == list(range(1, len(firsts) + 1)), "first copies out of order or with a gap"
    # every acknowledged number survived; copies only as often as it was sent
    assert prod.acked <= len(firsts), f"acked {prod.acked} but only {len(firsts)} stored"
    for n, c in count.items():
        assert c <= prod.sent[n], f"{n} stored {c} times but sent {prod.sent[n]} times"
        if prod.sent[n] == 1 and n <= prod.acked:
            assert c == 1
    return len(firsts), len(rows) - len(firsts)


def crash_flow(port: int) -> dict[str, Any]:
    return {
        "id": "crash",
        "name": "crash test",
        "nodes": [
            {"id": "feed", "type": "AckFeedNode", "params": {"port": port}},
            {"id": "up", "type": "UpstreamNode", "params": {"policy": "reject_new"}},
        ],
        "edges": [{"from": "feed", "to": "up"}],
    }


@pytest.mark.asyncio
async def test_kill_9_never_loses_an_acknowledged_message(tmp_path: Path) -> None:
    seed = int(os.environ.get("MW_CRASH_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    port = free_port()
    daemon = Daemon(tmp_path, crash_flow(port))
    prod = Producer(port)
    t_start = time.monotonic()
    try:
        for cycle in range(KILLS + 1):
            daemon.start()
            reader, writer = await prod.connect()
            assert daemon.alive(), daemon.tail()
            # after each restart: everything acknowledged before the kill is there
            if daemon.db.exists():
                check(read_outbox(daemon.db), prod)
            if cycle == KILLS:
                writer.close()
                break
            run = asyncio.get_running_loop().create_task(prod.run(reader, writer))
            await asyncio.wait_for(prod.first_ack.wait(), 20)
            await asyncio.sleep(rng.uniform(0.0, 0.4))  # a random moment mid-stream
            daemon.kill9()
            await asyncio.wait_for(run, 20)
        assert daemon.term() == 0, daemon.tail()
    finally:
        if daemon.alive():
            daemon.kill9()
    firsts, dups = check(read_outbox(daemon.db), prod)
    elapsed = time.monotonic() - t_start
    print(
        f"seed {seed}: {KILLS} kills in {elapsed:.1f}s, {prod.acked} acknowledged, "
        f"{firsts} stored, {dups} flagged duplicates"
    )
    assert prod.acked > KILLS * 10
    assert elapsed < 90


def _window_flow(persist: bool) -> dict[str, Any]:
    return {
        "id": "ctx",
        "name": "context",
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": 0.01, "payload": 1}},
            {
                "id": "w",
                "type": "WindowNode",
                "params": {"op": "sum", "size": 1_000_000, "persist": persist},
            },
        ],
        "edges": [{"from": "tick", "to": "w"}],
    }


def _saved_n(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT state FROM node_context WHERE flow_id = 'ctx' AND node_id = 'w'"
        ).fetchone()
    finally:
        conn.close()
    return int(orjson.loads(row[0])["n"]) if row else 0


async def _wait_for(pred: Any, timeout: float, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert daemon.alive(), daemon.tail()
        assert time.monotonic() < deadline, daemon.tail()
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_node_context_survives_restart_and_kill_9(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, _window_flow(True))
    try:
        daemon.start(feed=False)
        await _wait_for(lambda: daemon.db.exists() and _saved_n(daemon.db) >= 20, 20, daemon)
        await asyncio.sleep(0.3)
        assert daemon.term() == 0
        n1 = _saved_n(daemon.db)  # saved when the node retired at the clean stop
        assert n1 >= 40

        daemon.start(feed=False)
        # the periodic pass (every 2 s) saves the restored count plus the new messages
        await _wait_for(lambda: _saved_n(daemon.db) > n1 + 20, 20, daemon)
        n2 = _saved_n(daemon.db)
        daemon.kill9()  # no retire: what the periodic pass saved is what is left
        assert _saved_n(daemon.db) == n2

        daemon.start(feed=False)
        await _wait_for(lambda: _saved_n(daemon.db) > n2 + 20, 20, daemon)
        assert daemon.term() == 0
        assert _saved_n(daemon.db) > n2 + 20
    finally:
        if daemon.alive():
            daemon.kill9()


@pytest.mark.asyncio
async def test_series_endpoint_of_the_daemon(tmp_path: Path) -> None:
    """StoreNode in a flow file, history through GET /api/v1/series/NAME of the daemon."""
    import urllib.request

    doc = {
        "id": "hist",
        "name": "history",
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": 0.01, "payload": 21.5,
                                                            "topic": "gh/1/temp"}},
            {"id": "keep", "type": "StoreNode", "params": {}},
        ],
        "edges": [{"from": "tick", "to": "keep"}],
    }  # fmt: skip
    daemon = Daemon(tmp_path, doc)

    def get(path: str) -> Any:
        req = urllib.request.Request(f"{daemon.url}{path}")
        req.add_header("Authorization", f"Bearer {daemon.own_token()}")  # made at its start
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def count() -> int:
        try:
            body = get("/api/v1/series/gh/1/temp?agg=count")
        except OSError:
            return 0
        return int(body["points"][0][1]) if body["points"] else 0

    daemon.start(feed=False)
    try:
        await _wait_for(lambda: count() >= 20, 20, daemon)
        body = await asyncio.to_thread(get, "/api/v1/series/gh/1/temp?agg=mean&bucket=3600")
        assert body["points"][0][1] == pytest.approx(21.5)
        status = await asyncio.to_thread(get, "/api/v1/status")
        assert status["store"]["context"]["save_errors"] == 0
        assert "floor_syncs" in status["store"]["maintenance"]
        assert daemon.term() == 0
    finally:
        if daemon.alive():
            daemon.kill9()
