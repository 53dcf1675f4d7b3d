"""HTTPRequestNode over the [http] driver against a local aiohttp server: URL templates,
the response as a message, retries with backoff (statuses and refused connections),
timeouts, the concurrency bound, the response size cap, errors on the error port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from mechaway.drivers.base import Connections, parse_sections
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.daemon import free_port
from mechaway.testing.flows import deploy, doc, edge, got, node, stats, wait_until

pytestmark = pytest.mark.asyncio


@dataclass
class Server:
    url: str
    hits: dict[str, int] = field(default_factory=dict)
    concurrent: int = 0
    max_concurrent: int = 0
    bodies: list[Any] = field(default_factory=list)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server("")

    def hit(name: str) -> int:
        srv.hits[name] = srv.hits.get(name, 0) + 1
        return srv.hits[name]

    async def item(request: web.Request) -> web.Response:
        hit("item")
        return web.json_response({"id": request.match_info["id"], "q": request.query.get("q")},
                                 headers={"X-Served": "yes"})  # fmt: skip

    async def echo(request: web.Request) -> web.Response:
        hit("echo")
        srv.bodies.append((request.content_type, await request.read()))
        return web.json_response({"ok": True}, status=201)

    async def flaky(request: web.Request) -> web.Response:
        n = hit("flaky")
        if n <= 2:
            return web.Response(status=503, headers={"Retry-After": "0"}, text="busy")
        return web.Response(text="finally")

    async def slow(request: web.Request) -> web.Response:
        hit("slow")
        srv.concurrent += 1
        srv.max_concurrent = max(srv.max_concurrent, srv.concurrent)
        try:
            await asyncio.sleep(float(request.query.get("s", "0.1")))
        finally:
            srv.concurrent -= 1
        return web.Response(text="late")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 5000, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_post("/echo", echo)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    drivers = Connections(parse_sections({"http": {"small": {"limit": 2}}}))
    e = Engine(Services(drivers=drivers), stop_timeout=2.0)
    try:
        yield e
    finally:
        await e.stop()
        await drivers.close()


def request_flow(fid: str, **params: Any) -> dict[str, Any]:
    """``src -> req -> ok`` with the error port to ``bad``."""
    return doc(fid, [
        node("src", "InjectNode", once=True, once_delay=3600),
        node("req", "HTTPRequestNode", **params),
        node("ok", "CollectNode"),
        node("bad", "CollectNode"),
    ], [edge("src", "req"), edge("req", "ok"), edge("req", "bad", "error")])  # fmt: skip


def driver(engine: Engine, name: str = "default") -> Any:
    assert engine.services.drivers is not None
    return engine.services.drivers.live()[("http", name)]


async def test_a_get_with_a_url_template_comes_back_as_a_message(
    engine: Engine, server: Server
) -> None:
    await deploy(engine, request_flow("r1", url=server.url + "/items/{payload.id}?q={topic}"))
    engine.inject("r1", "req", {"payload": {"id": "a b/c"}, "topic": "x&y", "keep": 1})
    await wait_until(lambda: got("r1", "ok"), what="the response")
    [msg] = got("r1", "ok")
    assert msg["status"] == 200 and msg["keep"] == 1
    assert msg["payload"] == {"id": "a b/c", "q": "x&y"}  # fields percent-encoded
    assert msg["headers"]["x-served"] == "yes"
    assert driver(engine).health.counters["requests"] == 1


async def test_a_post_sends_the_payload_as_json_or_text(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r2", url=server.url + "/echo", method="POST"))
    engine.inject("r2", "req", {"payload": {"a": 1}})
    engine.inject("r2", "req", {"payload": "words"})
    await wait_until(lambda: len(got("r2", "ok")) == 2, what="two responses")
    assert sorted(server.bodies) == [("application/json", b'{"a":1}'), ("text/plain", b"words")]
    assert {m["status"] for m in got("r2", "ok")} == {201}


async def test_retry_on_status_then_success(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r3", url=server.url + "/flaky", retries=2, backoff_s=0.01))
    engine.inject("r3", "req", {"payload": None})
    await wait_until(lambda: got("r3", "ok"), what="the response")
    [msg] = got("r3", "ok")
    assert msg["status"] == 200 and msg["payload"] == "finally"
    assert server.hits["flaky"] == 3
    assert driver(engine).health.counters["retries"] == 2


async def test_retries_exhausted_on_a_status_is_still_an_answer(
    engine: Engine, server: Server
) -> None:
    await deploy(engine, request_flow("r4", url=server.url + "/flaky", retries=1, backoff_s=0.01))
    engine.inject("r4", "req", {"payload": None})
    await wait_until(lambda: got("r4", "ok"), what="the response")
    assert got("r4", "ok")[0]["status"] == 503 and server.hits["flaky"] == 2
    assert got("r4", "bad") == []


async def test_timeouts_are_retried_then_an_error(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r5", url=server.url + "/slow?s=2", timeout_s=0.2,
                                      retries=1, backoff_s=0.01))  # fmt: skip
    engine.inject("r5", "req", {"payload": 1})
    await wait_until(lambda: got("r5", "bad"), what="the error")
    [err] = got("r5", "bad")
    assert err["error"]["kind"] == "timeout" and err["payload"] == 1
    st = stats(engine, "r5", "req")
    assert st["errors"] == 1 and st["failed"] == 1 and st["out"] == 0
    c = driver(engine).health.counters
    assert c["timeouts"] == 2 and c["failures"] == 1


async def test_a_refused_connection_is_an_error_after_its_retries(engine: Engine) -> None:
    port = free_port()  # nothing listens there
    await deploy(engine, request_flow("r6", url=f"http://127.0.0.1:{port}/x", retries=2,
                                      backoff_s=0.01))  # fmt: skip
    engine.inject("r6", "req", {"payload": 1})
    await wait_until(lambda: got("r6", "bad"), what="the error")
    assert got("r6", "bad")[0]["error"]["kind"] == "connect"
    assert driver(engine).health.counters["connect_errors"] == 3


async def test_concurrency_is_bounded(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r7", url=server.url + "/slow?s=0.05", concurrency=3))
    for i in range(12):
        engine.inject("r7", "req", {"payload": i})
    await wait_until(lambda: len(got("r7", "ok")) == 12, what="twelve responses")
    assert server.max_concurrent == 3
    assert sorted(m["payload"] for m in got("r7", "ok")) == ["late"] * 12


async def test_the_pool_limit_of_a_named_connection_applies(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r8", url=server.url + "/slow?s=0.05", concurrency=8,
                                      connection="small"))  # fmt: skip
    for i in range(8):
        engine.inject("r8", "req", {"payload": i})
    await wait_until(lambda: len(got("r8", "ok")) == 8, what="eight responses")
    assert server.max_concurrent == 2  # [http.small] limit = 2


async def test_a_response_over_the_cap_is_an_error(engine: Engine, server: Server) -> None:
    await deploy(engine, request_flow("r9", url=server.url + "/big", max_response_bytes=1000))
    engine.inject("r9", "req", {"payload": 1})
    await wait_until(lambda: got("r9", "bad"), what="the error")
    assert got("r9", "bad")[0]["error"]["kind"] == "too_large"


async def test_a_missing_template_field_is_an_error_not_a_request(
    engine: Engine, server: Server
) -> None:
    await deploy(engine, request_flow("r10", url=server.url + "/items/{payload.id}"))
    engine.inject("r10", "req", {"payload": {}})
    await wait_until(lambda: got("r10", "bad"), what="the error")
    assert "payload.id is missing" in got("r10", "bad")[0]["error"]["message"]
    assert "item" not in server.hits


async def test_the_url_must_name_its_scheme_and_host() -> None:
    from mechaway.errors import FlowError
    from mechaway.flow.validate import validate

    for url in ("{payload.url}", "ftp://x/y", "http://{payload.host}/x"):
        with pytest.raises(FlowError, match="url must begin"):
            validate(request_flow("r11", url=url))
