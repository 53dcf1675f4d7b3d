"""An admin API app over a real FlowManager (temp SQLite), with its events hub at hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

import mechaway.testing.nodes  # noqa: F401  (CollectNode, PassNode...)
from mechaway.api.events import EventHub
from mechaway.api.server import EVENTS, make_app
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore

TOKEN = "editor-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
V1 = "/api/v1"


@dataclass
class Api:
    client: TestClient[Any, Any]
    manager: FlowManager
    hub: EventHub

    @property
    def engine(self) -> Engine:
        return self.manager.engine


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=2.0)
    manager = FlowManager(engine, FlowStore(db))

    def status() -> dict[str, Any]:
        return {"problems": [], "connections": {}, "flows": engine.status()}

    app = make_app(manager, status, token=TOKEN, max_body=4 << 20)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, manager, app[EVENTS])
    finally:
        await client.close()
        await engine.stop()
        await db.close()
