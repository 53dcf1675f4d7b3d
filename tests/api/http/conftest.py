"""The admin API app with both tokens (admin, read-only), over a real engine, store and
driver connections: what the webhook, WebSocket and metrics tests talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import mechaway.testing.nodes  # noqa: F401  (CollectNode, PassNode...)
from mechaway.api.auth import Guard
from mechaway.api.server import make_app
from mechaway.drivers.base import Connections
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore

ADMIN = "admin-token-0123456789"
READ = "read-token-0123456789"
HOOK = "hook-token-abcdefghijklmnop"


@dataclass
class WebApi:
    client: TestClient[Any, Any]
    app: web.Application
    manager: FlowManager
    db: Database
    drivers: Connections

    @property
    def engine(self) -> Engine:
        return self.manager.engine

    def status(self) -> dict[str, Any]:
        return {
            "device": "test-device",
            "uptime_s": 1.5,
            "problems": [],
            "flows": self.engine.status(),
            "connections": self.drivers.status(),
            "store": self.db.stats(),
        }

    async def deploy(self, body: dict[str, Any]) -> None:
        await self.manager.deploy(body, "api")


@pytest_asyncio.fixture
async def web_api(tmp_path: Path) -> AsyncIterator[WebApi]:
    db = Database(tmp_path / "mechaway.db")
    db.open()
    drivers = Connections()
    engine = Engine(Services(store=db, drivers=drivers), stop_timeout=2.0)
    manager = FlowManager(engine, FlowStore(db))
    guard = Guard(token=ADMIN, read_token=READ)
    holder: list[WebApi] = []

    def status() -> dict[str, Any]:
        return holder[0].status()

    app = make_app(manager, status, token=ADMIN, max_body=1 << 20, guard=guard)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    api = WebApi(client, app, manager, db, drivers)
    holder.append(api)
    try:
        yield api
    finally:
        await client.close()
        await engine.stop()
        await drivers.close()
        await db.close()
