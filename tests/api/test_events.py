"""The events WebSocket: auth, counters batched per tick (counted, not timed), deploy and
status events, the debug tap with pause/filter/cap, a slow client kept bounded and dropped,
and nothing running for a closed editor."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.client_ws import ClientWebSocketResponse

from mechaway.api import events
from mechaway.nodes import debug as debug_nodes
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node, wait_until

from .conftest import AUTH, TOKEN, V1, Api

pytestmark = pytest.mark.asyncio

WS = f"{V1}/events"


async def recv(ws: ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def connect(api: Api) -> ClientWebSocketResponse:
    """Authenticate and read the greeting: hello, the counters snapshot, the status."""
    ws = await api.client.ws_connect(WS)
    await ws.send_str(orjson.dumps({"type": "auth", "token": TOKEN}).decode())
    kinds = [(await recv(ws))["type"] for _ in range(3)]
    assert sorted(kinds) == ["counters", "hello", "status"]
    return ws


async def until(ws: ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        m = await recv(ws, timeout)
        if m["type"] == kind:
            return m


async def deploy(api: Api, body: dict[str, Any]) -> None:
    await api.manager.deploy(body, "api")


def manual(api: Api) -> None:
    """No timer ticks during the test: it calls ``hub.tick()`` itself."""
    api.hub.tick_s = 3600.0


# -- auth -------------------------------------------------------------------------------------
async def test_no_auth_message_closes_with_4401(api: Api) -> None:
    api.hub.auth_timeout_s = 0.2
    ws = await api.client.ws_connect(WS)
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == events.CLOSE_AUTH
    assert api.hub.auth_failures == 1 and not api.hub.clients


@pytest.mark.parametrize(
    "first", [{"type": "auth", "token": "wrong"}, {"type": "auth"}, {"token": TOKEN}, "junk"]
)
async def test_bad_auth_closes_with_4401(api: Api, first: Any) -> None:
    ws = await api.client.ws_connect(WS)
    await ws.send_str(first if isinstance(first, str) else orjson.dumps(first).decode())
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == events.CLOSE_AUTH
    assert not api.hub.clients


async def test_no_bearer_header_needed_but_other_routes_still_need_it(api: Api) -> None:
    ws = await connect(api)  # no Authorization header: the first message carried the token
    await ws.close()
    resp = await api.client.get(f"{V1}/status")
    assert resp.status == 401


# -- a closed editor costs nothing ---------------------------------------------------------
async def test_timer_and_debug_tap_exist_only_while_a_client_is_connected(api: Api) -> None:
    assert debug_nodes.TAPS == [] and not api.hub.sampling
    ws = await connect(api)
    assert len(debug_nodes.TAPS) == 1 and api.hub.sampling
    ws2 = await connect(api)
    assert len(debug_nodes.TAPS) == 1  # one tap whatever the number of editors
    await ws.close()
    await ws2.close()
    await wait_until(lambda: not api.hub.clients, what="clients gone")
    assert debug_nodes.TAPS == [] and not api.hub.clients


async def test_no_client_no_work_on_deploy_or_debug(api: Api) -> None:
    await deploy(api, doc("f", [IDLE_SOURCE, node("log", "LogNode")], [edge("src", "log")]))
    api.engine.inject("f", "log", {"payload": 1})
    assert api.hub.ticks_run == 0 and not api.hub.clients


# -- counters ---------------------------------------------------------------------------------
async def test_counters_one_message_per_tick_whatever_the_rate(api: Api) -> None:
    manual(api)
    await deploy(api, doc("c", [IDLE_SOURCE, node("a", "PassNode"), node("b", "PassNode")],
                          [edge("src", "a"), edge("src", "b")]))  # fmt: skip
    ws = await connect(api)
    ticks, per_tick = 5, 2000
    for _ in range(ticks):
        for i in range(per_tick):
            api.engine.inject("c", "a", {"payload": i})
        api.hub.tick()
    # wait until the last sample reached the client, counting counters messages on the way
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["flows"]["c"]["a"]["in"] < ticks * per_tick:
        seen.append(await until(ws, "counters"))
    assert 1 <= len(seen) <= ticks  # 10,000 messages, at most one update per tick
    client = next(iter(api.hub.clients))
    assert client.counters_sent == 1 + len(seen)  # + the snapshot at connect
    assert seen[-1]["flows"]["c"]["a"] == {"in": 10_000, "out": 10_000, "errors": 0,
                                           "dropped": 0}  # fmt: skip
    assert all("b" not in m["flows"]["c"] for m in seen)  # only nodes that moved
    api.hub.tick()  # nothing moved: no message
    api.engine.inject("c", "b", {"payload": 0})
    api.hub.tick()
    m = await until(ws, "counters")
    assert m["flows"] == {"c": {"b": {"in": 1, "out": 1, "errors": 0, "dropped": 0}}}


async def test_counters_run_on_the_timer(api: Api) -> None:
    await deploy(api, doc("t", [IDLE_SOURCE, node("a", "PassNode")], [edge("src", "a")]))
    ws = await connect(api)
    api.engine.inject("t", "a", {"payload": 1})
    m = await until(ws, "counters")
    assert m["flows"]["t"]["a"]["in"] == 1 and api.hub.ticks_run >= 1


# -- deploy and status events ----------------------------------------------------------------
async def test_deploys_rollbacks_and_deletes_are_announced(api: Api) -> None:
    ws = await connect(api)
    body = doc("gh", [IDLE_SOURCE, node("log", "LogNode")], [edge("src", "log")])
    resp = await api.client.put(f"{V1}/flows/gh", json=body, headers=AUTH)
    assert resp.status == 201
    m = await until(ws, "deploy")
    assert (m["flow"], m["rev"], m["source"]) == ("gh", 1, "api")
    body["nodes"][1]["params"] = {"keep": 3}
    await api.client.put(f"{V1}/flows/gh", json=body, headers=AUTH)
    assert (await until(ws, "deploy"))["rev"] == 2
    await api.client.post(f"{V1}/flows/gh/rollback", json={"rev": 1}, headers=AUTH)
    m = await until(ws, "deploy")
    assert (m["rev"], m["source"]) == (3, "rollback")
    await api.client.delete(f"{V1}/flows/gh", headers=AUTH)
    m = await until(ws, "deploy")
    assert m == {"type": "deploy", "flow": "gh", "rev": 3, "source": "rollback", "deleted": True}


async def test_status_is_sent_when_it_changes(api: Api) -> None:
    manual(api)
    problems: list[str] = []
    api.hub.status_fn = lambda: {"problems": list(problems), "connections": {}}
    ws = await connect(api)
    for _ in range(api.hub.status_every):
        api.hub.tick()
    problems.append("mqtt.default: disconnected")
    for _ in range(api.hub.status_every):
        api.hub.tick()
    m = await until(ws, "status")
    assert m == {"type": "status", "problems": ["mqtt.default: disconnected"], "connections": {}}


# -- debug ------------------------------------------------------------------------------------
def log_flow() -> dict[str, Any]:
    return doc("dbg", [IDLE_SOURCE, node("l1", "LogNode"), node("l2", "LogNode")],
               [edge("src", "l1"), edge("src", "l2")])  # fmt: skip


async def test_debug_values_pause_and_filter(api: Api) -> None:
    manual(api)
    await deploy(api, log_flow())
    ws = await connect(api)
    api.engine.inject("dbg", "l1", {"payload": {"t": 21.5}})
    m = await until(ws, "debug")
    assert (m["flow"], m["node"], m["value"]) == ("dbg", "l1", {"t": 21.5})
    await ws.send_str('{"type": "debug", "paused": true}')
    await ws.send_str('{"type": "debug_filter", "nodes": ["dbg/l2"]}')
    client = next(iter(api.hub.clients))
    await wait_until(lambda: client.paused and client.filter is not None, what="settings")
    api.engine.inject("dbg", "l2", {"payload": "paused"})
    await ws.send_str('{"type": "debug", "paused": false}')
    await wait_until(lambda: not client.paused, what="resumed")
    api.engine.inject("dbg", "l1", {"payload": "filtered out"})
    api.engine.inject("dbg", "l2", {"payload": "wanted"})
    m = await until(ws, "debug")
    assert (m["node"], m["value"]) == ("l2", "wanted")


async def test_debug_cap_per_client_drops_and_reports(api: Api) -> None:
    manual(api)
    api.hub.debug_per_s = 5
    await deploy(api, log_flow())
    ws = await connect(api)
    for i in range(20):
        api.engine.inject("dbg", "l1", {"payload": i})
    for _ in range(api.hub.status_every):  # one second of ticks: refills and the report
        api.hub.tick()
    got: list[Any] = []
    while True:
        m = await recv(ws)
        if m["type"] == "debug":
            got.append(m["value"])
        if m["type"] == "thinned":
            break
    assert got == [0, 1, 2, 3, 4]
    assert m == {"type": "thinned", "debug": 15, "events": 0}


async def test_a_huge_debug_value_is_truncated(api: Api) -> None:
    await deploy(api, log_flow())
    ws = await connect(api)
    api.engine.inject("dbg", "l1", {"payload": "x" * 100_000})
    m = await until(ws, "debug")
    assert m["value"]["truncated"] is True and m["value"]["bytes"] == 100_002
    assert len(m["value"]["preview"]) <= events.DEBUG_VALUE_MAX


async def test_bad_client_messages_are_answered_not_fatal(api: Api) -> None:
    ws = await connect(api)
    for bad in ["nope", '{"type": "shout"}', '{"type": "debug_filter", "nodes": [1]}', "[]"]:
        await ws.send_str(bad)
        assert (await until(ws, "error"))["message"]
    await ws.send_bytes(b"\x00")
    assert (await until(ws, "error"))["message"] == "send JSON text messages"
    assert len(api.hub.clients) == 1


# -- a slow client ----------------------------------------------------------------------------
async def test_a_client_that_stops_reading_is_bounded_then_dropped(api: Api) -> None:
    manual(api)
    api.hub.queue_max = 64
    api.hub.debug_per_s = 10**9
    api.hub.send_timeout_s = 1.0
    await deploy(api, log_flow())
    await connect(api)  # ... and never reads again
    client = next(iter(api.hub.clients))
    big = "y" * 4000
    peak = 0
    for i in range(6000):  # ~24 MB of debug output: more than the sockets hold
        api.engine.inject("dbg", "l1", {"payload": big, "i": i})
        peak = max(peak, len(client.queue))
        if i % 500 == 0:
            await asyncio.sleep(0)  # let the writer run (and block on the full socket)
    assert peak <= api.hub.queue_max
    assert client.debug_dropped > 0
    for i in range(api.hub.queue_max):  # deploy events must not be lost: this drops it
        api.hub.on_change({"flow": "x", "rev": i, "source": "api"})
    assert client.kick
    await wait_until(lambda: not api.hub.clients, timeout=10, what="slow client dropped")
    assert api.hub.clients_dropped == 1
    assert debug_nodes.TAPS == []
