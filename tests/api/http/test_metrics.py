"""GET /metrics: Prometheus text that a Prometheus parser reads, values equal to what
/api/v1/status says, the admin and read-only tokens (nothing else), the lag timer that
runs only while someone scrapes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mechaway.api import metrics
from mechaway.testing.flows import doc, edge, node, wait_until

from .conftest import ADMIN, READ, WebApi

pytestmark = pytest.mark.asyncio


Page = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(api: WebApi, token: str = READ) -> Page:
    """``{sample name: {sorted labels: value}}`` as prometheus_client's parser reads it."""
    resp = await api.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def flow(fid: str) -> dict[str, Any]:
    return doc(fid, [
        node("hook", "WebhookNode", path="in"),
        node("fail", "FailNode", on="boom"),
        # a write that outlasts the test: nothing moves between the two reads below
        node("sink", "CollectNode", queue_size=3, overflow="drop_new", delay=30),
    ], [edge("hook", "fail"), edge("fail", "sink")])  # fmt: skip


async def test_metrics_parse_and_match_the_status(web_api: WebApi) -> None:
    await web_api.deploy(flow("m1"))
    c = web_api.client
    for payload in ("a", "boom", "b", "c", "d", "e", "f"):
        assert (await c.post("/webhook/m1/in", json=payload)).status == 202
    assert (await c.post("/webhook/m1/nope", json=1)).status == 404
    page = await scrape(web_api)
    resp = await c.get("/api/v1/status", headers={"Authorization": f"Bearer {READ}"})
    nodes = (await resp.json())["flows"]["m1"]["nodes"]
    for nid in ("hook", "fail", "sink"):
        key = (("flow", "m1"), ("node", nid), ("type", nodes[nid]["type"]))
        assert page["mechaway_node_messages_in_total"][key] == nodes[nid]["in"]
        assert page["mechaway_node_messages_out_total"][key] == nodes[nid]["out"]
        assert page["mechaway_node_errors_total"][key] == nodes[nid]["errors"]
        assert page["mechaway_node_dropped_total"][key] == nodes[nid]["dropped"]
    # what the run did, so the comparison above compared something
    assert nodes["fail"]["errors"] == 1 and nodes["sink"]["dropped"] >= 1
    sink = (("flow", "m1"), ("node", "sink"))
    assert page["mechaway_node_queue_capacity"][sink] == 3
    assert page["mechaway_node_queue_depth"][sink] == nodes["sink"]["queue"]
    figure = (("figure", "accepted"), ("flow", "m1"), ("node", "hook"))
    assert page["mechaway_node_figure"][figure] == 7
    assert page["mechaway_webhook_unknown_total"][()] == 1
    assert page["mechaway_flows"][()] == 1
    assert page["mechaway_info"][(("device", "test-device"), ("version", metrics.__version__))] == 1
    assert page["process_resident_memory_bytes"][()] > 1e6
    assert page["mechaway_store_commits_total"][()] >= 1
    assert page["mechaway_outbox_messages"][()] == 0


async def test_tokens_admin_and_read_only_yes_others_no(web_api: WebApi) -> None:
    c = web_api.client
    assert (await c.get("/metrics")).status == 401
    assert (await c.get("/metrics", headers={"Authorization": "Bearer wrong-0123456789"})
            ).status == 401  # fmt: skip
    body = await (await c.get("/metrics")).json()
    assert "token" in body["error"]
    for token in (ADMIN, READ):
        assert (await c.get("/metrics", headers={"Authorization": f"Bearer {token}"})).status == 200
    assert (await c.post("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})).status == 405


async def test_connections_and_the_websocket_figures(web_api: WebApi) -> None:
    await web_api.deploy(doc("m2", [
        node("in", "WebSocketInNode", path="live"),
        node("out", "WebSocketOutNode", path="live"),
        node("src", "InjectNode", once=True, once_delay=3600),
        node("req", "HTTPRequestNode", url="http://127.0.0.1:9/x"),
    ], [edge("in", "out"), edge("src", "req")]))  # fmt: skip
    ws = await web_api.client.ws_connect("/ws/m2/live")
    await ws.send_str('"hi"')
    assert (await ws.receive(timeout=5)).data == '"hi"'
    page = await scrape(web_api)
    assert page["mechaway_websocket_clients"][(("flow", "m2"), ("path", "live"))] == 1
    http = (("kind", "http"), ("name", "default"))
    assert page["mechaway_connection_up"][http] == 1
    assert page["mechaway_connection_state"][(*http, ("state", "connected"))] == 1
    assert page["mechaway_connection_events_total"][(("event", "requests"), *http)] == 0
    await ws.close()


async def test_the_lag_timer_runs_only_after_a_scrape_and_stops_when_idle(
    web_api: WebApi,
) -> None:
    lag = web_api.app[metrics.LAG]
    lag.period_s, lag.idle_s = 0.02, 0.2
    assert not lag.running and lag.samples == 0
    page = await scrape(web_api)
    assert "mechaway_event_loop_lag_seconds" not in page  # no sample yet
    assert lag.running
    await wait_until(lambda: lag.samples >= 2, what="two lag samples")
    page = await scrape(web_api)
    assert page["mechaway_event_loop_lag_seconds"][()] >= 0
    assert page["mechaway_event_loop_lag_max_seconds"][()] >= 0
    await wait_until(lambda: not lag.running, what="the timer to stop without scrapes")
    samples = lag.samples
    await asyncio.sleep(0.1)
    assert lag.samples == samples  # stopped: nothing more is measured
