"""The admin API under hostile input: every answer a JSON error that names the place.

Never a 500 or a traceback page, never a hang, never a body parsed without bound, and
nothing recorded or started by a request that was refused.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.api import server
from mechaway.api.server import MAX_LIMIT, MAX_REV, make_app
from mechaway.flow.parse import parse_text
from mechaway.runtime.manager import FlowManager
from mechaway.store.series import SeriesStore

from .test_api import AUTH, TOKEN, V1, MakeClient, body, flow, make_client, manager

__all__ = ["make_client", "manager"]  # fixtures, used by name

Client = TestClient[Any, Any]
T0 = 1_700_000_000.0
YAML = {**AUTH, "Content-Type": "application/yaml"}
JSON = {**AUTH, "Content-Type": "application/json"}
FLOW_YAML = (
    "nodes:\n  - {id: src, type: InjectNode, params: {once: true, once_delay: 3600}}\n"
    "  - {id: log, type: LogNode}\nedges:\n  - {from: src, to: log}\n"
)


async def raw_http(client: Client, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes on a fresh connection; the status, headers and body.

    The body is read by its Content-Length, so a server that then lingers on the
    connection (to drain what the client never sent) does not hold the test up.
    """
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        # a bound against a hang, not a timing assertion
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
        data = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30)
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, data


def in_thread(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine on ``loop`` from a worker thread (hypothesis drives the API from one)."""

    def call(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    return call


async def answer(resp_cm: Awaitable[Any]) -> tuple[int, Any]:
    resp = await resp_cm
    return resp.status, await body(resp)


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the bearer token -------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "value",
    [
        b"Bearer \xff\xfe",  # not UTF-8: was a 500 and a traceback in the log
        b"\xc3\x28",
        b"Bearer " + TOKEN.encode() + b"\x80",
        b"Bearer \xc3\xa9",  # UTF-8, not ASCII
        b"Bearer " + TOKEN.encode("latin-1") + b"\xa0",
    ],
)
async def test_a_token_header_of_any_bytes_is_a_json_401(
    make_client: MakeClient, manager: FlowManager, value: bytes
) -> None:
    client = await make_client()
    payload = orjson.dumps(flow())
    status, headers, data = await raw_http(
        client,
        b"PUT /api/v1/flows/gh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAuthorization: " + value + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload,
    )
    assert status == 401
    assert headers["content-type"] == "application/json"
    assert orjson.loads(data) == {"error": "missing or wrong bearer token"}
    assert manager.store.history("gh") == []


# -- request bodies: size, time, format -------------------------------------------------------
@pytest.mark.asyncio
async def test_a_declared_oversize_body_is_413_before_it_is_sent(
    make_client: MakeClient, manager: FlowManager
) -> None:
    """Content-Length over the cap: refused at once (it used to wait for the bytes)."""
    client = await make_client(max_body=1000)
    status, headers, data = await raw_http(
        client,
        b"PUT /api/v1/flows/gh HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{",
    )
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert orjson.loads(data) == {
        "error": "request body larger than 1000 bytes (the api.max_body_bytes setting)"
    }
    assert manager.store.history("gh") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/flows/gh", "/flows/gh/rollback"])
async def test_an_oversize_chunked_body_is_413_naming_the_cap(
    make_client: MakeClient, manager: FlowManager, path: str
) -> None:
    """No Content-Length to go by: the read stops at the cap, and the error says what it is."""
    client = await make_client(max_body=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    method = "PUT" if path == "/flows/gh" else "POST"
    resp = await client.request(method, f"{V1}{path}", data=chunks(), headers=JSON)
    assert resp.status == 413
    assert (await body(resp))["error"] == (
        "request body larger than 1000 bytes (the api.max_body_bytes setting)"
    )
    assert manager.store.history("gh") == []


@pytest.mark.asyncio
async def test_a_body_that_never_arrives_is_408_not_a_hang(
    make_client: MakeClient, manager: FlowManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.05)
    client = await make_client()
    status, headers, data = await raw_http(
        client,
        b"PUT /api/v1/flows/gh HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert orjson.loads(data) == {"error": "request body not received within 0.05 s"}
    assert manager.store.history("gh") == []


@pytest.mark.asyncio
async def test_yaml_is_parsed_off_the_event_loop(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyYAML takes seconds for a 1 MiB body: on the loop, every flow would stall."""
    threads: list[int] = []
    real = parse_text

    def spy(text: str | bytes, *, fmt: str = "json", source: str = "") -> Any:
        threads.append(threading.get_ident())
        return real(text, fmt=fmt, source=source)

    monkeypatch.setattr("mechaway.api.server.parse_text", spy)
    client = await make_client()
    resp = await client.put(f"{V1}/flows/gh", data=FLOW_YAML, headers=YAML)
    assert resp.status == 201
    assert threads and threading.get_ident() not in threads


@pytest.mark.asyncio
async def test_yaml_bodies_are_parsed_one_at_a_time(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML parse can take ~300 MB per MiB of body: two at once could exhaust a Pi."""
    real = parse_text
    lock = threading.Lock()
    running = 0
    most = 0
    second = threading.Event()

    def spy(text: str | bytes, *, fmt: str = "json", source: str = "") -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running > 1:
                second.set()
        # the first parse waits a while for a second one to start beside it
        second.wait(timeout=0.5)
        second.set()
        with lock:
            running -= 1
        return real(text, fmt=fmt, source=source)

    monkeypatch.setattr("mechaway.api.server.parse_text", spy)
    client = await make_client()
    a, b = await asyncio.gather(
        client.put(f"{V1}/flows/a", data=FLOW_YAML, headers=YAML),
        client.put(f"{V1}/flows/b", data=FLOW_YAML, headers=YAML),
    )
    assert (a.status, b.status) == (201, 201)
    assert most == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_a_web_page_could_post_is_refused(
    make_client: MakeClient, content_type: str | None
) -> None:
    """The types a browser sends cross-origin without asking first are never read as JSON
    (the API used to deploy ``text/plain`` bodies); a JSON type with YAML in it says why."""
    client = await make_client()
    headers = dict(AUTH) | ({"Content-Type": content_type} if content_type else {})
    resp = await client.put(
        f"{V1}/flows/gh", data=orjson.dumps(flow()), headers=headers,
        skip_auto_headers=() if content_type else ("Content-Type",),
    )  # fmt: skip
    assert resp.status == 415
    assert "send application/json" in (await body(resp))["error"]
    resp = await client.put(
        f"{V1}/flows/gh", data=FLOW_YAML, headers=dict(AUTH) | {"Content-Type": "application/json"}
    )
    assert resp.status == 400
    (issue,) = (await body(resp))["issues"]
    assert issue["message"].startswith("invalid JSON")


# -- flow ids in the path and the body --------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("fid", ["a" * 65, "%C3%A9", "a%2Fb", "a%00b", "a%20b", "%2e%2e", ".."])
async def test_odd_flow_ids_in_the_path_are_json_4xx_and_change_nothing(
    make_client: MakeClient, manager: FlowManager, fid: str
) -> None:
    client = await make_client()
    for method in ("GET", "DELETE"):
        resp = await client.request(method, f"{V1}/flows/{fid}", headers=AUTH)
        assert resp.status == 404
        assert isinstance((await body(resp))["error"], str)
    resp = await client.get(f"{V1}/flows/{fid}/revisions", headers=AUTH)
    assert resp.status == 404
    resp = await client.put(
        f"{V1}/flows/{fid}", json={k: v for k, v in flow().items() if k != "id"}, headers=AUTH
    )
    assert resp.status in (400, 404)
    b = await body(resp)
    if resp.status == 400:  # a path segment the router took: the id is what is wrong
        assert [i["where"] for i in b["issues"]] == ["id"]
        assert "is not a valid id" in b["issues"][0]["message"]
    assert manager.store.active() == []
    assert manager.engine.flows == {}


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [5, None, [], {}, "GH", "gh "])
async def test_a_body_id_that_is_not_the_paths_is_400_at_id(
    make_client: MakeClient, manager: FlowManager, bad: Any
) -> None:
    client = await make_client()
    resp = await client.put(f"{V1}/flows/gh", json={**flow(), "id": bad}, headers=AUTH)
    assert resp.status == 400
    (issue,) = (await body(resp))["issues"]
    assert issue["where"] == "id"
    assert "does not match the URL's 'gh'" in issue["message"]
    assert manager.store.history("gh") == []


# -- rollback ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_rollback_rev_of_any_json_value_is_400_or_404(make_client: MakeClient) -> None:
    """In range and an integer: 404 (no such revision). Anything else: 400 at ``rev``.

    2**63 and up used to reach SQLite and come back a 500 traceback page.
    """
    client = await make_client()
    call = in_thread(asyncio.get_running_loop())

    revs = (
        st.integers()
        | st.integers(min_value=MAX_REV - 2, max_value=2**64 + 2)
        | st.integers(max_value=1)
        | st.floats()
        | st.booleans()
        | st.none()
        | st.text(max_size=5)
        | st.lists(st.integers(), max_size=2)
    )

    @examples(150)
    @given(rev=revs)
    def prop(rev: Any) -> None:
        payload = json.dumps({"rev": rev})  # big integers, NaN and all
        status, b = call(answer(client.post(f"{V1}/flows/gh/rollback", data=payload, headers=JSON)))
        if type(rev) is int and 1 <= rev <= MAX_REV:
            assert (status, b) == (404, {"error": f"flow 'gh' has no revision {rev}"})
        else:
            assert status == 400, (rev, b)
            assert b["error"] == "invalid request body"
            (issue,) = b["issues"]
            assert issue["where"] == "rev" or issue["where"].startswith("line 1 column")

    await asyncio.to_thread(prop)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "where", "needle"),
    [
        (b'{"rev": 9223372036854775808}', "rev", "revision numbers run from 1 to"),
        (b'{"rev": 0}', "rev", "revision numbers run from 1 to"),
        (b'{"rev": "1"}', "rev", "expected an integer revision number"),
        (b"{", "line 1 column 2", "invalid JSON"),
    ],
)
async def test_a_bad_rollback_request_is_not_called_an_invalid_flow(
    make_client: MakeClient, payload: bytes, where: str, needle: str
) -> None:
    client = await make_client()
    await client.put(f"{V1}/flows/gh", json=flow(), headers=AUTH)
    resp = await client.post(f"{V1}/flows/gh/rollback", data=payload, headers=JSON)
    assert resp.status == 400
    b = await body(resp)
    assert b["error"] == "invalid request body"
    (issue,) = b["issues"]
    assert issue["where"] == where
    assert needle in issue["message"]


# -- series queries ---------------------------------------------------------------------------
@pytest_asyncio.fixture
async def series_client(manager: FlowManager) -> AsyncIterator[Client]:
    """A client whose API serves ``temp``: 50 samples a second apart from ``T0``."""
    store = SeriesStore.of(manager.store.db)
    await asyncio.gather(*[store.append("temp", i, T0 + i) for i in range(50)])
    app = make_app(manager, dict, token=TOKEN, max_body=1 << 20, series_store=store)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=9223372036854775808", f"limit must be <= {MAX_LIMIT} (page on with from=)"),
        (f"limit={MAX_LIMIT + 1}", f"limit must be <= {MAX_LIMIT} (page on with from=)"),
        ("from=nan", "from: expected epoch seconds or ISO 8601, got 'nan'"),
        ("to=inf", "to: expected epoch seconds or ISO 8601, got 'inf'"),
        ("from=-inf", "from: expected epoch seconds or ISO 8601, got '-inf'"),
        ("from=1e999", "from: expected epoch seconds or ISO 8601, got '1e999'"),
        ("from=10&to=1", "from is after to"),
        ("from=2024-01-02&to=2024-01-01", "from is after to"),
        ("agg=mean&bucket=1e-300", "bucket must be at least 0.001 seconds"),
        ("agg=mean&bucket=0", "bucket must be at least 0.001 seconds"),
        ("agg=mean&bucket=nan", "bucket must be a positive number of seconds"),
    ],
)
async def test_hostile_series_queries_are_400_naming_the_parameter(
    series_client: Client, query: str, error: str
) -> None:
    resp = await series_client.get(f"{V1}/series/temp?{query}", headers=AUTH)
    assert resp.status == 400
    assert await body(resp) == {"error": error}


@pytest.mark.asyncio
async def test_series_query_edges_that_are_fine(series_client: Client) -> None:
    ok = [f"limit={MAX_LIMIT}", f"from={T0 + 5}&to={T0 + 5}", "agg=mean&bucket=0.001"]
    for query in ok:
        resp = await series_client.get(f"{V1}/series/temp?{query}", headers=AUTH)
        assert resp.status == 200, query
    b = await body(
        await series_client.get(f"{V1}/series/temp?from={T0 + 5}&to={T0 + 5}", headers=AUTH)
    )
    assert b["points"] == [[T0 + 5, 5.0]]


NUMBERS = (
    st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats().map(repr)
    | st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-0", "1_0", " 5 ", "0x10"])
    | st.datetimes().map(lambda d: d.isoformat())
    | st.text(max_size=8)
)


@pytest.mark.asyncio
async def test_series_query_parameters_never_500(series_client: Client) -> None:
    """Any mix of parameters: a 200 that honours them, or a 400 with a message."""
    call = in_thread(asyncio.get_running_loop())
    keys = st.sampled_from(["from", "to", "limit", "bucket", "agg"])
    aggs = st.sampled_from(["mean", "min", "max", "count", "", "nope"])

    @examples(200)
    @given(params=st.dictionaries(keys, NUMBERS, max_size=4), agg=aggs | st.none())
    def prop(params: dict[str, str], agg: str | None) -> None:
        if agg is not None:
            params["agg"] = agg
        status, b = call(
            answer(series_client.get(f"{V1}/series/temp", params=params, headers=AUTH))
        )
        assert status in (200, 400), (params, b)
        if status == 400:
            assert isinstance(b["error"], str) and b["error"]
            return
        for key in ("from", "to"):
            if params.get(key, "") != "":
                assert isinstance(b[key], float) and math.isfinite(b[key]), (params, b)
        if b["from"] is not None and b["to"] is not None:
            assert b["from"] <= b["to"]
        assert len(b["points"]) <= (int(params["limit"]) if params.get("limit") else 10_000)

    await asyncio.to_thread(prop)


# -- routes and failures ----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_unknown_route_and_method_say_what_was_asked(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get(f"{V1}/nothing/here", headers=AUTH)
    assert resp.status == 404
    assert await body(resp) == {"error": "no route GET '/api/v1/nothing/here'"}
    resp = await client.post(f"{V1}/flows/gh", headers=AUTH)
    assert resp.status == 405
    assert resp.headers["Allow"] == "DELETE,GET,HEAD,PUT"
    assert await body(resp) == {"error": "POST not allowed here (allowed: DELETE,GET,HEAD,PUT)"}


@pytest.mark.asyncio
async def test_an_unexpected_failure_is_a_json_500_without_the_traceback(
    make_client: MakeClient, manager: FlowManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(flow_id: str) -> Any:
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(manager.store, "history", broken)
    client = await make_client()
    resp = await client.get(f"{V1}/flows/gh/revisions", headers=AUTH)
    assert resp.status == 500
    assert await body(resp) == {"error": "internal error (details in the daemon log)"}


# -- concurrent deploys -----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_concurrent_deploys_of_one_flow_each_get_a_revision(
    make_client: MakeClient, manager: FlowManager
) -> None:
    client = await make_client()
    resps = await asyncio.gather(
        *[client.put(f"{V1}/flows/gh", json=flow(keep=k), headers=AUTH) for k in range(1, 11)]
    )
    assert [r.status for r in resps] == [201] * 10
    revs = sorted([(await body(r))["rev"] for r in resps])
    assert revs == list(range(1, 11))
    active = manager.store.active_rev("gh")
    assert active == 10 == manager.engine.flows["gh"].rev
    stored = manager.store.get("gh", 10)
    assert stored is not None
    assert (
        manager.engine.flows["gh"].instances["log"].params.keep
        == stored.doc["nodes"][1]["params"]["keep"]
    )


@pytest.mark.asyncio
async def test_concurrent_deploys_and_deletes_leave_store_and_engine_agreeing(
    make_client: MakeClient, manager: FlowManager
) -> None:
    client = await make_client()
    calls = [
        client.put(f"{V1}/flows/gh", json=flow(keep=k), headers=AUTH)
        if k % 2
        else client.delete(f"{V1}/flows/gh", headers=AUTH)
        for k in range(1, 13)
    ]
    resps = await asyncio.gather(*calls)
    assert all(r.status in (200, 201, 404) for r in resps)
    active = manager.store.active_rev("gh")
    running = manager.engine.flows.get("gh")
    assert (active is None) == (running is None)
    if running is not None:
        assert running.rev == active


@pytest.mark.asyncio
async def test_a_deploy_on_a_full_disk_is_503_and_runs_nothing(
    make_client: MakeClient, manager: FlowManager
) -> None:
    db = manager.store.db
    pages = db.read("PRAGMA page_count")[0][0]
    await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())
    client = await make_client()
    big = flow()
    big["name"] = "x" * 20_000  # the revision needs new pages
    resp = await client.put(f"{V1}/flows/gh", json=big, headers=AUTH)
    # before: a 500 "internal error" and a traceback in the log for a full disk
    assert resp.status == 503
    assert "disk full" in (await body(resp))["error"]
    assert "gh" not in manager.engine.flows
    await db.write(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchone())
    resp = await client.put(f"{V1}/flows/gh", json=big, headers=AUTH)
    assert resp.status == 201
