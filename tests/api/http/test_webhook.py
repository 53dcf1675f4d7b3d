"""WebhookNode through the API's HTTP server: 202 once taken (and once durable), the
flow's answer through HTTPResponseNode, 504, the hook's own token (the API's tokens do not
open it), size and time limits, body parsing, every refusal a JSON error."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

import pytest

from mechaway.nodes import http as http_nodes
from mechaway.testing.flows import doc, edge, got, node, settle, stats, wait_until

from .conftest import ADMIN, HOOK, READ, WebApi

pytestmark = pytest.mark.asyncio


def hook_flow(
    fid: str, *, after: list[dict[str, Any]] | None = None, **params: Any
) -> dict[str, Any]:
    """``hook -> (after...) -> sink`` or ``hook -> after...`` when ``after`` ends the flow."""
    nodes = [node("hook", "WebhookNode", **{"path": "/in", **params})]
    if after is None:
        nodes.append(node("sink", "CollectNode"))
        return doc(fid, nodes, [edge("hook", "sink")])
    nodes += after
    edges = [edge(a["id"], b["id"]) for a, b in itertools.pairwise(nodes)]
    return doc(fid, nodes, edges)


async def test_a_hook_answers_202_once_the_flow_took_the_message(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h1"))
    resp = await web_api.client.post(
        "/webhook/h1/in?x=1&x=2&y=3",
        json={"id": 7, "score": 91},
        headers={"Authorization": "Bearer not-for-the-flow", "X-Trace": "abc"},
    )
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["accepted"] is True
    await settle(web_api.engine, "h1")
    [msg] = got("h1", "sink")
    assert msg["payload"] == {"id": 7, "score": 91}
    assert msg["topic"] == "in"
    http = msg["http"]
    assert http["id"] == body["id"] and http["method"] == "POST"
    assert http["query"] == {"x": ["1", "2"], "y": "3"}
    assert http["headers"]["x-trace"] == "abc"
    assert "authorization" not in http["headers"]  # credentials never enter a message
    assert stats(web_api.engine, "h1", "hook")["accepted"] == 1


async def test_the_seed_path_with_a_slash_and_form_and_text_bodies(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h2", path="/grade", methods=["POST", "PUT"]))
    c = web_api.client
    r1 = await c.post("/webhook/h2/grade", data={"a": "1", "b": "x y"})
    r2 = await c.put("/webhook/h2/grade", data="plain words",
                     headers={"Content-Type": "text/plain; charset=utf-8"})  # fmt: skip
    r3 = await c.post("/webhook/h2/grade", data=b"", headers={"Content-Type": "application/json"})
    assert (r1.status, r2.status, r3.status) == (202, 202, 202)
    await settle(web_api.engine, "h2")
    payloads = [m["payload"] for m in got("h2", "sink")]
    assert payloads == [{"a": "1", "b": "x y"}, "plain words", None]


async def test_the_flows_answer_through_http_response_node(web_api: WebApi) -> None:
    flow = hook_flow("h3", after=[
        node("shape", "JSONTransformNode", map="{id=$.id, score=$.score}"),
        node("answer", "HTTPResponseNode", status=201, headers={"X-Flow": "h3"}),
    ])  # fmt: skip
    await web_api.deploy(flow)
    resp = await web_api.client.post("/webhook/h3/in", json={"id": 1, "score": 77, "junk": 0})
    assert resp.status == 201
    assert resp.headers["X-Flow"] == "h3"
    assert resp.headers["Content-Type"].startswith("application/json")
    assert await resp.json() == {"id": 1, "score": 77}
    assert stats(web_api.engine, "h3", "hook")["answered"] == 1
    assert http_nodes.pending_answers() == 0


async def test_status_headers_and_text_from_the_message(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h4", after=[node("answer", "HTTPResponseNode")]))
    # the payload is the body; status and headers ride in the message
    hook = web_api.engine.flows["h4"].instances["hook"]
    orig = hook.emit

    def with_fields(msg: dict[str, Any], port: str = "out") -> None:
        orig({**msg, "payload": "nope", "status": 418,
              "headers": {"X-A": "1", "Content-Length": "5", "Bad\nName": "x"}}, port)  # fmt: skip

    hook.emit = with_fields
    resp = await web_api.client.post("/webhook/h4/in", json={})
    assert resp.status == 418 and await resp.text() == "nope"
    assert resp.headers["X-A"] == "1" and resp.headers["Content-Type"].startswith("text/plain")
    assert stats(web_api.engine, "h4", "answer")["bad_headers"] == 2  # framing + invalid name


async def test_no_answer_in_time_is_504_and_a_late_answer_is_counted(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h5", respond="flow", timeout_s=0.2))
    resp = await web_api.client.post("/webhook/h5/in", json={"v": 1})
    assert resp.status == 504
    assert "did not answer" in (await resp.json())["error"]
    assert stats(web_api.engine, "h5", "hook")["timeouts"] == 1
    await settle(web_api.engine, "h5")
    [msg] = got("h5", "sink")
    # the flow answers after all: too late, counted, not an error
    late = http_nodes.HTTPResponseNode("r", http_nodes.HTTPResponseParams(), web_api.engine.flows[
        "h5"].instances["hook"].ctx)  # fmt: skip
    assert late.process(msg) is None
    assert late.late == 1 and late.stats.dropped == 1
    assert http_nodes.pending_answers() == 0


async def test_the_hook_token_opens_the_hook_and_nothing_else(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h6", token=HOOK))
    c = web_api.client
    url = "/webhook/h6/in"
    missing = await c.post(url, json={})
    assert missing.status == 401 and "Bearer" in missing.headers["WWW-Authenticate"]
    assert "error" in await missing.json()
    assert (await c.post(url, json={}, headers={"Authorization": "Bearer wrong-0123456789abcdef"})
            ).status == 401  # fmt: skip
    assert (await c.post(url, json={}, headers={"Authorization": HOOK})).status == 401  # no Bearer
    # the API's own tokens do not open a hook
    for token in (ADMIN, READ):
        assert (await c.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
                ).status == 401  # fmt: skip
    assert (await c.post(url, json={}, headers={"Authorization": f"Bearer {HOOK}"})).status == 202
    assert (await c.post(url, json={}, headers={"X-Mechaway-Token": HOOK})).status == 202
    # and a hook token opens nothing of the API
    assert (await c.get("/api/v1/status", headers={"Authorization": f"Bearer {HOOK}"})
            ).status == 401  # fmt: skip
    assert (await c.get("/metrics", headers={"Authorization": f"Bearer {HOOK}"})).status == 401
    st = stats(web_api.engine, "h6", "hook")
    assert st["unauthorized"] == 5 and st["accepted"] == 2
    await settle(web_api.engine, "h6")
    assert len(got("h6", "sink")) == 2


async def test_a_hashed_token_and_an_open_hook(web_api: WebApi) -> None:
    digest = hashlib.sha256(HOOK.encode()).hexdigest()
    await web_api.deploy(hook_flow("h7", token=f"sha256:{digest}"))
    await web_api.deploy(hook_flow("h8"))
    c = web_api.client
    assert (await c.post("/webhook/h7/in", json={}, headers={"X-Mechaway-Token": digest})
            ).status == 401  # the hash itself is not the token  # fmt: skip
    assert (await c.post("/webhook/h7/in", json={}, headers={"X-Mechaway-Token": HOOK})
            ).status == 202  # fmt: skip
    assert (await c.post("/webhook/h8/in", json={})).status == 202  # no token: open


async def test_size_limits_413_by_length_and_while_streaming(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h9", max_body_bytes=1000))
    c = web_api.client
    assert (await c.post("/webhook/h9/in", data=b"x" * 1000,
                         headers={"Content-Type": "text/plain"})).status == 202  # fmt: skip
    big = await c.post("/webhook/h9/in", data=b"x" * 1001, headers={"Content-Type": "text/plain"})
    assert big.status == 413 and "max_body_bytes" in (await big.json())["error"]

    async def chunks() -> Any:  # no Content-Length: the cap applies while reading
        for _ in range(10):
            yield b"y" * 500

    streamed = await c.post("/webhook/h9/in", data=chunks(), headers={"Content-Type": "text/plain"})
    assert streamed.status == 413
    assert stats(web_api.engine, "h9", "hook")["too_large"] == 2
    await settle(web_api.engine, "h9")
    assert len(got("h9", "sink")) == 1


async def test_a_body_that_does_not_come_is_408(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h10", body_timeout_s=0.3))
    server = web_api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /webhook/h10/in HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\":"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert stats(web_api.engine, "h10", "hook")["bad_request"] == 1


async def test_bad_bodies_methods_paths_and_origins_are_json_errors(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h11"))
    c = web_api.client
    json_type = {"Content-Type": "application/json"}
    bad = await c.post("/webhook/h11/in", data=b"{nope", headers=json_type)
    assert bad.status == 400 and "JSON" in (await bad.json())["error"]
    xml = await c.post("/webhook/h11/in", data=b"<a/>", headers={"Content-Type": "application/xml"})
    assert xml.status == 415
    latin = await c.post("/webhook/h11/in", data=b"\xff\xfe",
                         headers={"Content-Type": "text/plain; charset=utf-8"})  # fmt: skip
    assert latin.status == 400
    get = await c.get("/webhook/h11/in")
    assert get.status == 405 and get.headers["Allow"] == "POST"
    missing = await c.post("/webhook/h11/other", json={})
    assert missing.status == 404 and "error" in await missing.json()
    assert (await c.post("/webhook/nosuchflow/in", json={})).status == 404
    # a page elsewhere cannot post to a hook (the API's Origin rule)
    page = await c.post("/webhook/h11/in", json={}, headers={"Origin": "http://evil.example"})
    assert page.status == 403
    await settle(web_api.engine, "h11")
    assert got("h11", "sink") == []


async def test_a_busy_hook_answers_503_at_once(web_api: WebApi) -> None:
    await web_api.deploy(hook_flow("h12", respond="flow", timeout_s=1.0, max_in_flight=1))
    c = web_api.client
    first = asyncio.ensure_future(c.post("/webhook/h12/in", json={"n": 1}))
    hook = web_api.engine.flows["h12"].instances["hook"]
    await wait_until(lambda: hook.in_flight == 1, what="the first request to wait")
    second = await c.post("/webhook/h12/in", json={"n": 2})
    assert second.status == 503
    assert (await first).status == 504
    assert stats(web_api.engine, "h12", "hook")["busy"] == 1


async def test_202_waits_until_the_outbox_has_the_message_on_disk(web_api: WebApi) -> None:
    flow = hook_flow("h13", after=[node("up", "UpstreamNode", topic="grades")])
    await web_api.deploy(flow)
    resp = await web_api.client.post("/webhook/h13/in", json={"id": 3})
    assert resp.status == 202
    # acknowledged means committed: the row is readable at once, nothing pending
    from mechaway.store.outbox import Outbox

    box = Outbox.existing(web_api.db)
    assert box is not None
    state = box.state()
    assert state["messages"] == 1 and state["pending"] == 0


async def test_two_hooks_on_one_path_are_refused_at_deploy(web_api: WebApi) -> None:
    from mechaway.errors import FlowError

    body = doc("h14", [node("a", "WebhookNode", path="/x"), node("b", "WebhookNode", path="x"),
                       node("s", "CollectNode")],
               [edge("a", "s"), edge("b", "s")])  # fmt: skip
    with pytest.raises(FlowError, match="webhook path /x is claimed by both"):
        await web_api.deploy(body)
