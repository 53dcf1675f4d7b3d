"""The hub API in process (SQLite): who may do what, bad requests, bounds, long-poll."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from mechaway.hub.config import HubServerSettings
from mechaway.hub.db import HubDb, open_backend
from mechaway.hub.keys import Signer, generate_pem
from mechaway.hub.server import Hub
from mechaway.hub.wire import BATCH_CONTENT_TYPE, encode_batch

ADMIN = "admin-token-0123456789"
PROV = "provision-token-0123456789"
A = {"Authorization": f"Bearer {ADMIN}"}


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = HubServerSettings(
        database=str(tmp_path / "hub.db"),
        admin_token=ADMIN,
        provisioning_token=PROV,
        provision_tags=["new"],
        max_body_bytes=128 * 1024,
        long_poll=5,
    )
    signer = Signer(generate_pem(), "k")
    db = HubDb(open_backend(settings.database), signer.sign)
    await db.open()
    hub = Hub(settings, db, signer)
    hub.watch.interval = 0.05
    hub.watch.start()
    c = TestClient(TestServer(hub.app()))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()
        await hub.watch.stop()
        await db.close()


async def add(c: TestClient[Any, Any], dev: str, tags: list[str] | None = None) -> str:
    r = await c.post("/api/v1/devices", json={"id": dev, "tags": tags or []}, headers=A)
    assert r.status == 201, await r.text()
    return str((await r.json())["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.asyncio
async def test_admin_and_device_tokens(client: TestClient[Any, Any]) -> None:
    ta, tb = await add(client, "a"), await add(client, "b")
    assert (await client.get("/api/v1/devices")).status == 401
    assert (await client.get("/api/v1/devices", headers=bearer(ta))).status == 401
    assert (await client.get("/api/v1/devices", headers=A)).status == 200
    # a device acts only as itself
    assert (await client.get("/api/v1/devices/a", headers=bearer(ta))).status == 200
    assert (await client.get("/api/v1/devices/b", headers=bearer(ta))).status == 403
    r = await client.post("/api/v1/devices/b/heartbeat", data=b"{}", headers=bearer(ta))
    assert r.status == 403
    r = await client.post("/api/v1/devices/b/heartbeat", data=b"{}", headers=bearer(tb))
    assert r.status == 200 and (await r.json())["bundle"] is not None
    assert (await client.get("/api/v1/devices/zz", headers=bearer(ta))).status == 403
    # deploying is the admin's
    doc = {"id": "f", "nodes": [], "edges": []}
    r = await client.put("/api/v1/devices/a/flows/f", json=doc, headers=bearer(ta))
    assert r.status == 401
    r = await client.put("/api/v1/tags/t/flows/f", json=doc, headers=A)
    assert r.status == 200


@pytest.mark.asyncio
async def test_bad_requests_are_4xx_and_logged_once_per_burst(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    t = bearer(await add(client, "a"))
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("post", "/api/v1/devices/a/heartbeat", {"data": b"{nope"}, 400),
        ("post", "/api/v1/devices/a/telemetry", {"data": b"x"}, 415),
        (
            "post",
            "/api/v1/devices/a/telemetry",
            {"data": b"garbage", "headers": {"Content-Type": BATCH_CONTENT_TYPE}},
            400,
        ),
        ("get", "/api/v1/devices/a/telemetry?after=x", {}, 400),
        ("get", "/api/v1/devices/a/telemetry?limit=0", {}, 400),
        ("get", "/api/v1/devices/a/bundle?wait=-1", {}, 400),
        ("post", "/api/v1/devices/a/heartbeat", {"data": b"x" * 200_000}, 413),
    ]
    for method, path, kw, status in cases:
        headers = {**t, **kw.pop("headers", {})}
        r = await getattr(client, method)(path, headers=headers, **kw)
        assert r.status == status, (path, await r.text())
    bad_docs = [b"[1", b"[]", b'{"id": "g", "nodes": [], "edges": []}', b'{"id": "f"}']
    for body in bad_docs:
        r = await client.put("/api/v1/tags/t/flows/f", data=body, headers=A)
        assert r.status == 400, body
    r = await client.put("/api/v1/tags/b%20ad/flows/f", data=b"{}", headers=A)
    assert r.status == 400
    r = await client.post("/api/v1/devices", json={"id": "a/b"}, headers=A)
    assert r.status == 400
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mechaway.hub"):
        for _ in range(50):
            await client.get("/api/v1/devices/a/telemetry?after=x", headers=t)
    lines = [rec for rec in caplog.records if "after" in rec.getMessage()]
    assert len(lines) <= 1
    assert (await client.get("/health")).status == 200


@pytest.mark.asyncio
async def test_telemetry_up_and_read_back(client: TestClient[Any, Any]) -> None:
    t = bearer(await add(client, "a"))
    rows = [(s, 100.0 + s, "x/y", b'{"v": %d}' % s, 0) for s in range(1, 201)]
    h = {**t, "Content-Type": BATCH_CONTENT_TYPE}
    body = encode_batch("ep", 0, rows)
    r = await client.post("/api/v1/devices/a/telemetry", data=body, headers=h)
    assert (await r.json()) == {"epoch": "ep", "acked": 200, "live_hi": 0}
    r = await client.get("/api/v1/devices/a/telemetry?after=150&limit=10", headers=A)
    got = await r.json()
    assert [g["seq"] for g in got] == list(range(151, 161))
    assert got[0] == {"seq": 151, "ts": 251.0, "topic": "x/y", "payload": {"v": 151}}
    # a zip bomb within the body bound
    bomb = zlib.compress(msgpack.packb([1, "ep", 0, [[1, 0.0, "t", b"0" * 10**8, 0]]]), 9)
    assert len(bomb) < 128 * 1024
    r = await client.post("/api/v1/devices/a/telemetry", data=bomb, headers=h)
    assert r.status == 400


@pytest.mark.asyncio
async def test_provisioning(client: TestClient[Any, Any]) -> None:
    r = await client.post("/api/v1/provision", json={"id": "p1"}, headers=bearer("wrong" * 4))
    assert r.status == 401
    r = await client.post("/api/v1/provision", json={"id": "p1"}, headers=bearer(PROV))
    assert r.status == 201
    body = await r.json()
    assert body["tags"] == ["new"]
    r = await client.get("/api/v1/devices/p1", headers=bearer(body["token"]))
    assert r.status == 200
    # an existing device cannot be taken over by provisioning again
    r = await client.post("/api/v1/provision", json={"id": "p1"}, headers=bearer(PROV))
    assert r.status == 409


@pytest.mark.asyncio
async def test_long_poll_wakes_on_deploy(client: TestClient[Any, Any]) -> None:
    t = bearer(await add(client, "a", ["gh"]))
    r = await client.get("/api/v1/devices/a/bundle?after=0", headers=t)
    assert r.status == 200  # the first (empty) bundle
    t0 = time.monotonic()
    poll = asyncio.ensure_future(client.get("/api/v1/devices/a/bundle?after=1&wait=5", headers=t))
    await asyncio.sleep(0.3)
    assert not poll.done()
    doc = {"id": "f", "nodes": [], "edges": []}
    assert (await client.put("/api/v1/tags/gh/flows/f", json=doc, headers=A)).status == 200
    r = await poll
    assert r.status == 200
    assert time.monotonic() - t0 < 4
    r = await client.get("/api/v1/devices/a/bundle?after=2&wait=1", headers=t)
    assert r.status == 204
