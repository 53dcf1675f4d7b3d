"""WebSocket endpoints ``/ws/{flow}/{path}``: a reply reaches the client that asked, a
broadcast reaches all, the endpoint's token (header or first message; the API's tokens do
not open it), the message size cap, slow clients bounded (drop or close), the client cap,
and clients kept across a hot swap."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.client_ws import ClientWebSocketResponse

from mechaway.nodes import websocket as ws_nodes
from mechaway.testing.flows import doc, edge, node, stats, wait_until

from .conftest import ADMIN, HOOK, WebApi

pytestmark = pytest.mark.asyncio


def echo_flow(fid: str, in_params: dict[str, Any] | None = None, **out: Any) -> dict[str, Any]:
    """``in (path chat) -> shape (payload -> {echo: payload}) -> out (path chat)``."""
    return doc(fid, [
        node("in", "WebSocketInNode", **{"path": "chat", **(in_params or {})}),
        node("shape", "JSONTransformNode", map="{echo=$}"),
        node("out", "WebSocketOutNode", **{"path": "/chat", **out}),
    ], [edge("in", "shape"), edge("shape", "out")])  # fmt: skip


async def recv_json(ws: ClientWebSocketResponse, timeout: float = 5.0) -> Any:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data)
    return orjson.loads(msg.data)


async def test_a_reply_reaches_the_client_that_asked_and_a_broadcast_all(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w1"))
    c = web_api.client
    a = await c.ws_connect("/ws/w1/chat")
    b = await c.ws_connect("/ws/w1/chat")
    await a.send_str('{"from": "a"}')
    assert await recv_json(a) == {"echo": {"from": "a"}}
    await b.send_str('{"from": "b"}')
    assert await recv_json(b) == {"echo": {"from": "b"}}
    # a message without ws.client goes to everyone
    web_api.engine.inject("w1", "out", {"payload": {"all": 1}})
    assert await recv_json(a) == {"all": 1}
    assert await recv_json(b) == {"all": 1}
    # a was not sent b's reply: the next thing a gets is its own second echo
    await a.send_str("2")
    assert await recv_json(a) == {"echo": 2}
    st = stats(web_api.engine, "w1", "out")
    assert st["sent"] == 5 and st["clients"] == 2
    await a.close()
    await b.close()


async def test_a_reply_to_a_client_gone_is_dropped_and_counted(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w2"))
    a = await web_api.client.ws_connect("/ws/w2/chat")
    await a.close()
    ep = ws_nodes.endpoint("w2", "chat")
    assert ep is not None
    await wait_until(lambda: not ep.clients, what="the client to leave")
    web_api.engine.inject("w2", "out", {"payload": 1, "ws": {"client": "gone-1"}})
    st = stats(web_api.engine, "w2", "out")
    assert st["dropped"] == 1 and st["no_client"] == 1


async def test_bad_data_goes_to_the_error_port_counted(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w3"))
    a = await web_api.client.ws_connect("/ws/w3/chat")
    await a.send_str("{not json")
    await a.send_str('"ok"')
    assert await recv_json(a) == {"echo": "ok"}
    st = stats(web_api.engine, "w3", "in")
    assert st["decode_errors"] == 1 and st["errors"] == 1
    await a.close()


async def test_the_endpoint_token_by_header_or_first_message(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w4", {"token": HOOK}))
    c = web_api.client
    for headers in ({"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Bearer {ADMIN}"},  # the API's token is not the hook's
                    {"X-Mechaway-Token": "nope"}):  # fmt: skip
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await c.ws_connect("/ws/w4/chat", headers=headers)
        assert err.value.status == 401
    ok = await c.ws_connect("/ws/w4/chat", headers={"Authorization": f"Bearer {HOOK}"})
    await ok.send_str("1")
    assert await recv_json(ok) == {"echo": 1}
    # a browser cannot set headers: the first message authenticates
    br = await c.ws_connect("/ws/w4/chat")
    await br.send_str(orjson.dumps({"type": "auth", "token": HOOK}).decode())
    await br.send_str("2")
    assert await recv_json(br) == {"echo": 2}
    bad = await c.ws_connect("/ws/w4/chat")
    await bad.send_str(orjson.dumps({"type": "auth", "token": ADMIN}).decode())
    msg = await bad.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == 4401
    data_first = await c.ws_connect("/ws/w4/chat")
    await data_first.send_str('{"payload": "sneaky"}')
    msg = await data_first.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == 4401
    assert stats(web_api.engine, "w4", "in")["refused"] == 5
    # cross-origin pages cannot open it
    resp = await c.get("/ws/w4/chat", headers={
        "Origin": "http://attacker.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Authorization": f"Bearer {HOOK}",
    })  # fmt: skip
    assert resp.status == 403
    await ok.close()
    await br.close()


async def test_a_message_over_the_cap_closes_with_1009(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w5", {"max_message_bytes": 100}))
    a = await web_api.client.ws_connect("/ws/w5/chat")
    await a.send_str('"' + "x" * 200 + '"')
    msg = await a.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1009
    assert stats(web_api.engine, "w5", "shape")["in"] == 0


async def test_a_slow_client_loses_its_oldest_messages_counted(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w6", queue_size=5))
    a = await web_api.client.ws_connect("/ws/w6/chat")
    ep = ws_nodes.endpoint("w6", "chat")
    assert ep is not None
    await wait_until(lambda: len(ep.clients) == 1, what="the client to join")
    # fifty messages in one go: the writer cannot run in between, so its queue overflows
    for i in range(50):
        web_api.engine.inject("w6", "out", {"payload": i})
    st = stats(web_api.engine, "w6", "out")
    assert st["dropped"] == 45 and st["queued"] == 5
    got = [await recv_json(a) for _ in range(5)]
    assert got == [45, 46, 47, 48, 49]  # the newest kept, the oldest dropped
    await a.close()


async def test_a_slow_client_is_closed_with_4408_when_asked(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w7", queue_size=3, slow_client="close"))
    ep = ws_nodes.endpoint("w7", "chat")
    assert ep is not None
    a = await web_api.client.ws_connect("/ws/w7/chat")
    await wait_until(lambda: len(ep.clients) == 1, what="a to join")
    [slow] = ep.clients
    b = await web_api.client.ws_connect("/ws/w7/chat")
    await wait_until(lambda: len(ep.clients) == 2, what="b to join")
    for i in range(10):  # to a only, in one go: its queue of 3 overflows
        web_api.engine.inject("w7", "out", {"payload": i, "ws": {"client": slow}})
    msg = await a.receive(timeout=5)
    while msg.type == WSMsgType.TEXT:  # what was sent before the kick may arrive first
        msg = await a.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == ws_nodes.CLOSE_TOO_SLOW
    await wait_until(lambda: len(ep.clients) == 1, what="the slow client to be gone")
    assert ep.slow_closed == 1
    assert stats(web_api.engine, "w7", "out")["slow_closed"] == 1
    # the other client is not punished
    await b.send_str("3")
    assert await recv_json(b) == {"echo": 3}
    await b.close()


async def test_the_client_cap_refuses_with_503(web_api: WebApi) -> None:
    await web_api.deploy(echo_flow("w8", max_clients=2))
    c = web_api.client
    a = await c.ws_connect("/ws/w8/chat")
    b = await c.ws_connect("/ws/w8/chat")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await c.ws_connect("/ws/w8/chat")
    assert err.value.status == 503
    assert (await c.get("/ws/w8/nothing")).status == 404
    await a.close()
    await b.close()


async def test_clients_stay_connected_across_a_hot_swap_and_leave_with_the_flow(
    web_api: WebApi,
) -> None:
    await web_api.deploy(echo_flow("w9"))
    a = await web_api.client.ws_connect("/ws/w9/chat")
    await a.send_str("1")
    assert await recv_json(a) == {"echo": 1}
    swapped = echo_flow("w9")
    swapped["nodes"][1]["params"]["map"] = "{again=$}"
    swapped["nodes"][2]["params"]["queue_size"] = 50  # the out node changes too
    await web_api.deploy(swapped)
    await a.send_str("2")
    assert await recv_json(a) == {"again": 2}
    await web_api.manager.delete("w9")
    msg = await a.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1001
    assert ws_nodes.endpoint("w9", "chat") is None


async def test_path_xor_connection() -> None:
    from mechaway.errors import FlowError
    from mechaway.flow.validate import validate

    for params in ({}, {"path": "a", "connection": "b"}):
        with pytest.raises(FlowError, match="exactly one of path"):
            validate(doc("w10", [node("in", "WebSocketInNode", **params),
                                 node("s", "CollectNode")], [edge("in", "s")]))  # fmt: skip
