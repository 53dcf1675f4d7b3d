"""The editor's HTTP side: /validate, ETag and If-Match, x-mechaway, ui and disabled keys."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node

from .conftest import AUTH, V1, Api

pytestmark = pytest.mark.asyncio


def flow(fid: str = "gh", **log_params: Any) -> dict[str, Any]:
    return doc(fid, [IDLE_SOURCE, node("log", "LogNode", **log_params)], [edge("src", "log")])


async def _json(resp: Any) -> Any:
    return orjson.loads(await resp.read())


async def put(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return await api.client.put(
        f"{V1}/flows/{body['id']}", json=body, headers={**AUTH, **(headers or {})}
    )


# -- /validate --------------------------------------------------------------------------------
async def test_validate_ok_with_warnings_and_nothing_deployed(api: Api) -> None:
    body = doc("v", [IDLE_SOURCE, node("a", "LogNode"), node("lonely", "PassNode")],
               [edge("src", "a")])  # fmt: skip
    resp = await api.client.post(f"{V1}/validate", json=body, headers=AUTH)
    assert resp.status == 200
    out = await _json(resp)
    assert out["ok"] is True
    assert [w["node"] for w in out["warnings"]] == ["lonely"]
    assert "v" not in api.engine.flows and api.manager.store.active_rev("v") is None


async def test_validate_returns_the_validators_own_warnings(api: Api) -> None:
    """A template publish its own flow may receive: deployable, and said."""
    body = doc("w", [node("in", "MQTTInNode", topic="sensors/#"),
                     node("out", "MQTTOutNode", topic="sensors/{payload.room}")],
               [edge("in", "out")])  # fmt: skip
    resp = await api.client.post(f"{V1}/validate", json=body, headers=AUTH)
    assert resp.status == 200
    (warning,) = (await _json(resp))["warnings"]
    assert warning["node"] == "out" and "may feed itself" in warning["message"]


async def test_validate_locates_node_param_and_lua_line(api: Api) -> None:
    script = "local x = 1\nlocal y = 2\nreturn msg +\n"
    body = doc(
        "v",
        [IDLE_SOURCE,
         node("hot", "RouteNode", rules=[{"port": "p", "op": "gt", "value": "high"}]),
         node("lua", "FunLogicNode", script=script)],
        [edge("src", "hot"), edge("src", "lua", "nope")],
    )  # fmt: skip
    resp = await api.client.post(f"{V1}/validate", json=body, headers=AUTH)
    assert resp.status == 422
    out = await _json(resp)
    assert out["ok"] is False
    by_node = {e.get("node"): e for e in out["errors"]}
    assert by_node["hot"]["param"] == "rules"
    assert by_node["hot"]["where"].startswith("nodes[1] (hot).params.rules")
    assert by_node["lua"]["param"] == "script"
    assert by_node["lua"]["line"] == 4  # the line after "return msg +": Lua names the end
    edge_err = next(e for e in out["errors"] if "edge" in e)
    assert edge_err["edge"] == 1 and edge_err["node"] == "src"


async def test_validate_not_json_is_422_not_a_crash(api: Api) -> None:
    resp = await api.client.post(
        f"{V1}/validate", data=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 422
    out = await _json(resp)
    assert out["ok"] is False and "invalid JSON" in out["errors"][0]["message"]
    resp = await api.client.post(f"{V1}/validate", json=[1, 2], headers=AUTH)
    assert resp.status == 422


# -- ETag, If-Match ---------------------------------------------------------------------------
async def test_get_flow_has_etag_rev_and_source(api: Api) -> None:
    resp = await put(api, flow())
    assert resp.status == 201 and resp.headers["ETag"] == '"1"'
    resp = await api.client.get(f"{V1}/flows/gh", headers=AUTH)
    out = await _json(resp)
    assert resp.headers["ETag"] == '"1"'
    assert (out["rev"], out["source"]) == (1, "api") and "file" not in out


async def test_if_match_current_rev_deploys_and_stale_rev_is_409(api: Api) -> None:
    await put(api, flow())
    resp = await put(api, flow(keep=5), {"If-Match": '"1"'})
    assert resp.status == 201 and resp.headers["ETag"] == '"2"'
    resp = await put(api, flow(keep=7), {"If-Match": '"1"'})  # another tab deployed rev 2
    assert resp.status == 409
    out = await _json(resp)
    assert out["current_rev"] == 2 and "no longer" in out["error"]
    assert api.manager.store.active_rev("gh") == 2  # nothing deployed
    resp = await put(api, flow(keep=7))  # no If-Match: today's behaviour, last one wins
    assert resp.status == 201


async def test_if_match_on_a_missing_flow_and_bad_header(api: Api) -> None:
    resp = await put(api, flow("new"), {"If-Match": '"3"'})
    assert resp.status == 409
    assert (await _json(resp))["current_rev"] is None
    resp = await put(api, flow("new"), {"If-Match": "*"})
    assert resp.status == 400
    assert (await _json(resp))["issues"][0]["where"] == "If-Match"


async def test_if_match_is_checked_inside_the_deploy_lock(api: Api) -> None:
    """Two tabs that loaded rev 1 deploy at once: exactly one wins, the other gets 409."""
    await put(api, flow())
    results = await asyncio.gather(
        *(put(api, flow(keep=k), {"If-Match": '"1"'}) for k in (3, 4, 5, 6))
    )
    assert sorted(r.status for r in results) == [201, 409, 409, 409]
    assert api.manager.store.active_rev("gh") == 2


async def test_file_flows_say_which_file(api: Api, tmp_path: Any) -> None:
    await api.manager.deploy(flow("ff"), "file", origin=str(tmp_path / "ff.json"))
    resp = await api.client.get(f"{V1}/flows/ff", headers=AUTH)
    out = await _json(resp)
    assert out["source"] == "file" and out["file"] == str(tmp_path / "ff.json")
    assert resp.headers["ETag"] == '"1"'


# -- schema ---------------------------------------------------------------------------------
async def test_schema_has_x_mechaway(api: Api) -> None:
    out = await _json(await api.client.get(f"{V1}/schema", headers=AUTH))
    assert out["InjectNode"]["x-mechaway"] == {
        "kind": "source", "ports": ["out", "error"], "group": "sources", "dynamic_ports": False,
    }  # fmt: skip
    assert out["RouteNode"]["x-mechaway"]["dynamic_ports"] is True
    assert out["KVGetNode"]["x-mechaway"]["ports"] == ["out", "missing", "error"]
    assert out["KVGetNode"]["x-mechaway"]["group"] == "storage"
    assert out["LogNode"]["x-mechaway"]["group"] == "sinks"
    assert out["MQTTOutNode"]["x-mechaway"]["group"] == "sinks"
    assert out["GPIOOutNode"]["x-mechaway"]["group"] == "hardware"
    assert {v["x-mechaway"]["group"] for v in out.values()} <= {
        "sources", "logic", "storage", "sinks", "hardware"}  # fmt: skip
    one = await _json(await api.client.get(f"{V1}/schema/RangeNode", headers=AUTH))
    assert one["x-mechaway"]["kind"] == "pure"
    assert "in_min" in one["$defs"]["RangeParams"]["properties"]


# -- ui and disabled ------------------------------------------------------------------------
async def test_ui_is_kept_and_a_moved_node_is_not_restarted(api: Api) -> None:
    body = flow()
    body["ui"] = {"viewport": {"x": 0, "y": 0, "zoom": 1.5}}
    body["nodes"][1]["ui"] = {"x": 10, "y": 20}
    assert (await put(api, body)).status == 201
    before = api.engine.flows["gh"].instances["log"]
    body["nodes"][1]["ui"] = {"x": 300, "y": 20, "color": "red"}
    resp = await put(api, body, {"If-Match": '"1"'})
    out = await _json(resp)
    assert resp.status == 201 and out["kept"] == ["src", "log"] and out["changed"] == []
    assert api.engine.flows["gh"].instances["log"] is before
    got = await _json(await api.client.get(f"{V1}/flows/gh", headers=AUTH))
    assert got["flow"]["nodes"][1]["ui"] == {"x": 300, "y": 20, "color": "red"}
    assert got["flow"]["ui"] == {"viewport": {"x": 0, "y": 0, "zoom": 1.5}}


async def test_ui_must_be_a_json_object(api: Api) -> None:
    body = flow()
    body["nodes"][1]["ui"] = [1, 2]
    resp = await api.client.post(f"{V1}/validate", json=body, headers=AUTH)
    assert resp.status == 422
    assert (await _json(resp))["errors"][0]["where"].startswith("nodes[1].ui")


async def test_disabled_node_is_not_started_and_passes_nothing(api: Api) -> None:
    body = doc(
        "d",
        [IDLE_SOURCE, node("p", "PassNode"), node("sink", "CollectNode")],
        [edge("src", "p"), edge("p", "sink")],
    )
    body["nodes"][1]["disabled"] = True
    resp = await put(api, body)
    assert resp.status == 201
    rf = api.engine.flows["d"]
    assert "p" not in rf.instances and set(rf.instances) == {"src", "sink"}
    assert rf.routers["src"].out == ()  # the edge into the disabled node passes nothing
    got = await _json(await api.client.get(f"{V1}/flows/d", headers=AUTH))
    assert got["flow"]["nodes"][1]["disabled"] is True
    body["nodes"][1].pop("disabled")  # enabled again: started, wired
    await put(api, body)
    rf = api.engine.flows["d"]
    assert "p" in rf.instances and len(rf.routers["src"].out) == 1
    rf.routers["src"].emit({"payload": 1})
    await asyncio.wait_for(rf.sinks["sink"].idle.wait(), 2)
    assert rf.stats["sink"].inp == 1


async def test_disabled_must_be_a_bool(api: Api) -> None:
    body = flow()
    body["nodes"][1]["disabled"] = "yes"
    resp = await api.client.post(f"{V1}/validate", json=body, headers=AUTH)
    assert resp.status == 422
