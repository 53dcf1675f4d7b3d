"""The admin API over a real FlowManager and a temp SQLite file: auth, 201/200/400/404."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from mechaway.api.server import make_app
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node

pytestmark = pytest.mark.asyncio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
V1 = "/api/v1"

MakeClient = Callable[..., Any]


def flow(fid: str = "gh", keep: int = 20) -> dict[str, Any]:
    return doc(fid, [IDLE_SOURCE, node("log", "LogNode", keep=keep)], [edge("src", "log")])


@pytest_asyncio.fixture
async def manager(tmp_path: Path) -> AsyncIterator[FlowManager]:
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=2.0)
    try:
        yield FlowManager(engine, FlowStore(db))
    finally:
        await engine.stop()
        await db.close()


@pytest_asyncio.fixture
async def make_client(manager: FlowManager) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(token: str | None = TOKEN, max_body: int = 1 << 20) -> TestClient[Any, Any]:
        def status() -> dict[str, Any]:
            return {"flows": manager.engine.status()}

        app = make_app(manager, status, token=token, max_body=max_body)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            await c.close()


async def body(resp: Any) -> Any:
    assert resp.content_type == "application/json"
    return orjson.loads(await resp.read())


# -- auth -------------------------------------------------------------------------------------
async def test_health_is_open_with_a_token_set(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get(f"{V1}/health")
    assert resp.status == 200
    b = await body(resp)
    assert b["status"] == "ok"
    assert isinstance(b["version"], str)


@pytest.mark.parametrize(
    "call",
    [
        ("GET", "/flows", None),
        ("GET", "/flows/gh", None),
        ("PUT", "/flows/gh", flow()),
        ("DELETE", "/flows/gh", None),
        ("GET", "/flows/gh/revisions", None),
        ("POST", "/flows/gh/rollback", {"rev": 1}),
        ("GET", "/status", None),
        ("GET", "/schema", None),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},  # no scheme
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"bearer {TOKEN[:-1]}"},
    ],
)
async def test_every_call_but_health_needs_the_token(
    make_client: MakeClient,
    manager: FlowManager,
    call: tuple[str, str, Any],
    headers: dict[str, str],
) -> None:
    method, path, payload = call
    client = await make_client()
    resp = await client.request(method, f"{V1}{path}", json=payload, headers=headers)
    assert resp.status == 401
    assert (await body(resp))["error"] == "missing or wrong bearer token"
    assert manager.store.history("gh") == []  # nothing happened
    assert manager.engine.flows == {}


async def test_the_right_token_is_accepted(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    assert resp.status == 201
    resp = await client.get(f"{V1}/flows", headers=AUTH)
    assert resp.status == 200


async def test_no_token_configured_means_open(make_client: MakeClient) -> None:
    client = await make_client(token=None)
    resp = await client.put(f"{V1}/flows/gh", json=flow())
    assert resp.status == 201
    assert (await client.get(f"{V1}/flows")).status == 200


# -- PUT --------------------------------------------------------------------------------------
async def test_put_valid_then_identical_then_changed(
    make_client: MakeClient, manager: FlowManager
) -> None:
    client = await make_client()
    resp = await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    assert resp.status == 201
    b = await body(resp)
    assert b == {
        "id": "gh",
        "rev": 1,
        "new_revision": True,
        "added": ["src", "log"],
        "changed": [],
        "removed": [],
        "kept": [],
    }
    assert "gh" in manager.engine.flows

    resp = await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    assert resp.status == 200
    b = await body(resp)
    assert (b["rev"], b["new_revision"]) == (1, False)

    resp = await client.put(f"{V1}/flows/gh", json=flow(keep=3), headers=AUTH)
    assert resp.status == 201
    b = await body(resp)
    assert (b["rev"], b["changed"], b["kept"]) == (2, ["log"], ["src"])
    assert manager.engine.flows["gh"].rev == 2


async def test_put_takes_the_id_from_the_url_when_missing(make_client: MakeClient) -> None:
    client = await make_client()
    raw = flow()
    del raw["id"]
    resp = await client.put(f"{V1}/flows/gh", json=raw, headers=AUTH)
    assert resp.status == 201
    assert (await body(resp))["id"] == "gh"


async def test_put_yaml_body(make_client: MakeClient) -> None:
    client = await make_client()
    text = (
        "id: gh\nnodes:\n  - {id: src, type: InjectNode, params: {once: true, once_delay: 3600}}\n"
        "  - {id: log, type: LogNode}\nedges:\n  - {from: src, to: log}\n"
    )
    resp = await client.put(
        f"{V1}/flows/gh", data=text, headers={**AUTH, "Content-Type": "application/yaml"}
    )
    assert resp.status == 201


async def test_put_yaml_alias_bomb_is_400(make_client: MakeClient) -> None:
    from mechaway.testing.flows import laughs

    client = await make_client()
    resp = await client.put(
        f"{V1}/flows/f", data=laughs(8), headers={**AUTH, "Content-Type": "application/yaml"}
    )
    assert resp.status == 400
    (issue,) = (await body(resp))["issues"]
    assert issue["message"].startswith("the document expands to more than 100,000 values")
    assert (await client.get(f"{V1}/flows/f", headers=AUTH)).status == 404


async def test_put_invalid_is_400_with_located_issues(
    make_client: MakeClient, manager: FlowManager
) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    raw = flow()
    raw["nodes"][1]["type"] = "LogNod"
    raw["edges"].append(edge("src", "ghost"))
    resp = await client.put(f"{V1}/flows/gh", json=raw, headers=AUTH)
    assert resp.status == 400
    b = await body(resp)
    assert b["error"] == "invalid flow"
    assert [i["where"] for i in b["issues"]] == [
        "nodes[1] (log).type",
        "edges[1] (src -> ghost).to",
    ]
    assert b["issues"][0]["message"].startswith("unknown node type 'LogNod'")
    # the running revision is untouched and nothing was recorded
    assert manager.engine.flows["gh"].rev == 1
    assert [r.rev for r in manager.store.history("gh")] == [1]


@pytest.mark.parametrize(
    ("data", "where", "needle"),
    [
        (b'{"id": "gh",\n "nodes": [}', "line 2 column", "invalid JSON"),
        (b"[]", "", "must be an object"),
        (b'{"id": "other", "nodes": []}', "id", "does not match the URL's 'gh'"),
        (b"", "line 1 column", "invalid JSON"),
    ],
)
async def test_put_bad_bodies_are_400(
    make_client: MakeClient, data: bytes, where: str, needle: str
) -> None:
    client = await make_client()
    resp = await client.put(
        f"{V1}/flows/gh", data=data, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    (issue,) = (await body(resp))["issues"]
    assert issue["where"].startswith(where)
    assert needle in issue["message"]


async def test_put_too_large_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body=1000)
    raw = flow()
    raw["name"] = "x" * 5000
    resp = await client.put(f"{V1}/flows/gh", json=raw, headers=AUTH)
    assert resp.status == 413
    assert "error" in await body(resp)


# -- GET / DELETE / revisions / rollback ------------------------------------------------------
async def test_get_list_and_one(make_client: MakeClient) -> None:
    client = await make_client()
    assert await body(await client.get(f"{V1}/flows", headers=AUTH)) == []
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    listed = await body(await client.get(f"{V1}/flows", headers=AUTH))
    assert listed == [
        {
            "id": "gh",
            "name": "test gh",
            "rev": 1,
            "source": "api",
            "running": True,
            "disabled": False,
        }
    ]
    resp = await client.get(f"{V1}/flows/gh", headers=AUTH)
    assert resp.status == 200
    b = await body(resp)
    assert (b["rev"], b["source"]) == (1, "api")
    assert b["flow"]["nodes"][1] == {
        "id": "log",
        "type": "LogNode",
        "params": {"keep": 20},
        "name": "",
    }


async def test_delete_then_404s(make_client: MakeClient, manager: FlowManager) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    resp = await client.delete(f"{V1}/flows/gh", headers=AUTH)
    assert resp.status == 200
    assert await body(resp) == {"id": "gh", "deleted": True}
    assert "gh" not in manager.engine.flows
    assert (await client.get(f"{V1}/flows/gh", headers=AUTH)).status == 404
    assert (await client.delete(f"{V1}/flows/gh", headers=AUTH)).status == 404
    assert await body(await client.get(f"{V1}/flows", headers=AUTH)) == []
    # the history stays, and a rollback brings the flow back
    revs = await body(await client.get(f"{V1}/flows/gh/revisions", headers=AUTH))
    assert [(r["rev"], r["active"]) for r in revs] == [(1, False)]
    resp = await client.post(f"{V1}/flows/gh/rollback", json={"rev": 1}, headers=AUTH)
    assert resp.status == 200
    assert (await body(resp))["rev"] == 2
    assert "gh" in manager.engine.flows


async def test_revisions_and_rollback(make_client: MakeClient, manager: FlowManager) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(keep=1), headers=AUTH)
    await client.put(f"{V1}/flows/gh", json=flow(keep=2), headers=AUTH)
    revs = await body(await client.get(f"{V1}/flows/gh/revisions", headers=AUTH))
    assert [(r["rev"], r["source"], r["active"]) for r in revs] == [
        (1, "api", False),
        (2, "api", True),
    ]
    assert all(isinstance(r["created_at"], float) for r in revs)
    resp = await client.post(f"{V1}/flows/gh/rollback", json={"rev": 1}, headers=AUTH)
    assert resp.status == 200
    b = await body(resp)
    assert (b["rev"], b["new_revision"], b["changed"]) == (3, True, ["log"])
    assert manager.engine.flows["gh"].instances["log"].params.keep == 1
    current = await body(await client.get(f"{V1}/flows/gh", headers=AUTH))
    assert (current["rev"], current["source"]) == (3, "rollback")
    assert current["flow"]["nodes"][1]["params"] == {"keep": 1}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"rev": "1"}, "expected an integer revision number"),
        ({"rev": True}, "expected an integer revision number"),
        ({}, "expected an integer revision number"),
        ([1], "expected an integer revision number"),
    ],
)
async def test_rollback_bad_requests_are_400(
    make_client: MakeClient, payload: Any, needle: str
) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    resp = await client.post(f"{V1}/flows/gh/rollback", json=payload, headers=AUTH)
    assert resp.status == 400
    (issue,) = (await body(resp))["issues"]
    assert issue["where"] == "rev"
    assert needle in issue["message"]


async def test_rollback_to_a_missing_revision_is_404(make_client: MakeClient) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    resp = await client.post(f"{V1}/flows/gh/rollback", json={"rev": 9}, headers=AUTH)
    assert resp.status == 404
    assert "has no revision 9" in (await body(resp))["error"]


async def test_unknown_flow_404s(make_client: MakeClient) -> None:
    client = await make_client()
    for method, path in [
        ("GET", "/flows/nope"),
        ("DELETE", "/flows/nope"),
        ("GET", "/flows/nope/revisions"),
    ]:
        resp = await client.request(method, f"{V1}{path}", headers=AUTH)
        assert resp.status == 404, (method, path)
        assert (await body(resp))["error"] == "no flow 'nope'"


async def test_unknown_route_and_method_are_json_errors(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get(f"{V1}/nothing/here", headers=AUTH)
    assert resp.status == 404
    assert "error" in await body(resp)
    resp = await client.post(f"{V1}/flows/gh", headers=AUTH)
    assert resp.status == 405
    assert "error" in await body(resp)


# -- status and schema ------------------------------------------------------------------------
async def test_status_has_per_node_counters(make_client: MakeClient, manager: FlowManager) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    manager.engine.inject("gh", "log", {"payload": 42, "topic": "", "ts": 0.0})
    st = await body(await client.get(f"{V1}/status", headers=AUTH))
    log = st["flows"]["gh"]["nodes"]["log"]
    assert (log["type"], log["in"], log["out"], log["errors"]) == ("LogNode", 1, 1, 0)
    assert log["recent"] == [42]
    assert st["flows"]["gh"]["rev"] == 1


async def test_schema_all_one_and_unknown(make_client: MakeClient) -> None:
    client = await make_client()
    everything = await body(await client.get(f"{V1}/schema", headers=AUTH))
    assert {"InjectNode", "LogNode", "RouteNode"} <= set(everything)
    one = await body(await client.get(f"{V1}/schema/InjectNode", headers=AUTH))
    assert one == everything["InjectNode"]
    assert one["title"] == "InjectNode"
    resp = await client.get(f"{V1}/schema/NopeNode", headers=AUTH)
    assert resp.status == 404
    assert (await body(resp))["error"] == "unknown node type 'NopeNode'"
