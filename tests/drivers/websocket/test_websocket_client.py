"""WebSocket client nodes over the [websocket] driver: messages both ways through a real
server, the token in the handshake, and reconnection (backoff, counted) after the test
stops the server and starts it again on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.websocket import WebSocketDriver
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.daemon import free_port
from mechaway.testing.flows import deploy, doc, edge, got, node, wait_until

pytestmark = pytest.mark.asyncio
TOKEN = "client-token-0123456789"


class EchoServer:
    """A WebSocket server on a fixed port that the test can stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runner: web.AppRunner | None = None
        self.received: list[str] = []
        self.sockets: set[web.WebSocketResponse] = set()
        self.auth: list[str | None] = []

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.auth.append(request.headers.get("Authorization"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        await ws.send_str('{"hello": 1}')
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.received.append(msg.data)
        finally:
            self.sockets.discard(ws)
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def push(self, text: str) -> None:
        for ws in list(self.sockets):
            await ws.send_str(text)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[tuple[Engine, EchoServer]]:
    port = free_port()
    server = EchoServer(port)
    await server.start()
    drivers = Connections(parse_sections({"websocket": {"feed": {
        "url": f"ws://127.0.0.1:{port}/feed", "token": TOKEN,
        "reconnect_min": 0.05, "reconnect_max": 0.2, "stable_after": 0.5,
    }}}))  # fmt: skip
    engine = Engine(Services(drivers=drivers), stop_timeout=2.0)
    try:
        yield engine, server
    finally:
        await engine.stop()
        await drivers.close()
        await server.stop()


def client_flow(fid: str) -> dict[str, Any]:
    """``in (feed) -> sink``; ``out (feed)`` fed by an idle source (the test injects)."""
    return doc(fid, [
        node("in", "WebSocketInNode", connection="feed"),
        node("sink", "CollectNode"),
        node("src", "InjectNode", once=True, once_delay=3600),
        node("out", "WebSocketOutNode", connection="feed"),
    ], [edge("in", "sink"), edge("src", "out")])  # fmt: skip


def feed(engine: Engine) -> WebSocketDriver:
    assert engine.services.drivers is not None
    drv: WebSocketDriver = engine.services.drivers.live()[("websocket", "feed")]
    return drv


async def test_messages_both_ways_and_the_token_in_the_handshake(
    rig: tuple[Engine, EchoServer],
) -> None:
    engine, server = rig
    await deploy(engine, client_flow("c1"))
    await wait_until(lambda: got("c1", "sink"), what="the server's hello")
    assert got("c1", "sink")[0]["payload"] == {"hello": 1}
    assert got("c1", "sink")[0]["ws"] == {"connection": "feed"}
    assert server.auth == [f"Bearer {TOKEN}"]
    engine.inject("c1", "out", {"payload": {"v": 2}})
    await wait_until(lambda: server.received, what="the server to receive")
    assert server.received == ['{"v":2}']
    status = feed(engine).status()
    assert status["state"] == "connected" and status["counters"]["messages_out"] == 1
    assert TOKEN not in str(status)  # the token never shows


async def test_the_client_reconnects_after_the_server_restarts(
    rig: tuple[Engine, EchoServer],
) -> None:
    engine, server = rig
    await deploy(engine, client_flow("c2"))
    drv = feed(engine)
    await wait_until(lambda: drv.connected, what="the first connection")
    await server.stop()
    await wait_until(lambda: not drv.connected, what="the loss to be seen")
    assert drv.health.state != "connected"
    # while the server is away, sends are dropped and counted, never replayed later
    engine.inject("c2", "out", {"payload": "lost"})
    assert drv.health.counters["dropped_offline"] >= 1
    await asyncio.sleep(0.3)  # a few failed attempts with backoff
    assert drv.health.counters["connect_failures"] >= 1
    await server.start()
    await wait_until(lambda: drv.connected, timeout=10, what="the reconnection")
    assert drv.health.reconnects >= 1
    await wait_until(lambda: len(got("c2", "sink")) == 2, what="the second hello")
    engine.inject("c2", "out", {"payload": "after"})
    await wait_until(lambda: server.received, what="the server to receive")
    assert server.received == ['"after"']


async def test_a_subscriber_waits_while_its_flow_is_full(rig: tuple[Engine, EchoServer]) -> None:
    engine, server = rig
    flow = doc("c3", [
        node("in", "WebSocketInNode", connection="feed"),
        node("sink", "CollectNode", queue_size=1, overflow="block", delay=0.05),
    ], [edge("in", "sink")])  # fmt: skip
    await deploy(engine, flow)
    await wait_until(lambda: got("c3", "sink"), what="the hello")
    for i in range(5):
        await server.push(str(i))
    await wait_until(lambda: len(got("c3", "sink")) == 6, what="all six, none dropped")
    assert [m["payload"] for m in got("c3", "sink")][1:] == [0, 1, 2, 3, 4]
    assert engine.status()["c3"]["nodes"]["sink"]["dropped"] == 0
